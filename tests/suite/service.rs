//! Running under a service manager: JSON log lines, syslog priorities when stderr is the
//! journal's stream, the `Type=notify` protocol against a socket the test listens on,
//! `dispatchbox help`, `--version` and `--dsn-file`.

use super::{assert_exactly_once, db_with_events, delivered_ids};
use crate::common::{self, dispatchbox, run, wait_until, TempDir};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A run whose stderr is a pipe the test made itself (so that it knows its inode).
struct Captured {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

/// Starts `cmd` with stdout discarded and stderr on a new pipe; with `journal`, sets
/// `JOURNAL_STREAM` to that pipe's `DEV:INODE`, as systemd does for a journal stream.
fn start(cmd: &mut Command, journal: Option<bool>) -> Captured {
    let (mut rx, tx) = std::io::pipe().expect("pipe");
    let tx = std::fs::File::from(std::os::fd::OwnedFd::from(tx));
    let m = tx.metadata().expect("fstat pipe");
    match journal {
        Some(true) => cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino())),
        // Set, but naming another stream: not ours.
        Some(false) => cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino() + 1)),
        None => cmd.env_remove("JOURNAL_STREAM"),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(tx))
        .spawn()
        .expect("spawn dispatchbox");
    // `cmd` keeps the write end until its stderr is set again: then EOF comes once the
    // supervisor and its workers are gone.
    cmd.stderr(Stdio::null());
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&stderr);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = rx.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Captured {
        child,
        stderr,
        reader,
    }
}

impl Captured {
    fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name}");
    }

    /// The exit code and all of stderr (until every writer is gone).
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit in time:\n{}", self.so_far());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while !self.reader.is_finished() {
            assert!(Instant::now() < deadline, "stderr stayed open");
            std::thread::sleep(Duration::from_millis(10));
        }
        (status.code(), self.so_far())
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain_cmd(db: &common::TestDb, args: &[&str]) -> Command {
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--drain", "--poll-interval", "0.05"])
        .args(args);
    cmd
}

/// The syslog priority journald reads for a level name.
fn priority(level: &str) -> &'static str {
    match level {
        "DEBUG" => "<7>",
        "INFO" => "<6>",
        "WARNING" => "<4>",
        "ERROR" => "<3>",
        "CRITICAL" => "<2>",
        other => panic!("unknown level {other}"),
    }
}

