//! One long-running `pipe:` process: started without a shell in its own process group, fed
//! one event line at a time on stdin, read one answer line at a time from stdout, its stderr
//! tail kept; stopped by SIGKILL to its group, or gracefully (EOF on stdin, a grace period,
//! SIGTERM, SIGKILL: the caller sequences these, so that all of a route's processes get their
//! grace at once).
//!
//! Invariants: all three pipes are non-blocking and driven by `poll` from the calling thread
//! (no helper threads), so no wait outlasts its deadline and a process that floods stderr
//! cannot stall it. The process is in the `exec` registry ([`register`]) from its start
//! until just before it is reaped, so a worker that exits without waiting kills it with the
//! `exec:` commands (`kill_running`); an unexpected path (an I/O error, a panic) kills and
//! reaps it on drop.

use crate::sink::exec::{
    has_exited, pidfd_open, read_tail, register, set_nonblocking, unregister, STDERR_TAIL,
};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How much of the process's stderr is kept for messages.
/// An answer line longer than this is a protocol error (and the buffer stays bounded).
const MAX_LINE: usize = 64 * 1024;
/// Without a pidfd the exit is polled this often.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// After the process exited, how long its stderr is still read: a process it started may
/// hold the pipe open.
const STDERR_LINGER: Duration = Duration::from_millis(150);

/// Why an exchange failed; the process must be stopped and replaced.
#[derive(Debug)]
pub(super) enum Failure {
    /// It exited, or closed its stdin or stdout, without answering.
    Died,
    /// No answer before the deadline.
    TimedOut,
    /// Something on stdout that is not the answer expected (the text says what).
    Protocol(String),
    /// `poll` or a pipe failed in a way that says nothing about the process.
    Io(std::io::Error),
}

pub(super) struct Process {
    child: Child,
    pid: libc::pid_t,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
    /// Readable once the process exited; None where pidfd_open is unavailable.
    pidfd: Option<OwnedFd>,
    /// Bytes read from stdout and not consumed as an answer yet.
    out: Vec<u8>,
    stdout_eof: bool,
    tail: Vec<u8>,
    /// Answers it gave (any verb).
    pub answered: u64,
    /// In the registry and not reaped yet.
    registered: bool,
}

/// Which descriptors a `pump` waits on.
#[derive(Clone, Copy)]
struct Want {
    stdin: bool,
    stdout: bool,
}

impl Process {
    /// Starts `program args` with the environment rules of `exec:` (no DISPATCHBOX_DSN, no
    /// PGPASSWORD), in its own process group, with stdin, stdout and stderr piped.
    pub(super) fn start(program: &str, args: &[String]) -> std::io::Result<Process> {
        let mut child = Command::new(program)
            .args(args)
            .env_remove("DISPATCHBOX_DSN")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a Ctrl-C meant for dispatchbox does not kill it mid-event (a
            // graceful stop closes its stdin instead), and a kill reaches what it started.
            .process_group(0)
            .spawn()?;
        let pid = child.id() as libc::pid_t;
        register(pid);
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let p = Process {
            child,
            pid,
            stdin,
            // Never None: piped above; `Process` without stdout would be useless.
            stdout: match stdout {
                Some(s) => s,
                None => return Err(std::io::Error::other("no stdout pipe")),
            },
            stderr,
            pidfd: pidfd_open(pid),
            out: Vec::new(),
            stdout_eof: false,
            tail: Vec::new(),
            answered: 0,
            registered: true,
        };
        let all_nonblocking = p
            .stdin
            .as_ref()
            .is_some_and(|s| set_nonblocking(s.as_raw_fd()))
            && set_nonblocking(p.stdout.as_raw_fd())
            && p.stderr
                .as_ref()
                .is_some_and(|s| set_nonblocking(s.as_raw_fd()));
        if !all_nonblocking {
            // Dropping `p` kills and reaps it.
            return Err(std::io::Error::other("cannot make its pipes non-blocking"));
        }
        Ok(p)
    }

    /// Writes `line` (one event, newline-terminated) and returns the next line on stdout
    /// (without its newline), or why there is none by `deadline`.
    pub(super) fn exchange(&mut self, line: &[u8], deadline: Instant) -> Result<Vec<u8>, Failure> {
        let mut written = 0;
        loop {
            if let Some(answer) = self.take_line()? {
                return Ok(answer);
            }
            if self.stdout_eof {
                return Err(Failure::Died);
            }
            if self.exited_without_pidfd()? {
                self.read_stdout();
                return self.take_line()?.ok_or(Failure::Died);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure::TimedOut);
            }
            let want = Want {
                stdin: written < line.len(),
                stdout: true,
            };
            let exited = self.pump(deadline - now, want, line, &mut written)?;
            if exited {
                // Everything it wrote before exiting is in the pipe now.
                self.read_stdout();
                return self.take_line()?.ok_or(Failure::Died);
            }
        }
    }

    /// Between events: Some when the process exited or wrote something nobody asked for.
    pub(super) fn check_idle(&mut self) -> Option<Failure> {
        self.read_stdout();
        if !self.out.is_empty() {
            let shown = super::answer::quote(&self.out);
            return Some(Failure::Protocol(format!(
                "output while no event was outstanding: `{shown}`"
            )));
        }
        if self.stdout_eof || has_exited(self.pid).unwrap_or(true) {
            return Some(Failure::Died);
        }
        None
    }

    /// Waits until the process exits (true) or `until` (false), keeping its stderr tail.
    pub(super) fn wait_exit(&mut self, until: Instant) -> bool {
        let mut none = 0;
        loop {
            if has_exited(self.pid).unwrap_or(true) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let want = Want {
                stdin: false,
                stdout: false,
            };
            if let Ok(true) = self.pump(until - now, want, &[], &mut none) {
                return true;
            }
        }
    }

