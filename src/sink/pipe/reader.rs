//! The reader side of one `pipe:` process: a thread that reads its answers (in any order)
//! and its stderr, watches the answers' deadlines (`--pipe-timeout`) and the process's exit,
//! and, when the process ends for any reason, settles every event still outstanding.
//!
//! Settling: an event whose line the process never began to read (still in its stdin pipe,
//! or not written because the pipe was closed) cannot have been delivered, and is given back
//! without using an attempt (`Outcome::Defer`; `Outcome::Unavailable` when the process answered
//! nothing although the command worked before: the destination is down, and the route pauses); an event it read and did not answer may have
//! been delivered, and is retried (one attempt used). So a process that dies between answers
//! costs nothing, and a crash costs at most the events outstanding.
//!
//! Invariants: memory is bounded whatever the process does (an answer line is at most
//! [`MAX_LINE`] bytes, stderr is kept as a bounded tail); an answer naming an id that is not
//! outstanding is a protocol error (the process is killed and replaced, the earlier answer
//! stands); the group is killed and the process reaped before the books are settled, so
//! nothing it could still do is lost between the two.

use super::answer;
use super::book::was_read;
use super::live::{lock, unread, Live, Reading};
use super::stderr::Stderr;
use crate::handler::{Outcome, Reply};
use crate::sink::process::{has_exited, poll_millis, unregister};
use crate::{debug, log, warn};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An answer line longer than this is a protocol error.
const MAX_LINE: usize = 64 * 1024;
/// Without a pidfd the exit is polled this often.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// The longest single wait (deadlines of events written meanwhile are at least this far).
const MAX_WAIT: Duration = Duration::from_secs(1);
/// A process that closed its stdout gets this long to exit by itself.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(200);
/// After the process exited, how long its stderr is still read: a process it started may
/// hold the pipe open.
const STDERR_LINGER: Duration = Duration::from_millis(150);

struct Reader {
    live: Arc<Live>,
    r: Reading,
    out: Vec<u8>,
    stdout_eof: bool,
    err: Stderr,
    /// The event that went unanswered past `--pipe-timeout` (named in the kill line's fields).
    overdue: Option<i64>,
}

pub(super) fn run(live: Arc<Live>, r: Reading) {
    let who = format!("{} [{}]", live.name, live.pid);
    let mut reader = Reader {
        live,
        r,
        out: Vec::new(),
        stdout_eof: false,
        overdue: None,
        err: Stderr::new(who),
    };
    let cause = reader.watch();
    reader.settle(cause);
}

impl Reader {
    /// Reads answers until the process ends or must be killed; the reason to kill it, if any.
    fn watch(&mut self) -> Option<String> {
        let mut eof_since: Option<Instant> = None;
        loop {
            if let Err(why) = self.take_answers() {
                return Some(why);
            }
            let now = Instant::now();
            let (overdue, next_due) = {
                let mut book = lock(&self.live.book);
                (book.overdue(now), book.next_due())
            };
            if let Some(id) = overdue {
                self.overdue = Some(id);
                return Some(format!(
                    "no answer for event {id} within {}s (--pipe-timeout)",
                    self.live.timeout.as_secs_f64()
                ));
            }
            if self.r.pidfd.is_none() && has_exited(self.live.pid).unwrap_or(true) {
                return self.exited();
            }
            if self.stdout_eof && !lock(&self.live.fate).closing {
                let since = *eof_since.get_or_insert(now);
                if now >= since + EXIT_AFTER_EOF {
                    return Some("closed its stdout while still running".into());
                }
            }
            let mut wait = next_due.map_or(MAX_WAIT, |t| t.saturating_duration_since(now));
            wait = wait.min(MAX_WAIT);
            if self.r.pidfd.is_none() || self.stdout_eof {
                wait = wait.min(EXIT_POLL);
            }
            match self.poll(wait) {
                Ok(true) => return self.exited(),
                Ok(false) => {}
                Err(e) => return Some(format!("cannot read from it: {e}")),
            }
        }
    }

    /// The process exited by itself: what it wrote before exiting still counts.
    fn exited(&mut self) -> Option<String> {
        while !self.stdout_eof && self.read_stdout() {}
        self.take_answers().err()
    }

