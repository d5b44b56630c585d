//! Wake-ups by notification: `migrate --notify on` installs the insert trigger (`off` drops
//! it, plain `migrate` leaves it as it is), an idle worker is woken long before its poll
//! interval, workers do not LISTEN with `--notify off` or (auto) without the trigger, a
//! terminated LISTEN connection is re-established, and a two-process drain ends. No timing
//! assertions: only deadlines far above what is expected.

use super::{assert_exactly_once, delivered_ids};
use crate::common::{self, Spawned, TestDb};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

fn trigger_count(db: &TestDb) -> i64 {
    db.count(
        "SELECT count(*) FROM pg_trigger
         WHERE tgrelid = 'outbox_event'::regclass AND tgname = 'outbox_event_notify'",
    )
}

fn function_count(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM pg_proc WHERE proname = 'outbox_event_notify'")
}

/// The backends of this database that last ran a LISTEN: (pid) of each.
fn listeners(db: &TestDb) -> Vec<i32> {
    db.client()
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query LIKE '%LISTEN %'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn insert_one(db: &TestDb) {
    common::insert_events(&mut db.client(), "outbox_event", 1, "order.created");
}

/// A worker with a 60 s poll interval, once ready.
fn idle_worker(db: &TestDb, extra: &[&str]) -> Spawned {
    let w = common::spawn(
        common::dispatchbox()
            .args([
                "--dsn",
                &db.dsn,
                "--poll-interval",
                "60",
                "--route",
                "*=stdout",
            ])
            .args(extra),
    );
    common::wait_until(DEADLINE, "the worker is ready", || {
        w.stderr_so_far().contains("worker ready")
    });
    w
}

fn stop(w: Spawned) -> common::Run {
    w.signal("TERM");
    let out = w.wait(DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    out
}

/// A migrated database with the notify trigger.
fn notify_db() -> TestDb {
    let db = common::test_db();
    let out = common::run(
        common::dispatchbox().args(["migrate", "--dsn", &db.dsn, "--notify", "on"]),
        DEADLINE,
    );
    assert_eq!(out.code, Some(0), "{out}");
    db
}

#[test]
fn migrate_installs_the_trigger_only_when_asked_and_drops_it_when_asked() {
    let db = common::test_db();
    db.migrate();
    assert_eq!(
        (trigger_count(&db), function_count(&db)),
        (0, 0),
        "not a default"
    );
    let migrate = |args: &[&str]| {
        let out = common::run(
            common::dispatchbox()
                .args(["migrate", "--dsn", &db.dsn])
                .args(args),
            DEADLINE,
        );
        assert_eq!(out.code, Some(0), "{out}");
        out
    };
    let out = migrate(&["--notify", "on"]);
    assert!(out.stderr.contains("is ready"), "{out}");
    assert_eq!((trigger_count(&db), function_count(&db)), (1, 1));
    // auto (the default) leaves it as it is.
    let out = migrate(&[]);
    assert!(out.stderr.contains("already up to date"), "{out}");
    assert_eq!(trigger_count(&db), 1);
    let out = migrate(&["--notify", "off"]);
    assert!(out.stderr.contains("is ready"), "{out}");
    assert_eq!((trigger_count(&db), function_count(&db)), (0, 0));
    let out = migrate(&["--notify", "off"]);
    assert!(out.stderr.contains("already up to date"), "{out}");
    // The variable is derived from the flag.
    let out = common::run(
        common::dispatchbox()
            .args(["migrate", "--dsn", &db.dsn])
            .env("DISPATCHBOX_NOTIFY", "on"),
        DEADLINE,
    );
    assert!(out.stderr.contains("is ready"), "{out}");
    assert_eq!((trigger_count(&db), function_count(&db)), (1, 1));
    // One notification per inserting statement (not per row).
    let mut c = db.client();
    c.batch_execute("LISTEN outbox_event_notify").unwrap();
    common::insert_events(&mut c, "outbox_event", 5, "order.created");
    c.batch_execute("SELECT 1").unwrap();
    let got: Vec<_> = {
        use postgres::fallible_iterator::FallibleIterator;
        c.notifications().iter().collect().unwrap()
    };
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].channel(), "outbox_event_notify");
}

#[test]
fn a_notification_wakes_an_idle_worker_long_before_its_poll() {
    let db = notify_db();
    let w = idle_worker(&db, &[]);
    common::wait_until(DEADLINE, "the worker LISTENs", || listeners(&db).len() == 1);
    insert_one(&db);
    common::wait_until(DEADLINE, "the event is delivered", || {
        w.stdout_so_far().contains("\"id\":1,")
    });
    let out = stop(w);
    assert_eq!(delivered_ids(&out.stdout), [1], "{out}");
}

#[test]
fn with_notify_off_a_worker_does_not_listen_and_waits_for_its_poll() {
    let db = notify_db();
    let w = idle_worker(&db, &["--notify", "off"]);
    insert_one(&db);
    // Absence can only be shown by waiting a while: far less than the 60 s poll, far more
    // than a notified worker takes.
    std::thread::sleep(Duration::from_secs(2));
    assert!(listeners(&db).is_empty());
    assert_eq!(sessions(&db), 1, "one connection per worker without LISTEN");
    assert_eq!(w.stdout_so_far(), "", "delivered before the poll");
    let out = stop(w);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'"),
        1,
        "{out}"
    );
}

fn sessions(db: &TestDb) -> i64 {
    db.count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'dispatchbox'",
    )
}

#[test]
fn without_the_trigger_a_worker_does_not_listen_unless_told_to() {
    let db = common::test_db();
    db.migrate();
    let w = idle_worker(&db, &[]);
    assert!(
        w.stderr_so_far().contains("poll 60s, owner"),
        "{}",
        w.stderr_so_far()
    );
    assert_eq!(sessions(&db), 1);
    stop(w);
    let w = idle_worker(&db, &["--notify", "on"]);
    common::wait_until(DEADLINE, "the worker LISTENs", || listeners(&db).len() == 1);
    let out = stop(w);
    assert!(out.stderr.contains("has no notify trigger"), "{out}");
    assert!(out.stderr.contains("poll 60s + notifications"), "{out}");
}

#[test]
fn a_worker_survives_its_listen_connection_being_terminated() {
    let db = notify_db();
    let w = idle_worker(&db, &[]);
    common::wait_until(DEADLINE, "the worker LISTENs", || listeners(&db).len() == 1);
    let first = listeners(&db)[0];
    db.client()
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    common::wait_until(DEADLINE, "the worker LISTENs again", || {
        let now = listeners(&db);
        now.len() == 1 && now[0] != first
    });
    insert_one(&db);
    common::wait_until(DEADLINE, "the event is delivered", || {
        w.stdout_so_far().contains("\"id\":1,")
    });
    let out = stop(w);
    assert!(out.stderr.contains("LISTEN connection lost"), "{out}");
    assert!(
        out.stderr.contains("LISTEN connection re-established"),
        "{out}"
    );
}

#[test]
fn a_drain_with_two_processes_ends_at_the_default_poll_interval() {
    let db = super::db_with_events(3000, "order.created");
    let out = common::run(
        common::dispatchbox().args([
            "--dsn",
            &db.dsn,
            "--drain",
            "--processes",
            "2",
            "--batch-size",
            "100",
            "--route",
            "*=stdout",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(3000, delivered_ids(&out.stdout));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        3000
    );
}
