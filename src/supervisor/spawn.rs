//! Starting one worker child and listening to it: the re-executed binary, its pipes and
//! descriptors, the thread that forwards its log lines and the one that reads its reports.
//!
//! A child gets: stdin, a pipe carrying its configuration then control messages
//! (`protocol::Setup`, `protocol::Control`); stderr, a pipe whose lines are copied to ours
//! untouched except for escaping (never interpreted; with JSON logs, a line that is not one
//! is wrapped); `protocol::REPORT_FD`, the write end of its report pipe (its `counters`
//! reports go on to the metrics board); `protocol::LOG_FD`, a copy of our own stderr.
//! Invariant: no secret in argv or the environment (the DSN and the webhook secret travel on
//! stdin; DISPATCHBOX_DSN, PGPASSWORD and DISPATCHBOX_WEBHOOK_SECRET are
//! removed), and every descriptor we open is close on exec, so a child holds only its own
//! pipes (a report pipe's EOF then means that child is gone).

use crate::error::{Error, Result};
use crate::info;
use crate::metrics::board::Tap;
use crate::protocol::{Control, Report, LOG_FD, REPORT_FD};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child and what it has reported so far.
pub(super) struct Running {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub started: Instant,
    heard: Arc<Heard>,
    /// The stderr forwarder and the report reader.
    listeners: Vec<JoinHandle<()>>,
}

/// What a child reported, filled in by its report reader.
#[derive(Default)]
struct Heard {
    ready: AtomicBool,
    fatal: Mutex<Option<String>>,
}

impl Running {
    /// The child reported that its start-up succeeded.
    pub fn ready(&self) -> bool {
        self.heard.ready.load(Ordering::SeqCst)
    }

    /// Once the child has exited: its stderr and reports read to the end (so that its last
    /// log lines come before what we say about it, and a report just before its death is
    /// seen), then the message of its `fatal` report, if it sent one.
    pub fn finish(&mut self) -> Option<String> {
        // EOF comes with the exit; a descendant still holding a pipe must not block us.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.listeners.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in std::mem::take(&mut self.listeners) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.heard.fatal.lock().ok().and_then(|m| m.clone())
    }

    /// Best effort: a child that is gone shows up when reaped.
    pub fn tell(&mut self, what: Control) {
        if let Some(pipe) = &mut self.stdin {
            if pipe
                .write_all(format!("{}\n", what.encode()).as_bytes())
                .is_err()
            {
                self.stdin = None;
            }
        }
    }
}

