//! `--retain-done`: the daemon removes the done events delivered longer ago than the
//! retention, and nothing else; one connection of the supervisor does it however many worker
//! processes run; an archive table receives the rows; a role that may not delete gets a
//! warning while delivery goes on.

use super::metrics::{daemon, scrape, value};
use super::{assert_exactly_once, delivered_ids};
use crate::common::{self, wait_until, TestDb};
use std::time::Duration;

const REMOVED: &str = "dispatchbox_retention_removed_total";

/// `n` rows of `status` created `created` ago and delivered `delivered` ago (SQL intervals;
/// NULL for none), with next_run_at far ahead so that no worker takes a waiting one.
fn insert_rows(db: &TestDb, n: i64, status: &str, created: &str, delivered: Option<&str>) {
    let delivered = delivered.map_or("NULL".to_string(), |d| format!("now() - interval '{d}'"));
    db.client()
        .batch_execute(&format!(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, \
             status, created_at, delivered_at, next_run_at) \
             SELECT 'order', g::text, 'kept.{status}', '{{}}', '{status}', \
                    now() - interval '{created}', {delivered}, now() + interval '1 day' \
             FROM generate_series(1, {n}) AS g"
        ))
        .unwrap();
}

fn old_done(db: &TestDb) -> i64 {
    db.count(
        "SELECT count(*) FROM outbox_event WHERE status = 'done' \
         AND delivered_at < now() - interval '1 hour'",
    )
}

/// Sessions of the retention on this database now.
fn retention_sessions(db: &TestDb) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dispatchbox retention' \
         AND datname = '{}'",
        db.name
    ))
}

#[test]
fn retention_removes_only_old_done_rows_on_one_connection_for_two_processes() {
    let db = common::test_db();
    db.migrate();
    // Ids 1..50: delivered by this run (young done rows then).
    common::insert_events(&mut db.client(), "outbox_event", 50, "order.created");
    // Above them: old done rows (created before the young ones' ids: out of id order, only
    // a full sweep finds them), young done rows, and old rows that are not done.
    insert_rows(&db, 6000, "done", "3 hours", Some("2 hours"));
    insert_rows(&db, 10, "done", "3 hours", Some("1 minute"));
    insert_rows(&db, 10, "dead", "3 hours", None);
    insert_rows(&db, 10, "retry", "3 hours", None);
    insert_rows(&db, 10, "pending", "3 hours", None);
    let (sup, port) = daemon(
        &db,
        &[
            "--processes",
            "2",
            "--retain-done",
            "1h",
            "--route",
            "order.*=stdout",
            "--route",
            "kept.*=exec:false",
        ],
    );
    let one_at_most = || {
        let sessions = retention_sessions(&db);
        assert!(
            sessions <= 1,
            "{sessions} retention sessions\n{}",
            sup.stderr_so_far()
        );
        sessions
    };
    wait_until(
        Duration::from_secs(90),
        "the old done rows are gone",
        || {
            one_at_most();
            old_done(&db) == 0
                && value(&scrape(port), REMOVED, &[]) == 6000.0
                && delivered_ids(&sup.stdout_so_far()).len() == 50
        },
    );
    // The connection is kept between passes (after a failed statement, the next pass opens
    // it again): one session for two worker processes.
    wait_until(
        Duration::from_secs(60),
        "the retention's one session",
        || one_at_most() == 1,
    );
    // The lowest delivered rows age (now in id order): a quick sweep takes them.
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET created_at = now() - interval '3 hours', \
             delivered_at = now() - interval '2 hours' WHERE id <= 5",
        )
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the aged rows are gone too",
        || one_at_most() <= 1 && old_done(&db) == 0 && value(&scrape(port), REMOVED, &[]) == 6005.0,
    );
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(50, delivered_ids(&out.stdout));
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 45 + 40);
    for (status, n) in [("done", 55), ("dead", 10), ("retry", 10), ("pending", 10)] {
        let sql = format!("SELECT count(*) FROM outbox_event WHERE status = '{status}'");
        assert_eq!(db.count(&sql), n, "{status}");
    }
    assert!(
        out.stderr
            .contains("retention: done events delivered more than 1 h 0 min ago are deleted"),
        "{out}"
    );
    assert!(
        out.stderr.contains("retention: 6000 done event(s)"),
        "one line for the first pass\n{out}"
    );
}

/// The rows the first INFO line about removed rows counts (the first pass's).
fn first_removed(stderr: &str) -> Option<u64> {
    let (_, rest) = stderr.split_once("retention: ")?;
    let rest = &rest[..rest.find(" done event(s)")?];
    match rest.parse() {
        Ok(n) => Some(n),
        Err(_) => first_removed(&stderr[stderr.find("retention: ")? + 11..]),
    }
}

