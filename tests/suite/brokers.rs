//! The example bridges (examples/bridges/) against real brokers that the harness starts
//! (tests/common/brokers.rs): a drain through each bridge delivers every event once, with the
//! broker's own count (examples/bridges/count.py) agreeing; and a broker killed (`kill -9`)
//! while events are in flight and restarted a few seconds later loses nothing (NATS JetStream
//! also stores no duplicate, thanks to Nats-Msg-Id; RabbitMQ has no dedup, so its duplicates
//! are only reported).

use super::{db_with_events, drain};
use crate::common::brokers::{self, Nats, Rabbit};
use crate::common::{self, TestDb};
use std::process::Command;
use std::thread;
use std::time::Duration;

/// What count.py found at the broker.
#[derive(Debug)]
struct Counts {
    delivered: i64,
    duplicates: i64,
    lost: i64,
    unexpected: i64,
    json: String,
}

trait Broker {
    /// The bridge's command line (venv python, script, connection options), publishing to
    /// stream / queue `name`.
    fn bridge(&self, name: &str) -> String;
    /// count.py's arguments after `count.py` for stream / queue `name`, without `--ids`.
    fn count_args(&self, name: &str) -> Vec<String>;
    fn kill9(&mut self);
    fn restart(&mut self);
    fn log_tail(&self) -> String;
    /// Makes what the bridge declares survive a `kill -9` (RabbitMQ: see `restart_cleanly`).
    fn settle_definitions(&mut self) {}
}

impl Broker for Nats {
    fn bridge(&self, name: &str) -> String {
        format!(
            "{} {} --server {} --subject {name}.{{event_type}} --stream {name}",
            brokers::python().display(),
            brokers::bridge("nats_jetstream.py").display(),
            self.url()
        )
    }
    fn count_args(&self, name: &str) -> Vec<String> {
        ["nats", "--server", &self.url(), "--stream", name]
            .map(String::from)
            .into()
    }
    fn kill9(&mut self) {
        Nats::kill9(self)
    }
    fn restart(&mut self) {
        Nats::restart(self)
    }
    fn log_tail(&self) -> String {
        Nats::log_tail(self)
    }
}

impl Broker for Rabbit {
    fn bridge(&self, name: &str) -> String {
        format!(
            "{} {} --url {} --queue {name}",
            brokers::python().display(),
            brokers::bridge("rabbitmq.py").display(),
            self.url()
        )
    }
    fn count_args(&self, name: &str) -> Vec<String> {
        ["rabbitmq", "--url", &self.url(), "--queue", name]
            .map(String::from)
            .into()
    }
    fn kill9(&mut self) {
        Rabbit::kill9(self)
    }
    fn restart(&mut self) {
        Rabbit::restart(self)
    }
    fn log_tail(&self) -> String {
        Rabbit::log_tail(self)
    }
    fn settle_definitions(&mut self) {
        // The bridge declares the queue and, with no input, exits.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {} </dev/null", self.bridge("outbox")));
        let out = common::run(&mut cmd, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "declaring the queue\n{out}");
        self.restart_cleanly();
    }
}

/// Runs count.py on stream / queue `name` for ids 1..=n.
fn count(broker: &dyn Broker, name: &str, n: i64) -> Counts {
    let mut cmd = Command::new(brokers::python());
    cmd.arg(brokers::bridge("count.py"))
        .args(broker.count_args(name))
        .args(["--ids", &format!("1-{n}"), "--timeout", "20"]);
    let out = common::run(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "count.py failed\n{out}");
    let json = out.stdout.trim().to_string();
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("count.py: not JSON: {e}\n{out}"));
    let get = |k: &str| {
        v[k].as_i64()
            .unwrap_or_else(|| panic!("count.py: no {k}\n{out}"))
    };
    Counts {
        delivered: get("delivered"),
        duplicates: get("duplicates"),
        lost: get("lost"),
        unexpected: get("unexpected"),
        json,
    }
}

/// The options every run here uses besides the route.
const RUN: [&str; 4] = ["--threads", "4", "--batch-size", "100"];

