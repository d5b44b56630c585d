//! The operators' commands against a real database holding events in every status: `status`
//! (counts, lag, in flight, JSON, threshold exit codes), `dead list/show/retry/purge`, `prune`
//! (also while workers deliver), `migrate --check/--print-sql`; and what a run says about
//! dead events (the WARN line, the drain summary, `--fail-on-dead`).

use super::{db_with_events, drain};
use crate::common::{self, dispatchbox, run, Run, TestDb};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// `dispatchbox <args> --dsn <db>`, run to its end.
fn admin(db: &TestDb, args: &[&str]) -> Run {
    run(dispatchbox().args(args).args(["--dsn", &db.dsn]), LONG)
}

/// 28 events: 1-10 done (1-5 delivered 10 days ago, 6-10 an hour ago), 11-13 dead, 14-15
/// retrying later, 16-17 leased by `host:1:w0:abc`, 18-20 due for 5 minutes, 21-25
/// `user.signup` due now, 26-28 `pay.x` pending but not due for an hour.
fn db_in_every_status() -> TestDb {
    let db = db_with_events(20, "order.created");
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 5, "user.signup");
    common::insert_events(&mut c, "outbox_event", 3, "pay.x");
    c.batch_execute(
        "UPDATE outbox_event SET status = 'done', attempts = 1,
                delivered_at = now() - interval '10 days' WHERE id <= 5;
         UPDATE outbox_event SET status = 'done', attempts = 1,
                delivered_at = now() - interval '1 hour' WHERE id BETWEEN 6 AND 10;
         UPDATE outbox_event SET status = 'dead', attempts = 3, last_error = 'boom ' || id
                WHERE id BETWEEN 11 AND 13;
         UPDATE outbox_event SET status = 'retry', attempts = 1, last_error = 'later',
                next_run_at = now() + interval '1 hour' WHERE id IN (14, 15);
         UPDATE outbox_event SET attempts = 1, locked_by = 'host:1:w0:abc',
                locked_at = now() - interval '2 s', next_run_at = now() + interval '30 s'
                WHERE id IN (16, 17);
         UPDATE outbox_event SET next_run_at = now() - interval '5 min' WHERE id BETWEEN 18 AND 20;
         UPDATE outbox_event SET next_run_at = now() + interval '1 hour' WHERE id >= 26;",
    )
    .unwrap();
    db
}

