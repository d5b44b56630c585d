//! The `pipe:COMMAND ARGS...` target: a long-running process, started without a shell, that
//! receives one event JSON line at a time on stdin and acknowledges each on stdout (`ok ID`,
//! `retry ID [after=SECS] [REASON]`, `dead ID [REASON]`; see `answer.rs`).
//!
//! One process per handler thread, strictly one event outstanding on each: a thread takes an
//! idle process from the pool (or starts one), writes the line, waits for the answer, and puts
//! the process back. Processes are started on the first event, never at start-up (the
//! supervisor builds the routes too, and must not run the user's publisher).
//!
//! Failures: a process that exits, hangs past `--pipe-timeout` or breaks the protocol is
//! killed (SIGKILL to its group), its event retried with the reason and its stderr tail (also
//! logged as a WARNING), and the next start waits a growing pause (`reconnect_delay`). A
//! process that exits before answering anything may have failed at start-up rather than on
//! the event: it is replaced at once by one that must survive a probation period before it
//! gets the same event. When [`STARTUP_TRIES`] in a row exit during probation, the command is
//! broken: the handler returns `Outcome::Abort` (the event keeps its attempt, the worker exits
//! 1, and the supervisor's crash-loop limit ends the run with the message).
//!
//! Invariants: a process is in the idle pool only after a complete, valid answer; an idle
//! process found dead or chattering is replaced without charging the event; when the handler
//! is dropped (the worker stopped gracefully) idle processes get EOF on stdin, then
//! [`CLOSE_GRACE`], then SIGTERM, then SIGKILL.

mod answer;
mod process;

use crate::backoff::reconnect_delay;
use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome};
use crate::sink::exec::{check_program, is_local_shortage, split_words};
use crate::{debug, warn};
use process::{Failure, Process};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Processes started after one that exited before answering anything, each given
/// [`PROBATION`] to show it stays up, before the command counts as broken.
const STARTUP_TRIES: u32 = 4;
/// How long a replacement must stay up, without input, before it gets the event.
const PROBATION: Duration = Duration::from_millis(500);
/// The longest pause before a restart.
const RESTART_CAP: Duration = Duration::from_secs(5);
/// At a graceful stop: how long a process has to exit after EOF on stdin, then after SIGTERM.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const TERM_GRACE: Duration = Duration::from_secs(1);

pub struct Pipe {
    program: String,
    args: Vec<String>,
    timeout: Duration,
    idle: Mutex<Vec<Process>>,
    pacing: Mutex<Pacing>,
    /// Set once the command proved broken (it exits at start-up): every later event gets
    /// the same `Abort` at once, while the worker stops.
    broken: Mutex<Option<String>>,
}

/// Restart pacing shared by the route's processes: failures in a row and when the next
/// start may happen.
struct Pacing {
    failures: u32,
    not_before: Option<Instant>,
    rng: fastrand::Rng,
}

/// What to do after an exchange failed (pure; see the module header).
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Retry the event (it used an attempt).
    Retry,
    /// The process died before answering anything: replace it on probation and send the
    /// same event again.
    Probation,
}

