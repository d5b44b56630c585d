//! The event life cycle through the binary: done, retry with backoff, dead, permanent
//! failure, panicking handlers, unrouted types, and exact column values after each.

use super::{db_with_events, drain, drain_cmd, example_bin};
use crate::common::{self, TestDb};
use std::process::Command;

struct Row {
    status: String,
    attempts: i32,
    /// next_run_at - now(), in seconds.
    due_in: f64,
    last_error: Option<String>,
    locked_by: Option<String>,
    delivered: bool,
}

fn row(db: &TestDb, id: i64) -> Row {
    let r = db
        .client()
        .query_one(
            "SELECT status, attempts, extract(epoch FROM next_run_at - now())::float8,
                    last_error, locked_by, delivered_at IS NOT NULL
             FROM outbox_event WHERE id = $1",
            &[&id],
        )
        .unwrap();
    Row {
        status: r.get(0),
        attempts: r.get(1),
        due_in: r.get(2),
        last_error: r.get(3),
        locked_by: r.get(4),
        delivered: r.get(5),
    }
}

fn make_due(db: &TestDb) {
    db.client()
        .execute(
            "UPDATE outbox_event SET next_run_at = now() WHERE status = 'retry'",
            &[],
        )
        .unwrap();
}

#[test]
fn success_marks_done_with_one_attempt() {
    let db = db_with_events(5, "order.created");
    let out = drain(&db, &["--route", "*=stdout"]);
    assert_eq!(out.code, Some(0), "{out}");
    for id in 1..=5 {
        let r = row(&db, id);
        assert_eq!(r.status, "done", "{out}");
        assert_eq!(r.attempts, 1);
        assert!(r.delivered);
        assert_eq!(r.locked_by, None);
        assert_eq!(r.last_error, None);
    }
}

#[test]
fn failure_retries_with_backoff_then_dies_at_max_attempts() {
    let db = db_with_events(1, "order.created");
    let args = [
        "--route",
        "*=exec:sh -c 'echo delivery refused >&2; exit 3'",
        "--retry-backoff",
        "100",
        "--retry-backoff-max",
        "1000",
        "--max-attempts",
        "3",
    ];
    // Attempt 1: retry, due in 100 s ± 25 %.
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "{out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("retry", 1), "{out}");
    assert!((60.0..=125.5).contains(&r.due_in), "due in {}", r.due_in);
    let err = r.last_error.unwrap();
    assert!(
        err.contains("exit code 3") && err.contains("delivery refused"),
        "{err}"
    );
    assert_eq!(r.locked_by, None);

    // Not due yet: a drain does nothing.
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(row(&db, 1).attempts, 1);

    // Attempt 2: the delay doubles (200 s ± 25 %).
    make_due(&db);
    drain(&db, &args);
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("retry", 2));
    assert!((135.0..=250.5).contains(&r.due_in), "due in {}", r.due_in);

    // Attempt 3 = --max-attempts: dead.
    make_due(&db);
    drain(&db, &args);
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 3));
    assert!(r.last_error.unwrap().contains("delivery refused"));
    assert!(!r.delivered);

    // Dead stays dead.
    make_due(&db);
    drain(&db, &args);
    assert_eq!(row(&db, 1).attempts, 3);
}

