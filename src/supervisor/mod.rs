//! The supervisor: starts `--processes` worker children by re-executing its own binary with
//! `--worker-index N`, hands each its configuration on a pipe, restarts children that die,
//! forwards stop requests, and decides the exit code.
//!
//! ```text
//! dispatchbox (supervisor)
//!   ├─ dispatchbox --worker-index 0   stdin: config, then stop / stop-now (`protocol`);
//!   ├─ dispatchbox --worker-index 1   EOF on stdin = the supervisor is gone → graceful stop
//!   └─ ...                            fd 4: reports (ready, fatal); stderr: forwarded as is
//! ```
//! One round of the loop runs the phases in order: start the slots that are due
//! (`start_due`), reap the children that exited (`reap`), decide the exits 3 that waited for
//! the other slots (`settle`), stop or kill when it is time (`escalate`), return the exit
//! code once nothing runs (`outcome`), and sleep until a signal or a deadline (`wait`); each
//! round also tells systemd what changed, when it asked (`tell_systemd`: ready, stopping,
//! watchdog). What happens to a slot whose child ended is `policy::decide`, a pure function;
//! the phases gather its facts and carry out (and log) its decision. Beside the loop, with
//! `--retain-done`, `retain` removes old done events on a thread and a connection of its own,
//! at the pace `pace` sets from the workers' load.
//!
//! Invariants: no secret in any child's argv (see `spawn`); a child that fails for a reason
//! a restart cannot fix stops everything with that child's error (from its `fatal` report;
//! log lines are never parsed) and exit code instead of being restarted forever (see
//! `policy` for which reasons those are).

mod pace;
mod policy;
mod retain;
mod spawn;
mod sweep;
mod systemd;
mod verdict;

use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::metrics::board::Board;
use crate::protocol::{Control, Setup, REPORT_FD};
use crate::{info, warn};
use policy::{Decision, Ending, Exit};
use spawn::{LockFile, Running};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verdict::ChildEnd;

enum State {
    Running(Box<Running>),
    /// Died unexpectedly; restart at this instant.
    Restarting {
        at: Instant,
    },
    /// Exited 3 (database unreachable): decided by `settle` once it is known whether any
    /// worker has been ready.
    Parked(ChildEnd),
    /// Exited on its own terms with this code.
    Exited(u8),
}

struct Slot {
    index: u32,
    state: State,
    quick_deaths: u32,
    /// Some child of this slot has been ready.
    ever_ready: bool,
    /// Restarts after exit 3 since this slot was last ready (paces them).
    outage_restarts: u32,
}

struct Supervisor<'a> {
    cfg: &'a Config,
    exe: PathBuf,
    setup_line: String,
    /// Given to every child at `protocol::LOG_FD`.
    log_copy: Option<OwnedFd>,
    /// Kept open for the whole run: the workers open it by its `/proc` path.
    _stdout_lock: Option<LockFile>,
    rng: fastrand::Rng,
    slots: Vec<Slot>,
    deadline: Option<Instant>,
    stop_requests: u32,
    /// When children that were told to stop get SIGKILL if they are still there.
    kill_at: Option<Instant>,
    time_limit_hit: bool,
    /// Set when a child failed in a way restarting cannot fix: (code, message).
    fatal: Option<(u8, String)>,
    /// systemd's notification socket, when we run as a `Type=notify` service.
    systemd: Option<systemd::Systemd>,
    /// What the children report, for `--metrics-addr`.
    board: Arc<Board>,
}

pub fn run(cfg: &Config) -> Result<u8> {
    // Signals first, before any thread or child exists.
    let signals = listen_for_signals()?;
    let mut sup = Supervisor::new(cfg)?;
    if let Some(addr) = &cfg.supervision.metrics_addr {
        crate::metrics::start(cfg, addr, &sup.board)?;
    }
    retain::start(cfg, &sup.board)?;
    info!(
        "starting {} worker process(es) for table {} on {}",
        cfg.supervision.processes,
        cfg.table,
        cfg.dsn.redacted()
    );
    loop {
        sup.start_due();
        sup.reap()?;
        sup.settle();
        sup.escalate();
        let result = sup.outcome();
        sup.tell_systemd(result.is_some());
        if let Some(result) = result {
            return result;
        }
        sup.wait(&signals);
    }
}

/// SIGCHLD only wakes the loop to reap at once (no polling delay on exits). SIGHUP (a
/// closed terminal, or an operator expecting a reload) would otherwise kill us silently.
fn listen_for_signals() -> Result<Receiver<i32>> {
    let (tx, rx) = mpsc::channel::<i32>();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGCHLD,
        signal_hook::consts::SIGHUP,
    ])?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

