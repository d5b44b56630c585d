//! The shipped sample data: `sql/insert_outbox.sql` (the original tool's "Option C") is what
//! `scripts/generate_outbox_sql.sh 100` prints, and it loads into a migrated table.

use super::{assert_exactly_once, delivered_ids};
use crate::common;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_sample_file_is_the_generators_output() {
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/generate_outbox_sql.sh"))
        .arg("100")
        .output()
        .expect("run scripts/generate_outbox_sql.sh");
    assert!(out.status.success(), "{out:?}");
    let shipped =
        std::fs::read(repo().join("sql/insert_outbox.sql")).expect("sql/insert_outbox.sql");
    assert!(
        out.stdout == shipped,
        "sql/insert_outbox.sql differs from `scripts/generate_outbox_sql.sh 100`: regenerate it with \
         scripts/generate_outbox_sql.sh 100 > sql/insert_outbox.sql"
    );
}

#[test]
fn the_sample_file_loads_and_is_delivered() {
    let db = common::test_db();
    db.migrate();
    let sql = std::fs::read_to_string(repo().join("sql/insert_outbox.sql")).unwrap();
    db.client()
        .batch_execute(&sql)
        .expect("load sql/insert_outbox.sql");
    assert_eq!(
        db.count("SELECT count(DISTINCT event_type) FROM outbox_event WHERE status = 'pending'"),
        5
    );
    let out = super::drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(100, delivered_ids(&out.stdout));
    // Payloads with quotes, apostrophes and backslashes arrive as the JSON that was stored.
    assert!(
        out.stdout.contains(r#""customer": "Grace O'Brien""#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(r#"Linus \"the penguin\" T."#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(r#"Back\\slash Tester"#),
        "{}",
        out.stdout
    );
}
