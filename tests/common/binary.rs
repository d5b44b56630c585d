//! Running the binary under test (and any command) the way a user does: an environment
//! without the developer's `DISPATCHBOX_*`/`PG*` variables, stdin closed, output captured,
//! every wait with a deadline, and a failure that shows the command and all it printed.

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::db::redact;
use super::sh_quote;

/// Path of the `dispatchbox` binary cargo built for this test run.
pub fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dispatchbox"))
}

/// A `Command` for the binary, without any `DISPATCHBOX_*` or libpq `PG*` variable from the
/// developer's environment, so a test sees only the configuration it passes.
pub fn dispatchbox() -> Command {
    let mut cmd = Command::new(bin_path());
    remove_env(&mut cmd, &["DISPATCHBOX_", "PG"]);
    cmd
}

/// Removes from `cmd`'s environment every variable of ours whose name starts with one of
/// `prefixes` (e.g. `["DISPATCHBOX_", "PG"]`).
pub fn remove_env(cmd: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a command ended and what it printed. `Display` shows all of it, for assertions.
pub struct Run {
    pub cmd: String,
    pub status: ExitStatus,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` to its end (stdin closed, output captured); after `timeout` it is killed and
/// the test panics with everything it printed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    spawn(cmd).wait(timeout)
}

/// A running command whose output is being collected; for tests that signal it or watch
/// its output while it runs. Dropping it kills the process if it is still running.
pub struct Spawned {
    child: Child,
    cmd: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Starts `cmd` with stdin closed and stdout/stderr captured.
pub fn spawn(cmd: &mut Command) -> Spawned {
    spawn_with_stdout(cmd, Stdio::piped())
}

/// `spawn`, with stdout going to `to` (captured only when that is `Stdio::piped()`).
pub fn spawn_with_stdout(cmd: &mut Command, to: Stdio) -> Spawned {
    let shown = show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(to)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut readers = vec![collect(
        child.stderr.take().expect("piped"),
        Arc::clone(&stderr),
    )];
    if let Some(out) = child.stdout.take() {
        readers.push(collect(out, Arc::clone(&stdout)));
    }
    Spawned {
        child,
        cmd: shown,
        stdout,
        stderr,
        readers,
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`, ...) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "kill -s {name} {} failed: {status:?}",
            self.pid()
        );
    }

    /// What it has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        text(&self.stdout)
    }

    /// What it has printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        text(&self.stderr)
    }

    /// Waits for the exit and for both pipes to close; after `timeout` kills it and panics
    /// with its output.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().expect("wait after kill");
                    self.join_readers(Instant::now() + Duration::from_secs(2));
                    panic!(
                        "timed out after {timeout:?}; killed it\n{}",
                        self.result(status)
                    );
                }
                Err(e) => panic!("wait for {}: {e}", self.cmd),
            }
        };
        // A child process that inherited the pipes would keep them open past the exit.
        if !self.join_readers(deadline.max(Instant::now() + Duration::from_secs(2))) {
            panic!(
                "exited, but its stdout/stderr stayed open (a child process still holds them)\n{}",
                self.result(status)
            );
        }
        self.result(status)
    }

    fn join_readers(&mut self, deadline: Instant) -> bool {
        while !self.readers.iter().all(JoinHandle::is_finished) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        true
    }

    fn result(&self, status: ExitStatus) -> Run {
        Run {
            cmd: self.cmd.clone(),
            status,
            code: status.code(),
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Starts `sh -c script` detached from the test run: in its own process group (a Ctrl-C of
/// the test run must not kill a cleanup), no stdio. `what` names it in the panic message.
pub(super) fn detached_shell(script: &str, what: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} (sh): {e}"))
}

/// A command line for messages.
pub(super) fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            let arg = if arg.contains("password=") || (arg.contains("://") && arg.contains('@')) {
                redact(&arg).into()
            } else {
                arg
            };
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+*".contains(c))
            {
                arg.into_owned()
            } else {
                sh_quote(&arg)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
