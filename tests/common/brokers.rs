//! Private brokers for the example bridges' tests (examples/bridges/): a NATS server with
//! JetStream and a RabbitMQ node, each in a temp dir of its own, on free ports of 127.0.0.1,
//! sharing nothing with a system broker (RabbitMQ: its own node name, Erlang cookie in a
//! private HOME, distribution port and epmd, no /etc/rabbitmq file read), and the bridges'
//! Python venv.
//!
//! Invariants: a broker is stopped by pid when dropped, and by a watchdog if the test process
//! dies first; every wait has a deadline; a missing broker binary or venv fails the test with
//! the command that installs it ([`INSTALL`]), never skips it.
//!
//! Debian's /usr/sbin/rabbitmq-server, run as root, switches to the `rabbitmq` user with its
//! home (and cookie) in /var/lib/rabbitmq, shared with the system node. The node's own script,
//! /usr/lib/rabbitmq/bin/rabbitmq-server, runs as whoever starts it (root here, which Erlang
//! accepts) with the directories and ports the environment gives it: that is what we run.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::binary::detached_shell;
use super::{remove_env, sh_quote, TempDir};

/// What to run when a broker or the venv is missing.
pub const INSTALL: &str = "run scripts/test-deps.sh once (as root: it installs Debian's \
     nats-server, rabbitmq-server and python3-venv without starting any service, then makes the \
     bridges' venv in target/bridges-venv); .ci/run does it too";

/// The node's own start script (not the /usr/sbin wrapper: see the module header).
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How long a broker may take to accept connections (RabbitMQ needs ~5 s on an idle machine).
const START_WAIT: Duration = Duration::from_secs(90);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, with nats-py and pika (scripts/test-deps.sh).
pub fn python() -> PathBuf {
    let venv = repo().join("target/bridges-venv");
    let python = venv.join("bin/python");
    // requirements.txt is copied in last: without it the install did not finish.
    assert!(
        python.is_file() && venv.join("requirements.txt").is_file(),
        "the example bridges' Python venv {} is missing or incomplete: {INSTALL}",
        venv.display()
    );
    python
}

/// `examples/bridges/<name>`.
pub fn bridge(name: &str) -> PathBuf {
    repo().join("examples/bridges").join(name)
}

