//! Carrying out the restart policy's decisions: the state a slot goes to, the pause before a
//! restart, the fatal error that stops everything, and the log lines that say so (their text
//! is what operators and tests read: keep it stable).

use super::policy::{Decision, Ending, Exit, Fatal, QUICK_DEATH};
use super::{State, Supervisor};
use crate::backoff::reconnect_delay;
use crate::error::exit;
use crate::protocol::Control;
use crate::{info, warn};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The longest pause before a restart.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

/// A child's end, with what the log lines about it need.
pub(super) struct ChildEnd {
    pub exit: Exit,
    /// `None`: the child could not be started (`message` says why).
    pub status: Option<ExitStatus>,
    /// The message of the child's `fatal` report (or why it could not be started).
    pub message: Option<String>,
}

impl ChildEnd {
    /// `failed` when it had been ready (it lost something it had), else `cannot run`.
    fn what(&self) -> &'static str {
        if self.exit.was_ready {
            "failed"
        } else {
            "cannot run"
        }
    }

    /// The child's error, or its exit code when it reported none.
    fn error(&self) -> String {
        match (&self.message, self.exit.ending) {
            (Some(m), _) => m.clone(),
            (None, Ending::Code(c)) => format!("exit code {c}"),
            (None, _) => "no error reported".into(),
        }
    }

    /// `: <error>` after a description of the exit, or nothing.
    fn why(&self) -> String {
        self.message
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    }

    fn status(&self) -> String {
        self.status
            .map_or_else(|| "not started".into(), |s| s.to_string())
    }
}

impl Supervisor<'_> {
    /// Tells every running worker to stop (or to stop now); a slot waiting to be restarted
    /// is simply not restarted.
    pub(super) fn tell_all(&mut self, what: Control) {
        self.board.stopping();
        for slot in &mut self.slots {
            match &mut slot.state {
                State::Running(running) => running.tell(what),
                State::Restarting { .. } | State::Parked(_) => slot.state = State::Exited(exit::OK),
                State::Exited(_) => {}
            }
        }
    }

    /// Carries out `decision` for slot `i`, whose child ended as `ended`.
    pub(super) fn apply(&mut self, i: usize, decision: Decision, ended: ChildEnd) {
        let index = self.slots[i].index;
        let state = match decision {
            Decision::Exited(code) => State::Exited(code),
            Decision::Wait => State::Parked(ended),
            Decision::Restart { quick_deaths } => {
                self.slots[i].quick_deaths = quick_deaths;
                let pause = self.restart_pause(quick_deaths);
                if ended.status.is_none() {
                    warn!("{}; retrying in {:.1}s", ended.error(), pause.as_secs_f64());
                } else {
                    warn!(
                        "worker {index} exited unexpectedly ({}) after {:.1}s{}; restarting in {:.1}s",
                        ended.status(),
                        ended.exit.lived.as_secs_f64(),
                        ended.why(),
                        pause.as_secs_f64()
                    );
                }
                State::Restarting {
                    at: Instant::now() + pause,
                }
            }
            Decision::RideOut { outage_restarts } => {
                self.slots[i].outage_restarts = outage_restarts;
                let pause = self.restart_pause(outage_restarts);
                warn!(
                    "worker {index} {}: {}; restarting it in {:.1}s (a worker has been ready, \
                     so this is treated as an outage, not a configuration error)",
                    ended.what(),
                    ended.error(),
                    pause.as_secs_f64()
                );
                State::Restarting {
                    at: Instant::now() + pause,
                }
            }
            Decision::GiveUp => {
                warn!(
                    "worker {index} {}: {}; giving up on it: the other worker(s) drain without it",
                    ended.what(),
                    ended.error()
                );
                State::Exited(exit::OK)
            }
            Decision::Fatal { code, why } => {
                let text = self.fatal_text(i, why, &ended);
                self.fatal = Some((code, text));
                State::Exited(code)
            }
        };
        self.slots[i].state = state;
    }

    /// The error everything stops with (logged once, by the caller of `run`).
    fn fatal_text(&mut self, i: usize, why: Fatal, ended: &ChildEnd) -> String {
        let index = self.slots[i].index;
        match why {
            Fatal::Refused => {
                info!("worker {index} {}; stopping all workers", ended.what());
                format!("worker {index} {}: {}", ended.what(), ended.error())
            }
            Fatal::CrashLoop(n) if ended.status.is_none() => {
                self.slots[i].quick_deaths = n;
                // Said like the earlier attempts; the give-up follows.
                let pause = self.restart_pause(n);
                warn!("{}; retrying in {:.1}s", ended.error(), pause.as_secs_f64());
                ended.error()
            }
            Fatal::CrashLoop(n) => {
                self.slots[i].quick_deaths = n;
                format!(
                    "worker {index} failed {n} times in a row within {}s of starting ({}); giving up{}",
                    QUICK_DEATH.as_secs(),
                    ended.status(),
                    ended.why()
                )
            }
        }
    }

    fn restart_pause(&mut self, attempt: u32) -> Duration {
        reconnect_delay(attempt, MAX_RESTART_PAUSE, &mut self.rng)
    }
}
