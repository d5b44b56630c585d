//! The supervisor: starts `--processes` worker children by re-executing its own binary with
//! `--worker-index N`, hands each its configuration on a pipe, restarts children that die,
//! forwards stop requests, and decides the exit code.
//!
//! ```text
//! dispatchbox (supervisor)
//!   ├─ dispatchbox --worker-index 0   stdin: config JSON line, then "stop" / "stop-now";
//!   ├─ dispatchbox --worker-index 1   EOF on stdin = the supervisor is gone → graceful stop
//!   └─ ...                            stderr: forwarded line by line (last error kept)
//! ```
//! Invariants: no secret in any child's argv (the DSN travels on the pipe and the child's
//! environment is stripped of DISPATCHBOX_DSN and PGPASSWORD); a child that fails for a reason
//! a restart cannot fix stops everything with that child's error and exit code instead of
//! being restarted forever: bad configuration (exit 2) and a database that refuses us
//! (exit 4: authentication, a read-only server, a missing table) always, an unreachable
//! database (exit 3) only while no worker of this supervisor has ever been ready.
//!
//! Restart policy for exit 3 once some worker has been ready (the database works, or did):
//! - daemon mode: the slot is restarted with backoff (up to 30 s) and a WARNING, forever,
//!   like a running worker riding out an outage; these restarts do not count toward the
//!   give-up limit. This covers a restarted worker during an outage and `--processes` above
//!   what the server's `max_connections` admits ("too many clients": what fits runs).
//! - `--drain`: a slot that cannot start while another worker has been ready gives up with a
//!   WARNING and does not fail the drain; a worker that was ready and then lost the database
//!   fails the drain (exit 3) as before.
//!
//! An exit 3 while no worker has been ready yet waits for the slots still starting: if one
//! of them becomes ready, the rule above applies; if none does, everything stops with the
//! first error.

use crate::backoff::reconnect_delay;
use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::{info, warn};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child that dies sooner than this after starting counts as a quick death.
const QUICK_DEATH: Duration = Duration::from_secs(10);
/// Consecutive quick failures of one child after which the supervisor gives up. A failure is
/// a death before the child was ready, or an exit the child chose (an error, a panic); a
/// child killed by a signal after it was ready (an operator, the OOM killer) is restarted.
const MAX_QUICK_DEATHS: u32 = 5;
/// The line a worker child writes on stderr once its start-up succeeded (not forwarded).
pub const READY_MARKER: &str = "\u{1}dispatchbox worker ready";
/// Prefix of the line with which a worker child reports the error it exits with (not
/// forwarded: the supervisor reports it once, with context).
pub const FATAL_MARKER: &str = "\u{1}dispatchbox worker error: ";

enum State {
    Running {
        child: Child,
        stdin: Option<ChildStdin>,
        started: Instant,
    },
    /// Died unexpectedly; restart at this instant.
    Restarting { at: Instant },
    /// Exited 3 (database unreachable); restarted, given up on, or fatal once
    /// it is known whether any worker has been ready (see the module doc).
    Parked {
        code: u8,
        msg: String,
        /// This incarnation had been ready (it lost the database rather than never had it).
        was_ready: bool,
    },
    /// Exited on its own terms with this code.
    Exited(u8),
}

struct Slot {
    index: u32,
    state: State,
    quick_deaths: u32,
    last_error: Arc<Mutex<Option<String>>>,
    /// Set by the stderr forwarder when the child reports that its start-up succeeded.
    ready: Arc<AtomicBool>,
    /// The thread copying the child's stderr; joined before `last_error` is read.
    forwarder: Option<std::thread::JoinHandle<()>>,
    /// Some incarnation of this slot has been ready.
    ever_ready: bool,
    /// Restarts after exit 3 since this slot was last ready (paces them).
    outage_restarts: u32,
}

