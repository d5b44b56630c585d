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
//! ([`kill_running`]).

use crate::handler::{Event, Handler, Outcome};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The exit code a program uses to say "never retry this event".
pub const PERMANENT_EXIT: i32 = 65;
/// How much of the program's stderr is kept for the error message.
const STDERR_TAIL: usize = 1500;
/// After the program exited, how long its stderr is still read: a background process it
/// started may hold the pipe open indefinitely.
const STDERR_LINGER: Duration = Duration::from_millis(150);
/// Without a pidfd the exit is polled: first after 1 ms, doubling up to this.
const MAX_EXIT_POLL: Duration = Duration::from_millis(20);
/// The search path `execvp` uses when PATH is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Process groups (= the programs' pids) of the commands running now. A pid leaves this set
/// before it is reaped, so a group killed through it is never a recycled pid.
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn running() -> MutexGuard<'static, Vec<libc::pid_t>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills (SIGKILL) the process group of every `exec:` command still running, and returns
/// how many. For a worker that exits without waiting for its handlers: what it started must
/// not outlive it, or the event's next delivery would run next to the old one.
pub(crate) fn kill_running() -> usize {
    let groups = running();
    for &pgid in groups.iter() {
        // SAFETY: plain syscall; the group exists (its leader is not reaped yet).
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    groups.len()
}

pub struct Exec {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Exec {
    /// Parses the command line and checks the program (see [`check_program`]).
    pub fn new(command: &str, timeout: Duration) -> Result<Exec, String> {
        let mut words = split_words(command)?;
        if words.is_empty() {
            return Err("`exec:` needs a command, e.g. `exec:/usr/local/bin/notify --fast`".into());
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
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("DISPATCHBOX_EVENT_ID", event.id.to_string())
            .env("DISPATCHBOX_EVENT_TYPE", opt(&event.event_type))
            .env("DISPATCHBOX_AGGREGATE_TYPE", opt(&event.aggregate_type))
            .env("DISPATCHBOX_AGGREGATE_ID", opt(&event.aggregate_id))
            .env("DISPATCHBOX_ATTEMPT", event.attempt.to_string())
            .env_remove("DISPATCHBOX_DSN")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for dispatchbox does not kill a delivery
            // in progress (graceful shutdown lets it finish), and a timeout kills what the
            // program started too.
            .process_group(0);
        cmd
    }

    fn run(&self, event: &Event) -> Result<(), Outcome> {
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
        if status.code() == Some(PERMANENT_EXIT) {
            Err(Outcome::Permanent(msg))
        } else {
            Err(Outcome::Retry(msg))
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

/// Out of file descriptors, processes or memory: this machine's problem, not the event's.
fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}

/// One started program: its pipes, its pidfd, and its registration in [`RUNNING`].
struct Running {
    child: Child,
    pid: libc::pid_t,
    stdin: Option<ChildStdin>,
    line: Vec<u8>,
    written: usize,
    stderr: Option<ChildStderr>,
    tail: Vec<u8>,
    /// Readable once the program exited; None where pidfd_open is unavailable.
    pidfd: Option<OwnedFd>,
    /// In [`RUNNING`] and not reaped yet.
    registered: bool,
}

impl Running {
    fn new(mut child: Child, line: Vec<u8>) -> Running {
        let pid = child.id() as libc::pid_t;
        running().push(pid);
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
    fn wait_for_exit(&mut self, deadline: Instant) -> std::io::Result<bool> {
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
        // SAFETY: waitid writes into the zeroed siginfo we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(info.si_pid() != 0)
        }
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
        let ms = i32::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
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
        let Some(stderr) = self.stderr.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        // A bounded number of reads per call, so a chatty program cannot hold us past a
        // deadline; what is left is read on the next call.
        for _ in 0..16 {
            match stderr.read(&mut buf) {
                Ok(n) if n > 0 => {
                    self.tail.extend_from_slice(&buf[..n]);
                    if self.tail.len() > 2 * STDERR_TAIL {
                        self.tail.drain(..self.tail.len() - STDERR_TAIL);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // End of file or a read error.
                _ => {
                    self.stderr = None;
                    return;
                }
            }
        }
    }

    /// Kills the program's whole process group (and the program itself, should it have left
    /// the group).
    fn kill(&mut self) {
        // SAFETY: plain syscall on a group whose leader we have not reaped.
        unsafe { libc::killpg(self.pid, libc::SIGKILL) };
        let _ = self.child.kill();
    }

    /// Waits for the exit and reaps the program, after taking it out of [`RUNNING`].
    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        self.stdin = None;
        self.pidfd = None;
        if self.registered {
            running().retain(|&p| p != self.pid);
            self.registered = false;
        }
        self.child.wait()
    }

    /// The program has exited: what its stderr said, read until EOF or `until` (a process it
    /// left behind may hold the pipe open), then the pipe is closed.
    fn stderr_tail(&mut self, until: Instant) -> String {
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

fn set_nonblocking(fd: RawFd) -> bool {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    }
}

/// A descriptor that becomes readable when the process exits (close-on-exec), or None on
/// kernels without pidfd_open (before 5.3) or when out of descriptors: then the exit is polled.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: just opened, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Finds `program` the way `execvp` does — a name with a `/` is a path, otherwise each
/// directory of `path` in turn (an empty entry is the current directory) — and checks that
/// it is a regular file (or a symlink to one) we may execute. The error says what is wrong.
pub fn check_program(program: &str, path: Option<&std::ffi::OsStr>) -> Result<(), String> {
    if program.is_empty() {
        return Err("the program name is empty".into());
    }
    if program.contains('/') {
        return check_executable(Path::new(program))
            .map_err(|why| format!("program {program} {why}"));
    }
    let path = path.unwrap_or(DEFAULT_PATH.as_ref());
    let mut unusable = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() {
            ".".into()
        } else {
            dir
        };
        let candidate = dir.join(program);
        match check_executable(&candidate) {
            Ok(()) => return Ok(()),
            Err(why) if candidate.exists() && unusable.is_none() => {
                unusable = Some(format!("program {program}: {} {why}", candidate.display()));
            }
            Err(_) => {}
        }
    }
    Err(unusable.unwrap_or_else(|| format!("program {program} not found on PATH")))
}

/// Ok if `path` is a regular file (symlinks followed) with execute permission for us.
fn check_executable(path: &Path) -> Result<(), String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err("not found".into()),
        Err(e) => return Err(format!("cannot be examined: {e}")),
    };
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err("contains a NUL byte".into());
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("is not executable ({e})"));
    }
    Ok(())
}

/// Splits a command line into words the way a POSIX shell does, without expansions: white
/// space separates words; single quotes keep everything literal; inside double quotes a
/// backslash escapes only `$`, `` ` ``, `"`, `\` and a newline (elsewhere it stays);
/// outside quotes a backslash escapes any character, and backslash-newline is removed.
/// No variables, globs, comments or pipes: there is no shell.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("exec command: unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("exec command: unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("exec command: unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation: neither a character nor a word break.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err("exec command: trailing backslash".into()),
            },
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_words(r#"sh -c 'cat >> "/tmp/a b"' x\ y "q\"d""#).unwrap(),
            vec!["sh", "-c", r#"cat >> "/tmp/a b""#, "x y", "q\"d"]
        );
        assert!(split_words("sh 'oops").is_err());
        assert!(split_words("sh \"oops").is_err());
        assert!(split_words("sh oops\\").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("a ''").unwrap(), vec!["a", ""]);
        assert_eq!(
            split_words(r#""a\d+" "C:\temp""#).unwrap(),
            vec![r"a\d+", r"C:\temp"]
        );
    }

    /// The words `sh` itself makes of `input` (after `printf`'s format argument).
    fn sh_words(input: &str) -> Vec<String> {
        let script = format!("printf '[%s]\\n' START {input}");
        let out = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run sh: {e}"));
        assert!(out.status.success(), "sh -c {script:?}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let body = text
            .strip_prefix("[START]\n")
            .unwrap_or_else(|| panic!("{script:?} printed {text:?}"));
        if body.is_empty() {
            return Vec::new();
        }
        let body = body
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix("]\n"))
            .unwrap_or_else(|| panic!("{script:?} printed {text:?}"));
        body.split("]\n[").map(str::to_string).collect()
    }

    #[test]
    fn split_words_agrees_with_sh() {
        // Inputs without expansions: no unquoted or double-quoted `$`, no backquotes, globs,
        // `~` or `#` at the start of a word.
        let inputs = [
            r#""a\d+""#,
            r#""C:\temp""#,
            r"'s\q'",
            r"a\ b",
            r#""x\"y""#,
            r#""\\""#,
            r#""\$HOME""#,
            "''",
            r#""""#,
            r#"a"b"'c'"#,
            r"\'",
            r#"mixed "a\d+"'s\q'\ x "C:\temp\new" end"#,
            r"\a\b\\c",
            r#""\a\b\\c\`""#,
            r#"'\' "\'" \""#,
            "a\\\nb",
            "\"a\\\nb\"",
            "'a\\\nb'",
            "\"line\nbreak\" 'two\nlines'",
            "  spaced\t words  ",
            r#"x"" ""y '' "" z"#,
            r#""it's" 'say "hi"'"#,
            r"\ lead trail\ ",
            r#""a b"c\ d'e f'"#,
            r#"sh -c 'echo \"x\"'"#,
        ];
        for input in inputs {
            assert_eq!(
                split_words(input).unwrap_or_else(|e| panic!("{input:?}: {e}")),
                sh_words(input),
                "input {input:?}"
            );
        }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dbx-exec-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn programs_are_found_like_execvp_finds_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("path");
        let plain = dir.join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tool = dir.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&tool, dir.join("link")).unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent:{}", dir.display()));
        let path = Some(path.as_os_str());

        assert_eq!(check_program("tool", path), Ok(()));
        assert_eq!(check_program("link", path), Ok(()));
        assert_eq!(check_program(&tool.to_string_lossy(), None), Ok(()));
        assert_eq!(check_program("sh", None), Ok(()));
        let err = |p: &str| check_program(p, path).unwrap_err();
        assert_eq!(err("nosuch"), "program nosuch not found on PATH");
        assert!(
            err("plain").contains("is not executable"),
            "{}",
            err("plain")
        );
        let plain = plain.to_string_lossy().to_string();
        assert!(err(&plain).contains("is not executable"), "{}", err(&plain));
        let d = dir.to_string_lossy().to_string();
        assert_eq!(err(&d), format!("program {d} is a directory"));
        assert_eq!(err("/nonexistent/x"), "program /nonexistent/x not found");
        assert_eq!(err("/dev/null"), "program /dev/null is not a regular file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