/// `line` without its `<N>` prefix, checked against the level that follows it.
fn check_priority(line: &str) -> &str {
    let end = line
        .find('>')
        .unwrap_or_else(|| panic!("no priority: {line:?}"));
    let (prefix, rest) = line.split_at(end + 1);
    let level = match rest.strip_prefix('{') {
        Some(_) => {
            let v: serde_json::Value = serde_json::from_str(rest).unwrap();
            v["level"].as_str().unwrap().to_string()
        }
        None => rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    assert_eq!(prefix, priority(&level), "{line:?}");
    rest
}

#[test]
fn json_lines_from_the_supervisor_and_workers_carry_the_text_fields() {
    // An event type with a newline and a C1 control: logged (at DEBUG) by the workers.
    let db = db_with_events(4, "x\ny\u{85}");
    let mut cmd = drain_cmd(
        &db,
        &[
            "--processes",
            "2",
            "--log-level",
            "debug",
            "--route",
            "*=exec:false",
            "--max-attempts",
            "1",
        ],
    );
    cmd.env("DISPATCHBOX_LOG_FORMAT", "json");
    let (code, stderr) = start(&mut cmd, None).wait();
    assert_eq!(code, Some(0), "{stderr}");
    let mut processes = std::collections::BTreeMap::new();
    for line in stderr.lines() {
        assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        // The text fields, and on a line about an event the fields naming it.
        const EVENT: [&str; 7] = [
            "event_id",
            "event_type",
            "aggregate_type",
            "aggregate_id",
            "route",
            "attempt",
            "outcome",
        ];
        let extra = obj.keys().filter(|k| !EVENT.contains(&k.as_str())).count();
        assert_eq!(extra, 5, "{line}");
        for k in ["ts", "level", "process", "pid", "msg"] {
            assert!(obj.contains_key(k), "no {k} in {line}");
        }
        assert!(line.starts_with(r#"{"ts":""#), "{line}");
        let ts = v["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{line}");
        priority(v["level"].as_str().unwrap());
        let pid = v["pid"].as_u64().unwrap_or_else(|| panic!("pid: {line}"));
        processes.insert(v["process"].as_str().unwrap().to_string(), pid);
    }
    for p in ["supervisor", "worker 0", "worker 1"] {
        assert!(processes.contains_key(p), "no line from {p}:\n{stderr}");
    }
    assert_ne!(processes["worker 0"], processes["supervisor"]);
    assert!(
        stderr.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["msg"].as_str().unwrap().contains("x\ny\u{85}")
        }),
        "the event type, decoded, is in some message:\n{stderr}"
    );
    assert!(
        stderr.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event_type"] == "x\ny\u{85}" && v["outcome"] == "dead"
        }),
        "the event type, decoded, is in the dead line's fields:\n{stderr}"
    );

    // A refusal once the format is known is a JSON line too.
    let mut cmd = drain_cmd(&db, &["--log-format", "json", "--route", "*=exec:/no/such"]);
    let (code, stderr) = start(&mut cmd, None).wait();
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(v["level"], "ERROR", "{stderr}");
}

#[test]
fn on_the_journal_stream_lines_start_with_their_priority() {
    let db = db_with_events(4, "order.created");
    let args = [
        "--processes",
        "2",
        "--log-level",
        "debug",
        "--route",
        "*=exec:false",
        "--max-attempts",
        "1",
    ];
    let (code, stderr) = start(&mut drain_cmd(&db, &args), Some(true)).wait();
    assert_eq!(code, Some(0), "{stderr}");
    let mut workers = 0;
    for line in stderr.lines() {
        let rest = check_priority(line);
        // journald stamps lines itself: no timestamp of ours.
        assert!(rest.starts_with(|c: char| c.is_ascii_uppercase()), "{line}");
        workers += usize::from(rest.contains("[worker "));
    }
    assert!(
        workers >= 2,
        "worker lines are forwarded with theirs:\n{stderr}"
    );
    assert!(stderr.contains("<7>DEBUG"), "{stderr}");

    // An error: `journalctl -p err` finds it.
    let (code, stderr) = start(&mut drain_cmd(&db, &["--table", "missing"]), Some(true)).wait();
    assert_eq!(code, Some(4), "{stderr}");
    stderr.lines().for_each(|l| {
        check_priority(l);
    });
    assert!(stderr.contains("<3>ERROR"), "{stderr}");

    // JSON on the journal: journald strips the prefix and stores the object.
    let mut cmd = drain_cmd(&db, &["--log-format", "json"]);
    let (code, stderr) = start(&mut cmd, Some(true)).wait();
    assert_eq!(code, Some(0), "{stderr}");
    for line in stderr.lines() {
        let rest = check_priority(line);
        serde_json::from_str::<serde_json::Value>(rest).unwrap();
    }

    // JOURNAL_STREAM naming another stream (inherited, or stderr redirected): plain lines.
    let (code, stderr) = start(&mut drain_cmd(&db, &args), Some(false)).wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.lines().count() > 3, "{stderr}");
    assert!(
        stderr.lines().all(|l| l.starts_with("20")),
        "timestamped, no priority:\n{stderr}"
    );
}

