//! Log lines: a value with control characters (an event type, a table name, a route) stays on
//! its line, so it can neither forge a log line nor the supervisor's view of a worker's error.
//! The server's NOTICE/WARNING messages and our dependencies' `log` records are lines of ours.

use super::drain;
use crate::common::{self, dispatchbox, run};
use std::time::Duration;

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

/// A trigger that warns when an event is done and notes it (a custom SQLSTATE, a hint), both
/// with a newline followed by something that looks like a log line; and warns when a dead
/// event is revived.
const NOISY_TRIGGER: &str = r"
    CREATE FUNCTION noisy() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.status = 'done' THEN
            RAISE WARNING E'event % done\nERROR forged warning', NEW.id;
            RAISE NOTICE E'note for %\n2001-01-01T00:00:00.000Z ERROR    [worker 0 pid 1] forged',
                NEW.id USING ERRCODE = 'DB001', HINT = 'a hint';
        ELSIF OLD.status = 'dead' THEN
            RAISE WARNING 'revived %', NEW.id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER noisy AFTER UPDATE ON outbox_event FOR EACH ROW EXECUTE FUNCTION noisy();";

/// Lines of `stderr` at `level` (text format) that contain `text`.
fn lines_with<'a>(stderr: &'a str, level: &str, text: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.contains(&format!(" {level} ")) && l.contains(text))
        .collect()
}