fn json(out: &Run) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn status_of(db: &TestDb, id: i64) -> (String, i32, Option<String>) {
    let r = db
        .client()
        .query_one(
            "SELECT status, attempts, last_error FROM outbox_event WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn status_shows_counts_lag_in_flight_and_types() {
    let db = db_in_every_status();
    let out = admin(&db, &["status", "--json", "--exact"]);
    assert_eq!(out.code, Some(0), "{out}");
    let v = json(&out);
    let counts = &v["counts"];
    assert_eq!(
        (
            &counts["pending"],
            &counts["retry"],
            &counts["done"],
            &counts["dead"],
            &counts["total"]
        ),
        (
            &serde_json::json!(13),
            &serde_json::json!(2),
            &serde_json::json!(10),
            &serde_json::json!(3),
            &serde_json::json!(28)
        ),
        "{out}"
    );
    assert_eq!(v["estimated"], serde_json::json!([]), "{out}");
    assert_eq!(v["due"], 8, "18-20 and 21-25: {out}");
    let lag = v["lag_seconds"].as_f64().unwrap();
    assert!((299.0..400.0).contains(&lag), "{out}");
    assert_eq!(v["in_flight"], 2, "{out}");
    assert_eq!(v["holders"][0]["locked_by"], "host:1:w0:abc", "{out}");
    assert_eq!(v["holders"][0]["events"], 2, "{out}");
    assert!(
        v["holders"][0]["oldest_claim_age_seconds"]
            .as_f64()
            .unwrap()
            >= 2.0
    );
    let types = v["types"].as_array().unwrap();
    let order = types
        .iter()
        .find(|t| t["event_type"] == "order.created")
        .unwrap();
    assert_eq!(
        (
            &order["pending"],
            &order["retry"],
            &order["due"],
            &order["in_flight"]
        ),
        (
            &serde_json::json!(5),
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(2)
        ),
        "{out}"
    );
    assert_eq!(v["ok"], true);

    // Without --exact, done and total are the planner's estimates (after ANALYZE: exact here,
    // the sample is the whole table); pending, retry and dead are still counted.
    db.client().batch_execute("ANALYZE outbox_event").unwrap();
    let v = json(&admin(&db, &["status", "--json"]));
    assert_eq!(v["estimated"], serde_json::json!(["done", "total"]));
    assert_eq!(v["counts"]["pending"], 13);
    assert_eq!(v["counts"]["dead"], 3);
    assert_eq!(v["counts"]["done"], 10, "{v}");
    assert_eq!(v["counts"]["total"], 28, "{v}");
    // The text form.
    let out = admin(&db, &["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    for want in [
        "pending   13\n",
        "done      ~10 (estimate",
        "in flight 2\n",
        "host:1:w0:abc: 2 event(s)",
        "user.signup 5 0 5 0",
    ] {
        assert!(out.stdout.contains(want), "{want}: {out}");
    }
    // `stats` keeps working as before.
    let out = admin(&db, &["stats"]);
    assert_eq!(
        out.stdout, "pending 13\nretry 2\ndone 10\ndead 3\n",
        "{out}"
    );
}

#[test]
fn status_thresholds_are_a_monitoring_check() {
    let db = db_in_every_status();
    let ok = admin(
        &db,
        &[
            "status",
            "--max-lag",
            "1h",
            "--max-dead",
            "3",
            "--max-due",
            "8",
        ],
    );
    assert_eq!(ok.code, Some(0), "{ok}");
    for (flag, value) in [("--max-lag", "60"), ("--max-dead", "2"), ("--max-due", "7")] {
        let out = admin(&db, &["status", "--json", flag, value]);
        assert_eq!(out.code, Some(7), "{flag} {value}: {out}");
        let v = json(&out);
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][0]["check"], &flag[2..]);
        assert_eq!(v["checks"][0]["ok"], false);
    }
    let out = admin(&db, &["status", "--max-lag", "soon"]);
    assert_eq!(out.code, Some(2), "{out}");
    let out = admin(&db, &["status", "--yes"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("--yes is not an option of `status`"),
        "{out}"
    );
}

#[test]
fn dead_events_are_listed_shown_requeued_and_then_delivered() {
    let db = db_in_every_status();
    let out = admin(&db, &["dead", "list"]);
    assert_eq!(out.code, Some(0), "{out}");
    let ids: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(ids, ["13", "12", "11"], "newest first: {out}");
    assert!(out.stdout.contains("order:12\tattempts 3\t"), "{out}");
    assert!(out.stdout.contains("boom 12"), "{out}");
    let v = json(&admin(
        &db,
        &["dead", "list", "--json", "--aggregate", "order:12"],
    ));
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["id"], 12);
    assert_eq!(v[0]["last_error"], "boom 12");
    let v = json(&admin(
        &db,
        &[
            "dead", "list", "--json", "--limit", "1", "--type", "order.*",
        ],
    ));
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        json(&admin(
            &db,
            &["dead", "list", "--json", "--type", "user.signup"]
        )),
        serde_json::json!([])
    );

    let out = admin(&db, &["dead", "show", "12"]);
    assert_eq!(out.code, Some(0), "{out}");
    for want in [
        "status: dead",
        "attempts: 3",
        "last_error: boom 12",
        "\"n\": 12",
        "created_at: ",
    ] {
        assert!(out.stdout.contains(want), "{want}: {out}");
    }
    let v = json(&admin(&db, &["dead", "show", "12", "--json"]));
    assert_eq!(v["payload"]["n"], 12, "{v}");

    // Retry needs a selection; --dry-run changes nothing.
    let out = admin(&db, &["dead", "retry"]);
    assert_eq!(out.code, Some(2), "{out}");
    let out = admin(&db, &["dead", "retry", "11", "--dry-run"]);
    assert_eq!(
        out.stdout, "1 dead event(s) would be requeued (dry run)\n",
        "{out}"
    );
    assert_eq!(status_of(&db, 11).0, "dead");
    let out = admin(&db, &["dead", "retry", "11", "12", "5"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "2 dead event(s) requeued\n", "{out}");
    assert!(
        out.stderr
            .contains("1 of the 3 id(s) given were not dead events"),
        "{out}"
    );
    assert_eq!(
        status_of(&db, 11),
        ("pending".into(), 0, Some("boom 11".into())),
        "attempts reset, last error kept"
    );
    assert_eq!(status_of(&db, 5).0, "done", "not dead: untouched");
    let out = admin(
        &db,
        &["dead", "retry", "--type", "order.*", "--since", "1h"],
    );
    assert_eq!(out.stdout, "1 dead event(s) requeued\n", "{out}");

    // A worker delivers them (with --max-attempts 3, which they had used up before).
    let out = drain(&db, &["--route", "order.*=stdout", "--max-attempts", "3"]);
    assert_eq!(out.code, Some(0), "{out}");
    for id in [11, 12, 13] {
        assert!(
            out.stdout.contains(&format!("{{\"id\":{id},")),
            "{id}: {out}"
        );
        assert_eq!(status_of(&db, id).0, "done");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0
    );
}