fn require(program: &Path, what: &str) {
    assert!(
        program.is_file(),
        "{what} ({}) is not installed: {INSTALL}",
        program.display()
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn find_in_path(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin").join(program))
}

/// A started broker process: its own process group, output to `log`, pid recorded in
/// `pids` for the watchdog.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Proc { child }
    }

    /// SIGTERM to the process itself (RabbitMQ's script stops the node cleanly), then waits.
    fn stop(&mut self, what: &str) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + START_WAIT;
        while self.alive() {
            assert!(
                Instant::now() < deadline,
                "{what} did not stop within {START_WAIT:?} of SIGTERM"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL to the process group (the broker and what it started), then reap.
    fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files and watchdog shared by both brokers.
struct Home {
    dir: TempDir,
    watchdog: Option<Child>,
}

impl Home {
    fn new(tag: &str) -> Home {
        let dir = TempDir::new(tag);
        // Kills every process group listed in `pgids` once the test process is gone.
        let pgids = dir.join("pgids");
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; \
             for g in $(cat {} 2>/dev/null); do kill -KILL -- -$g 2>/dev/null; done; rm -rf {}",
            std::process::id(),
            sh_quote(&pgids.to_string_lossy()),
            sh_quote(&dir.path().to_string_lossy()),
        );
        let watchdog = detached_shell(&script, "the broker watchdog");
        Home {
            dir,
            watchdog: Some(watchdog),
        }
    }

    fn record(&self, proc: &Proc) {
        let path = self.dir.join("pgids");
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        text += &format!("{}\n", proc.child.id());
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Waits until 127.0.0.1:`port` accepts a connection (and, with `greeting`, sends bytes
/// starting with it), while `proc` is alive; panics with `log` otherwise.
fn wait_ready(
    proc: &mut Proc,
    port: u16,
    greeting: Option<&[u8]>,
    what: &str,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            let Some(greeting) = greeting else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0; greeting.len()];
            if conn.read_exact(&mut buf).is_ok() && buf == greeting {
                return;
            }
        }
        if !proc.alive() {
            panic!("{what} exited while starting\n--- its log:\n{}", log());
        }
        if Instant::now() >= deadline {
            panic!("{what} did not accept connections on port {port} within {START_WAIT:?}\n--- its log:\n{}", log());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// NATS

/// `nats-server -js` with its store in a temp dir, on 127.0.0.1:`port()`.
pub struct Nats {
    home: Home,
    port: u16,
    proc: Option<Proc>,
}

impl Nats {
    pub fn start() -> Nats {
        require(&find_in_path("nats-server"), "nats-server");
        let mut nats = Nats {
            home: Home::new("nats"),
            port: free_port(),
            proc: None,
        };
        nats.spawn();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.home.log_tail("nats.log")
    }

    /// `kill -9`: the store stays, as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// `SIGSTOP` (`pause`) or `SIGCONT` (`resume`): connections stay open, nothing is answered
    /// meanwhile.
    pub fn pause(&self, pause: bool) {
        if let Some(proc) = &self.proc {
            let sig = if pause { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([sig, &proc.child.id().to_string()])
                .status();
        }
    }

    /// Starts it again on the same port with the same store (after [`Nats::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(find_in_path("nats-server"));
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.home.dir.join("jetstream"))
        .current_dir(self.home.dir.path());
        let mut proc = Proc::spawn(&mut cmd, &self.home.dir.join("nats.log"));
        self.home.record(&proc);
        wait_ready(&mut proc, self.port, Some(b"INFO "), "nats-server", || {
            self.home.log_tail("nats.log")
        });
        self.proc = Some(proc);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

/// A RabbitMQ node of its own: AMQP on 127.0.0.1:`port()` (user guest/guest), its own epmd.
pub struct Rabbit {
    home: Home,
    port: u16,
    node: String,
    dist_port: u16,
    epmd_port: u16,
    epmd: Option<Proc>,
    proc: Option<Proc>,
}

impl Rabbit {
    pub fn start() -> Rabbit {
        require(Path::new(RABBITMQ_SERVER), "rabbitmq-server");
        let home = Home::new("rabbitmq");
        let port = free_port();
        let conf = format!("listeners.tcp.default = 127.0.0.1:{port}\n");
        for (name, text) in [
            ("rabbitmq.conf", conf.as_str()),
            ("enabled_plugins", "[].\n"),
            ("rabbitmq-env.conf", ""),
        ] {
            let path = home.dir.join(name);
            fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let mut rabbit = Rabbit {
            node: format!("dbx{}n{}@localhost", std::process::id(), port),
            dist_port: free_port(),
            epmd_port: free_port(),
            home,
            port,
            epmd: None,
            proc: None,
        };
        rabbit.start_epmd();
        rabbit.spawn();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// The end of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.home.log_tail("rabbit.log")
    }

    /// `kill -9` of the node: its data dir stays, as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9();
        }
    }

    /// Starts the node again with the same name, ports and data (after [`Rabbit::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A clean stop (SIGTERM) and a start with the same data. A node killed within seconds
    /// of its first start was seen to come back without its vhost and queues (its Mnesia log
    /// not yet written): a test that kills the node declares its queue first, then calls this.
    pub fn restart_cleanly(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.stop("rabbitmq-server");
        }
        self.spawn();
    }

    /// epmd in the foreground, ours: the node would otherwise start a daemon nobody stops.
    fn start_epmd(&mut self) {
        let mut cmd = Command::new(find_in_path("epmd"));
        cmd.args([
            "-port",
            &self.epmd_port.to_string(),
            "-address",
            "127.0.0.1",
        ]);
        self.env(&mut cmd);
        let mut proc = Proc::spawn(&mut cmd, &self.home.dir.join("epmd.log"));
        self.home.record(&proc);
        wait_ready(&mut proc, self.epmd_port, None, "epmd", || {
            self.home.log_tail("epmd.log")
        });
        self.epmd = Some(proc);
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(RABBITMQ_SERVER);
        self.env(&mut cmd);
        let mut proc = Proc::spawn(&mut cmd, &self.home.dir.join("startup.log"));
        self.home.record(&proc);
        wait_ready(&mut proc, self.port, None, "rabbitmq-server", || {
            format!(
                "{}\n--- rabbit.log:\n{}",
                self.home.log_tail("startup.log"),
                self.home.log_tail("rabbit.log")
            )
        });
        self.proc = Some(proc);
    }

    /// Everything the node and epmd read, pointing into the temp dir; nothing inherited.
    fn env(&self, cmd: &mut Command) {
        remove_env(cmd, &["RABBITMQ_", "ERL_"]);
        let dir = self.home.dir.path();
        let path = |name: &str| dir.join(name).into_os_string();
        cmd.current_dir(dir)
            .env("HOME", dir) // the Erlang cookie
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_LOGS", path("rabbit.log"))
            .env("RABBITMQ_PID_FILE", path("rabbit.pid"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins-expand"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.kill9();
        if let Some(mut epmd) = self.epmd.take() {
            epmd.kill9();
        }
    }
}
