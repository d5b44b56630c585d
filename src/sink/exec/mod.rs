//! The `exec:COMMAND ARGS...` target: runs the program once per event, without a shell.
//!
//! The event's JSON line is written to the program's stdin; metadata is in environment
//! variables (DISPATCHBOX_EVENT_ID, _EVENT_TYPE, _AGGREGATE_TYPE, _AGGREGATE_ID, _ATTEMPT).
//! Exit 0 = delivered; exit 65 (EX_DATAERR) = permanent failure, the event goes to `dead`;
//! anything else (other codes, killed by a signal, timeout) is retried. The tail of its stderr
//! becomes the stored error. Its stdout is discarded.
//!
//! Invariants: the program is checked at start-up (found like `execvp` finds it, a regular
//! file we may execute), so a typo is a usage error rather than dead events. A start that
//! fails for a local reason (out of file descriptors, processes or memory) is not the event's
//! fault: it is deferred, without using an attempt. No helper threads: the handler thread
//! writes stdin, reads stderr and learns the exit with `poll` (on a pidfd where the kernel
//! has them), and stops reading stderr shortly after the program exited, so a background
//! process holding the pipe costs nothing. Each program runs in its own process group, killed
//! as a whole at the timeout and when the worker exits with commands still running
//! (`sink::process::kill_running`).
//!
//! This file is the handler and how a run maps to an [`Outcome`]; `child.rs` runs the program;
//! splitting the command line, finding the program and the process registry are shared with
//! `pipe:` in `sink/process/`.

mod child;

use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome};
use crate::sink::process::{self, check_program, is_local_shortage, split_words};
use child::Running;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exit code a program uses to say "never retry this event".
pub const PERMANENT_EXIT: i32 = 65;
/// The exit code a program uses to say "the destination is unavailable, not this event"
/// (`EX_TEMPFAIL`): counted against the route, which pauses after a few in a row.
pub const UNAVAILABLE_EXIT: i32 = 75;
/// After the program exited, how long its stderr is still read: a background process it
/// started may hold the pipe open indefinitely.
const STDERR_LINGER: Duration = Duration::from_millis(150);

pub struct Exec {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Exec {
    /// Parses the command line and checks the program (see [`check_program`]).
    pub fn new(command: &str, timeout: Duration) -> Result<Exec> {
        let mut words = split_words(command)?;
        if words.is_empty() {
            return Err(Error::Usage(
                "`exec:` needs a command, e.g. `exec:/usr/local/bin/notify --fast`".into(),
            ));
        }
        let program = words.remove(0);
        check_program(&program, std::env::var_os("PATH").as_deref())?;
        Ok(Exec {
            program,
            args: words,
            timeout,
        })
    }

    fn command(&self, event: &Event) -> Command {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut cmd = process::command(&self.program, &self.args);
        cmd.env("DISPATCHBOX_EVENT_ID", event.id.to_string())
            .env("DISPATCHBOX_EVENT_TYPE", opt(&event.event_type))
            .env("DISPATCHBOX_AGGREGATE_TYPE", opt(&event.aggregate_type))
            .env("DISPATCHBOX_AGGREGATE_ID", opt(&event.aggregate_id))
            .env("DISPATCHBOX_ATTEMPT", event.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, event: &Event) -> std::result::Result<(), Outcome> {
        let child = match self.command(event).spawn() {
            Ok(c) => c,
            Err(e) if is_local_shortage(&e) => {
                return Err(Outcome::Defer(format!(
                    "exec {}: cannot start it: {e}",
                    self.program
                )))
            }
            Err(e) => return Err(Outcome::Retry(format!("exec {}: {e}", self.program))),
        };
        let mut line = event.to_json_line().into_bytes();
        line.push(b'\n');
        let mut run = Running::new(child, line);
        let fail = |e: std::io::Error| Outcome::Retry(format!("exec {}: {e}", self.program));

        let exited = run
            .wait_for_exit(Instant::now() + self.timeout)
            .map_err(fail)?;
        if !exited {
            run.kill();
            run.reap().map_err(fail)?;
            return Err(Outcome::Retry(format!(
                "exec {}: timed out after {:?}, killed",
                self.program, self.timeout
            )));
        }
        let status = run.reap().map_err(fail)?;
        if status.success() {
            return Ok(());
        }
        let tail = run.stderr_tail(Instant::now() + STDERR_LINGER);
        let what = match status.code() {
            Some(code) => format!("exec {}: exit code {code}", self.program),
            None => format!("exec {}: {status}", self.program),
        };
        let msg = if tail.is_empty() {
            what
        } else {
            format!("{what}: {tail}")
        };
        match status.code() {
            Some(PERMANENT_EXIT) => Err(Outcome::Permanent(msg)),
            Some(UNAVAILABLE_EXIT) => Err(Outcome::Unavailable(msg, None)),
            _ => Err(Outcome::Retry(msg)),
        }
    }
}

impl Handler for Exec {
    fn handle(&self, event: &Event) -> Outcome {
        match self.run(event) {
            Ok(()) => Outcome::Delivered,
            Err(o) => o,
        }
    }
}
