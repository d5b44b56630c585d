//! The built-in targets as users configure them: `stdout` and `exec:`.

use super::{db_with_events, drain};
use crate::common;

fn status_and_error(db: &common::TestDb, id: i64) -> (String, i32, Option<String>) {
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
fn stdout_prints_one_json_line_per_event() {
    let db = common::test_db();
    db.migrate();
    db.client()
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', 'A-1', 'order.created', '{\"total\": 12.5, \"items\": [\"x\"], \"note\": \"line\\nbreak \\\"q\\\"\"}'),
                    (NULL, NULL, 'odd\"type', NULL)",
            &[],
        )
        .unwrap();
    let out = drain(&db, &["--route", "*=stdout"]);
    assert_eq!(out.code, Some(0), "{out}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let first = lines.iter().find(|v| v["id"] == 1).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 6);
    for k in [
        "id",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "attempt",
        "payload",
    ] {
        assert!(keys.contains(&k), "missing {k}: {first}");
    }
    assert_eq!(first["event_type"], "order.created");
    assert_eq!(first["aggregate_type"], "order");
    assert_eq!(first["aggregate_id"], "A-1");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["payload"]["total"], 12.5);
    assert_eq!(first["payload"]["note"], "line\nbreak \"q\"");
    let second = lines.iter().find(|v| v["id"] == 2).unwrap();
    assert_eq!(second["event_type"], "odd\"type");
    assert!(second["aggregate_type"].is_null() && second["payload"].is_null());
}

#[test]
fn exec_success_gets_the_event_on_stdin_and_in_the_environment() {
    let db = db_with_events(2, "order.created");
    let dir = common::TempDir::new("exec");
    let script = format!(
        "*=exec:sh -c 'cat > {d}/$DISPATCHBOX_EVENT_ID.json; env | grep ^DISPATCHBOX_ | sort > {d}/$DISPATCHBOX_EVENT_ID.env'",
        d = dir.path().display()
    );
    let out = drain(&db, &["--route", &script]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        2,
        "{out}"
    );
    let json = std::fs::read_to_string(dir.join("2.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["id"], 2);
    assert_eq!(v["payload"]["n"], 2);
    let env = std::fs::read_to_string(dir.join("2.env")).unwrap();
    for line in [
        "DISPATCHBOX_AGGREGATE_ID=2",
        "DISPATCHBOX_AGGREGATE_TYPE=order",
        "DISPATCHBOX_ATTEMPT=1",
        "DISPATCHBOX_EVENT_ID=2",
        "DISPATCHBOX_EVENT_TYPE=order.created",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing in\n{env}");
    }
    assert!(!env.contains("DISPATCHBOX_DSN"), "{env}");
}

#[test]
fn exec_failure_stores_the_stderr_tail() {
    let db = db_with_events(1, "x");
    let out = drain(
        &db,
        &[
            "--route",
            "*=exec:sh -c 'seq 1 5000 >&2; echo the-real-reason >&2; exit 7'",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let (status, attempts, err) = status_and_error(&db, 1);
    assert_eq!((status.as_str(), attempts), ("retry", 1));
    let err = err.unwrap();
    assert!(err.starts_with("exec sh: exit code 7: "), "{err}");
    assert!(err.ends_with("the-real-reason"), "{err}");
    assert!(err.len() < 2100, "{}", err.len());
}

#[test]
fn exec_timeout_kills_the_program_and_retries() {
    let db = db_with_events(1, "x");
    let out = drain(
        &db,
        &["--route", "*=exec:sleep 30", "--exec-timeout", "0.5"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let (status, _, err) = status_and_error(&db, 1);
    assert_eq!(status, "retry");
    assert!(err.unwrap().contains("timed out after"), "{out}");
}

#[test]
fn a_nul_byte_in_an_error_is_stored_escaped() {
    let db = db_with_events(2, "x");
    let out = drain(
        &db,
        &["--route", r"*=exec:sh -c 'printf bad\\000byte >&2; exit 1'"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let (status, attempts, err) = status_and_error(&db, 1);
    assert_eq!((status.as_str(), attempts), ("retry", 1), "{out}");
    assert!(err.unwrap().ends_with(r"bad\x00byte"));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'retry'"),
        2
    );
}

/// `dispatchbox --dsn <db> --drain <args> | <consumer>` in bash; the binary's exit code is
/// printed on stderr as `exit=N`.
fn drain_into(db: &common::TestDb, args: &str, consumer: &str) -> common::Run {
    let script = format!(
        "'{}' --dsn '{}' --drain --poll-interval 0.05 {args} | {consumer}; echo \"exit=${{PIPESTATUS[0]}}\" >&2",
        common::bin_path().display(),
        db.dsn
    );
    common::run(
        std::process::Command::new("bash").args(["-c", &script]),
        std::time::Duration::from_secs(120),
    )
}

#[test]
fn a_closed_stdout_gives_events_back_instead_of_failing_them() {
    let db = db_with_events(200, "x");
    // `head -n 1` closes the pipe after the first line.
    let out = drain_into(&db, "--max-attempts 1", "head -n 1 >/dev/null");
    assert!(out.stderr.contains("exit=1"), "{out}");
    assert!(out.stderr.contains("cannot write to stdout"), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0,
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL"),
        0
    );
    // What was not delivered is pending with its attempt given back. (How many batches went
    // into the pipe before `head` exited depends on the machine's load: a worker claims its
    // next batch while it writes one, and is restarted after each failure.)
    let pending =
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0");
    let done = db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'");
    assert!(pending > 0, "{pending} pending, {done} done\n{out}");
    assert_eq!(pending + done, 200, "{out}");
}

#[test]
fn long_stdout_lines_from_several_processes_never_interleave() {
    let db = common::test_db();
    db.migrate();
    // 20 KiB payloads: far above the 4 KiB a pipe writes atomically.
    db.client()
        .execute(
            "INSERT INTO outbox_event (event_type, payload)
             SELECT 'big', jsonb_build_object('n', g, 'blob', repeat('x', 20000))
             FROM generate_series(1, 400) g",
            &[],
        )
        .unwrap();
    let out = drain(&db, &["--processes", "4", "--batch-size", "5"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let ids = super::delivered_ids(&out.stdout);
    super::assert_exactly_once(400, ids);
}

#[test]
fn a_closed_stdout_with_a_running_handler_still_exits_1() {
    // One route aborts (stdout closed) while another's handler outlives the shutdown timeout.
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 1, "b");
    common::insert_events(&mut c, "outbox_event", 30, "a");
    let out = drain_into(
        &db,
        "--route a=stdout --route 'b=exec:sleep 5' --shutdown-timeout 1",
        "true",
    );
    assert!(out.stderr.contains("exit=1"), "{out}");
    // The first worker abandons its still-running handler; the supervisor hears why from
    // the worker's report (it no longer reads log lines).
    let first = out
        .stderr
        .lines()
        .find(|l| l.contains("[supervisor") && l.contains("exited unexpectedly"))
        .unwrap_or_default();
    assert!(
        first.contains("worker stopped: cannot write to stdout"),
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0
    );
}

#[test]
fn exec_timeout_kills_what_the_command_started_too() {
    let db = db_with_events(1, "x");
    let dir = common::TempDir::new("pgkill");
    let pidfile = dir.join("grandchild.pid");
    let route = format!(
        "*=exec:sh -c 'sleep 60 & echo $! > {}; wait'",
        pidfile.display()
    );
    let out = drain(&db, &["--route", &route, "--exec-timeout", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::wait_until(
        std::time::Duration::from_secs(5),
        "the grandchild is killed",
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        },
    );
}