    /// Kills its process group (SIGKILL), reaps it, and returns how it ended and the tail
    /// of its stderr.
    pub(super) fn stop(mut self) -> (String, String) {
        self.signal_group(libc::SIGKILL);
        self.reap_and_describe()
    }

    /// Graceful stop, first half: EOF on its stdin.
    pub(super) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Graceful stop, after the grace period: SIGTERM to its group.
    pub(super) fn terminate(&mut self) {
        self.signal_group(libc::SIGTERM);
    }

    pub(super) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    fn signal_group(&mut self, sig: libc::c_int) {
        // SAFETY: plain syscall on a group whose leader we have not reaped.
        unsafe { libc::killpg(self.pid, sig) };
        if sig == libc::SIGKILL {
            let _ = self.child.kill();
        }
    }

    fn reap_and_describe(&mut self) -> (String, String) {
        self.stdin = None;
        self.pidfd = None;
        if self.registered {
            unregister(self.pid);
            self.registered = false;
        }
        let status = match self.child.wait() {
            Ok(s) => describe(s),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        (status, self.stderr_tail(Instant::now() + STDERR_LINGER))
    }

    /// The next complete line from the stdout buffer, if any.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        if let Some(pos) = self.out.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.out.drain(..=pos).collect();
            line.pop();
            return Ok(Some(line));
        }
        if self.out.len() > MAX_LINE {
            let shown = super::answer::quote(&self.out);
            return Err(Failure::Protocol(format!(
                "an answer line longer than {MAX_LINE} bytes: `{shown}`"
            )));
        }
        Ok(None)
    }

    /// Where there is no pidfd, whether it exited (checked on each turn of the loop).
    fn exited_without_pidfd(&self) -> Result<bool, Failure> {
        if self.pidfd.is_some() {
            return Ok(false);
        }
        has_exited(self.pid).map_err(Failure::Io)
    }

    /// Waits up to `wait` for what `want` asks plus stderr and the pidfd, and handles what is
    /// ready. True when the pidfd says the process exited.
    fn pump(
        &mut self,
        wait: Duration,
        want: Want,
        line: &[u8],
        written: &mut usize,
    ) -> Result<bool, Failure> {
        let wait = if self.pidfd.is_none() {
            wait.min(EXIT_POLL)
        } else {
            wait
        };
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut add = |fd: std::os::fd::RawFd, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        let stdin_fd = self
            .stdin
            .as_ref()
            .filter(|_| want.stdin)
            .map(|s| s.as_raw_fd());
        let stdout_fd = Some(self.stdout.as_raw_fd()).filter(|_| want.stdout);
        let stderr_fd = self.stderr.as_ref().map(|s| s.as_raw_fd());
        let pidfd = self.pidfd.as_ref().map(|p| p.as_raw_fd());
        for (fd, ev) in [
            (stdin_fd, libc::POLLOUT),
            (stdout_fd, libc::POLLIN),
            (stderr_fd, libc::POLLIN),
            (pidfd, libc::POLLIN),
        ] {
            if let Some(fd) = fd {
                add(fd, ev);
            }
        }
        let ms = i32::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Failure::Io(e));
        }
        let mut exited = false;
        for p in fds.iter().filter(|p| p.revents != 0) {
            if Some(p.fd) == stdin_fd {
                self.write_stdin(line, written)?;
            } else if Some(p.fd) == stdout_fd {
                self.read_stdout();
            } else if Some(p.fd) == stderr_fd {
                self.read_stderr();
            } else if Some(p.fd) == pidfd {
                exited = true;
            }
        }
        Ok(exited)
    }

    /// Writes what the pipe takes now. A closed stdin (EPIPE) means the process is going.
    fn write_stdin(&mut self, line: &[u8], written: &mut usize) -> Result<(), Failure> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Failure::Died);
        };
        while *written < line.len() {
            match stdin.write(&line[*written..]) {
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(_) => {
                    self.stdin = None;
                    return Err(Failure::Died);
                }
            }
        }
        Ok(())
    }

    /// Reads what stdout has now (a bounded amount per call) into the buffer.
    fn read_stdout(&mut self) {
        let mut buf = [0u8; 8192];
        for _ in 0..16 {
            if self.stdout_eof || self.out.len() > MAX_LINE {
                return;
            }
            match self.stdout.read(&mut buf) {
                Ok(0) => self.stdout_eof = true,
                Ok(n) => self.out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.stdout_eof = true,
            }
        }
    }

    /// Reads what stderr has now (a bounded amount per call), keeping the tail.
    fn read_stderr(&mut self) {
        read_tail(&mut self.stderr, &mut self.tail);
    }

    /// What its stderr said, read until EOF or `until`; the pipe is closed afterwards.
    fn stderr_tail(&mut self, until: Instant) -> String {
        let mut none = 0;
        let want = Want {
            stdin: false,
            stdout: false,
        };
        self.pidfd = None;
        while self.stderr.is_some() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            if self.pump(until - now, want, &[], &mut none).is_err() {
                break;
            }
        }
        self.stderr = None;
        let tail = &self.tail[self.tail.len().saturating_sub(STDERR_TAIL)..];
        String::from_utf8_lossy(tail).trim().to_string()
    }
}

impl Drop for Process {
    /// Only on an unexpected path (an I/O error, a panic): the process must not run on.
    fn drop(&mut self) {
        if self.registered {
            self.signal_group(libc::SIGKILL);
            let _ = self.reap_and_describe();
        }
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
