//! Hostile input from the operator's side: table names that try to run SQL, configuration
//! files that are not files (or never end), event ids that are not ids. Each is refused with
//! one line and exit 2, before anything touches the database.

use crate::common::{self, dispatchbox, run};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Tables in the database (schema.name), sorted.
fn tables(db: &common::TestDb) -> Vec<String> {
    db.client()
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_tables
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn sql_in_a_table_name_runs_nowhere() {
    let db = common::test_db();
    let evil = "zz\nCREATE TABLE injected_marker(x int);--";
    let archive = "a\nCREATE TABLE injected_marker(x int);--";
    for args in [
        &["migrate", "--table", evil][..],
        &["migrate", "--notify", "on", "--table", evil],
        &["migrate", "--print-sql", "--table", evil],
        &["status", "--table", evil],
        &["--drain", "--table", evil],
        &["prune", "--older-than", "1d", "--archive", archive],
    ] {
        let out = run(dispatchbox().args(["--dsn", &db.dsn]).args(args), T);
        assert_eq!(out.code, Some(2), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "not one line: {out}");
        assert!(
            out.stderr.contains("control characters are not allowed"),
            "{out}"
        );
        assert!(
            out.stderr.contains(r"\nCREATE TABLE injected_marker"),
            "{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");
    }
    // From the variable too.
    let out = run(
        dispatchbox()
            .args(["migrate", "--dsn", &db.dsn])
            .env("DISPATCHBOX_TABLE", evil),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .starts_with("dispatchbox: DISPATCHBOX_TABLE `zz\\n"),
        "{out}"
    );
    assert_eq!(tables(&db), Vec::<String>::new(), "something was created");
}

#[test]
fn table_names_that_need_quoting_migrate_and_drain() {
    let db = common::test_db();
    for name in [
        "Ünïcødé Events",
        "ops.Mixed \"Quoted\" Name",
        "with space--and dashes",
    ] {
        if let Some((schema, _)) = name.split_once('.') {
            db.client()
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .unwrap();
        }
        // `on` creates the trigger, `off` drops it, `on` again: every path that names it.
        for notify in ["on", "off", "on"] {
            let out = run(
                dispatchbox()
                    .args(["migrate", "--dsn", &db.dsn, "--notify", notify])
                    .args(["--table", name]),
                T,
            );
            assert_eq!(out.code, Some(0), "{name} --notify {notify}: {out}");
        }
        common::insert_events(&mut db.client(), name, 3, "x");
        let out = super::drain(&db, &["--table", name]);
        assert_eq!(out.code, Some(0), "{name}: {out}");
        assert_eq!(super::delivered_ids(&out.stdout).len(), 3, "{name}: {out}");
        let out = run(
            dispatchbox().args(["migrate", "--dsn", &db.dsn, "--check", "--table", name]),
            T,
        );
        assert_eq!(out.code, Some(0), "{name}: {out}");
    }
    // The index and trigger names are derived, quoted, from the names as given.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_trigger WHERE tgname IN
             ('Ünïcødé Events_notify', 'Mixed \"Quoted\" Name_notify', 'with space--and dashes_notify')"
        ),
        3
    );
}

#[test]
fn names_that_look_like_placeholders_stay_names() {
    // A table named like a placeholder, columns named like bind parameters: each is put into
    // the statement once, quoted, and never replaced again.
    let db = common::test_db();
    let table = "ev{archive}@n";
    let admin = |args: &[&str]| {
        run(
            dispatchbox()
                .args(["--dsn", &db.dsn, "--table", table])
                .args(args),
            T,
        )
    };
    let out = admin(&["migrate"]);
    assert_eq!(out.code, Some(0), "{out}");
    db.client()
        .batch_execute(
            r#"ALTER TABLE "ev{archive}@n" ADD COLUMN "@id" text DEFAULT 'at-id',
                                           ADD COLUMN "{t}" text DEFAULT 'brace-t';
               CREATE TABLE "arch{cols}" (LIKE "ev{archive}@n");"#,
        )
        .unwrap();
    common::insert_events(&mut db.client(), table, 4, "x");
    db.client()
        .batch_execute(
            r#"UPDATE "ev{archive}@n" SET status = 'dead' WHERE id = 1;
               UPDATE "ev{archive}@n" SET status = 'done', delivered_at = now() - interval '2 days'
               WHERE id > 1;"#,
        )
        .unwrap();
    let out = admin(&["dead", "show", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("at-id") && out.stdout.contains("brace-t"),
        "{out}"
    );
    let out = admin(&["prune", "--older-than", "1d", "--archive", "arch{cols}"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("3 done event(s)"), "{out}");
    assert_eq!(
        db.count(r#"SELECT count(*) FROM "arch{cols}" WHERE "@id" = 'at-id'"#),
        3
    );
}