/// Issue 23 ("never slows delivery measurably"): beside a backlog (every claim comes back
/// full), retention yields: spans of 500 ids at least a second apart, so its first pass (5 s)
/// removes at most 2,500 rows where it used to take all 3,000 at once; and it is never
/// starved: the old rows all go while the backlog is still there.
#[test]
fn under_a_backlog_retention_yields_to_delivery_and_still_removes_old_rows() {
    let db = common::test_db();
    db.migrate();
    // Ids 1..3000: old done rows; above them the backlog, slow to deliver (one at a time,
    // ~15 a second: minutes of full claims).
    insert_rows(&db, 3000, "done", "3 hours", Some("2 hours"));
    common::insert_events(&mut db.client(), "outbox_event", 2000, "order.created");
    let (sup, port) = daemon(
        &db,
        &[
            "--retain-done",
            "1h",
            "--batch-size",
            "1",
            "--threads",
            "1",
            "--route",
            "order.*=exec:sleep 0.05",
        ],
    );
    wait_until(
        Duration::from_secs(180),
        "the old done rows are gone beside the backlog",
        || old_done(&db) == 0,
    );
    let pending = db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'");
    wait_until(Duration::from_secs(60), "the removals counted", || {
        value(&scrape(port), REMOVED, &[]) == 3000.0
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(pending > 0, "the backlog lasted while the rows went\n{out}");
    let first = first_removed(&out.stderr);
    assert!(
        first.is_some_and(|n| n <= 2500),
        "the first pass took {first:?} rows beside the backlog\n{out}"
    );
}

#[test]
fn a_missing_archive_table_is_one_clear_warning_until_it_exists_then_rows_move() {
    let db = common::test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 20, "order.created");
    insert_rows(&db, 30, "done", "3 hours", Some("2 hours"));
    let (sup, port) = daemon(
        &db,
        &["--retain-done", "1h", "--retain-archive", "outbox_archive"],
    );
    wait_until(
        Duration::from_secs(60),
        "the warning and the delivery",
        || {
            sup.stderr_so_far()
                .contains("cannot remove old done events")
                && delivered_ids(&sup.stdout_so_far()).len() == 20
        },
    );
    let warned = sup.stderr_so_far();
    assert!(
        warned.contains(
            "retention: cannot remove old done events (--retain-archive: table \
             outbox_archive does not exist; create it first, e.g. CREATE TABLE \
             \"outbox_archive\" (LIKE \"outbox_event\")); delivery goes on"
        ),
        "{warned}"
    );
    assert_eq!(old_done(&db), 30);
    db.client()
        .batch_execute("CREATE TABLE outbox_archive (LIKE outbox_event)")
        .unwrap();
    wait_until(Duration::from_secs(60), "the rows are moved", || {
        old_done(&db) == 0 && value(&scrape(port), REMOVED, &[]) == 30.0
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(20, delivered_ids(&out.stdout));
    assert_eq!(db.count("SELECT count(*) FROM outbox_archive"), 30);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_archive WHERE status = 'done'"),
        30
    );
    assert_eq!(
        out.stderr.matches("cannot remove old done events").count(),
        1,
        "{out}"
    );
    assert!(out.stderr.contains("retention works again"), "{out}");
}

#[test]
fn a_role_that_may_not_delete_gets_one_warning_and_delivery_goes_on() {
    let db = common::local_test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 20, "order.created");
    insert_rows(&db, 30, "done", "3 hours", Some("2 hours"));
    let role = format!("{}_app", db.name);
    db.client()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'app-pw'; \
             GRANT SELECT, INSERT, UPDATE ON outbox_event TO {role}"
        ))
        .unwrap();
    let app_dsn = format!(
        "host=127.0.0.1 port={} user={role} password=app-pw dbname={} sslmode=disable",
        common::local().port(),
        db.name
    );
    let sup = common::spawn(common::dispatchbox().args([
        "--dsn",
        &app_dsn,
        "--poll-interval",
        "0.05",
        "--retain-done",
        "1h",
    ]));
    wait_until(Duration::from_secs(60), "the warning", || {
        sup.stderr_so_far().contains(
            "retention: cannot remove old done events (database error: permission denied for \
             table outbox_event (42501)); delivery goes on, retrying every 10 s",
        )
    });
    wait_until(Duration::from_secs(60), "the delivery", || {
        delivered_ids(&sup.stdout_so_far()).len() == 20
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(20, delivered_ids(&out.stdout));
    assert_eq!(old_done(&db), 30);
    assert_eq!(
        out.stderr.matches("cannot remove old done events").count(),
        1,
        "{out}"
    );
}

#[test]
fn retention_flags_are_checked_before_anything_starts() {
    let db = common::test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 1, "order.created");
    for (args, want) in [
        (
            &["--retain-archive", "outbox_archive"][..],
            "--retain-archive needs --retain-done: the rows are moved when retention deletes them",
        ),
        (
            &["--retain-done", "7"][..],
            "--retain-done 7: give a unit, e.g. 7d or 7h",
        ),
        (
            &["--retain-done", "1h", "--retain-archive", "a.b.c"][..],
            "--retain-archive `a.b.c`",
        ),
    ] {
        let run = super::drain(&db, args);
        assert_eq!(run.code, Some(2), "{run}");
        assert!(run.stderr.contains(want), "{want}\n{run}");
        assert!(run.stdout.is_empty(), "{run}");
    }
    let mut cmd = common::dispatchbox();
    cmd.env("DISPATCHBOX_RETAIN_DONE", "2h");
    cmd.env("DISPATCHBOX_RETAIN_ARCHIVE", "outbox_archive");
    let run = super::drain_cmd(cmd, &db, &["--max-runtime", "1"]);
    assert!(
        run.stderr.contains(
            "retention: done events delivered more than 2 h 0 min ago are moved to outbox_archive"
        ),
        "{run}"
    );
}