#[test]
fn a_worker_whose_supervisor_died_logs_with_priorities_to_the_journal() {
    let db = db_with_events(0, "order.created");
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--poll-interval", "0.05"]);
    let run = start(&mut cmd, Some(true));
    wait_until(T, "the worker is ready", || {
        run.so_far().contains("worker ready")
    });
    run.signal("KILL");
    let deadline = Instant::now() + T;
    while !run.so_far().contains("the supervisor is gone") {
        assert!(Instant::now() < deadline, "{}", run.so_far());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, stderr) = run.wait();
    let gone = stderr
        .lines()
        .find(|l| l.contains("the supervisor is gone"))
        .unwrap();
    assert!(gone.starts_with("<4>WARNING"), "{stderr}");
    stderr.lines().for_each(|l| {
        check_priority(l);
    });
}

/// The datagrams a notify socket received, with when they arrived.
struct Listener {
    rx: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Listener {
    fn new(socket: UnixDatagram) -> Listener {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    return;
                }
            }
        });
        Listener {
            rx,
            seen: Vec::new(),
        }
    }

    /// Collects for `d`, then returns everything received so far.
    fn collect_for(&mut self, d: Duration) -> &[(Instant, String)] {
        let until = Instant::now() + d;
        while let Ok(m) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(m);
        }
        &self.seen
    }

    /// Collects until `done(seen so far)` holds (deadline `T`).
    fn collect_until(&mut self, what: &str, done: impl Fn(&Listener) -> bool) {
        let deadline = Instant::now() + T;
        while !done(self) {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(m) => self.seen.push(m),
                Err(_) => panic!("not {what} within {T:?}; got {:?}", self.seen),
            }
        }
    }

    /// Waits for a message containing `line` (as one of its lines); returns when it came.
    fn wait_for(&mut self, line: &str) -> Instant {
        let deadline = Instant::now() + T;
        loop {
            if let Some((t, _)) = self.seen.iter().find(|(_, m)| m.lines().any(|l| l == line)) {
                return *t;
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(m) => self.seen.push(m),
                Err(_) => panic!("no {line} within {T:?}; got {:?}", self.seen),
            }
        }
    }

    fn count(&self, line: &str, after: Instant) -> usize {
        self.seen
            .iter()
            .filter(|(t, m)| *t >= after && m.lines().any(|l| l == line))
            .count()
    }
}

