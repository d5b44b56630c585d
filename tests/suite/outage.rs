//! Destination outages: a route whose destination is unavailable pauses after a few
//! failures in a row, its events wait without using attempts (the claim leaves them out),
//! one probe at a time tests the destination, and the route resumes when it answers. Other
//! routes keep flowing; a single poison event does not pause its route. Tried with a real
//! HTTP receiver that refuses connections, then answers 503, then recovers; with `pipe:`'s
//! `unavailable ID` answer; and with `exec:`'s exit code 75.

use super::pipe::{logged, route, script, READ};
use super::webhook::{Receiver, Reply};
use super::{assert_exactly_once, db_with_events};
use crate::common::{self, TempDir};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Failures that pause a route; fewer than this are charged per outage. The bounds below
/// allow a few runs of them (events already running when the destination came back may still
/// fail once more; a loaded machine stretches every phase), far below one per event.
const TRIP: i64 = 5;

/// Runs a daemon on `db` with `route` until the route pauses, then calls `recover` and waits
/// until all `n` events are done; stops it (SIGTERM) and returns its run.
fn paused_then_recovered(
    db: &common::TestDb,
    route: &str,
    n: i64,
    recover: impl FnOnce(),
) -> common::Run {
    let mut cmd = common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        route,
        "--retry-backoff",
        "1",
        "--poll-interval",
        "0.05",
    ]);
    let daemon = common::spawn(&mut cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !daemon
        .stderr_so_far()
        .contains(" paused: 5 deliveries in a row")
    {
        if std::time::Instant::now() > deadline {
            daemon.signal("KILL");
            let out = daemon.wait(Duration::from_secs(10));
            panic!("the route did not pause within 180 s\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    recover();
    common::wait_until(Duration::from_secs(240), "every event delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == n
    });
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    out
}

/// A bridge that answers `unavailable ID broker down` while the file it returns second
/// exists (it does at first), and otherwise logs `delivered ID` and answers `ok ID`.
fn unavailable_while_down(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let down = dir.join("down");
    std::fs::write(&down, "").unwrap();
    let body = format!(
        "{READ}\n  if [[ -e $dir/down ]]; then echo \"unavailable $id broker down\"; \
         else echo \"delivered $id\" >> \"$dir/log\"; echo \"ok $id\"; fi\ndone"
    );
    (script(dir, "publisher.sh", &body), down)
}

fn attempts_sum(db: &common::TestDb) -> i64 {
    db.count("SELECT coalesce(sum(attempts), 0) FROM outbox_event")
}

#[test]
fn a_webhook_outage_pauses_the_route_probes_it_and_costs_no_attempt_per_event() {
    let db = db_with_events(150, "order.created");
    common::insert_events(&mut db.client(), "outbox_event", 40, "user.created");
    let refused = common::refused_port();
    let port = refused.port();
    let hook = format!("order.*=http://127.0.0.1:{port}/hook");
    let mut cmd = common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        &hook,
        "--route",
        "user.*=stdout",
        "--threads",
        "4",
        "--batch-size",
        "20",
        "--retry-backoff",
        "1",
        "--poll-interval",
        "0.05",
    ]);
    let daemon = common::spawn(&mut cmd);
    common::wait_until(Duration::from_secs(180), "the route pauses", || {
        daemon.stderr_so_far().contains("route order.*=http")
            && daemon
                .stderr_so_far()
                .contains(" paused: 5 deliveries in a row")
    });
    // The other route flows meanwhile.
    common::wait_until(Duration::from_secs(60), "user events delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE event_type = 'user.created' AND status = 'done'")
            == 40
    });
    // Refused for a while: no churn, no attempts used.
    let before = attempts_sum(&db);
    // Then the receiver answers 503 to the probes, then recovers.
    let up = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let (up2, delivered2) = (Arc::clone(&up), Arc::clone(&delivered));
    let receiver = Receiver::start_on(refused.listen(), false, move |req| {
        if up2.load(Ordering::SeqCst) {
            delivered2.lock().unwrap().push(req.event_id());
            Reply::Answer(200, vec![], String::new())
        } else {
            Reply::Answer(503, vec![], "maintenance".into())
        }
    });
    common::wait_until(Duration::from_secs(90), "two probes got 503", || {
        receiver.requests().len() >= 2
    });
    up.store(true, Ordering::SeqCst);
    common::wait_until(Duration::from_secs(240), "every event delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 190
    });
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status <> 'done'"),
        0,
        "{out}"
    );
    // Delivered once each (the 503s were answers, not deliveries).
    let ok = delivered.lock().unwrap().clone();
    let base = db.count("SELECT min(id) FROM outbox_event WHERE event_type = 'order.created'");
    assert_exactly_once(150, ok.iter().map(|id| id - base + 1));
    // Attempts: one per event, plus the failures that paused the route; the waiting and the
    // probes used none.
    let total = attempts_sum(&db);
    assert!(
        total < 190 + 2 * TRIP,
        "{total} attempts for 190 events\n{out}"
    );
    assert!(before <= 40 + TRIP - 1 + 150, "{before}\n{out}");
    assert!(
        out.stderr.lines().any(|l| l.contains("INFO")
            && l.contains("route order.*=http")
            && l.contains("resumed after")),
        "{out}"
    );
}