/// 2,000 events through the bridge in one drain, with `--pipe-window 1` (one event at a time,
/// as earlier versions) and with the default window (many lines before any answer): all done
/// at the first attempt, and the broker holds each id exactly once.
fn drain_delivers_each_event_once(broker: &dyn Broker) {
    let n = 2000;
    for (window, name) in [("1", "w1"), ("256", "w256")] {
        let db = db_with_events(n, "order.created");
        let route = format!("*=pipe:{}", broker.bridge(name));
        let mut args = vec!["--route", &route, "--pipe-window", window];
        args.extend(RUN);
        let out = drain(&db, &args);
        assert_eq!(out.code, Some(0), "--pipe-window {window}\n{out}");
        assert_eq!(
            db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
            n,
            "--pipe-window {window}\n{out}"
        );
        let counts = count(broker, name, n);
        assert_eq!(
            (
                counts.delivered,
                counts.duplicates,
                counts.lost,
                counts.unexpected
            ),
            (n, 0, 0, 0),
            "--pipe-window {window}: at the broker: {}\n{out}",
            counts.json
        );
    }
}

/// A service run through the bridge; the broker is killed once 200 of 2,000 events are done,
/// 500 more events come while it is down (so some are in flight against a dead broker), and
/// it is restarted a few seconds later. Every event ends `done`, none `dead`, and every id is
/// at the broker at least once. Returns what the broker holds, for the caller's dedup check.
fn broker_killed_and_restarted_loses_nothing(broker: &mut dyn Broker) -> Counts {
    broker.settle_definitions();
    let db = db_with_events(2000, "order.created");
    let route = format!("*=pipe:{}", broker.bridge("outbox"));
    let mut cmd = common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        &route,
        "--poll-interval",
        "0.05",
    ])
    .args(RUN)
    .args([
        "--max-attempts",
        "1000",
        "--retry-backoff",
        "0.2",
        "--retry-backoff-max",
        "1",
    ]);
    let service = common::spawn(&mut cmd);
    let done = |db: &TestDb| db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'");
    common::wait_until(Duration::from_secs(60), "200 events are done", || {
        done(&db) >= 200
    });

    broker.kill9();
    common::insert_events(&mut db.client(), "outbox_event", 500, "order.created");
    common::wait_until(
        Duration::from_secs(60),
        "an attempt fails while the broker is down",
        || db.count("SELECT count(*) FROM outbox_event WHERE last_error IS NOT NULL") > 0,
    );
    thread::sleep(Duration::from_secs(2)); // the outage itself, not a synchronisation
    broker.restart();

    common::wait_until(Duration::from_secs(90), "all 2,500 events are done", || {
        done(&db) == 2500 || db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'") > 0
    });
    service.signal("TERM");
    let out = service.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(done(&db), 2500, "{out}");
    let counts = count(broker, "outbox", 2500);
    assert_eq!(
        (counts.lost, counts.unexpected),
        (0, 0),
        "lost at the broker: {}\n{out}\n--- broker log:\n{}",
        counts.json,
        broker.log_tail()
    );
    assert!(
        db.count("SELECT count(*) FROM outbox_event WHERE attempts > 1") > 0,
        "no event was retried: the broker was not down while events were in flight\n{out}"
    );
    counts
}

/// The bridge on its own, fed `n` event lines through a pipe all at once (as a streaming
/// Dispatchbox may): it answers `ok` for each id exactly once, in whatever order, and at EOF
/// exits 0 after answering everything; the broker holds each id once.
fn bridge_answers_many_lines_sent_before_any_answer(broker: &dyn Broker) {
    let n = 2000;
    let dir = common::TempDir::new("bridge-lines");
    let lines: String = (1..=n)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"event_type\":\"order.created\",\"aggregate_type\":\"order\",\
                 \"aggregate_id\":\"{i}\",\"attempt\":1,\"payload\":{{\"n\":{i}}}}}\n"
            )
        })
        .collect();
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "cat {} | exec {}",
        file.display(),
        broker.bridge("outbox")
    ));
    let out = common::run(&mut cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    let ids = out.stdout.lines().map(|l| {
        l.strip_prefix("ok ")
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("not `ok ID`: {l:?}\n{out}"))
    });
    super::assert_exactly_once(n, ids);
    let counts = count(broker, "outbox", n);
    assert_eq!(
        (counts.delivered, counts.duplicates, counts.lost),
        (n, 0, 0),
        "at the broker: {}",
        counts.json
    );
}

#[test]
fn nats_bridge_answers_many_lines_sent_before_any_answer() {
    bridge_answers_many_lines_sent_before_any_answer(&Nats::start());
}

#[test]
fn rabbitmq_bridge_answers_many_lines_sent_before_any_answer() {
    bridge_answers_many_lines_sent_before_any_answer(&Rabbit::start());
}

