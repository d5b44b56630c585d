//! One long-running `pipe:` process and its two sides. It is started without a shell in its
//! own process group, with stdin, stdout and stderr piped. The *writer side* ([`Live::send`],
//! called by the handler threads) writes event lines to its stdin while the window has room;
//! the *reader side* (one thread per process, `reader.rs`) reads answers from its stdout in
//! any order and hands each outcome to the event's reply.
//!
//! Invariants: every event admitted to the books is answered exactly once, by its answer or
//! when the process ends (`reader::settle`); a kill reaches the group only before the
//! process is reaped (so never a recycled pid); the process is in the registry of
//! `sink/process` from its start until just before it is reaped, so a worker that exits
//! without waiting kills it with the `exec:` commands (`kill_running`).

use super::book::{Book, Refused};
use crate::handler::{Outcome, Reply};
use crate::sink::process::{self, kill_group, pidfd_open, poll_millis, register, set_nonblocking};
use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An event on its way to a process: its line (newline-terminated) and where its answer goes.
pub(super) struct Outgoing {
    pub id: i64,
    pub line: Vec<u8>,
    pub reply: Reply,
}

/// The writers' end of the process's stdin.
pub(super) struct Stdin {
    /// None once closed (a graceful stop, or the process ended).
    pub pipe: Option<ChildStdin>,
    /// Bytes the pipe accepted so far.
    pub written: u64,
}

/// What the writers and the reader thread share.
pub(super) struct Live {
    pub pid: libc::pid_t,
    /// `pipe PROGRAM`, for messages.
    pub name: Arc<str>,
    pub timeout: Duration,
    /// A process of the route had answered before this one started: if this one ends
    /// without answering anything, the destination (not the command) is the likely cause.
    pub route_worked: bool,
    pub stdin: Mutex<Stdin>,
    pub book: Mutex<Book<Reply>>,
    /// Signalled when the window gains room or the books close.
    pub space: Condvar,
    /// Answers it gave (any verb).
    pub answered: AtomicU64,
    /// Why Dispatchbox killed it (the first reason wins), and whether it is reaped.
    pub fate: Mutex<Fate>,
    /// Set by the reader when it is done: the process reaped, every event settled.
    pub ended: Mutex<Option<String>>,
    pub ended_cv: Condvar,
}

#[derive(Default)]
pub(super) struct Fate {
    /// Set when Dispatchbox signalled it, with the reason (not a failure at a graceful stop).
    pub killed: Option<String>,
    pub reaped: bool,
    /// A graceful stop: its stdin was closed on purpose, and its stdout closing is expected.
    pub closing: bool,
}

/// What only the reader thread touches.
pub(super) struct Reading {
    pub child: Child,
    pub stdout: ChildStdout,
    pub stderr: Option<ChildStderr>,
    /// Readable once the process exited; None where pidfd_open is unavailable.
    pub pidfd: Option<OwnedFd>,
}

impl Live {
    /// Starts `program args` (see [`process::command`]: no secrets in its environment, its
    /// own process group) and the reader thread that answers for it.
    pub(super) fn start(
        name: Arc<str>,
        program: &str,
        args: &[String],
        window: usize,
        timeout: Duration,
        route_worked: bool,
    ) -> std::io::Result<Arc<Live>> {
        // A graceful stop closes its stdin instead of signalling it.
        let mut child = process::command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id() as libc::pid_t;
        register(pid);
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let live = Arc::new(Live {
            pid,
            name,
            timeout,
            route_worked,
            stdin: Mutex::new(Stdin {
                pipe: stdin,
                written: 0,
            }),
            book: Mutex::new(Book::new(window)),
            space: Condvar::new(),
            answered: AtomicU64::new(0),
            fate: Mutex::new(Fate::default()),
            ended: Mutex::new(None),
            ended_cv: Condvar::new(),
        });
        let reading = stdout.map(|stdout| Reading {
            child,
            stdout,
            stderr,
            pidfd: pidfd_open(pid),
        });
        let Some(reading) = reading else {
            live.kill("no stdout pipe".into());
            return Err(std::io::Error::other("no stdout pipe"));
        };
        let nonblocking = lock(&live.stdin)
            .pipe
            .as_ref()
            .is_some_and(|s| set_nonblocking(s.as_raw_fd()))
            && set_nonblocking(reading.stdout.as_raw_fd())
            && reading
                .stderr
                .as_ref()
                .is_some_and(|s| set_nonblocking(s.as_raw_fd()));
        let for_reader = Arc::clone(&live);
        let spawned = if nonblocking {
            std::thread::Builder::new()
                .name("pipe-reader".into())
                .spawn(move || super::reader::run(for_reader, reading))
                .map(|_| ())
        } else {
            Err(std::io::Error::other("cannot make its pipes non-blocking"))
        };
        if let Err(e) = spawned {
            // No reader: kill the group. The child, dropped with the closure, stays a zombie
            // (so its pid is not reused) until the worker exits. Rare: out of threads.
            live.kill(format!("cannot start its reader: {e}"));
            return Err(e);
        }
        Ok(live)
    }

