//! `--metrics-addr`: `/metrics` parsed strictly after real deliveries (and across a worker
//! SIGKILL), `/healthz` and `/readyz` while starting, running and stopping, and the server
//! under slow clients, oversized and non-GET requests; a bad address is exit 2.

use super::db_with_events;
use crate::common::{self, dispatchbox, spawn, wait_until, Spawned};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The port a supervisor started with `--metrics-addr 127.0.0.1:0` serves on, from its
/// `serving metrics on http://127.0.0.1:PORT/metrics` line (the kernel picks a free port, so
/// no other process can take it between choosing and binding).
pub(super) fn served_port(sup: &Spawned) -> u16 {
    let mut port = None;
    wait_until(
        Duration::from_secs(30),
        "the metrics port is logged",
        || {
            let err = sup.stderr_so_far();
            port = err
                .split("serving metrics on http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|p| p.parse().ok());
            port.is_some()
        },
    );
    port.unwrap_or_default()
}

/// Sends `request` raw and reads the answer to EOF: (status, body).
fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("reading the answer: {e}; got so far: {out}"));
    let status = out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

pub(super) fn get(port: u16, path: &str) -> (u16, String) {
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// One sample line.
#[derive(Debug)]
pub(super) struct Sample {
    pub(super) name: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) value: f64,
}

/// Parses the text exposition format strictly: `# HELP` and `# TYPE` once per family and
/// before its samples, samples of a family together, every sample `name{labels} value`,
/// histogram buckets cumulative with `+Inf` last and equal to `_count`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "no final newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name), Some(what)) = (kind, name, what) else {
                panic!("bad comment line {line:?}");
            };
            assert!(!finished.contains(&name.to_string()), "{name} twice");
            match kind {
                "HELP" => {
                    assert!(!helped.contains(&name.to_string()), "HELP {name} twice");
                    assert!(!what.is_empty());
                    helped.push(name.into());
                }
                "TYPE" => {
                    assert!(
                        helped.contains(&name.to_string()),
                        "TYPE before HELP: {name}"
                    );
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&what),
                        "type {what}"
                    );
                    assert!(types.insert(name.into(), what.into()).is_none());
                }
                _ => panic!("bad comment line {line:?}"),
            }
            if current.as_deref() != Some(name) {
                finished.extend(current.take());
                current = Some(name.into());
            }
            continue;
        }
        let s = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&s.name)
            .to_string();
        assert_eq!(
            current.as_deref(),
            Some(family.as_str()),
            "{line:?} outside its family"
        );
        let kind = &types[&family];
        if kind == "counter" {
            assert!(
                s.name.ends_with("_total"),
                "counter {} without _total",
                s.name
            );
        }
        samples.push(s);
    }
    check_histograms(&samples, &types);
    samples
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
            (name, parse_labels(body, line))
        }
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name in {line:?}"
    );
    Sample {
        name: name.into(),
        labels,
        value,
    }
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name in {line:?}"
        );
        assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(key, value).is_none(),
            "label twice in {line:?}"
        );
        match chars.next() {
            None => {}
            Some(',') => assert!(chars.peek().is_some(), "trailing comma in {line:?}"),
            Some(c) => panic!("unexpected {c:?} in {line:?}"),
        }
    }
    labels
}

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for s in samples {
            let mut rest = s.labels.clone();
            let le = rest.remove("le");
            let key = format!("{rest:?}");
            if s.name == format!("{family}_bucket") {
                let le = le.expect("a bucket without le");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("numeric le")
                };
                series.entry(key).or_default().push((bound, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(key, s.value);
            }
        }
        assert_eq!(series.len(), counts.len(), "{family}: buckets vs counts");
        for (key, buckets) in &series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{key}: buckets not increasing and cumulative: {buckets:?}"
            );
            let last = buckets.last().expect("buckets");
            assert_eq!(last.0, f64::INFINITY, "{family}{key}: no +Inf bucket");
            assert_eq!(
                Some(&last.1),
                counts.get(key),
                "{family}{key}: +Inf != _count"
            );
        }
    }
}

/// The value of the one sample `name` whose labels include `labels`, summed if several.
pub(super) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