fn next_step(failure: &Failure, answered_before: u64, probed: bool) -> Next {
    match failure {
        Failure::Died if answered_before == 0 && !probed => Next::Probation,
        _ => Next::Retry,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipe {
    /// Parses the command line and checks the program (like `exec:`); starts nothing.
    pub fn new(command: &str, timeout: Duration) -> Result<Pipe> {
        let mut words = split_words(command)?;
        if words.is_empty() {
            return Err(Error::Usage(
                "`pipe:` needs a command, e.g. `pipe:/usr/local/bin/publisher --flag`".into(),
            ));
        }
        let program = words.remove(0);
        check_program(&program, std::env::var_os("PATH").as_deref())?;
        Ok(Pipe {
            program,
            args: words,
            timeout,
            idle: Mutex::new(Vec::new()),
            pacing: Mutex::new(Pacing {
                failures: 0,
                not_before: None,
                rng: fastrand::Rng::new(),
            }),
            broken: Mutex::new(None),
        })
    }

    fn deliver(&self, event: &Event) -> Outcome {
        if let Some(why) = lock(&self.broken).clone() {
            return Outcome::Abort(why);
        }
        let mut line = one_line(event.to_json_line()).into_bytes();
        line.push(b'\n');
        let mut proc = match self.checkout() {
            Ok(p) => p,
            Err(o) => return o,
        };
        let mut probed = false;
        loop {
            let answered_before = proc.answered;
            let deadline = Instant::now() + self.timeout;
            let failure = match proc.exchange(&line, deadline) {
                Ok(l) => match answer::parse(&l, event.id) {
                    Ok(outcome) => {
                        proc.answered += 1;
                        self.succeeded();
                        lock(&self.idle).push(proc);
                        return outcome;
                    }
                    Err(answer::ProtocolError(why)) => Failure::Protocol(why),
                },
                Err(f) => f,
            };
            let next = next_step(&failure, answered_before, probed);
            let msg = self.replace(proc, &failure, Some(event.id));
            if next == Next::Retry {
                return Outcome::Retry(msg);
            }
            match self.start_on_probation() {
                Ok(p) => (proc, probed) = (p, true),
                Err(o) => return o,
            }
        }
    }

    /// An idle process that is still healthy, or a new one.
    fn checkout(&self) -> std::result::Result<Process, Outcome> {
        loop {
            let Some(mut p) = lock(&self.idle).pop() else {
                return self.start();
            };
            match p.check_idle() {
                None => return Ok(p),
                Some(f) => {
                    self.replace(p, &f, None);
                }
            }
        }
    }

    /// Starts a process after the route's restart pause, if one is due.
    fn start(&self) -> std::result::Result<Process, Outcome> {
        let not_before = lock(&self.pacing).not_before;
        if let Some(t) = not_before {
            std::thread::sleep(t.saturating_duration_since(Instant::now()));
        }
        self.spawn()
    }

    fn spawn(&self) -> std::result::Result<Process, Outcome> {
        match Process::start(&self.program, &self.args) {
            Ok(p) => {
                debug!("pipe {}: started process {}", self.program, p.pid());
                Ok(p)
            }
            Err(e) if is_local_shortage(&e) => Err(Outcome::Defer(format!(
                "pipe {}: cannot start it: {e}",
                self.program
            ))),
            Err(e) => {
                self.failed();
                Err(Outcome::Retry(format!(
                    "pipe {}: cannot start it: {e}",
                    self.program
                )))
            }
        }
    }

    /// Replacements for a process that exited before answering anything, until one stays up
    /// for [`PROBATION`]; after [`STARTUP_TRIES`] the command is broken (`Abort`). The pauses
    /// between them are this call's own (100 ms doubling, about 1.5 s in all), so that a
    /// broken command is recognised in seconds whatever else failed on the route.
    fn start_on_probation(&self) -> std::result::Result<Process, Outcome> {
        let mut last = String::new();
        let mut rng = fastrand::Rng::new();
        for n in 1..=STARTUP_TRIES {
            std::thread::sleep(reconnect_delay(n, RESTART_CAP, &mut rng));
            if let Some(why) = lock(&self.broken).clone() {
                return Err(Outcome::Abort(why));
            }
            let mut p = self.spawn()?;
            if !p.wait_exit(Instant::now() + PROBATION) {
                return Ok(p);
            }
            let pid = p.pid();
            let (status, tail) = p.stop();
            self.failed();
            last = with_tail(status, &tail);
            warn!(
                "pipe {}: process {pid} exited at start-up, before reading any event: {last}",
                self.program
            );
        }
        let why = format!(
            "pipe {}: the command exits at start-up ({} processes in a row exited before \
             answering any event; last: {last}); check the command, its arguments and its \
             environment",
            self.program,
            STARTUP_TRIES + 1
        );
        *lock(&self.broken) = Some(why.clone());
        Err(Outcome::Abort(why))
    }

    /// Stops a failed process, logs why (WARNING) and paces the next start. Returns the
    /// message for the event (`event`: the one outstanding, if any).
    fn replace(&self, proc: Process, failure: &Failure, event: Option<i64>) -> String {
        let pid = proc.pid();
        let (status, tail) = proc.stop();
        self.failed();
        let on = event.map(|id| format!(" event {id}")).unwrap_or_default();
        let what = match failure {
            Failure::Died if event.is_none() => format!("exited ({status}) between events"),
            Failure::Died => format!("exited ({status}) without answering{on}"),
            Failure::TimedOut => format!(
                "no answer for{on} within {}s (--pipe-timeout); killed",
                self.timeout.as_secs_f64()
            ),
            Failure::Protocol(why) => format!("protocol error: {why}; killed"),
            Failure::Io(e) => format!("cannot talk to it: {e}; killed"),
        };
        let msg = with_tail(format!("pipe {}: {what}", self.program), &tail);
        warn!("{msg} (process {pid}; restarting it)");
        msg
    }

    fn failed(&self) {
        let mut p = lock(&self.pacing);
        p.failures = p.failures.saturating_add(1);
        let pause = reconnect_delay(p.failures, RESTART_CAP, &mut p.rng);
        p.not_before = Some(Instant::now() + pause);
    }

    fn succeeded(&self) {
        let mut p = lock(&self.pacing);
        if p.failures > 0 {
            p.failures = 0;
            p.not_before = None;
        }
    }
}

/// The event as exactly one line. A `json` (not `jsonb`) payload column keeps the text as
/// written, which may be pretty-printed; in valid JSON a raw line break can only be white
/// space between tokens (inside strings it is escaped), so a space replaces it.
fn one_line(json: String) -> String {
    if json.contains(['\n', '\r']) {
        json.replace(['\n', '\r'], " ")
    } else {
        json
    }
}

fn with_tail(what: String, tail: &str) -> String {
    if tail.is_empty() {
        what
    } else {
        format!("{what}; stderr: {tail}")
    }
}

impl Handler for Pipe {
    fn handle(&self, event: &Event) -> Outcome {
        self.deliver(event)
    }
}

impl Drop for Pipe {
    /// The worker stopped gracefully: EOF to every process at once, then each gets the rest
    /// of [`CLOSE_GRACE`] to exit, then SIGTERM, then SIGKILL.
    fn drop(&mut self) {
        let mut procs = std::mem::take(&mut *lock(&self.idle));
        if procs.is_empty() {
            return;
        }
        for p in procs.iter_mut() {
            p.close_stdin();
        }
        let grace = Instant::now() + CLOSE_GRACE;
        let mut left = Vec::new();
        for mut p in procs {
            if p.wait_exit(grace) {
                self.stopped(p);
            } else {
                p.terminate();
                left.push(p);
            }
        }
        let term = Instant::now() + TERM_GRACE;
        for mut p in left {
            p.wait_exit(term);
            self.stopped(p);
        }
    }
}

impl Pipe {
    /// Reaps a process at a graceful stop (SIGKILL to whatever is left of its group).
    fn stopped(&self, p: Process) {
        let pid = p.pid();
        let (status, tail) = p.stop();
        debug!(
            "pipe {}: process {pid} stopped ({})",
            self.program,
            with_tail(status, &tail)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_sent_as_one_line() {
        assert_eq!(one_line("{\"a\":\n  1\r\n}".into()), "{\"a\":   1  }");
        assert_eq!(one_line("{\"a\":\"x\\ny\"}".into()), "{\"a\":\"x\\ny\"}");
    }

    #[test]
    fn only_a_first_unanswered_death_gets_a_probation_restart() {
        let died = Failure::Died;
        assert_eq!(next_step(&died, 0, false), Next::Probation);
        // It had answered before: the event may be what killed it.
        assert_eq!(next_step(&died, 3, false), Next::Retry);
        // The replacement stayed up on its own and died on this event.
        assert_eq!(next_step(&died, 0, true), Next::Retry);
        assert_eq!(next_step(&Failure::TimedOut, 0, false), Next::Retry);
        let garbage = Failure::Protocol("x".into());
        assert_eq!(next_step(&garbage, 0, false), Next::Retry);
    }
}