#[test]
fn backoff_is_capped() {
    let db = db_with_events(1, "x");
    db.client()
        .execute("UPDATE outbox_event SET attempts = 20", &[])
        .unwrap();
    let out = drain(
        &db,
        &[
            "--route",
            "*=exec:false",
            "--max-attempts",
            "50",
            "--retry-backoff",
            "30",
            "--retry-backoff-max",
            "60",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("retry", 21));
    assert!(r.due_in <= 60.5 && r.due_in >= 30.0, "due in {}", r.due_in);
}

#[test]
fn exec_exit_65_is_a_permanent_failure() {
    let db = db_with_events(1, "x");
    let out = drain(
        &db,
        &["--route", "*=exec:sh -c 'echo malformed >&2; exit 65'"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 1));
    assert!(r.last_error.unwrap().contains("malformed"));
}

#[test]
fn an_event_whose_final_attempt_was_lost_is_dead_not_redelivered() {
    // A worker died holding the last attempt: attempts = max, lease expired.
    let db = db_with_events(1, "x");
    db.client()
        .execute(
            "UPDATE outbox_event SET attempts = 3, locked_by = 'gone:1:w0:0', next_run_at = now() - interval '1 s'",
            &[],
        )
        .unwrap();
    let out = drain(&db, &["--route", "*=stdout", "--max-attempts", "3"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.is_empty(), "redelivered: {out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 3));
    let e = r.last_error.unwrap();
    assert!(e.contains("the lease of the final attempt expired"), "{e}");
    assert!(
        out.stderr
            .contains("is dead: attempts exhausted: the lease"),
        "{out}"
    );
}

#[test]
fn an_event_requeued_by_hand_with_attempts_used_up_says_so() {
    // An operator set a dead event back to pending without resetting attempts: no lease was
    // ever lost, so "worker died?" would send them looking for a crash that never happened.
    let db = db_with_events(1, "x");
    db.client()
        .execute(
            "UPDATE outbox_event SET attempts = 3, locked_by = NULL, next_run_at = now()",
            &[],
        )
        .unwrap();
    let out = drain(&db, &["--route", "*=stdout", "--max-attempts", "3"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.is_empty(), "delivered: {out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("dead", 3));
    let e = r.last_error.unwrap();
    assert_eq!(
        e,
        "attempts exhausted: re-queued with all 3 attempts used (reset attempts to 0 to retry it)"
    );
    assert!(
        out.stderr
            .contains("is dead: attempts exhausted: re-queued with all 3 attempts used"),
        "{out}"
    );
    assert!(!out.stderr.contains("worker died"), "{out}");
}

fn example(db: &TestDb, args: &[&str]) -> crate::common::Run {
    let mut cmd = Command::new(example_bin());
    common::remove_env(&mut cmd, &["DISPATCHBOX_", "PG"]);
    drain_cmd(cmd, db, args)
}

#[test]
fn compiled_in_handlers_outcomes_and_panics() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    for t in ["demo.ok", "demo.reject", "demo.flaky", "demo.panic"] {
        common::insert_events(&mut c, "outbox_event", 1, t);
    }
    let out = example(
        &db,
        &[
            "--retry-backoff",
            "0",
            "--max-attempts",
            "2",
            "--threads",
            "2",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("handled 1"), "{out}");
    let ok = row(&db, 1);
    assert_eq!((ok.status.as_str(), ok.attempts), ("done", 1));
    let rejected = row(&db, 2);
    assert_eq!((rejected.status.as_str(), rejected.attempts), ("dead", 1));
    assert_eq!(
        rejected.last_error.as_deref(),
        Some("rejected by the demo handler")
    );
    // Failed once, succeeded on the retry (backoff 0 makes it due again during the drain).
    let flaky = row(&db, 3);
    assert_eq!(
        (flaky.status.as_str(), flaky.attempts),
        ("done", 2),
        "{out}"
    );
    // The panic is caught, counted as a failed attempt each time, and the process carries on.
    let panicked = row(&db, 4);
    assert_eq!(
        (panicked.status.as_str(), panicked.attempts),
        ("dead", 2),
        "{out}"
    );
    let err = panicked.last_error.unwrap();
    assert!(
        err.contains("handler panicked") && err.contains("demo handler exploded on event 4"),
        "{err}"
    );
    assert!(out.stderr.contains("panic"), "{out}");
}

#[test]
fn unrouted_types_stay_pending_and_are_reported() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 3, "order.created");
    common::insert_events(&mut c, "outbox_event", 2, "user.registered");
    common::insert_events(&mut c, "outbox_event", 1, "orderly");
    let out = drain(&db, &["--route", "order.*=stdout"]);
    assert_eq!(out.code, Some(0), "{out}");
    let mut ids = super::delivered_ids(&out.stdout);
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3], "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        3
    );
    assert!(out.stderr.contains("user.registered (2)"), "{out}");
    assert!(out.stderr.contains("orderly (1)"), "{out}");
}

#[test]
fn routes_send_types_to_the_most_specific_target() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 2, "order.created");
    common::insert_events(&mut c, "outbox_event", 2, "order.paid");
    common::insert_events(&mut c, "outbox_event", 2, "user.registered");
    let dir = common::TempDir::new("routes");
    let file = dir.join("paid.log");
    let exec = format!("order.paid=exec:sh -c 'cat >> {}'", file.display());
    let out = drain(
        &db,
        &[
            "--route",
            "order.*=stdout",
            "--route",
            &exec,
            "--route",
            "*=stdout",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let mut stdout_ids = super::delivered_ids(&out.stdout);
    stdout_ids.sort();
    assert_eq!(stdout_ids, vec![1, 2, 5, 6], "{out}");
    let paid = std::fs::read_to_string(&file).unwrap();
    let mut paid_ids = super::delivered_ids(&paid);
    paid_ids.sort();
    assert_eq!(paid_ids, vec![3, 4]);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        6
    );
}