pub(super) fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// A supervisor serving metrics on a port of the kernel's choice, and that port.
pub(super) fn daemon(db: &common::TestDb, args: &[&str]) -> (Spawned, u16) {
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--poll-interval", "0.05"]);
    cmd.args(["--metrics-addr", "127.0.0.1:0"]);
    cmd.args(args);
    let sup = spawn(&mut cmd);
    let port = served_port(&sup);
    (sup, port)
}

/// The pid of one worker child of `pid` (Linux: /proc/PID/task/*/children).
pub(super) fn a_worker_of(pid: u32) -> u32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc");
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("--worker-index"))
        })
        .expect("a worker child")
}

fn ready(port: u16) -> bool {
    get(port, "/readyz").0 == 200
}

/// What a scrape shows after `n` deliveries to `stdout` and 5 permanent failures on
/// `dead_route`, with two workers idle.
fn check_after_delivery(m: &[Sample], n: f64, dead_route: &str) {
    for outcome in ["retried", "released", "deferred"] {
        assert_eq!(
            value(m, "dispatchbox_events_total", &[("outcome", outcome)]),
            0.0,
            "{outcome}"
        );
    }
    let dead = [("route", dead_route), ("outcome", "dead")];
    assert_eq!(value(m, "dispatchbox_events_total", &dead), 5.0);
    let stdout = [("route", "stdout")];
    assert_eq!(
        value(m, "dispatchbox_delivery_duration_seconds_count", &stdout),
        n
    );
    assert_eq!(
        value(
            m,
            "dispatchbox_delivery_duration_seconds_bucket",
            &[("route", "stdout"), ("le", "+Inf")]
        ),
        n
    );
    assert_eq!(value(m, "dispatchbox_claimed_events_total", &[]), n + 5.0);
    assert!(value(m, "dispatchbox_claims_total", &[]) >= 1.0);
    assert_eq!(value(m, "dispatchbox_db_errors_total", &[]), 0.0);
    assert_eq!(value(m, "dispatchbox_workers", &[("state", "ready")]), 2.0);
    assert_eq!(value(m, "dispatchbox_ready", &[]), 1.0);
    assert_eq!(value(m, "dispatchbox_worker_starts_total", &[]), 2.0);
    assert_eq!(value(m, "dispatchbox_outbox_due", &[]), 0.0);
    assert_eq!(
        value(m, "dispatchbox_outbox_oldest_due_age_seconds", &[]),
        0.0
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(m, "dispatchbox_build_info", &version), 1.0);
    assert!(value(m, "dispatchbox_start_time_seconds", &[]) > 1.6e9);
}

#[test]
fn metrics_count_exactly_what_was_delivered_and_never_go_down() {
    let n = 120;
    let db = db_with_events(n, "order.created");
    common::insert_events(&mut db.client(), "outbox_event", 5, "bad");
    let dead_route = "exec:sh -c 'exit 65'";
    let (sup, port) = daemon(
        &db,
        &[
            "--processes",
            "2",
            "--route",
            "order.*=stdout",
            "--route",
            &format!("bad={dead_route}"),
        ],
    );
    wait_until(Duration::from_secs(60), "everything is delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status IN ('done', 'dead')") == n + 5
    });
    let delivered = |m: &[Sample]| {
        value(
            m,
            "dispatchbox_events_total",
            &[("route", "stdout"), ("outcome", "delivered")],
        )
    };
    // Reports come about every second.
    wait_until(Duration::from_secs(10), "the counts are reported", || {
        let m = scrape(port);
        delivered(&m) == n as f64
            && value(&m, "dispatchbox_events_total", &[("outcome", "dead")]) == 5.0
            && value(&m, "dispatchbox_in_flight", &[]) == 0.0
    });
    check_after_delivery(&scrape(port), n as f64, dead_route);

    // A worker killed (its last report stays counted) and restarted from 0.
    let worker = a_worker_of(sup.pid());
    let _ = std::process::Command::new("kill")
        .args(["-s", "KILL", &worker.to_string()])
        .status();
    wait_until(Duration::from_secs(30), "a new worker is ready", || {
        let m = scrape(port);
        assert!(delivered(&m) >= n as f64, "went down: {}", delivered(&m));
        value(&m, "dispatchbox_worker_starts_total", &[]) == 3.0 && ready(port)
    });
    common::insert_events(&mut db.client(), "outbox_event", 30, "order.created");
    wait_until(
        Duration::from_secs(30),
        "the new events are counted on top",
        || {
            let d = delivered(&scrape(port));
            assert!(d >= n as f64, "went down: {d}");
            d == (n + 30) as f64
        },
    );
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("serving metrics on http://127.0.0.1:"),
        "{out}"
    );
}