#[test]
fn notify_ready_after_all_workers_stopping_on_sigterm_and_the_watchdog() {
    let db = db_with_events(0, "order.created");
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let mut listener = Listener::new(UnixDatagram::bind(&path).expect("bind"));
    // Workers cannot finish their start-up while the table is locked.
    let mut locker = db.client();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE outbox_event IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    let mut cmd = dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--processes",
        "2",
        "--route",
        "*=exec:true",
    ])
    .env("NOTIFY_SOCKET", &path)
    .env("WATCHDOG_USEC", "200000");
    let run = start(&mut cmd, None);
    let started = Instant::now();
    // The watchdog runs from the start (every 100 ms, half of WATCHDOG_USEC), long before the
    // workers can be ready.
    listener.collect_until("5 watchdog pings", |l| l.count("WATCHDOG=1", started) >= 5);
    assert!(
        !listener.seen.iter().any(|(_, m)| m.contains("READY=1")),
        "READY=1 before the workers were ready: {:?}\n{}",
        listener.seen,
        run.so_far()
    );

    tx.commit().unwrap();
    let ready = listener.wait_for("READY=1");
    // (Their log lines take another path, through the supervisor's forwarders.)
    wait_until(Duration::from_secs(5), "both workers logged ready", || {
        run.so_far().matches("worker ready").count() == 2
    });
    let stderr = run.so_far();
    let msg = &listener.seen.iter().find(|(t, _)| *t == ready).unwrap().1;
    assert!(msg.contains("STATUS=2 of 2 workers ready"), "{msg:?}");

    // Workers do not get the variables: only the main process speaks to systemd.
    for pid in stderr
        .lines()
        .filter_map(|l| l.split("started worker ").nth(1))
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|l| l.trim_end_matches(')').parse::<u32>().ok())
    {
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            let env = String::from_utf8_lossy(&env);
            assert!(!env.contains("NOTIFY_SOCKET="), "worker {pid}");
            assert!(!env.contains("WATCHDOG_USEC="), "worker {pid}");
        }
    }

    listener.collect_until("4 watchdog pings after ready", |l| {
        l.count("WATCHDOG=1", ready) >= 4
    });

    run.signal("TERM");
    listener.wait_for("STOPPING=1");
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn notify_on_an_abstract_socket_and_no_watchdog_for_another_pid() {
    let db = db_with_events(0, "order.created");
    let name = format!("dbx-notify-{}-{:x}", std::process::id(), fastrand::u64(..));
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let mut listener = Listener::new(UnixDatagram::bind_addr(&addr).expect("bind abstract"));
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", "*=exec:true"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1");
    let run = start(&mut cmd, None);
    let ready = listener.wait_for("READY=1");
    listener.collect_for(Duration::from_millis(800));
    assert_eq!(
        listener.count("WATCHDOG=1", ready),
        0,
        "{:?}",
        listener.seen
    );
    run.signal("TERM");
    listener.wait_for("STOPPING=1");
    let (code, stderr) = run.wait();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn help_subcommand_and_version() {
    let help = run(dispatchbox().arg("help"), T);
    assert_eq!(help.code, Some(0), "{help}");
    let flag = run(dispatchbox().arg("--help"), T);
    assert_eq!(help.stdout, flag.stdout);
    for s in [
        "EXEC TARGETS",
        "stdin: the event as one JSON line",
        "Exit 0: delivered",
        "exit 65: permanent failure",
    ] {
        assert!(help.stdout.contains(s), "--help lacks {s:?}\n{help}");
    }

    let out = run(dispatchbox().arg("--version"), T);
    assert_eq!(out.code, Some(0), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("dispatchbox {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    let field = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in\n{out}"))
    };
    assert!(field("target: ").contains("linux"), "{out}");
    assert!(field("TLS: ").starts_with("OpenSSL "), "{out}");
    let rev = field("git revision: ");
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let ours = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|top| std::fs::canonicalize(top).ok() == std::fs::canonicalize(dir).ok());
    match git(&["rev-parse", "--short", "HEAD"]).filter(|_| ours) {
        Some(head) => assert_eq!(rev, head, "{out}"),
        None => assert_eq!(rev, "unknown", "{out}"),
    }
}

#[test]
fn the_dsn_can_come_from_a_file() {
    let db = db_with_events(5, "order.created");
    let dir = TempDir::new("dsn-file");
    let file = dir.join("dsn");
    std::fs::write(&file, format!("{}\n", db.dsn)).unwrap();
    let path = file.to_string_lossy().into_owned();
    let args = ["--drain", "--poll-interval", "0.05"];
    let out = run(dispatchbox().args(["--dsn-file", &path]).args(args), T);
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(5, delivered_ids(&out.stdout));

    let out = run(
        dispatchbox()
            .env("DISPATCHBOX_DSN_FILE", &path)
            .arg("stats"),
        T,
    );
    assert_eq!(out.code, Some(0), "{out}");

    let out = run(
        dispatchbox()
            .args(["--dsn", &db.dsn, "--dsn-file", &path])
            .args(args),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("--dsn and --dsn-file are both given"),
        "{out}"
    );

    // A broken file: refused by its path, its contents (a password) never shown.
    std::fs::write(&file, "host=x password=hunter2 nonsense").unwrap();
    let out = run(dispatchbox().args(["--dsn-file", &path]).args(args), T);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
    let missing = dir.join("missing").to_string_lossy().into_owned();
    let out = run(dispatchbox().args(["--dsn-file", &missing]).args(args), T);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains(&format!("--dsn-file {missing}: cannot read it")),
        "{out}"
    );
}