#[test]
fn custom_table_in_its_own_schema() {
    let db = common::test_db();
    db.client().batch_execute("CREATE SCHEMA \"Ops\"").unwrap();
    let out = common::run(
        common::dispatchbox().args(["migrate", "--dsn", &db.dsn, "--table", "Ops.Events"]),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    common::insert_events(&mut db.client(), "Ops.Events", 4, "x");
    let out = drain(&db, &["--table", "Ops.Events"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 4, "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM \"Ops\".\"Events\" WHERE status = 'done'"),
        4
    );
    let out = common::run(
        common::dispatchbox().args(["stats", "--dsn", &db.dsn, "--table", "Ops.Events"]),
        std::time::Duration::from_secs(60),
    );
    assert!(out.stdout.contains("done 4"), "{out}");
}

#[test]
fn drain_waits_for_an_event_leased_by_a_dead_worker() {
    let db = db_with_events(3, "x");
    // A worker died holding event 2; its lease runs out in 2 s.
    db.client()
        .execute(
            "UPDATE outbox_event SET attempts = 1, locked_by = 'gone:1:w0:0', next_run_at = now() + interval '2 s' WHERE id = 2",
            &[],
        )
        .unwrap();
    let out = drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    let mut ids = super::delivered_ids(&out.stdout);
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3], "{out}");
    assert_eq!(
        db.count("SELECT attempts FROM outbox_event WHERE id = 2"),
        2
    );
}

#[test]
fn a_retry_due_at_once_is_retried_within_the_same_drain() {
    let db = db_with_events(1, "demo.flaky");
    let out = example(
        &db,
        &[
            "--retry-backoff",
            "0",
            "--threads",
            "1",
            "--batch-size",
            "1",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let r = row(&db, 1);
    assert_eq!((r.status.as_str(), r.attempts), ("done", 2), "{out}");
}

#[test]
fn drain_does_not_wait_forever_for_a_live_worker_extending_its_lease() {
    let db = db_with_events(1, "slow");
    // A daemon holds the event for 8 s, extending its 1 s lease as it goes.
    let daemon = common::spawn(common::dispatchbox().args([
        "--dsn",
        &db.dsn,
        "--lease",
        "1",
        "--route",
        "slow=exec:sleep 8",
        "--poll-interval",
        "0.05",
    ]));
    common::wait_until(
        std::time::Duration::from_secs(30),
        "the daemon holds the event",
        || db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL") == 1,
    );
    let out = drain(&db, &["--route", "slow=stdout"]);
    assert_eq!(out.code, Some(0), "{out}");
    // It ended while the daemon still held the event (its handler runs for 8 s), instead of
    // waiting for that handler.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE status <> 'done' AND locked_by IS NOT NULL"
        ),
        1,
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("waiting up to"), "{out}");
    daemon.signal("TERM");
    let d = daemon.wait(std::time::Duration::from_secs(30));
    assert_eq!(d.code, Some(0), "{d}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        1
    );
}
