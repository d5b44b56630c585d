//! One started `exec:` program: feeding its stdin, keeping the tail of its stderr, learning
//! its exit with `poll` (on a pidfd where the kernel has them), killing its process group.
//!
//! Invariant: a program is in the registry (`sink/process`) from its start until just before
//! it is reaped, so a group killed through the registry is never a recycled pid; an
//! unexpected path (an I/O error, a panic) kills and reaps it on drop.

use crate::sink::process::{
    has_exited, kill_group, pidfd_open, poll_millis, register, set_nonblocking, unregister,
    STDERR_TAIL,
};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdin, ExitStatus};
use std::time::{Duration, Instant};

/// Reads what a non-blocking stderr pipe has now (a bounded number of reads, so a chatty
/// program cannot hold the caller past a deadline), keeping at most about the last
/// `2 × STDERR_TAIL` bytes in `tail`; at end of file or on an error the pipe is dropped.
fn read_tail(stderr: &mut Option<ChildStderr>, tail: &mut Vec<u8>) {
    let Some(pipe) = stderr.as_mut() else {
        return;
    };
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match pipe.read(&mut buf) {
            Ok(n) if n > 0 => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // End of file or a read error.
            _ => {
                *stderr = None;
                return;
            }
        }
    }
}
/// Without a pidfd the exit is polled: first after 1 ms, doubling up to this.
const MAX_EXIT_POLL: Duration = Duration::from_millis(20);

/// One started program: its pipes, its pidfd, and its registration in the registry.
pub(super) struct Running {
    child: Child,
    pid: libc::pid_t,
    stdin: Option<ChildStdin>,
    line: Vec<u8>,
    written: usize,
    stderr: Option<ChildStderr>,
    tail: Vec<u8>,
    /// Readable once the program exited; None where pidfd_open is unavailable.
    pidfd: Option<OwnedFd>,
    /// In the registry and not reaped yet.
    registered: bool,
}

impl Running {
    pub(super) fn new(mut child: Child, line: Vec<u8>) -> Running {
        let pid = child.id() as libc::pid_t;
        register(pid);
        // A pipe we cannot make non-blocking is closed instead: the program sees the end of
        // its input, or loses its stderr. (fcntl on a fresh pipe does not fail in practice.)
        let stdin = child
            .stdin
            .take()
            .filter(|p| set_nonblocking(p.as_raw_fd()));
        let stderr = child
            .stderr
            .take()
            .filter(|p| set_nonblocking(p.as_raw_fd()));
        Running {
            child,
            pid,
            stdin,
            line,
            written: 0,
            stderr,
            tail: Vec::new(),
            pidfd: pidfd_open(pid),
            registered: true,
        }
    }

    /// Feeds stdin and collects stderr until the program exits (true) or `deadline` (false).
    pub(super) fn wait_for_exit(&mut self, deadline: Instant) -> std::io::Result<bool> {
        let mut tick = Duration::from_millis(1);
        loop {
            if self.has_exited()? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let mut wait = deadline - now;
            if self.pidfd.is_none() {
                wait = wait.min(tick);
                tick = (tick * 2).min(MAX_EXIT_POLL);
            }
            self.pump(wait, true);
        }
    }

    /// True once the program has exited; it stays unreaped (a zombie) until [`Running::reap`].
    fn has_exited(&self) -> std::io::Result<bool> {
        has_exited(self.pid)
    }

    /// Waits up to `wait` for stdin to take more, stderr to have more, or the pidfd to say
    /// the program exited (when `with_pidfd`), and handles what is ready.
    fn pump(&mut self, wait: Duration, with_pidfd: bool) {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut add = |fd: RawFd, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        if let Some(p) = &self.stdin {
            add(p.as_raw_fd(), libc::POLLOUT);
        }
        if let Some(p) = &self.stderr {
            add(p.as_raw_fd(), libc::POLLIN);
        }
        if let Some(p) = self.pidfd.as_ref().filter(|_| with_pidfd) {
            add(p.as_raw_fd(), libc::POLLIN);
        }
        if fds.is_empty() {
            std::thread::sleep(wait);
            return;
        }
        let ms = poll_millis(wait);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            // EINTR: the caller loops. ENOMEM: do not spin.
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                std::thread::sleep(wait.min(MAX_EXIT_POLL));
            }
            return;
        }
        for p in &fds {
            if p.revents == 0 {
                continue;
            }
            if self.stdin.as_ref().is_some_and(|s| s.as_raw_fd() == p.fd) {
                self.write_stdin();
            } else if self.stderr.as_ref().is_some_and(|s| s.as_raw_fd() == p.fd) {
                self.read_stderr();
            }
        }
    }

    /// Writes what the pipe takes now; closes stdin when the line is written or the program
    /// closed its end (a program that ignores its input: not an error).
    fn write_stdin(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        while self.written < self.line.len() {
            match stdin.write(&self.line[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.stdin = None;
    }

    /// Reads what is there (a bounded amount per call), keeping the tail.
    fn read_stderr(&mut self) {
        read_tail(&mut self.stderr, &mut self.tail);
    }

    /// Kills the program's whole process group (and the program itself, should it have left
    /// the group).
    pub(super) fn kill(&mut self) {
        // Its leader is not reaped yet (we reap it, after `unregister`).
        kill_group(self.pid, libc::SIGKILL);
        let _ = self.child.kill();
    }

    /// Waits for the exit and reaps the program, after taking it out of the registry.
    pub(super) fn reap(&mut self) -> std::io::Result<ExitStatus> {
        self.stdin = None;
        self.pidfd = None;
        if self.registered {
            unregister(self.pid);
            self.registered = false;
        }
        self.child.wait()
    }

    /// The program has exited: what its stderr said, read until EOF or `until` (a process it
    /// left behind may hold the pipe open), then the pipe is closed.
    pub(super) fn stderr_tail(&mut self, until: Instant) -> String {
        loop {
            let now = Instant::now();
            if self.stderr.is_none() || now >= until {
                break;
            }
            self.pump(until - now, false);
        }
        self.stderr = None;
        let tail = &self.tail[self.tail.len().saturating_sub(STDERR_TAIL)..];
        String::from_utf8_lossy(tail).trim().to_string()
    }
}

impl Drop for Running {
    /// Only on an unexpected path (an I/O error, a panic): the program must not run on.
    fn drop(&mut self) {
        if self.registered {
            self.kill();
            let _ = self.reap();
        }
    }
}