#[test]
fn readyz_follows_start_up_and_shutdown_while_healthz_stays_ok() {
    // A "database" that accepts connections and never answers: the worker stays starting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut cmd = dispatchbox();
    cmd.args([
        "--dsn",
        &format!("host=127.0.0.1 port={silent_port} dbname=x user=x"),
    ]);
    cmd.args(["--metrics-addr", "127.0.0.1:0", "--connect-timeout", "60"]);
    let starting = spawn(&mut cmd);
    let port = served_port(&starting);
    // Down (not started yet), then starting: never ready.
    wait_until(Duration::from_secs(10), "the worker is starting", || {
        let (status, body) = get(port, "/readyz");
        assert_eq!(status, 503, "{body}");
        body.contains("starting 1")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(port, "/readyz").0, 503);
    assert_eq!(get(port, "/healthz").0, 200);
    drop(starting);
    drop(silent);

    // Ready, then stopping while a handler still runs.
    let db = db_with_events(0, "slow");
    let (sup, port) = daemon(&db, &["--route", "slow=exec:sleep 4"]);
    wait_until(Duration::from_secs(30), "ready", || ready(port));
    common::insert_events(&mut db.client(), "outbox_event", 1, "slow");
    wait_until(Duration::from_secs(30), "the handler runs", || {
        value(&scrape(port), "dispatchbox_in_flight", &[]) == 1.0
    });
    sup.signal("TERM");
    wait_until(Duration::from_secs(5), "not ready while stopping", || {
        get(port, "/readyz").0 == 503
    });
    assert!(get(port, "/readyz").1.contains("stopping"));
    assert_eq!(get(port, "/healthz").0, 200);
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        1
    );
}

/// Oversized, non-GET, malformed and unknown requests.
fn check_refusals(port: u16) {
    // Oversized head: 431 and closed (read_to_string returns).
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend(b"\r\n\r\n");
    assert_eq!(raw(port, &big).0, 431);
    assert_eq!(
        raw(
            port,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
        )
        .0,
        405
    );
    assert_eq!(raw(port, b"DELETE /readyz HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(raw(port, b"hello\r\n\r\n").0, 400);
    assert_eq!(get(port, "/nothing").0, 404);
}

#[test]
fn slow_clients_do_not_stall_a_scrape_and_bad_requests_are_refused() {
    // A backlog no route here takes, due for 90 s.
    let db = db_with_events(3, "other");
    db.client()
        .execute(
            "UPDATE outbox_event SET next_run_at = now() - interval '90 seconds'",
            &[],
        )
        .unwrap();
    let (sup, port) = daemon(&db, &["--route", "x=stdout"]);
    wait_until(Duration::from_secs(30), "ready", || ready(port));
    // More that send nothing than the server has threads and queue, and one that sends a byte
    // per second.
    let silent: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let request = b"GET /metrics HTTP/1.1\r\n\r\n";
    let trickle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut sent = 0;
        for b in request {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        sent
    });
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let m = parse(&body);
    assert_eq!(value(&m, "dispatchbox_outbox_due", &[]), 3.0, "{body}");
    let age = value(&m, "dispatchbox_outbox_oldest_due_age_seconds", &[]);
    assert!((90.0..300.0).contains(&age), "{body}");
    // The server gives up on them after its read time (2 s): 408, then closed.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out:?}");
    }
    let sent = trickle.join().unwrap();
    assert!(
        sent < request.len(),
        "the trickling client was not cut off ({sent} bytes sent)"
    );

    check_refusals(port);
    // Still serving.
    assert_eq!(get(port, "/healthz"), (200, "ok\n".to_string()));
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
}

