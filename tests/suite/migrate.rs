//! `dispatchbox migrate`: empty database, twice, and in-place upgrade of the original schema.

use crate::common::{self, dispatchbox, run};
use std::time::Duration;

/// The original (Python) tool's schema, verbatim in shape.
const ORIGINAL_SCHEMA: &str = "
CREATE TABLE outbox_event (
    id bigserial primary key,
    aggregate_type text,
    aggregate_id text,
    event_type text,
    payload jsonb,
    status text default 'pending',
    attempts int default 0,
    next_run_at timestamptz default now(),
    created_at timestamptz default now()
);
CREATE INDEX idx_outbox_pending ON outbox_event (next_run_at) WHERE status IN ('pending','retry');
";

fn columns(db: &common::TestDb) -> Vec<(String, String)> {
    db.client()
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_name = 'outbox_event' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every row of `sql` as its columns' text joined with `|`.
fn rows_as_text(c: &mut postgres::Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

fn due_indexes(db: &common::TestDb) -> i64 {
    db.count(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'outbox_event'
         AND indexdef LIKE '%(next_run_at) WHERE%'",
    )
}

#[test]
fn migrate_creates_the_table_and_is_idempotent() {
    let db = common::test_db();
    db.migrate();
    let first = columns(&db);
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "aggregate_type",
            "aggregate_id",
            "event_type",
            "payload",
            "status",
            "attempts",
            "next_run_at",
            "created_at",
            "locked_by",
            "locked_at",
            "last_error",
            "delivered_at"
        ]
    );
    assert_eq!(due_indexes(&db), 1);
    common::insert_events(&mut db.client(), "outbox_event", 3, "x");
    db.migrate();
    assert_eq!(columns(&db), first);
    assert_eq!(due_indexes(&db), 1);
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 3);
    let defaults = db.count(
        "SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0 AND next_run_at <= now()",
    );
    assert_eq!(defaults, 3);
}

#[test]
fn schema_file_and_migrate_agree() {
    // psql -f sql/schema.sql (here: the same text through the driver) gives the same table.
    let a = common::test_db();
    a.migrate();
    let b = common::test_db();
    b.client()
        .batch_execute(include_str!("../../sql/schema.sql"))
        .unwrap();
    assert_eq!(columns(&a), columns(&b));
    assert_eq!(due_indexes(&b), 1);
}

#[test]
fn migrate_upgrades_the_original_table_in_place() {
    let db = common::test_db();
    let mut c = db.client();
    c.batch_execute(ORIGINAL_SCHEMA).unwrap();
    c.batch_execute(
        "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, attempts, next_run_at, created_at)
         VALUES ('order', '1', 'order.created', '{\"a\": 1}', 'pending', 0, '2026-01-01 00:00:00+00', '2025-12-31 00:00:00+00'),
                ('order', '2', 'order.paid', '{\"b\": [1, 2]}', 'retry', 2, '2026-01-02 00:00:00+00', '2025-12-31 00:00:01+00'),
                ('order', '3', 'order.shipped', NULL, 'done', 1, '2026-01-03 00:00:00+00', '2025-12-31 00:00:02+00'),
                ('user', '4', 'user.deleted', '\"s\"', 'dead', 5, '2026-01-04 00:00:00+00', '2025-12-31 00:00:03+00')",
    )
    .unwrap();
    let snapshot =
        "SELECT id, aggregate_type, aggregate_id, event_type, payload::text, status, attempts,
                           next_run_at::text, created_at::text FROM outbox_event ORDER BY id";
    let before = rows_as_text(&mut c, snapshot);
    assert_eq!(before.len(), 4);

    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let after = rows_as_text(&mut c, snapshot);
    assert_eq!(before, after, "migrate changed rows");
    assert_eq!(columns(&db).len(), 13);
    // The original's index serves the claim; migrate did not build a second one.
    assert_eq!(due_indexes(&db), 1);
    // New ids continue from the old sequence.
    common::insert_events(&mut c, "outbox_event", 1, "x");
    assert_eq!(db.count("SELECT max(id) FROM outbox_event"), 5);

    // And the worker runs on it: the pending and retry rows (due in the past) are delivered.
    let out = super::drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    let mut ids = super::delivered_ids(&out.stdout);
    ids.sort();
    assert_eq!(ids, vec![1, 2, 5], "{out}");
    assert_eq!(
        db.count("SELECT attempts FROM outbox_event WHERE id = 2"),
        3
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox_event WHERE id IN (3, 4) AND locked_by IS NULL AND delivered_at IS NULL"), 2);
}

#[test]
fn a_worker_on_an_unmigrated_original_table_says_to_migrate() {
    let db = common::test_db();
    db.client().batch_execute(ORIGINAL_SCHEMA).unwrap();
    let out = super::drain(&db, &[]);
    assert_eq!(out.code, Some(4), "{out}");
    assert!(out.stderr.contains("lacks column(s) locked_by"), "{out}");
    assert!(out.stderr.contains("dispatchbox migrate"), "{out}");
}

#[test]
fn stats_prints_counts_per_status() {
    let db = super::db_with_events(3, "x");
    db.client()
        .execute("UPDATE outbox_event SET status = 'dead' WHERE id = 1", &[])
        .unwrap();
    let out = run(
        dispatchbox().args(["stats", "--dsn", &db.dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "pending 2\nretry 0\ndone 0\ndead 1\n");
}

#[test]
fn migrate_on_an_up_to_date_table_takes_no_lock() {
    let db = super::db_with_events(1, "x");
    // A long reader holds ACCESS SHARE; an ALTER TABLE would wait behind it.
    let mut reader = db.client();
    let mut tx = reader.transaction().unwrap();
    tx.execute("SELECT count(*) FROM outbox_event", &[])
        .unwrap();
    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn]),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("already up to date"), "{out}");
    tx.rollback().unwrap();
}

#[test]
fn unusual_column_types_are_read_as_text() {
    let db = common::test_db();
    db.client()
        .batch_execute(
            "CREATE TABLE outbox_event (id int PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
                aggregate_type varchar(20), aggregate_id uuid, event_type varchar(50),
                payload json, status varchar(10) DEFAULT 'pending', attempts smallint DEFAULT 0,
                next_run_at timestamptz DEFAULT now(), created_at timestamptz DEFAULT now());
             INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'x', '{\"a\": 1}')",
        )
        .unwrap();
    db.migrate();
    // Twice: the index built on the varchar status is recognised the second time.
    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("already up to date"), "{out}");
    let out = super::drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("no valid index"), "{out}");
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(line["aggregate_id"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        1
    );
}

#[test]
fn a_table_name_over_63_bytes_gets_its_claim_index() {
    // PostgreSQL cuts identifiers to 63 bytes; `<name>_due_idx` cut the same way would be
    // the table's own name, and the index would silently not be built.
    let db = common::test_db();
    let name = format!("events_{}", "x".repeat(63));
    assert_eq!(name.len(), 70);
    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn, "--table", &name]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_indexes WHERE tablename = '{}'
             AND indexdef LIKE '%(next_run_at) WHERE%'",
            &name[..63]
        )),
        1,
        "no claim index\n{out}"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_indexes WHERE tablename = '{}'
             AND indexname LIKE '%\\_dead\\_idx' AND indexdef LIKE '%(id) WHERE%dead%'",
            &name[..63]
        )),
        1,
        "no index of dead rows\n{out}"
    );
    common::insert_events(&mut db.client(), &name, 3, "x");
    let out = super::drain(&db, &["--table", &name]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("no valid index"), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 3, "{out}");
    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn, "--table", &name]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("already up to date"), "{out}");
}