#[test]
fn dead_show_escapes_control_characters_and_its_json_stays_exact() {
    let db = db_with_events(1, "order.created");
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET status = 'dead', attempts = 3,
                    event_type = 'order' || chr(13) || chr(27) || '[2J',
                    aggregate_type = E'evil\\nstatus: done',
                    aggregate_id = E'1\\t2',
                    last_error = 'boom' || chr(27) || '[31m' || chr(13),
                    payload = jsonb_build_object('s', 'a' || chr(127) || chr(133) || chr(27) || 'b')",
        )
        .unwrap();
    let out = admin(&db, &["dead", "show", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    let raw: Vec<char> = out
        .stdout
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in {:?}",
        out.stdout
    );
    for want in [
        r"event_type: order\r\x1b[2J",
        r"aggregate_type: evil\nstatus: done",
        r"aggregate_id: 1\t2",
        r"last_error: boom\x1b[31m\r",
        r#""s": "a\x7f\u{85}\u001bb""#,
    ] {
        assert!(out.stdout.contains(want), "{want}: {:?}", out.stdout);
    }
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("status: done")),
        "a forged line: {:?}",
        out.stdout
    );
    let v: serde_json::Value =
        serde_json::from_str(&admin(&db, &["dead", "show", "1", "--json"]).stdout).unwrap();
    assert_eq!(v["event_type"], "order\r\x1b[2J");
    assert_eq!(v["aggregate_type"], "evil\nstatus: done");
    assert_eq!(v["aggregate_id"], "1\t2");
    assert_eq!(v["last_error"], "boom\x1b[31m\r");
    assert_eq!(v["payload"]["s"], "a\u{7f}\u{85}\u{1b}b");
}

#[test]
fn dead_purge_needs_yes_and_deletes_only_dead_events() {
    let db = db_in_every_status();
    let out = admin(&db, &["dead", "purge", "--all"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("needs --yes"), "{out}");
    let out = admin(&db, &["dead", "purge", "--all", "--type", "x", "--yes"]);
    assert_eq!(out.code, Some(2), "{out}");
    let out = admin(&db, &["dead", "purge", "--all", "--dry-run"]);
    assert_eq!(
        out.stdout, "3 dead event(s) would be deleted (dry run)\n",
        "{out}"
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 28);
    let out = admin(&db, &["dead", "purge", "13", "--yes"]);
    assert_eq!(out.stdout, "1 dead event(s) deleted\n", "{out}");
    let out = admin(&db, &["dead", "purge", "--all", "--yes"]);
    assert_eq!(out.stdout, "2 dead event(s) deleted\n", "{out}");
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 25);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0
    );
}

#[test]
fn prune_deletes_or_archives_only_old_done_events() {
    let db = db_in_every_status();
    let out = admin(&db, &["prune"]);
    assert_eq!(out.code, Some(2), "{out}");
    let out = admin(&db, &["prune", "--older-than", "7d", "--dry-run"]);
    assert!(out.stdout.starts_with("5 done event(s)"), "{out}");
    // Archive: the table must exist and have the columns.
    let out = admin(
        &db,
        &["prune", "--older-than", "7d", "--archive", "old_events"],
    );
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        out.stderr
            .contains("CREATE TABLE \"old_events\" (LIKE \"outbox_event\")"),
        "{out}"
    );
    db.client()
        .batch_execute("CREATE TABLE old_events (LIKE outbox_event)")
        .unwrap();
    let out = admin(
        &db,
        &["prune", "--older-than", "7d", "--archive", "old_events"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .starts_with("5 done event(s) delivered more than 7 d 0 h ago moved to old_events"),
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM old_events WHERE status = 'done' AND id <= 5"),
        5
    );
    let out = admin(&db, &["prune", "--older-than", "30m"]);
    assert!(out.stdout.starts_with("5 done event(s)"), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event"),
        18,
        "nothing else deleted"
    );
}