/// The NATS bridge checks its PubAcks' deadlines in one sweep (not a timer per publish): a
/// server that stops answering (SIGSTOP, the connection stays open) gets the events published
/// meanwhile answered `unavailable` after `--ack-timeout`, and once it answers again the
/// next event is `ok`.
#[test]
fn nats_bridge_answers_unavailable_when_no_puback_comes_within_ack_timeout() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let nats = Nats::start();
    let line = |i: i64| {
        format!(
            "{{\"id\":{i},\"event_type\":\"order.created\",\"aggregate_type\":\"order\",\
             \"aggregate_id\":\"{i}\",\"attempt\":1,\"payload\":{{}}}}\n"
        )
    };
    /// The bridge, killed if the test fails before it exits.
    struct Bridge(std::process::Child);
    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Bridge(
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec {} --ack-timeout 1", nats.bridge("stopped")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let (tx, answers) = std::sync::mpsc::channel();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    let answer = |what: &str| {
        answers
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no answer for {what} within 30 s"))
    };
    stdin.write_all(line(1).as_bytes()).unwrap();
    assert_eq!(answer("event 1"), "ok 1");
    nats.pause(true);
    stdin.write_all((line(2) + &line(3)).as_bytes()).unwrap();
    let mut stalled = [answer("event 2"), answer("event 3")];
    stalled.sort();
    nats.pause(false);
    assert_eq!(
        stalled,
        [
            "unavailable 2 no PubAck within 1.0s",
            "unavailable 3 no PubAck within 1.0s"
        ]
    );
    stdin.write_all(line(4).as_bytes()).unwrap();
    assert_eq!(answer("event 4"), "ok 4");
    drop(stdin);
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn nats_bridge_drain_delivers_each_event_once() {
    drain_delivers_each_event_once(&Nats::start());
}

#[test]
fn rabbitmq_bridge_drain_delivers_each_event_once() {
    drain_delivers_each_event_once(&Rabbit::start());
}

#[test]
fn nats_killed_mid_run_loses_nothing_and_dedups_by_msg_id() {
    let mut nats = Nats::start();
    let counts = broker_killed_and_restarted_loses_nothing(&mut nats);
    assert_eq!(
        (counts.delivered, counts.duplicates),
        (2500, 0),
        "JetStream should have dropped resends by Nats-Msg-Id: {}",
        counts.json
    );
}

#[test]
fn rabbitmq_killed_mid_run_loses_nothing() {
    let mut rabbit = Rabbit::start();
    let counts = broker_killed_and_restarted_loses_nothing(&mut rabbit);
    // RabbitMQ has no dedup: a message stored whose confirm was lost is sent again.
    eprintln!(
        "rabbitmq after kill -9 and restart: {} delivered, {} duplicates (consumers dedupe by message_id)",
        counts.delivered, counts.duplicates
    );
}

/// Issue 19 with a real broker: NATS killed for a while with default attempts (5). The bridge
/// answers `unavailable` for what it cannot publish, the route pauses, the events wait without
/// using attempts, and once the broker is back a probe resumes the route.
#[test]
fn a_nats_outage_pauses_the_route_and_costs_no_attempt_per_event() {
    let mut nats = Nats::start();
    let db = db_with_events(1000, "order.created");
    let route = format!("*=pipe:{}", nats.bridge("outage"));
    let mut cmd = common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        &route,
        "--poll-interval",
        "0.05",
    ])
    .args(RUN)
    .args(["--retry-backoff", "1"]);
    let service = common::spawn(&mut cmd);
    let done = |db: &TestDb| db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'");
    common::wait_until(Duration::from_secs(60), "200 events are done", || {
        done(&db) >= 200
    });
    nats.kill9();
    common::insert_events(&mut db.client(), "outbox_event", 500, "order.created");
    common::wait_until(Duration::from_secs(60), "the route pauses", || {
        service
            .stderr_so_far()
            .contains(" paused: 5 deliveries in a row")
    });
    thread::sleep(Duration::from_secs(3)); // the outage itself, not a synchronisation
    nats.restart();
    common::wait_until(
        Duration::from_secs(120),
        "all 1,500 events are done",
        || {
            done(&db) == 1500
                || db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'") > 0
        },
    );
    service.signal("TERM");
    let out = service.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(done(&db), 1500, "none dead, none left\n{out}");
    let counts = count(&nats, "outage", 1500);
    assert_eq!(
        (counts.lost, counts.duplicates),
        (0, 0),
        "{}\n{out}",
        counts.json
    );
    // Attempts beyond one per event: the failures that paused the route (fewer than 5 per
    // run of them), not one per event (hundreds were in flight or waiting).
    let extra = db.count("SELECT coalesce(sum(attempts), 0) - count(*) FROM outbox_event");
    assert!(extra < 15, "{extra} attempts beyond the first\n{out}");
    assert!(out.stderr.contains("resumed after"), "{out}");
}