impl Slot {
    /// The child's last ERROR line, once its stderr has been copied to the end.
    fn last_error(&mut self) -> Option<String> {
        if let Some(t) = self.forwarder.take() {
            // EOF comes with the exit; a grandchild holding the pipe must not block us.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.last_error.lock().ok().and_then(|m| m.clone())
    }
}

/// The path to re-execute: the file `/proc/self/exe` points to while it still exists (so
/// workers show up as `dispatchbox` in ps/pgrep), `/proc/self/exe` itself when the binary
/// was replaced or deleted meanwhile (an upgrade: workers keep running the same version),
/// else `current_exe()`.
fn own_exe() -> Result<PathBuf> {
    let proc_self = PathBuf::from("/proc/self/exe");
    if let Ok(target) = std::fs::read_link(&proc_self) {
        if target.is_absolute() && !target.to_string_lossy().ends_with(" (deleted)") {
            return Ok(target);
        }
    }
    if proc_self.exists() {
        return Ok(proc_self);
    }
    std::env::current_exe().map_err(Error::Io)
}

pub fn run(cfg: &Config) -> Result<u8> {
    // Signals first, before any thread or child exists.
    let (sig_tx, sig_rx) = mpsc::channel::<i32>();
    // SIGCHLD only wakes the loop to reap at once (no polling delay on exits). SIGHUP (a
    // closed terminal, or an operator expecting a reload) would otherwise kill us silently.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGCHLD,
        signal_hook::consts::SIGHUP,
    ])?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if sig_tx.send(s).is_err() {
                return;
            }
        }
    });

    let exe = own_exe()?;
    // Several workers writing stdout lines need a lock they all can open.
    let stdout_lock = if cfg.processes > 1 {
        Some(LockFile::create()?)
    } else {
        None
    };
    let mut child_cfg = cfg.clone();
    child_cfg.stdout_lock = stdout_lock.as_ref().map(|l| l.path.clone());
    let log_copy = stderr_copy();
    child_cfg.log_fd = log_copy.as_ref().map(|_| WORKER_LOG_FD);
    let log_copy = log_copy.as_ref().map(|fd| fd.as_raw_fd());
    let config_line = child_cfg.to_child_json();
    let mut rng = fastrand::Rng::new();
    let mut slots: Vec<Slot> = (0..cfg.processes)
        .map(|index| Slot {
            index,
            state: State::Restarting { at: Instant::now() },
            quick_deaths: 0,
            last_error: Arc::new(Mutex::new(None)),
            ready: Arc::new(AtomicBool::new(false)),
            forwarder: None,
            ever_ready: false,
            outage_restarts: 0,
        })
        .collect();
    info!(
        "starting {} worker process(es) for table {} on {}",
        cfg.processes,
        cfg.table,
        cfg.dsn.redacted()
    );

    let deadline = cfg.max_runtime.map(|d| Instant::now() + d);
    let mut stop_requests = 0u32;
    // When children that were told to stop get SIGKILL if they are still there.
    let mut kill_at: Option<Instant> = None;
    let mut time_limit_hit = false;
    // Set when a child failed in a way restarting cannot fix: (code, message).
    let mut fatal: Option<(u8, String)> = None;

    loop {
        // Start or restart children that are due.
        if stop_requests == 0 && fatal.is_none() {
            for slot in &mut slots {
                if let State::Restarting { at } = slot.state {
                    if at <= Instant::now() {
                        slot.state = match spawn(&exe, slot, &config_line, log_copy) {
                            Ok(state) => state,
                            Err(e) => {
                                // e.g. EAGAIN: try again later, like a crash at start-up.
                                slot.quick_deaths += 1;
                                let pause = reconnect_delay(
                                    slot.quick_deaths,
                                    Duration::from_secs(30),
                                    &mut rng,
                                );
                                warn!("{e}; retrying in {:.1}s", pause.as_secs_f64());
                                if slot.quick_deaths >= MAX_QUICK_DEATHS {
                                    fatal = Some((exit::FAILURE, e.to_string()));
                                    State::Exited(exit::FAILURE)
                                } else {
                                    State::Restarting {
                                        at: Instant::now() + pause,
                                    }
                                }
                            }
                        };
                    }
                }
            }
        }

        // Reap children.
        for slot in &mut slots {
            let State::Running { child, started, .. } = &mut slot.state else {
                continue;
            };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            let lived = started.elapsed();
            let code = status.code();
            let stopping = stop_requests > 0 || fatal.is_some();
            match code {
                Some(c) if stopping || (c == 0 && cfg.drain) => {
                    slot.state = State::Exited(c as u8);
                }
                Some(c @ 2..=4) => {
                    let msg = slot
                        .last_error()
                        .unwrap_or_else(|| format!("exit code {c}"));
                    let was_ready = slot.ready.load(Ordering::SeqCst);
                    slot.ever_ready |= was_ready;
                    // Only "unreachable" can be an outage that others ride out; a refusal
                    // (bad password, read-only server, missing table) fails the same way
                    // next time.
                    if c != i32::from(exit::UNREACHABLE) {
                        let what = if was_ready { "failed" } else { "cannot run" };
                        info!("worker {} {what}; stopping all workers", slot.index);
                        fatal = Some((c as u8, format!("worker {} {what}: {msg}", slot.index)));
                        slot.state = State::Exited(c as u8);
                    } else {
                        // Decided below, with what the other slots know.
                        slot.state = State::Parked {
                            code: c as u8,
                            msg,
                            was_ready,
                        };
                    }
                }
                _ if stopping => slot.state = State::Exited(exit::FAILURE),
                _ => {
                    // Killed from outside once ready (SIGKILL/SIGTERM: an operator, the OOM
                    // killer) is not the worker's failure; a crash signal (SIGSEGV, SIGABRT)
                    // or an exit it chose is. Its stderr is read to the end first, so that a
                    // readiness report just before the death is seen.
                    let why = slot
                        .last_error()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    let ready = slot.ready.load(Ordering::SeqCst);
                    let killed = matches!(
                        status.signal(),
                        Some(signal_hook::consts::SIGKILL | signal_hook::consts::SIGTERM)
                    );
                    let failing = !ready || !killed;
                    slot.quick_deaths = match (failing, lived < QUICK_DEATH) {
                        (false, _) => 0,
                        (true, true) => slot.quick_deaths + 1,
                        (true, false) => 1,
                    };
                    if slot.quick_deaths >= MAX_QUICK_DEATHS {
                        let msg = format!(
                            "worker {} failed {} times in a row within {}s of starting ({status}); giving up",
                            slot.index,
                            slot.quick_deaths,
                            QUICK_DEATH.as_secs()
                        );
                        fatal = Some((exit::FAILURE, format!("{msg}{why}")));
                        slot.state = State::Exited(exit::FAILURE);
                    } else {
                        let pause = reconnect_delay(
                            slot.quick_deaths.max(1),
                            Duration::from_secs(30),
                            &mut rng,
                        );
                        warn!(
                            "worker {} exited unexpectedly ({status}) after {:.1}s{why}; restarting in {:.1}s",
                            slot.index,
                            lived.as_secs_f64(),
                            pause.as_secs_f64()
                        );
                        slot.state = State::Restarting {
                            at: Instant::now() + pause,
                        };
                    }
                }
            }
        }

        if stop_requests == 0 && fatal.is_none() {
            fatal = resolve_parked(&mut slots, cfg.drain, &mut rng);
        }

        // A fatal child error or the time limit: stop the others like a signal would.
        if (fatal.is_some() || time_limit_hit) && stop_requests == 0 {
            stop_requests = 1;
            tell_all(&mut slots, "stop");
        }
        if stop_requests > 0 && kill_at.is_none() {
            // Children bound their own shutdown; this only catches one that hangs.
            kill_at = Some(Instant::now() + cfg.shutdown_timeout + Duration::from_secs(10));
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for slot in &mut slots {
                if let State::Running { child, .. } = &mut slot.state {
                    warn!("worker {} did not stop in time; killing it", slot.index);
                    let _ = child.kill();
                }
            }
            kill_at = Some(Instant::now() + Duration::from_secs(3600));
        }

        let running = slots
            .iter()
            .filter(|s| matches!(s.state, State::Running { .. }))
            .count();
        let waiting_restart = slots
            .iter()
            .any(|s| matches!(s.state, State::Restarting { .. }));
        if running == 0 && (stop_requests > 0 || !waiting_restart) {
            if let Some((code, msg)) = fatal {
                return Err(match code {
                    exit::USAGE => Error::Usage(msg),
                    exit::UNREACHABLE => Error::Unreachable(msg),
                    exit::DATABASE => Error::Database(msg),
                    _ => Error::Other(msg),
                });
            }
            let failed = slots
                .iter()
                .any(|s| matches!(s.state, State::Exited(c) if c != 0));
            if time_limit_hit && cfg.drain {
                info!("--max-runtime reached before the drain finished");
                return Ok(exit::TIME_LIMIT);
            }
            if failed {
                return Ok(exit::FAILURE);
            }
            info!("all workers finished; exiting");
            return Ok(exit::OK);
        }

        // Wait for a signal, the time limit, or the next reap.
        // Sleep until a signal (SIGCHLD included), a restart, the time limit or the kill
        // deadline; at most a second, as a safety net.
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for slot in &slots {
            if let State::Restarting { at } = slot.state {
                wake = wake.min(at);
            }
        }
        let time_limit = deadline.filter(|_| !time_limit_hit);
        for t in [time_limit, kill_at].into_iter().flatten() {
            wake = wake.min(t);
        }
        let wait = wake.saturating_duration_since(now);
        match sig_rx.recv_timeout(wait) {
            Ok(signal_hook::consts::SIGCHLD) => {}
            Ok(signal_hook::consts::SIGHUP) => {
                warn!("SIGHUP ignored: there is no configuration reload; restart to apply changes");
            }
            Ok(_) => {
                stop_requests += 1;
                if stop_requests == 1 {
                    info!(
                        "signal received: stopping workers (a second signal stops without waiting for running handlers)"
                    );
                    tell_all(&mut slots, "stop");
                } else {
                    info!("second signal: telling workers to stop now");
                    tell_all(&mut slots, "stop-now");
                    kill_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Some(d) = deadline {
            if !time_limit_hit && Instant::now() >= d {
                info!("--max-runtime reached: stopping workers");
                time_limit_hit = true;
            }
        }
    }
}

/// Decides what happens to slots whose child exited 3 (see the module doc); returns the
/// fatal error when one of them stops everything.
fn resolve_parked(
    slots: &mut [Slot],
    drain: bool,
    rng: &mut fastrand::Rng,
) -> Option<(u8, String)> {
    for slot in slots.iter_mut() {
        if matches!(slot.state, State::Running { .. }) && slot.ready.load(Ordering::SeqCst) {
            slot.ever_ready = true;
            slot.outage_restarts = 0;
        }
    }
    let describe = |slot: &Slot| -> Option<(u8, String, bool)> {
        match &slot.state {
            State::Parked {
                code,
                msg,
                was_ready,
            } => Some((*code, msg.clone(), *was_ready)),
            _ => None,
        }
    };
    for i in 0..slots.len() {
        let Some((code, msg, was_ready)) = describe(&slots[i]) else {
            continue;
        };
        let index = slots[i].index;
        let what = if was_ready { "failed" } else { "cannot run" };
        let others_ready = slots
            .iter()
            .enumerate()
            .any(|(j, s)| j != i && s.ever_ready);
        if drain {
            if was_ready {
                // The drain lost its database: that is the drain's failure.
                info!("worker {index} {what}; stopping all workers");
                slots[i].state = State::Exited(code);
                return Some((code, format!("worker {index} {what}: {msg}")));
            }
            if others_ready {
                warn!(
                    "worker {index} {what}: {msg}; giving up on it: the other worker(s) drain without it"
                );
                slots[i].state = State::Exited(exit::OK);
            }
        } else if others_ready || slots[i].ever_ready {
            let slot = &mut slots[i];
            slot.outage_restarts += 1;
            let pause = reconnect_delay(slot.outage_restarts, Duration::from_secs(30), rng);
            warn!(
                "worker {index} {what}: {msg}; restarting it in {:.1}s (a worker has been ready, \
                 so this is treated as an outage, not a configuration error)",
                pause.as_secs_f64()
            );
            slot.state = State::Restarting {
                at: Instant::now() + pause,
            };
        }
    }
    // Still parked: no worker has been ready. Wait while another slot may yet become ready.
    let starting = slots
        .iter()
        .any(|s| matches!(s.state, State::Running { .. } | State::Restarting { .. }));
    if starting {
        return None;
    }
    let first = slots.iter().find_map(|s| describe(s).map(|d| (s.index, d)));
    let (index, (code, msg, was_ready)) = first?;
    let what = if was_ready { "failed" } else { "cannot run" };
    info!("worker {index} {what}; stopping all workers");
    for slot in slots.iter_mut() {
        if let Some((c, _, _)) = describe(slot) {
            slot.state = State::Exited(c);
        }
    }
    Some((code, format!("worker {index} {what}: {msg}")))
}

/// The stdout lock: a file created for this run only (O_EXCL, mode 0600) and unlinked at
/// once, so that nothing is left behind however the supervisor ends. Workers open it through
/// `/proc/<supervisor pid>/fd/<fd>`, which gives each its own open file description (an
/// inherited descriptor would be shared, and `flock` would not exclude between them).
struct LockFile {
    _file: std::fs::File,
    path: PathBuf,
}

impl LockFile {
    fn create() -> Result<LockFile> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        for _ in 0..16 {
            let path = std::env::temp_dir().join(format!(
                "dispatchbox-{}-{:016x}.stdout.lock",
                std::process::id(),
                fastrand::u64(..)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    let _ = std::fs::remove_file(&path);
                    let path = PathBuf::from(format!(
                        "/proc/{}/fd/{}",
                        std::process::id(),
                        file.as_raw_fd()
                    ));
                    return Ok(LockFile { _file: file, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Other(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Err(Error::Other("cannot create a stdout lock file".into()))
    }
}

fn tell_all(slots: &mut [Slot], what: &str) {
    for slot in slots.iter_mut() {
        match &mut slot.state {
            State::Running { stdin, .. } => {
                if let Some(pipe) = stdin {
                    if pipe.write_all(format!("{what}\n").as_bytes()).is_err() {
                        *stdin = None;
                    }
                }
            }
            // A child waiting to be restarted is simply not restarted.
            State::Restarting { .. } | State::Parked { .. } => slot.state = State::Exited(exit::OK),
            State::Exited(_) => {}
        }
    }
}

/// Where a worker finds the copy of the supervisor's stderr (see `stderr_copy`).
const WORKER_LOG_FD: i32 = 3;

/// A copy of our stderr for the workers: their stderr is a pipe to us, so once we are gone
/// (even after SIGKILL) they log their shutdown here instead of into a dead pipe. Close on
/// exec, so only workers get it (placed at `WORKER_LOG_FD` when they start).
fn stderr_copy() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: duplicates fd 2 (at 10 or above, never WORKER_LOG_FD itself); the new
    // descriptor belongs to nobody else, so OwnedFd may own it.
    let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10) };
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn spawn(
    exe: &std::path::Path,
    slot: &mut Slot,
    config_line: &str,
    log_copy: Option<std::os::fd::RawFd>,
) -> Result<State> {
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "dispatchbox".into());
    let mut cmd = Command::new(exe);
    if let Some(fd) = log_copy {
        // SAFETY: runs in the child between fork and exec; dup2 is async-signal-safe and
        // touches only the child's descriptor table (the copy at WORKER_LOG_FD is not close
        // on exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, WORKER_LOG_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .arg0(arg0)
        // Its own process group: a Ctrl-C in a terminal reaches only the supervisor, which
        // tells every worker to stop (a worker still starting up could not handle it yet).
        .process_group(0)
        .arg("--worker-index")
        .arg(slot.index.to_string())
        .env_remove("DISPATCHBOX_DSN")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start worker {}: {e}", slot.index)))?;
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut() {
        // The pipe buffer holds the line; a child that died at once shows up when reaped.
        let _ = pipe.write_all(format!("{config_line}\n").as_bytes());
    }
    if let Some(stderr) = child.stderr.take() {
        let last_error = Arc::clone(&slot.last_error);
        *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let ready = Arc::clone(&slot.ready);
        ready.store(false, Ordering::SeqCst);
        slot.forwarder = Some(std::thread::spawn(move || {
            forward_stderr(stderr, &last_error, &ready)
        }));
    }
    info!("started worker {} (pid {})", slot.index, child.id());
    Ok(State::Running {
        child,
        stdin,
        started: Instant::now(),
    })
}

/// Copies a child's log lines to our stderr, remembering its last ERROR message so that the
/// supervisor can repeat it when the child could not start.
fn forward_stderr(
    stderr: std::process::ChildStderr,
    last_error: &Mutex<Option<String>>,
    ready: &AtomicBool,
) {
    let reader = BufReader::new(stderr);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { return };
        if line == READY_MARKER.as_bytes() {
            ready.store(true, Ordering::SeqCst);
            continue;
        }
        if let Some(msg) = line.strip_prefix(FATAL_MARKER.as_bytes()) {
            if let Ok(mut slot) = last_error.lock() {
                *slot = Some(String::from_utf8_lossy(msg).trim().to_string());
            }
            continue;
        }
        // Our children's log lines are escaped already; whatever else wrote there (a
        // compiled-in handler) gets the same treatment: one line in, one line out.
        let text = String::from_utf8_lossy(&line);
        let text = crate::log::escape_controls(&text);
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("{text}\n").as_bytes());
        // `<timestamp> ERROR    [worker N pid P] message`: the level is the second field.
        let Some((_, rest)) = text.split_once(' ') else {
            continue;
        };
        if let Some(rest) = rest.strip_prefix("ERROR ") {
            let msg = rest.trim();
            let msg = msg.split_once("] ").map(|(_, m)| m).unwrap_or(msg);
            if let Ok(mut slot) = last_error.lock() {
                *slot = Some(msg.to_string());
            }
        }
    }
}