#[test]
fn prune_while_workers_deliver_loses_nothing_that_is_not_done() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    // 12,000 old done rows (three batches), then 3,000 to deliver while prune runs.
    common::insert_events(&mut c, "outbox_event", 12_000, "old");
    c.batch_execute(
        "UPDATE outbox_event SET status = 'done', attempts = 1,
                delivered_at = now() - interval '8 days'",
    )
    .unwrap();
    common::insert_events(&mut c, "outbox_event", 3_000, "new");
    let devnull = std::fs::File::create("/dev/null").unwrap();
    let workers = common::spawn(
        dispatchbox()
            .args(["--dsn", &db.dsn, "--processes", "2", "--batch-size", "20"])
            .args(["--route", "new=stdout", "--poll-interval", "0.05"])
            .stdout(devnull),
    );
    common::wait_until(LONG, "workers are delivering", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND event_type = 'new'")
            > 0
    });
    let out = admin(&db, &["prune", "--older-than", "7d"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout.split(' ').next(), Some("12000"), "{out}");
    common::wait_until(LONG, "every new event is done", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND event_type = 'new'")
            == 3000
    });
    workers.signal("TERM");
    let end = workers.wait(LONG);
    assert_eq!(end.code, Some(0), "{end}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event"),
        3000,
        "only old done rows went"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE event_type = 'old'"),
        0
    );
}

#[test]
fn migrate_check_and_print_sql() {
    let db = common::test_db();
    let out = admin(&db, &["migrate", "--print-sql"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("CREATE TABLE IF NOT EXISTS \"outbox_event\""),
        "{out}"
    );
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(8), "no table: {out}");
    assert!(out.stderr.contains("does not exist"), "{out}");
    db.migrate();
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(0), "{out}");
    db.client()
        .batch_execute("DROP INDEX outbox_event_due_idx")
        .unwrap();
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(8), "no claim index: {out}");
    assert!(out.stderr.contains("no valid claim index"), "{out}");
    db.client()
        .batch_execute("ALTER TABLE outbox_event DROP COLUMN delivered_at")
        .unwrap();
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(8), "{out}");
    assert!(out.stderr.contains("lacks column(s) delivered_at"), "{out}");
    // --check changed nothing.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'delivered_at'"
        ),
        0
    );
}

#[test]
fn dead_events_are_warned_about_summarised_and_fail_the_run_when_asked() {
    let db = db_with_events(3, "x");
    db.client()
        .execute(
            "UPDATE outbox_event SET event_type = 'ok' WHERE id = 3",
            &[],
        )
        .unwrap();
    let args = ["--route", "x=exec:sh -c 'exit 65'", "--route", "ok=stdout"];
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "without --fail-on-dead: {out}");
    for id in [1, 2] {
        let line =
            format!("event {id} (type x, route exec:sh -c 'exit 65', attempt 1 of 5) is dead: ");
        assert!(out.stderr.contains(&line), "{line}: {out}");
    }
    assert!(
        out.stderr
            .contains("drained: 1 delivered, 0 retried, 2 dead, 0 released, "),
        "{out}"
    );

    // A retry on the last attempt, and an event the claim finds with its attempts used up.
    let db = db_with_events(2, "x");
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET attempts = 2 WHERE id = 1;
             UPDATE outbox_event SET attempts = 3, locked_by = 'gone:1:w0:0' WHERE id = 2",
        )
        .unwrap();
    let mut args = vec![
        "--route",
        "x=exec:false",
        "--max-attempts",
        "3",
        "--fail-on-dead",
    ];
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(6), "{out}");
    assert!(
        out.stderr
            .contains("event 1 (type x, route exec:false, attempt 3 of 3) is dead: "),
        "{out}"
    );
    assert!(
        out.stderr.contains("event 2 (type x, route exec:false, attempt 3 of 3) is dead: attempts exhausted: the lease"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("events went dead during this run (--fail-on-dead): exit 6"),
        "{out}"
    );
    // Nothing died in this run: exit 0 even with the flag.
    args.push("--processes");
    args.push("2");
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("drained: 0 delivered, 0 retried, 0 dead"),
        "{out}"
    );
}