#[test]
fn a_pipe_bridge_answering_unavailable_pauses_its_route_until_the_broker_is_back() {
    let db = db_with_events(120, "x");
    let dir = TempDir::new("outage-pipe");
    let (publisher, down) = unavailable_while_down(&dir);
    let out = paused_then_recovered(&db, &route(&publisher), 120, || {
        std::fs::remove_file(&down).unwrap()
    });
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(120, ids);
    let total = attempts_sum(&db);
    assert!(
        total < 120 + 2 * TRIP,
        "{total} attempts for 120 events\n{out}"
    );
    assert!(out.stderr.contains("resumed after"), "{out}");
}

#[test]
fn exec_exit_75_is_the_destination_being_unavailable() {
    let db = db_with_events(60, "x");
    let dir = TempDir::new("outage-exec");
    let flag = dir.join("down");
    std::fs::write(&flag, "").unwrap();
    let cmd_line = format!("exec:sh -c 'test -e {} && exit 75; exit 0'", flag.display());
    let out = paused_then_recovered(&db, &format!("*={cmd_line}"), 60, || {
        std::fs::remove_file(&flag).unwrap()
    });
    let total = attempts_sum(&db);
    assert!(
        total < 60 + 3 * TRIP,
        "{total} attempts; by event: {:?}\n{out}",
        db.client()
            .query(
                "SELECT id, attempts FROM outbox_event WHERE attempts > 1 ORDER BY id",
                &[]
            )
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_poison_event_among_deliveries_does_not_pause_its_route_and_goes_dead_as_before() {
    let db = db_with_events(60, "x");
    // The others come due one every 50 ms, so deliveries fall between the poison event's
    // failures (a poison event alone cannot be told from an outage: see `health`).
    db.client()
        .execute(
            "UPDATE outbox_event SET next_run_at = now() + id * interval '50 ms' WHERE id <> 7",
            &[],
        )
        .unwrap();
    let dir = TempDir::new("outage-poison");
    let body = format!(
        "{READ}\n  if (( id == 7 )); then echo \"unavailable $id always\"; \
         else echo \"ok $id\"; fi\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let mut cmd = common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        &route(&publisher),
        "--poll-interval",
        "0.02",
        "--retry-backoff",
        "0.1",
        "--retry-backoff-max",
        "0.25",
        "--max-attempts",
        "6",
    ]);
    let daemon = common::spawn(&mut cmd);
    common::wait_until(
        Duration::from_secs(120),
        "59 done and the poison event dead",
        || db.count("SELECT count(*) FROM outbox_event WHERE status IN ('done', 'dead')") == 60,
    );
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains(" paused: "), "{out}");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE status = 'dead' AND id = 7 AND attempts = 6"
        ),
        1,
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        59,
        "{out}"
    );
}

#[test]
fn a_lone_event_failing_in_an_outage_waits_instead_of_going_dead() {
    let db = db_with_events(1, "x");
    let dir = TempDir::new("outage-lone");
    let (publisher, down) = unavailable_while_down(&dir);
    let out = paused_then_recovered(&db, &route(&publisher), 1, || {
        std::fs::remove_file(&down).unwrap()
    });
    // Four failed attempts, then it waited for the probes instead of its fifth.
    let attempts = db.count("SELECT attempts FROM outbox_event");
    assert!(attempts <= TRIP, "{attempts}\n{out}");
    assert!(out.stderr.contains("resumed after"), "{out}");
}

#[test]
fn a_paused_route_shows_in_the_metrics_and_the_time_paused_adds_up() {
    use super::metrics::{daemon, scrape, value};
    let db = db_with_events(40, "x");
    let dir = TempDir::new("outage-metrics");
    let (publisher, down) = unavailable_while_down(&dir);
    let target = format!("pipe:{}", publisher.display());
    let (sup, port) = daemon(
        &db,
        &["--route", &format!("*={target}"), "--retry-backoff", "1"],
    );
    let label = [("route", target.as_str())];
    common::wait_until(Duration::from_secs(60), "the gauge says paused", || {
        value(&scrape(port), "dispatchbox_route_paused", &label) == 1.0
    });
    std::fs::remove_file(&down).unwrap();
    common::wait_until(Duration::from_secs(240), "every event delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 40
    });
    common::wait_until(Duration::from_secs(30), "the gauge says up", || {
        value(&scrape(port), "dispatchbox_route_paused", &label) == 0.0
    });
    let paused = value(
        &scrape(port),
        "dispatchbox_route_paused_seconds_total",
        &label,
    );
    assert!(paused > 0.0, "{paused}");
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn a_bridge_that_keeps_exiting_once_it_worked_pauses_its_route_instead_of_stopping_the_run() {
    let db = db_with_events(100, "x");
    let dir = TempDir::new("outage-exiting");
    let down = dir.join("down");
    // Exits when its broker is "down": at start-up, or on the next event.
    let body = format!(
        "[[ -e $dir/down ]] && {{ echo 'cannot reach the broker' >&2; exit 3; }}\n{READ}\n  \
         [[ -e $dir/down ]] && exit 3\n  echo \"delivered $id\" >> \"$dir/log\"\n  \
         if (( ++n == 10 )) && [[ ! -e $dir/once ]]; then touch \"$dir/once\" \"$dir/down\"; fi\n  \
         echo \"ok $id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = paused_then_recovered(&db, &route(&publisher), 100, || {
        std::fs::remove_file(&down).unwrap()
    });
    assert!(
        !out.stderr.contains("exits without answering ("),
        "not broken\n{out}"
    );
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(100, ids);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0,
        "{out}"
    );
    let total = attempts_sum(&db);
    assert!(
        total < 100 + 2 * TRIP,
        "{total} attempts for 100 events\n{out}"
    );
}
