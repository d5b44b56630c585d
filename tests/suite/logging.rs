//! Log lines: a value with control characters (an event type, a table name, a route) stays on
//! its line, so it can neither forge a log line nor the supervisor's view of a worker's error.

use super::drain;
use crate::common;

/// Lines of `stderr` that start like something a logged value tried to forge.
fn forged<'a>(stderr: &'a str, prefixes: &[&str]) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect()
}

#[test]
fn a_newline_in_an_event_type_cannot_forge_a_log_line() {
    let db = common::test_db();
    db.migrate();
    let fake = "x\n2001-01-01T00:00:00.000Z ERROR    [worker 0 pid 1] forged\nERROR forged";
    common::insert_events(&mut db.client(), "outbox_event", 3, fake);
    // A failing attempt is logged with the event type (at DEBUG).
    let out = drain(&db, &["--route", "*=exec:false", "--log-level", "debug"]);
    assert_eq!(out.code, Some(0), "{out}");
    let bad = forged(&out.stderr, &["2001-01-01", "ERROR forged"]);
    assert!(bad.is_empty(), "forged lines {bad:?}\n{out}");
    assert!(out.stderr.contains(r"x\n2001-01-01"), "{out}");
}

#[test]
fn a_newline_in_a_table_name_or_route_stays_on_its_line() {
    let db = common::test_db();
    db.migrate();
    // Logged by the supervisor, then the worker's error (the table does not exist).
    let out = drain(&db, &["--table", "bad\nERROR forged table"]);
    assert_ne!(out.code, Some(0), "{out}");
    let bad = forged(&out.stderr, &["ERROR forged"]);
    assert!(bad.is_empty(), "forged lines {bad:?}\n{out}");
    assert!(out.stderr.contains(r"bad\nERROR forged table"), "{out}");

    // A usage error is one line too.
    let out = drain(&db, &["--route", "a\nERROR forged route=nowhere"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains(r"a\nERROR forged route"), "{out}");
}