    /// Hands every complete answer in the buffer to its event's reply.
    fn take_answers(&mut self) -> Result<(), String> {
        let mut replies: Vec<(Reply, Outcome)> = Vec::new();
        let mut failed = None;
        // The complete lines are taken in place and removed together at the end: removing
        // each from the front would move the rest of the buffer once per answer.
        let mut taken = 0;
        {
            let mut book = None;
            while let Some(len) = self.out[taken..].iter().position(|&b| b == b'\n') {
                let line = &self.out[taken..taken + len];
                taken += len + 1;
                let (id, outcome) = match answer::parse(line) {
                    Ok(a) => a,
                    Err(answer::ProtocolError(why)) => {
                        failed = Some(format!("protocol error: {why}"));
                        break;
                    }
                };
                let book = book.get_or_insert_with(|| lock(&self.live.book));
                match book.answer(id) {
                    Some(reply) => replies.push((reply, outcome)),
                    None => {
                        failed = Some(format!(
                            "protocol error: an answer for event {id}, which is not \
                             outstanding (never sent to this process, or answered already): \
                             `{}`",
                            answer::quote(line)
                        ));
                        break;
                    }
                }
            }
            self.out.drain(..taken);
            if failed.is_none() && self.out.len() > MAX_LINE {
                failed = Some(format!(
                    "protocol error: an answer line longer than {MAX_LINE} bytes: `{}`",
                    answer::quote(&self.out)
                ));
            }
        }
        if !replies.is_empty() {
            self.live
                .answered
                .fetch_add(replies.len() as u64, Ordering::SeqCst);
            self.live.space.notify_all();
            for (reply, outcome) in replies {
                reply.send(outcome);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Waits up to `wait` for stdout, stderr and the exit; true when the pidfd says it exited.
    fn poll(&mut self, wait: Duration) -> std::io::Result<bool> {
        let stdout = Some(self.r.stdout.as_raw_fd()).filter(|_| !self.stdout_eof);
        let stderr = self.r.stderr.as_ref().map(|s| s.as_raw_fd());
        let pidfd = self.r.pidfd.as_ref().map(|p| p.as_raw_fd());
        let mut fds: Vec<libc::pollfd> = [stdout, stderr, pidfd]
            .into_iter()
            .flatten()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = poll_millis(wait);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        let mut exited = false;
        for p in fds.iter().filter(|p| p.revents != 0) {
            if Some(p.fd) == stdout {
                self.read_stdout();
            } else if Some(p.fd) == stderr {
                self.read_stderr();
            } else if Some(p.fd) == pidfd {
                exited = true;
            }
        }
        Ok(exited)
    }

    /// Reads what stdout has now (a bounded amount); true when more may be waiting.
    fn read_stdout(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        for _ in 0..16 {
            if self.out.len() > MAX_LINE + buf.len() {
                return false;
            }
            match self.r.stdout.read(&mut buf) {
                Ok(0) => {
                    self.stdout_eof = true;
                    return false;
                }
                Ok(n) => self.out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.stdout_eof = true;
                    return false;
                }
            }
        }
        true
    }

    /// Reads what stderr has now (a bounded amount); drops the pipe at its end.
    fn read_stderr(&mut self) {
        let Some(pipe) = self.r.stderr.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match pipe.read(&mut buf) {
                Ok(n) if n > 0 => self.err.feed(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                _ => {
                    self.r.stderr = None;
                    return;
                }
            }
        }
    }

    /// The process ended (`cause`: why Dispatchbox kills it, if it must): kill what is left
    /// of its group, reap it, then answer every event still outstanding.
    fn settle(mut self, cause: Option<String>) {
        let live = Arc::clone(&self.live);
        match cause.clone() {
            Some(why) => live.kill(why),
            // Exited by itself: whatever it started must not outlive it.
            None => live.signal(libc::SIGKILL, String::new()),
        }
        let (killed, closing) = {
            let mut fate = lock(&live.fate);
            fate.reaped = true;
            (fate.killed.take().filter(|k| !k.is_empty()), fate.closing)
        };
        unregister(live.pid);
        let status = match self.r.child.wait() {
            Ok(s) => describe(s),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        self.drain_stderr(Instant::now() + STDERR_LINGER);
        let killed_for = killed.clone();
        let what = match killed {
            Some(why) => format!("{why}; killed"),
            None => format!("exited ({status})"),
        };
        let tail = self.err.tail();
        let outstanding = lock(&live.book).close();
        live.space.notify_all();
        let (written, left) = {
            let mut stdin = lock(&live.stdin);
            let left = stdin.pipe.as_ref().map_or(0, |p| unread(p.as_raw_fd()));
            stdin.pipe = None;
            (stdin.written, left)
        };
        let (mut retried, mut unread_n) = (0, 0);
        // A process of a command that worked before, ending without answering anything: its
        // destination is unavailable (it could not connect, say). What it never read counts
        // toward pausing the route, instead of a local pause of every claim.
        let unavailable = live.route_worked && live.answered() == 0;
        for u in outstanding {
            let outcome = if was_read(u.start, written, left) {
                retried += 1;
                Outcome::Retry(with_tail(
                    format!(
                        "{} process {}: {what}, before answering this event",
                        live.name, live.pid
                    ),
                    &tail,
                ))
            } else {
                unread_n += 1;
                let why = format!(
                    "{} process {}: {what}, before reading this event",
                    live.name, live.pid
                );
                if unavailable {
                    Outcome::Unavailable(why, None)
                } else {
                    Outcome::Defer(why)
                }
            };
            u.reply.send(outcome);
        }
        let line = format!("{} process {}: {what}", live.name, live.pid);
        if closing && retried + unread_n == 0 {
            debug!("{}", with_tail(line, &tail));
        } else {
            let events = if retried + unread_n == 0 {
                String::new()
            } else {
                format!(
                    ", with {} event(s) unanswered: {retried} it had read are retried, \
                     {unread_n} it never read are given back without using an attempt",
                    retried + unread_n
                )
            };
            let text = with_tail(format!("{line}{events}"), &tail);
            // Killed for that event's timeout (the first reason given wins).
            match self
                .overdue
                .filter(|_| cause.is_some() && killed_for == cause)
            {
                Some(id) => warn!(
                    event: log::EventFields::id(id).outcome(log::EventOutcome::TimedOut),
                    "{text}"
                ),
                None => warn!("{text}"),
            }
        }
        *lock(&live.ended) = Some(with_tail(what, &tail));
        live.ended_cv.notify_all();
    }

    /// Reads stderr until its end or `until` (a process it started may hold it open).
    fn drain_stderr(&mut self, until: Instant) {
        self.r.pidfd = None;
        self.stdout_eof = true;
        while self.r.stderr.is_some() {
            let now = Instant::now();
            if now >= until || self.poll(until - now).is_err() {
                break;
            }
        }
        self.r.stderr = None;
        self.err.finish();
    }
}

fn with_tail(what: String, tail: &str) -> String {
    if tail.is_empty() {
        what
    } else {
        format!("{what}; stderr: {tail}")
    }
}

/// `exit code 3`, `killed by signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}