/// The path to re-execute: the file `/proc/self/exe` points to while it still exists (so
/// workers show up as `dispatchbox` in ps/pgrep), `/proc/self/exe` itself when the binary
/// was replaced or deleted meanwhile (an upgrade: workers keep running the same version),
/// else `current_exe()`.
pub(super) fn own_exe() -> Result<PathBuf> {
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

/// The stdout lock: a file created for this run only (O_EXCL, mode 0600) and unlinked at
/// once, so that nothing is left behind however the supervisor ends. Workers open it through
/// `/proc/<supervisor pid>/fd/<fd>`, which gives each its own open file description (an
/// inherited descriptor would be shared, and `flock` would not exclude between them).
pub(super) struct LockFile {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl LockFile {
    pub fn create() -> Result<LockFile> {
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

/// A close-on-exec duplicate of `fd` at 10 or above: never one of the numbers a child's
/// descriptors are placed at, so placing one cannot overwrite another.
fn dup_high(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl duplicates a descriptor we hold open; the new one belongs to nobody
    // else, so OwnedFd may own it.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A copy of our stderr for the workers: their stderr is a pipe to us, so once we are gone
/// (even after SIGKILL) they log their shutdown here instead of into a dead pipe.
pub(super) fn stderr_copy() -> Option<OwnedFd> {
    dup_high(2).ok()
}

/// Starts worker `index` and writes its configuration line; its reports go to `tap` too.
pub(super) fn spawn(
    exe: &Path,
    index: u32,
    setup_line: &str,
    log_copy: Option<&OwnedFd>,
    tap: Tap,
) -> Result<Running> {
    let cannot = |e: std::io::Error| Error::Other(format!("cannot start worker {index}: {e}"));
    let (report_rx, low) = std::io::pipe().map_err(cannot)?;
    let report_tx = dup_high(low.as_raw_fd()).map_err(cannot)?;
    drop(low);
    let places = [
        (report_tx.as_raw_fd(), REPORT_FD),
        (log_copy.map_or(-1, |fd| fd.as_raw_fd()), LOG_FD),
    ];
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "dispatchbox".into());
    let mut cmd = Command::new(exe);
    // SAFETY: runs in the child between fork and exec; dup2 is async-signal-safe and touches
    // only the child's descriptor table. The sources are at 10 or above (`dup_high`), so no
    // placement overwrites a later source; the copies are not close on exec.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in places {
                if from >= 0 && libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .arg0(arg0)
        // Its own process group: a Ctrl-C in a terminal reaches only the supervisor, which
        // tells every worker to stop (a worker still starting up could not handle it yet).
        .process_group(0)
        .arg("--worker-index")
        .arg(index.to_string())
        .env_remove("DISPATCHBOX_DSN")
        .env_remove("PGPASSWORD")
        // Only the supervisor speaks to systemd (`systemd.rs`).
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove(crate::cli::defs::WEBHOOK_SECRET_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot)?;
    // Only the child writes reports: its EOF is the child's exit.
    drop(cmd);
    drop(report_tx);
    let mut stdin = child.stdin.take();
    if let Some(pipe) = stdin.as_mut() {
        // The pipe buffer holds the line; a child that died at once shows up when reaped.
        let _ = pipe.write_all(format!("{setup_line}\n").as_bytes());
    }
    let heard = Arc::new(Heard::default());
    let mut listeners = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        let (process, pid) = (format!("worker {index}"), child.id());
        listeners.push(std::thread::spawn(move || {
            forward_logs(stderr, &process, pid)
        }));
    }
    let h = Arc::clone(&heard);
    listeners.push(std::thread::spawn(move || {
        read_reports(report_rx, &h, &tap)
    }));
    info!("started worker {index} (pid {})", child.id());
    Ok(Running {
        child,
        stdin,
        started: Instant::now(),
        heard,
        listeners,
    })
}

/// Copies a child's log lines to our stderr. They are escaped (and prefixed with their
/// priority for the journal) already; whatever else wrote there (a compiled-in handler) gets
/// the same escaping: one line in, one line out. With `--log-format json` such a line is
/// wrapped into a JSON line of `process` (`log::foreign_line`).
fn forward_logs(stderr: std::process::ChildStderr, process: &str, pid: u32) {
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { return };
        let text = String::from_utf8_lossy(&line);
        let out = match crate::log::foreign_line(&text, process, pid) {
            Some(wrapped) => wrapped,
            None => format!("{}\n", crate::log::escape_controls(&text)),
        };
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

/// Until the pipe closes (the child is gone; `tap` is then dropped, which tells the board).
fn read_reports(pipe: std::io::PipeReader, heard: &Heard, tap: &Tap) {
    for line in BufReader::new(pipe).split(b'\n') {
        let Ok(line) = line else { return };
        match Report::decode(&String::from_utf8_lossy(&line)) {
            Ok(Report::Ready) => {
                heard.ready.store(true, Ordering::SeqCst);
                tap.ready();
            }
            Ok(Report::Counters(counts)) => tap.counts(&counts),
            Ok(Report::Fatal { message, .. }) => {
                if let Ok(mut m) = heard.fatal.lock() {
                    *m = Some(message.trim().to_string());
                }
            }
            // A report this build does not know, or not a report: nothing to act on.
            Ok(Report::Other(_)) | Err(_) => {}
        }
    }
}