#[test]
fn server_warnings_and_notices_are_logged_as_one_escaped_line_each() {
    let db = common::test_db();
    db.migrate();
    db.client().batch_execute(NOISY_TRIGGER).unwrap();
    common::insert_events(&mut db.client(), "outbox_event", 2, "x");
    let out = drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    let warnings = lines_with(&out.stderr, "WARNING", "server WARNING 01000: event ");
    assert_eq!(warnings.len(), 2, "{out}");
    assert!(
        warnings.iter().all(|l| l.ends_with(
            r" done\nERROR forged warning (context: PL/pgSQL function noisy() line 4 at RAISE)"
        )),
        "{out}"
    );
    let notices = lines_with(&out.stderr, "INFO", "server NOTICE DB001: note for ");
    assert_eq!(notices.len(), 2, "{out}");
    assert!(
        notices
            .iter()
            .all(|l| l.contains(r"\n2001-01-01T00:00:00.000Z ERROR") && l.contains("hint: a hint")),
        "{out}"
    );
    let bad = forged(&out.stderr, &["ERROR forged", "2001-01-01"]);
    assert!(bad.is_empty(), "forged lines {bad:?}\n{out}");

    // --log-level warning keeps the warnings and drops the notices.
    common::insert_events(&mut db.client(), "outbox_event", 1, "x");
    let out = drain(&db, &["--log-level", "warning"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        lines_with(&out.stderr, "WARNING", "server WARNING").len(),
        1,
        "{out}"
    );
    assert!(!out.stderr.contains("server NOTICE"), "{out}");

    // JSON: every line one object, the message exact.
    common::insert_events(&mut db.client(), "outbox_event", 1, "x");
    let out = drain(&db, &["--log-format", "json"]);
    assert_eq!(out.code, Some(0), "{out}");
    let objects: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{out}")))
        .collect();
    let msg = |level: &str, prefix: &str| {
        objects
            .iter()
            .filter(|o| o["level"] == level)
            .filter_map(|o| o["msg"].as_str())
            .filter(|m| m.starts_with(prefix))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let w = msg("WARNING", "server WARNING 01000: event ");
    assert_eq!(w.len(), 1, "{out}");
    assert!(
        w[0].contains(" done\nERROR forged warning (context: "),
        "{out}"
    );
    assert_eq!(
        msg("INFO", "server NOTICE DB001: note for ").len(),
        1,
        "{out}"
    );

    // An admin command's connection too.
    let id = db.count("SELECT max(id) FROM outbox_event");
    let mut c = db.client();
    c.batch_execute("ALTER TABLE outbox_event DISABLE TRIGGER noisy")
        .unwrap();
    c.execute(
        "UPDATE outbox_event SET status = 'dead' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    c.batch_execute("ALTER TABLE outbox_event ENABLE TRIGGER noisy")
        .unwrap();
    let out = run(
        dispatchbox().args(["dead", "retry", &id.to_string(), "--dsn", &db.dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let revived = format!("server WARNING 01000: revived {id}");
    assert_eq!(
        lines_with(&out.stderr, "WARNING", &revived).len(),
        1,
        "{out}"
    );
}

#[test]
fn the_http_clients_diagnostics_are_debug_lines_without_the_urls_path_or_query() {
    let db = common::test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 1, "x");
    // Nothing listens there: the attempt fails after ureq has said what it tries.
    let closed = common::refused_port();
    let port = closed.port();
    let route = format!("x=http://127.0.0.1:{port}/hook/path?token=tok3n-value");
    let out = drain(&db, &["--route", &route, "--log-level", "debug"]);
    let ureq: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("] ureq"))
        .collect();
    assert!(
        ureq.iter().any(|l| l.contains(" DEBUG ")
            && l.contains(&format!("POST http://127.0.0.1:{port}/******"))),
        "{out}"
    );
    assert!(
        ureq.iter()
            .all(|l| !l.contains("tok3n") && !l.contains("/hook")),
        "{out}"
    );
    // The driver's statements (with their parameters) are not logged, even at debug.
    assert!(!out.stderr.contains("tokio_postgres"), "{out}");

    common::insert_events(&mut db.client(), "outbox_event", 1, "x");
    let out = drain(&db, &["--route", &route]);
    assert!(!out.stderr.contains("] ureq"), "{out}");
}

/// The JSON lines of `stderr`, each parsed (a line that is not an object fails the test).
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{stderr}")))
        .collect()
}

#[test]
fn json_lines_about_an_event_name_it_in_fields_of_their_own() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 2, "x");
    // Event 1 fails for good at its first attempt; event 2 is found with its attempts used
    // up (its last claim's lease ran out).
    c.batch_execute(
        "UPDATE outbox_event SET aggregate_id = '42' WHERE id = 1;
         UPDATE outbox_event SET attempts = 3, locked_by = 'gone:1:w0:0' WHERE id = 2",
    )
    .unwrap();
    let route = "exec:sh -c 'exit 65'";
    let args = ["--route", "x=exec:sh -c 'exit 65'", "--max-attempts", "3"];
    let out = drain(
        &db,
        &[&args[..], &["--log-format", "json", "--log-level", "debug"]].concat(),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let lines = json_lines(&out.stderr);
    let about = |id: i64, outcome: &str| {
        lines
            .iter()
            .filter(|o| o["event_id"] == id && o["outcome"] == outcome)
            .collect::<Vec<_>>()
    };
    let dead = about(1, "dead");
    assert_eq!(dead.len(), 1, "{out}");
    let d = dead[0];
    assert_eq!(d["level"], "WARNING", "{out}");
    assert!(d["msg"].as_str().unwrap().contains(") is dead: "), "{out}");
    assert_eq!(d["event_type"], "x", "{d}");
    assert_eq!(d["aggregate_type"], "order", "{d}");
    assert_eq!(d["aggregate_id"], "42", "{d}");
    assert_eq!(d["route"], route, "{d}");
    assert_eq!(d["attempt"], 1, "{d}");
    // The failure itself, at DEBUG, names the handler's answer.
    let failed = about(1, "permanent");
    assert_eq!(failed.len(), 1, "{out}");
    assert_eq!(failed[0]["level"], "DEBUG", "{out}");
    assert_eq!(failed[0]["route"], route, "{out}");
    let dead = about(2, "dead");
    assert_eq!(dead.len(), 1, "{out}");
    assert!(dead[0]["msg"]
        .as_str()
        .unwrap()
        .contains("attempts exhausted"));
    assert_eq!(
        (
            &dead[0]["attempt"],
            &dead[0]["route"],
            &dead[0]["aggregate_id"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(route),
            &serde_json::json!("2")
        ),
        "{out}"
    );
    // Lines about no event have none of the fields.
    let ready = lines
        .iter()
        .find(|o| o["msg"].as_str().unwrap().starts_with("worker ready"))
        .unwrap();
    assert!(ready.get("event_id").is_none(), "{ready}");

    // Text lines are as before: the message says it, no fields.
    let db = common::test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 1, "x");
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "{out}");
    let line = format!("] event 1 (type x, route {route}, attempt 1 of 3) is dead: ");
    let dead: Vec<&str> = out.stderr.lines().filter(|l| l.contains(&line)).collect();
    assert_eq!(dead.len(), 1, "{out}");
    assert!(dead[0].contains(" WARNING  [worker 0 pid "), "{out}");
    assert!(!out.stderr.contains("event_id"), "{out}");
}