    /// Writes events (their lines, newline-terminated), in order, as the window has room:
    /// those admitted together go out in one write. Returns, in order, the events this
    /// process no longer takes (it ended or is ending): the caller sends them to another
    /// one. The others are answered later, by their answers or when the process ends.
    pub(super) fn send(&self, mut batch: VecDeque<Outgoing>) -> VecDeque<Outgoing> {
        let mut stdin = lock(&self.stdin);
        let mut run = Vec::new();
        while !batch.is_empty() {
            if stdin.pipe.is_none() {
                return batch;
            }
            run.clear();
            let closed = self.admit(&mut batch, stdin.written, &mut run);
            let deadline = Instant::now() + self.timeout;
            let Stdin { pipe, written } = &mut *stdin;
            if let (Some(p), false) = (pipe.as_mut(), run.is_empty()) {
                if let Err(Stalled) = write_all(p, &run, deadline, written) {
                    self.kill(format!(
                        "took no input for {}s (--pipe-timeout)",
                        self.timeout.as_secs_f64()
                    ));
                }
            }
            // A failed write (the process closed its stdin or ended) is the reader's to
            // settle: the events are in the books, and what the pipe did not take counts as
            // unread.
            if closed {
                break;
            }
        }
        batch
    }

    /// Admits events from the front of `batch` while the window has room (waiting until it
    /// has some), their lines appended to `run`, which will start at byte `written`. true
    /// when the books are closed (the rest stays in `batch`).
    fn admit(&self, batch: &mut VecDeque<Outgoing>, written: u64, run: &mut Vec<u8>) -> bool {
        let mut book = lock(&self.book);
        while book.is_full() && !book.is_closed() {
            book = match self.space.wait_timeout(book, Duration::from_secs(1)) {
                Ok((b, _)) => b,
                Err(e) => e.into_inner().0,
            };
        }
        let due = Instant::now() + self.timeout;
        let mut twice = Vec::new();
        let mut closed = false;
        while !book.is_full() {
            let Some(o) = batch.pop_front() else { break };
            let start = written + run.len() as u64;
            match book.admit(o.id, o.reply, start, due) {
                Ok(()) => run.extend_from_slice(&o.line),
                Err((reply, Refused::Closed)) => {
                    batch.push_front(Outgoing { reply, ..o });
                    closed = true;
                    break;
                }
                Err((reply, Refused::Duplicate)) => twice.push((o.id, reply)),
            }
        }
        drop(book);
        for (id, reply) in twice {
            reply.send(Outcome::Defer(format!(
                "{}: event {id} is outstanding on the process already",
                self.name
            )));
        }
        closed
    }

    /// Kills its process group (SIGKILL) unless it is reaped already, recording why (the
    /// first reason is kept: it is the cause).
    pub(super) fn kill(&self, why: String) {
        self.signal(libc::SIGKILL, why);
    }

    pub(super) fn signal(&self, sig: libc::c_int, why: String) {
        let mut fate = lock(&self.fate);
        if fate.reaped {
            return;
        }
        fate.killed.get_or_insert(why);
        // Its leader is not reaped (checked under the lock the reader takes before reaping).
        kill_group(self.pid, sig);
    }

    /// Whether it no longer takes events.
    pub(super) fn is_closed(&self) -> bool {
        lock(&self.book).is_closed()
    }

    /// Graceful stop, first step: EOF on its stdin (it should answer what it has, then exit).
    pub(super) fn close_stdin(&self) {
        lock(&self.fate).closing = true;
        lock(&self.stdin).pipe = None;
    }

    /// Waits until the reader is done (the process reaped, its events settled) or `until`;
    /// the reader's account of how it ended, if done.
    pub(super) fn wait_ended(&self, until: Instant) -> Option<String> {
        let mut ended = lock(&self.ended);
        loop {
            if let Some(how) = ended.as_ref() {
                return Some(how.clone());
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            ended = match self.ended_cv.wait_timeout(ended, until - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    pub(super) fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
}

/// The pipe took no input before the deadline.
struct Stalled;

/// Writes all of `line`, waiting with `poll` while the pipe is full. A closed pipe (EPIPE:
/// the process closed its stdin or ended) ends the write early; the reader learns of it.
fn write_all(
    pipe: &mut ChildStdin,
    line: &[u8],
    deadline: Instant,
    written: &mut u64,
) -> Result<(), Stalled> {
    let mut done = 0;
    while done < line.len() {
        match pipe.write(&line[done..]) {
            Ok(n) => {
                done += n;
                *written += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Stalled);
                }
                let mut fd = libc::pollfd {
                    fd: pipe.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = poll_millis(deadline - now);
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut fd, 1, ms) };
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Bytes written to the pipe `fd` and not read yet (FIONREAD works on either end of a
/// Linux pipe); 0 when it cannot be told.
pub(super) fn unread(fd: std::os::fd::RawFd) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r == 0 {
        u64::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn bytes_a_process_never_read_are_still_counted_after_it_exited() {
        let mut child = Command::new("sleep")
            .arg("1")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
        child.wait().unwrap();
        assert_eq!(unread(stdin.as_raw_fd()), 6);
    }
}