/// Whether the server has neither answered nor closed `s` yet.
fn still_waiting(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let waiting =
        matches!(s.read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    waiting
}

#[test]
fn health_is_answered_while_hundreds_of_idle_connections_wait() {
    let db = db_with_events(0, "x");
    let (sup, port) = daemon(&db, &[]);
    wait_until(Duration::from_secs(30), "ready", || ready(port));
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    assert_eq!(get(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(port, "/readyz").0, 200);
    // Answered while every idle connection still waited for its head (the server gives each
    // 2 s, then answers 408): not after them, nor instead of them.
    let answered = idle.iter().filter(|s| !still_waiting(s)).count();
    assert_eq!(
        answered, 0,
        "idle connections answered or closed before /healthz"
    );
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out:?}");
    }
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn a_crowd_of_connections_gets_200_or_503_and_never_a_reset() {
    let db = db_with_events(0, "x");
    let (sup, port) = daemon(&db, &[]);
    wait_until(Duration::from_secs(30), "ready", || ready(port));
    let (threads, each) = (50, 20);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let crowd: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                // Each asks at once; all are held open together, then read.
                let mut conns: Vec<TcpStream> = (0..each)
                    .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                    .collect();
                let mut got: Vec<Result<(), String>> = conns
                    .iter_mut()
                    .map(|s| {
                        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                            .map_err(|e| format!("write: {e}"))
                    })
                    .collect();
                barrier.wait();
                for (s, got) in conns.iter_mut().zip(got.iter_mut()) {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut out = String::new();
                    *got = got.clone().and_then(|()| {
                        s.read_to_string(&mut out)
                            .map(|_| ())
                            .map_err(|e| format!("read: {e}; got {out:?}"))
                    });
                    if got.is_ok() {
                        *got = match out.get(..12) {
                            Some("HTTP/1.1 200" | "HTTP/1.1 503") => Ok(()),
                            _ => Err(format!("answer {out:?}")),
                        };
                    }
                }
                got
            })
        })
        .collect();
    let results: Vec<Result<(), String>> =
        crowd.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        *failed.entry(e.chars().take(40).collect()).or_default() += 1;
    }
    assert!(
        failed.is_empty(),
        "of {} connections, these failed: {failed:?}",
        results.len()
    );
    assert_eq!(get(port, "/healthz").0, 200);
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn a_bad_metrics_addr_is_exit_2_before_any_worker_starts() {
    let db = db_with_events(0, "x");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    for (addr, says) in [
        ("9187", "is not HOST:PORT"),
        ("localhost:http", "is not HOST:PORT"),
        (&format!("127.0.0.1:{taken_port}") as &str, "cannot listen"),
    ] {
        let out = common::run(
            dispatchbox().args(["--dsn", &db.dsn, "--metrics-addr", addr]),
            Duration::from_secs(30),
        );
        assert_eq!(out.code, Some(2), "{out}");
        assert!(out.stderr.contains(says), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(!out.stderr.contains("started worker"), "{out}");
    }
    // The variable works too.
    let out = common::run(
        dispatchbox()
            .args(["--dsn", &db.dsn])
            .env("DISPATCHBOX_METRICS_ADDR", "nonsense"),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("DISPATCHBOX_METRICS_ADDR"), "{out}");
}

#[test]
fn a_webhook_token_in_the_query_is_shown_nowhere() {
    let db = db_with_events(2, "order.created");
    // A receiver that never answers: each POST times out, and with one attempt allowed the
    // event is dead (a WARNING naming the route).
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook = silent.local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{hook}/h?token=SECRET123&v=");
    let shown = format!("http://127.0.0.1:{hook}/h?token=REDACTED&v=");
    let route = format!("order.*={url}");
    let (sup, port) = daemon(
        &db,
        &[
            "--route",
            &route,
            "--max-attempts",
            "1",
            "--webhook-timeout",
            "0.3",
        ],
    );
    wait_until(Duration::from_secs(60), "both events are dead", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'") == 2
    });
    let dead = [("outcome", "dead")];
    wait_until(Duration::from_secs(10), "the counts are reported", || {
        value(&scrape(port), "dispatchbox_events_total", &dead) == 2.0
    });
    let (_, metrics) = get(port, "/metrics");
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!metrics.contains("SECRET123"), "{metrics}");
    let m = parse(&metrics);
    let dead = [("route", shown.as_str()), ("outcome", "dead")];
    assert_eq!(value(&m, "dispatchbox_events_total", &dead), 2.0);
    assert!(!out.stderr.contains("SECRET123"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("routes order.*={shown}")),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr
            .matches(&format!("route {shown}, attempt 1 of 1) is dead"))
            .count(),
        2,
        "{}",
        out.stderr
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE last_error LIKE '%SECRET123%'"),
        0
    );
    drop(silent);
}