impl Supervisor<'_> {
    fn new(cfg: &Config) -> Result<Supervisor<'_>> {
        let exe = spawn::own_exe()?;
        // Several workers writing stdout lines need a lock they all can open.
        let stdout_lock = if cfg.supervision.processes > 1 {
            Some(LockFile::create()?)
        } else {
            None
        };
        let mut child_cfg = cfg.clone();
        child_cfg.sinks.stdout_lock = stdout_lock.as_ref().map(|l| l.path.clone());
        let log_copy = spawn::stderr_copy();
        child_cfg.log.fd = log_copy.as_ref().map(|_| crate::protocol::LOG_FD);
        child_cfg.log.journal = crate::log::journal();
        let slots = (0..cfg.supervision.processes)
            .map(|index| Slot {
                index,
                state: State::Restarting { at: Instant::now() },
                quick_deaths: 0,
                ever_ready: false,
                outage_restarts: 0,
            })
            .collect();
        Ok(Supervisor {
            cfg,
            exe,
            setup_line: Setup::encode(&child_cfg, Some(REPORT_FD)),
            log_copy,
            _stdout_lock: stdout_lock,
            rng: fastrand::Rng::new(),
            slots,
            deadline: cfg.supervision.max_runtime.map(|d| Instant::now() + d),
            stop_requests: 0,
            kill_at: None,
            time_limit_hit: false,
            fatal: None,
            systemd: systemd::Systemd::from_env(),
            board: Board::new(cfg.supervision.processes as usize),
        })
    }

    fn stopping(&self) -> bool {
        self.stop_requests > 0 || self.fatal.is_some()
    }

    /// Phase 1: start or restart the children that are due.
    fn start_due(&mut self) {
        if self.stopping() {
            return;
        }
        for i in 0..self.slots.len() {
            let State::Restarting { at } = self.slots[i].state else {
                continue;
            };
            if at > Instant::now() {
                continue;
            }
            let slot = &self.slots[i];
            match spawn::spawn(
                &self.exe,
                slot.index,
                &self.setup_line,
                self.log_copy.as_ref(),
                self.board.tap(i),
            ) {
                Ok(running) => self.slots[i].state = State::Running(Box::new(running)),
                // e.g. EAGAIN: try again later, like a crash at start-up.
                Err(e) => {
                    let ended = ChildEnd {
                        exit: Exit {
                            ending: Ending::NotStarted,
                            lived: Duration::ZERO,
                            was_ready: false,
                        },
                        status: None,
                        message: Some(e.to_string()),
                    };
                    let decision = policy::decide(&ended.exit, &self.context(i));
                    self.apply(i, decision, ended);
                }
            }
        }
    }

    /// Phase 2: reap the children that exited and decide what follows, except for exit 3
    /// (parked for `settle`, which needs every exit of this round).
    fn reap(&mut self) -> Result<()> {
        for i in 0..self.slots.len() {
            let State::Running(running) = &mut self.slots[i].state else {
                continue;
            };
            let Some(status) = running.child.try_wait()? else {
                continue;
            };
            let lived = running.started.elapsed();
            let stopping = self.stop_requests > 0 || self.fatal.is_some();
            // What it said, read to the end first (not needed when everything stops).
            let message = if stopping { None } else { running.finish() };
            let ending = match (status.code(), status.signal()) {
                (Some(c), _) => Ending::Code(c as u8),
                (None, Some(signal_hook::consts::SIGKILL | signal_hook::consts::SIGTERM)) => {
                    Ending::Killed
                }
                _ => Ending::Crashed,
            };
            let exit = Exit {
                ending,
                lived,
                was_ready: running.ready(),
            };
            if !stopping {
                self.slots[i].ever_ready |= exit.was_ready;
            }
            let ended = ChildEnd {
                exit,
                status: Some(status),
                message,
            };
            let decision = if ending == Ending::Code(exit::UNREACHABLE) && !stopping {
                Decision::Wait
            } else {
                policy::decide(&ended.exit, &self.context(i))
            };
            self.apply(i, decision, ended);
        }
        Ok(())
    }

    /// Phase 3: decide the parked exits 3 with what the other slots know now, first slot
    /// first (its error is the one reported when nobody was ready).
    fn settle(&mut self) {
        if self.stopping() {
            return;
        }
        for slot in &mut self.slots {
            if matches!(&slot.state, State::Running(r) if r.ready()) {
                slot.ever_ready = true;
                slot.outage_restarts = 0;
            }
        }
        for i in 0..self.slots.len() {
            let State::Parked(ended) = &self.slots[i].state else {
                continue;
            };
            let decision = policy::decide(&ended.exit, &self.context(i));
            if decision == Decision::Wait {
                continue;
            }
            let State::Parked(ended) =
                std::mem::replace(&mut self.slots[i].state, State::Exited(0))
            else {
                continue;
            };
            self.apply(i, decision, ended);
            if self.fatal.is_some() {
                return;
            }
        }
    }

    /// What `policy::decide` needs to know about slot `i` and the others.
    fn context(&self, i: usize) -> policy::Context {
        let slot = &self.slots[i];
        let others = || {
            self.slots
                .iter()
                .enumerate()
                .filter(move |(j, _)| *j != i)
                .map(|(_, s)| s)
        };
        policy::Context {
            drain: self.cfg.drain,
            stopping: self.stopping(),
            quick_deaths: slot.quick_deaths,
            outage_restarts: slot.outage_restarts,
            slot_was_ready: slot.ever_ready,
            others_were_ready: others().any(|s| s.ever_ready),
            others_starting: others()
                .any(|s| matches!(s.state, State::Running(_) | State::Restarting { .. })),
        }
    }

    /// Phase 4: a fatal child error or the time limit stops the others like a signal
    /// would; children that do not stop in time are killed.
    fn escalate(&mut self) {
        if (self.fatal.is_some() || self.time_limit_hit) && self.stop_requests == 0 {
            self.stop_requests = 1;
            self.tell_all(Control::Stop);
        }
        if self.stop_requests > 0 && self.kill_at.is_none() {
            // Children bound their own shutdown; this only catches one that hangs.
            self.kill_at =
                Some(Instant::now() + self.cfg.shutdown_timeout + Duration::from_secs(10));
        }
        if self.kill_at.is_some_and(|t| Instant::now() >= t) {
            for slot in &mut self.slots {
                if let State::Running(running) = &mut slot.state {
                    warn!("worker {} did not stop in time; killing it", slot.index);
                    let _ = running.child.kill();
                }
            }
            self.kill_at = Some(Instant::now() + Duration::from_secs(3600));
        }
    }

    /// Phase 5: once no child runs and none is due to restart (or we are stopping), the
    /// exit code: the fatal error, the time limit of a drain, a failed child, or success.
    fn outcome(&mut self) -> Option<Result<u8>> {
        let running = self
            .slots
            .iter()
            .any(|s| matches!(s.state, State::Running(_)));
        let waiting_restart = self
            .slots
            .iter()
            .any(|s| matches!(s.state, State::Restarting { .. }));
        if running || (self.stop_requests == 0 && waiting_restart) {
            return None;
        }
        if let Some((code, msg)) = self.fatal.take() {
            return Some(Err(match code {
                exit::USAGE => Error::Usage(msg),
                exit::UNREACHABLE => Error::Unreachable(msg),
                exit::DATABASE => Error::Database(msg),
                _ => Error::Other(msg),
            }));
        }
        let codes = self.slots.iter().filter_map(|s| match s.state {
            State::Exited(c) => Some(c),
            _ => None,
        });
        let code = policy::run_code(codes, self.cfg.supervision.fail_on_dead);
        if self.time_limit_hit && self.cfg.drain {
            info!("--max-runtime reached before the drain finished");
            return Some(Ok(exit::TIME_LIMIT));
        }
        if code == exit::DEAD_EVENTS {
            warn!(
                "all workers finished; events went dead during this run (--fail-on-dead): exit 6"
            );
        } else if code == exit::OK {
            info!("all workers finished; exiting");
        }
        Some(Ok(code))
    }

    /// Each round: tell systemd (if it asked) how many workers are ready, that we stop, and
    /// that the loop still turns (the watchdog).
    fn tell_systemd(&mut self, ending: bool) {
        let stopping = ending || self.stopping();
        let Some(systemd) = &mut self.systemd else {
            return;
        };
        let ready = self
            .slots
            .iter()
            .filter(|s| matches!(&s.state, State::Running(r) if r.ready()))
            .count();
        systemd.tick(ready, self.slots.len(), stopping);
    }

    /// Phase 6: sleep until a signal (SIGCHLD included), a restart, the time limit or the
    /// kill deadline; at most a second, as a safety net. Then act on the signal.
    fn wait(&mut self, signals: &Receiver<i32>) {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for slot in &self.slots {
            if let State::Restarting { at } = slot.state {
                wake = wake.min(at);
            }
        }
        let time_limit = self.deadline.filter(|_| !self.time_limit_hit);
        let watchdog = self.systemd.as_ref().and_then(systemd::Systemd::next_wake);
        for t in [time_limit, self.kill_at, watchdog].into_iter().flatten() {
            wake = wake.min(t);
        }
        match signals.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(signal_hook::consts::SIGCHLD) => {}
            Ok(signal_hook::consts::SIGHUP) => {
                warn!("SIGHUP ignored: there is no configuration reload; restart to apply changes");
            }
            Ok(_) => {
                self.stop_requests += 1;
                if self.stop_requests == 1 {
                    info!(
                        "signal received: stopping workers (a second signal stops without waiting for running handlers)"
                    );
                    self.tell_all(Control::Stop);
                } else {
                    info!("second signal: telling workers to stop now");
                    self.tell_all(Control::StopNow);
                    self.kill_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        if let Some(d) = self.deadline {
            if !self.time_limit_hit && Instant::now() >= d {
                info!("--max-runtime reached: stopping workers");
                self.time_limit_hit = true;
            }
        }
    }
}
