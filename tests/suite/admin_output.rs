//! What the admin commands print: exact dead counts from `status` (the index of dead rows
//! `migrate` builds, and a table without it), one JSON shape for an event in `dead list --json`
//! and `dead show --json`, and a reader that closes the pipe early (`| head -1`).

use super::{db_with_events, drain};
use crate::common::{self, dispatchbox, run, Run, TestDb};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

fn admin(db: &TestDb, args: &[&str]) -> Run {
    run(dispatchbox().args(args).args(["--dsn", &db.dsn]), LONG)
}

fn json(out: &Run) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// 1000 events; statistics taken while none was dead, then a run in which 200 die (their
/// attempts were used up: the claim marks them dead).
fn db_with_200_dead() -> TestDb {
    let db = db_with_events(1000, "order.created");
    db.client()
        .batch_execute(
            "ANALYZE outbox_event;
             UPDATE outbox_event SET attempts = 5 WHERE id <= 200;",
        )
        .unwrap();
    let out = drain(&db, &["--route", "order.*=stdout", "--log-level", "error"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        200
    );
    db
}

#[test]
fn status_counts_dead_events_exactly_without_exact() {
    let db = db_with_200_dead();
    let out = admin(&db, &["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("\ndead      200\n"), "{out}");
    assert!(out.stdout.contains("\npending   0\n"), "{out}");
    let v = json(&admin(&db, &["status", "--json"]));
    assert_eq!(v["counts"]["dead"], 200, "{v}");
    assert_eq!(v["counts"]["pending"], 0, "{v}");
    assert_eq!(v["counts"]["retry"], 0, "{v}");
    let estimated = v["estimated"].as_array().unwrap();
    assert!(!estimated.contains(&"dead".into()), "{v}");
    assert!(estimated.contains(&"done".into()), "{v}");
    // The threshold uses the same count.
    let out = admin(&db, &["status", "--max-dead", "199"]);
    assert_eq!(out.code, Some(7), "{out}");
}

#[test]
fn the_dead_index_serves_the_dead_count() {
    let db = db_with_events(20_000, "x");
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET status = CASE WHEN id <= 200 THEN 'dead' ELSE 'done' END",
        )
        .unwrap();
    db.client()
        .batch_execute("VACUUM ANALYZE outbox_event")
        .unwrap();
    // The statement `status` runs, and the dead-rows gauge's.
    let plan: Vec<String> = db
        .client()
        .query(
            "EXPLAIN SELECT count(*) FROM outbox_event WHERE status = 'dead'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("outbox_event_dead_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[test]
fn a_table_without_the_dead_index_still_works_and_check_names_it() {
    let db = db_with_200_dead();
    db.client()
        .batch_execute("DROP INDEX outbox_event_dead_idx")
        .unwrap();
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(8), "{out}");
    assert!(
        out.stderr.contains(
            "table outbox_event has no index of dead rows \
             (\"outbox_event_dead_idx\" on (id) WHERE status = 'dead')"
        ),
        "{out}"
    );
    // status: dead is an estimate again, saying how to count it; --max-dead counts it.
    let out = admin(&db, &["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("no index of dead rows: `dispatchbox migrate` adds it; "),
        "{out}"
    );
    let v = json(&admin(&db, &["status", "--json", "--max-dead", "500"]));
    assert_eq!(v["counts"]["dead"], 200, "{v}");
    // Workers and the dead commands work as before, without a warning about it.
    common::insert_events(&mut db.client(), "outbox_event", 3, "y");
    let out = drain(&db, &["--route", "y=stdout"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("WARNING"), "{out}");
    let v = json(&admin(&db, &["dead", "list", "--json", "--limit", "3"]));
    assert_eq!(v[0]["id"], 200, "{v}");
    // migrate builds it (and nothing else); then the table is up to date.
    let out = admin(&db, &["migrate"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("is ready (created or upgraded)"),
        "{out}"
    );
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(admin(&db, &["status"]).stdout.contains("\ndead      200\n"));
}

#[test]
fn an_equivalent_dead_index_is_reused_also_on_a_varchar_status() {
    let db = common::test_db();
    db.client()
        .batch_execute(
            "CREATE TABLE outbox_event (id bigserial PRIMARY KEY, aggregate_type text,
                 aggregate_id text, event_type text, payload jsonb,
                 status varchar(20) DEFAULT 'pending', attempts int DEFAULT 0,
                 next_run_at timestamptz DEFAULT now(), created_at timestamptz DEFAULT now());
             CREATE INDEX my_dead ON outbox_event (created_at) WHERE status = 'dead';",
        )
        .unwrap();
    db.migrate();
    let names = |db: &TestDb| {
        db.client()
            .query(
                "SELECT indexname::text FROM pg_indexes
                 WHERE tablename = 'outbox_event' AND indexdef LIKE '%dead%' ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&db), ["my_dead"]);
    let out = admin(&db, &["migrate", "--check"]);
    assert_eq!(out.code, Some(0), "{out}");
    common::insert_events(&mut db.client(), "outbox_event", 2, "x");
    db.client()
        .batch_execute("UPDATE outbox_event SET status = 'dead' WHERE id = 2")
        .unwrap();
    let v = json(&admin(&db, &["status", "--json"]));
    assert_eq!(v["counts"]["dead"], 1, "{v}");
    assert!(!v["estimated"].as_array().unwrap().contains(&"dead".into()));
}

/// `2026-12-04T22:31:14.123456Z`.
fn is_rfc3339_utc(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    s.len() == 27
        && s.ends_with('Z')
        && b[10] == b'T'
        && b[19] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 26) || c.is_ascii_digit())
}

#[test]
fn dead_list_and_show_give_an_event_the_same_json_shape() {
    let db = db_with_events(3, "order.created");
    db.client()
        .batch_execute(
            "SET TIME ZONE 'America/New_York';
             UPDATE outbox_event SET status = 'dead', attempts = 5, last_error = 'boom',
                    created_at = '2026-12-04 17:31:14.5-05', delivered_at = NULL,
                    locked_by = 'h:1:w0:x', locked_at = '2026-12-04 22:31:15+00',
                    next_run_at = 'infinity'
             WHERE id = 2;",
        )
        .unwrap();
    let list = json(&admin(&db, &["dead", "list", "--json"]));
    let shown = json(&admin(&db, &["dead", "show", "2", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // One shape: the list's element is exactly what show prints.
    assert_eq!(list[0], shown, "list: {list}\nshow: {shown}");
    let keys: Vec<&str> = shown
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "aggregate_id",
            "aggregate_type",
            "attempts",
            "created_at",
            "delivered_at",
            "event_type",
            "id",
            "last_error",
            "locked_at",
            "locked_by",
            "next_run_at",
            "payload",
            "status"
        ]
    );
    assert_eq!(shown["id"], 2);
    assert_eq!(shown["attempts"], 5);
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["payload"], serde_json::json!({"n": 2}));
    assert_eq!(shown["created_at"], "2026-12-04T22:31:14.500000Z");
    assert_eq!(shown["locked_at"], "2026-12-04T22:31:15.000000Z");
    assert_eq!(shown["next_run_at"], "infinity");
    assert_eq!(shown["delivered_at"], serde_json::Value::Null);
    // Any event, not only dead ones: the same shape from show.
    let pending = json(&admin(&db, &["dead", "show", "1", "--json"]));
    assert_eq!(
        pending.as_object().unwrap().keys().collect::<Vec<_>>(),
        shown.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert!(
        pending["id"].is_i64() && pending["attempts"].is_i64(),
        "{pending}"
    );
    assert!(is_rfc3339_utc(&pending["created_at"]), "{pending}");
    assert!(is_rfc3339_utc(&pending["next_run_at"]), "{pending}");
    // The text list keeps its one line per event, times to the second.
    let out = admin(&db, &["dead", "list"]);
    assert!(
        out.stdout
            .starts_with("2\torder.created\torder:2\tattempts 5\t2026-12-04T22:31:14Z\tboom\n"),
        "{out}"
    );
}

/// Runs `args` with its stdout a pipe whose reader goes away: after the first line
/// (`lines` = 1) or before the command starts (0). Returns the exit code and stderr.
fn with_closed_stdout(db: &TestDb, args: &[&str], lines: usize) -> (Option<i32>, String) {
    let mut cmd = dispatchbox();
    cmd.args(args).args(["--dsn", &db.dsn]);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut reader = None;
    if lines == 0 {
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        cmd.stdout(w);
    } else {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the parent's copy of the pipe's write end
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    if let Some(out) = child.stdout.take() {
        reader = Some(BufReader::new(out));
    }
    if let Some(mut r) = reader {
        for _ in 0..lines {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "{args:?}: no line before the end");
        }
        drop(r);
    }
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: still running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), errors.join().unwrap())
}

#[test]
fn a_closed_stdout_ends_admin_output_quietly() {
    // More output than a pipe holds (64 KiB): the writer meets the closed pipe.
    let db = db_with_events(1000, "order.created");
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET status = 'dead', attempts = 5,
                    last_error = repeat('e', 300), payload = jsonb_build_object('pad', repeat('p', 500));
             UPDATE outbox_event SET payload = (SELECT jsonb_agg(g) FROM generate_series(1, 30000) g)
             WHERE id = 1;",
        )
        .unwrap();
    let big = [
        &["dead", "list", "--json", "--limit", "1000"][..],
        &["dead", "list", "--limit", "1000"],
        &["dead", "show", "1", "--json"],
        &["dead", "show", "1"],
    ];
    for args in big {
        let (code, stderr) = with_closed_stdout(&db, args, 1);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "{args:?}");
    }
    // Every command, with the pipe closed before it writes anything.
    let all = [
        &["dead", "list", "--json"][..],
        &["dead", "show", "1", "--json"],
        &["status"],
        &["status", "--json"],
        &["stats"],
        &["migrate", "--print-sql"],
    ];
    for args in all {
        let (code, stderr) = with_closed_stdout(&db, args, 0);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "{args:?}");
    }
}

#[test]
fn closed_stdout_of_a_failing_command_still_fails() {
    // A broken pipe is no excuse for an error that came first.
    let db = common::test_db();
    let (code, stderr) = with_closed_stdout(&db, &["status"], 0);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
