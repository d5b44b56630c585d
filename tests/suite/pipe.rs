//! The `pipe:` target with small publisher scripts: acknowledgements, retries, dead events, a
//! process that crashes mid-stream, one that hangs, one that exits at start-up, one that
//! writes garbage, a missing program, and how processes are stopped (EOF, SIGTERM after the
//! grace, SIGKILL when the worker gives up waiting).

use super::{assert_exactly_once, db_with_events, drain};
use crate::common::{self, TempDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes an executable bash script `name` into `dir`: `body` runs after a prologue that
/// records the start (`start PID` appended to `dir/log`) and defines `$dir`.
pub(super) fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let text = format!(
        "#!/usr/bin/env bash\ndir='{}'\necho \"start $$\" >> \"$dir/log\"\n{body}\n",
        dir.path().display()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The read loop every script uses; `$id` is the event id, `$line` the event.
pub(super) const READ: &str = r#"while IFS= read -r line; do
  [[ $line =~ ^\{\"id\":([0-9]+), ]] || { echo "not an event: $line" >&2; exit 9; }
  id=${BASH_REMATCH[1]}"#;

/// Lines of `dir/log` starting with `word `.
pub(super) fn logged(dir: &TempDir, word: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(word).and_then(|r| r.strip_prefix(' ')))
        .map(String::from)
        .collect()
}

pub(super) fn route(path: &Path) -> String {
    format!("*=pipe:{}", path.display())
}

pub(super) fn row(db: &common::TestDb, id: i64) -> (String, i32, Option<String>) {
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
fn acks_deliver_every_event_once_through_one_process_per_worker() {
    let db = db_with_events(300, "order.created");
    let dir = TempDir::new("pipe-acks");
    let body = format!(
        "{READ}\n  echo \"delivered $id\" >> \"$dir/log\"\n  echo \"ok $id\"\ndone\necho \"eof $$\" >> \"$dir/log\""
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(&db, &["--route", &route(&publisher), "--threads", "4"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        300,
        "{out}"
    );
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(300, ids);
    let starts = logged(&dir, "start");
    assert_eq!(starts.len(), 1, "one process per worker\n{out}");
    // A graceful stop: every process saw the end of its input and exited by itself.
    let mut eofs = logged(&dir, "eof");
    let mut starts = starts;
    eofs.sort();
    starts.sort();
    assert_eq!(eofs, starts, "{out}");
    assert!(!out.stderr.contains("WARN"), "{out}");
}

#[test]
fn retry_answers_store_the_reason_and_honour_after() {
    let db = db_with_events(4, "x");
    let dir = TempDir::new("pipe-retry");
    let body = format!(
        "{READ}\n  if (( id % 2 )); then echo \"retry $id broker busy\"; \
         else echo \"retry $id after=600 rate limited\"; fi\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &["--route", &route(&publisher), "--retry-backoff", "1"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(row(&db, 1), ("retry".into(), 1, Some("broker busy".into())));
    assert_eq!(
        row(&db, 2),
        ("retry".into(), 1, Some("rate limited".into()))
    );
    // Backoff 1 s for the plain retries; at least the 600 s asked for the others.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE id % 2 = 1 \
             AND next_run_at < now() + interval '10 seconds'"
        ),
        2
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE id % 2 = 0 \
             AND next_run_at > now() + interval '500 seconds'"
        ),
        2
    );
}

#[test]
fn dead_answers_make_the_event_dead_at_once() {
    let db = db_with_events(3, "x");
    let dir = TempDir::new("pipe-dead");
    let body = format!(
        "{READ}\n  if (( id == 2 )); then echo \"dead $id schema mismatch\"; \
         else echo \"ok $id\"; fi\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(&db, &["--route", &route(&publisher)]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        row(&db, 2),
        ("dead".into(), 1, Some("schema mismatch".into()))
    );
    assert_eq!(row(&db, 1).0, "done");
    assert_eq!(row(&db, 3).0, "done");
}

#[test]
fn control_characters_in_an_answer_reason_are_stored_escaped() {
    let db = db_with_events(2, "x");
    let dir = TempDir::new("pipe-controls");
    // ESC, a tab, a CR and DEL inside the reason.
    let body = format!(
        "{READ}\n  printf '%s %s bad\\033[2J\\tclear\\rover\\177\\n' \"$( ((id == 1)) && \
         echo dead || echo retry)\" \"$id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(&db, &["--route", &route(&publisher)]);
    assert_eq!(out.code, Some(0), "{out}");
    let want = r"bad\x1b[2J\tclear\rover\x7f";
    assert_eq!(row(&db, 1), ("dead".into(), 1, Some(want.into())), "{out}");
    assert_eq!(row(&db, 2), ("retry".into(), 1, Some(want.into())), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE last_error ~ '[[:cntrl:]]'"),
        0
    );
}

#[test]
fn a_60_kb_reason_is_stored_cut_at_2000_bytes() {
    let db = db_with_events(1, "x");
    let dir = TempDir::new("pipe-long");
    let body = format!(
        "{READ}\n  printf 'dead %s %s\\n' \"$id\" \"$(head -c 60000 /dev/zero | tr '\\0' x)\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(&db, &["--route", &route(&publisher)]);
    assert_eq!(out.code, Some(0), "{out}");
    let (status, _, error) = row(&db, 1);
    let error = error.unwrap_or_default();
    assert_eq!(status, "dead", "{out}");
    assert_eq!(error.len(), 2000, "bytes");
    assert_eq!(error, format!("{}…", "x".repeat(1997)));
}

#[test]
fn a_process_that_crashes_mid_stream_is_restarted_and_its_event_retried() {
    let db = db_with_events(20, "x");
    let dir = TempDir::new("pipe-crash");
    // Each process answers three events and dies on the fourth.
    let body = format!(
        "n=0\n{READ}\n  n=$((n + 1))\n  if (( n == 4 )); then echo \"crashing on purpose at $id\" >&2; exit 1; fi\n  \
         echo \"delivered $id\" >> \"$dir/log\"\n  echo \"ok $id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&publisher),
            "--threads",
            "2",
            "--retry-backoff",
            "0",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        20,
        "{out}"
    );
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(20, ids);
    let starts = logged(&dir, "start").len();
    assert!(
        starts >= 7,
        "{starts} starts for 20 events, 3 per process\n{out}"
    );
    // The events a crash hit took another attempt; the others one.
    let crashed = db.count("SELECT count(*) FROM outbox_event WHERE attempts > 1");
    assert!(crashed >= 1, "{out}");
    assert!(
        out.stderr.lines().any(|l| l.contains("WARN")
            && l.contains(": exited (exit code 1), with ")
            && l.contains(" unanswered: 1 it had read are retried")
            && l.contains("crashing on purpose")),
        "{out}"
    );
    let errors = db.count(
        "SELECT count(*) FROM outbox_event WHERE last_error LIKE '%stderr: crashing on purpose at%'",
    );
    assert_eq!(
        errors, crashed,
        "the stderr tail is each retried event's error\n{out}"
    );
}

#[test]
fn a_process_that_hangs_is_killed_at_the_timeout_and_its_event_retried() {
    let db = db_with_events(5, "x");
    let dir = TempDir::new("pipe-hang");
    // Event 2 hangs the first process (and the `sleep` it runs); the replacement answers.
    let body = format!(
        "{READ}\n  if (( id == 2 )) && [[ ! -e $dir/hung ]]; then touch \"$dir/hung\"; \
         echo \"hanging $$\" >> \"$dir/log\"; sleep 60; fi\n  echo \"ok $id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&publisher),
            "--threads",
            "1",
            "--pipe-timeout",
            "1",
            "--retry-backoff",
            "0",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        5,
        "{out}"
    );
    let (status, attempts, error) = row(&db, 2);
    assert_eq!((status.as_str(), attempts), ("done", 2), "{out}");
    assert!(
        error.is_none_or(|e| e.contains("no answer for event 2 within 1s")),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("no answer for event 2 within 1s (--pipe-timeout); killed"),
        "{out}"
    );
    assert_eq!(logged(&dir, "start").len(), 2, "{out}");
    // The hung process is gone, with the sleep it ran (its whole group was killed).
    let hung = &logged(&dir, "hanging")[0];
    assert!(
        !Path::new(&format!("/proc/{hung}")).exists()
            || std::fs::read_to_string(format!("/proc/{hung}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "process {hung} still runs\n{out}"
    );
    let group: i32 = hung.parse().unwrap();
    common::wait_until(
        Duration::from_secs(5),
        &format!("the `sleep` in group {group} is gone"),
        || live_members(group).is_empty(),
    );
}

/// Processes of group `pgid` that are alive (not zombies waiting to be reaped).
fn live_members(pgid: i32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: split after the last `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_command_that_exits_at_start_up_stops_the_run_with_a_clear_line() {
    let db = db_with_events(3, "x");
    let dir = TempDir::new("pipe-startup");
    let body = "echo 'publisher: cannot connect to broker at nowhere:4222' >&2\nexit 3";
    let publisher = script(&dir, "publisher.sh", body);
    let out = drain(&db, &["--route", &route(&publisher), "--threads", "2"]);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a non-zero exit expected\n{out}"
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("giving up")
            && last.contains("the command exits without answering")
            && last.contains("cannot connect to broker at nowhere:4222"),
        "the last line should name the cause\n{out}"
    );
    // Bounded: a few starts per worker, and the supervisor's crash-loop limit.
    let starts = logged(&dir, "start").len();
    assert!(starts <= 60, "{starts} starts\n{out}");
    // Not the events' fault: none is dead, none used an attempt.
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        3,
        "{out}"
    );
}

#[test]
fn garbage_on_stdout_is_a_protocol_error_the_process_is_restarted() {
    let db = db_with_events(10, "x");
    let dir = TempDir::new("pipe-garbage");
    // The first process writes garbage, the second answers for the wrong event; both once.
    // One event at a time (`--pipe-window 1`): a process goes on reading while it is being
    // killed, so with a window it could deliver more events before its answers are refused.
    let body = format!(
        "{READ}\n  if [[ ! -e $dir/g1 ]]; then touch \"$dir/g1\"; echo 'hello, this is not an answer'; \
         elif [[ ! -e $dir/g2 ]]; then touch \"$dir/g2\"; echo \"ok 999$id\"; \
         else echo \"delivered $id\" >> \"$dir/log\"; echo \"ok $id\"; fi\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&publisher),
            "--threads",
            "1",
            "--retry-backoff",
            "0",
            "--pipe-window",
            "1",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(10, ids);
    assert_eq!(logged(&dir, "start").len(), 3, "{out}");
    assert!(
        out.stderr.lines().any(|l| l.contains("WARN")
            && l.contains("protocol error: expected `ok")
            && l.contains("hello, this is not an answer")),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("protocol error: an answer for event 999"),
        "{out}"
    );
    // The event each process answered wrongly used an attempt; none other did.
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 2"),
        2,
        "{out}"
    );
}

#[test]
fn a_missing_pipe_program_is_a_usage_error_at_start_up() {
    let db = db_with_events(1, "x");
    let route = "*=pipe:/nonexistent/publisher --flag";
    let out = drain(&db, &["--route", route]);
    assert_eq!(out.code, Some(2), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(&format!("--route {route}"))
            && lines[0].contains("program /nonexistent/publisher not found"),
        "{out}"
    );
    let out = drain(&db, &["--route", "*=pipe:"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("`pipe:` needs a command"), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        1
    );
}

#[test]
fn a_process_that_ignores_the_end_of_its_input_gets_sigterm_after_the_grace() {
    let db = db_with_events(3, "x");
    let dir = TempDir::new("pipe-grace");
    // After EOF it lingers; SIGTERM (2 s after the EOF) is what ends it.
    let body = format!(
        "{READ}\n  echo \"ok $id\"\ndone\necho \"eof $$\" >> \"$dir/log\"\n\
         trap 'echo \"term $$\" >> \"$dir/log\"; exit 0' TERM\nsleep 30 & wait"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(&db, &["--route", &route(&publisher), "--threads", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    let pid = &logged(&dir, "start")[0];
    assert_eq!(logged(&dir, "eof"), vec![pid.clone()], "{out}");
    assert_eq!(logged(&dir, "term"), vec![pid.clone()], "{out}");
    let group: i32 = pid.parse().unwrap();
    common::wait_until(
        Duration::from_secs(5),
        &format!("group {group} is gone"),
        || live_members(group).is_empty(),
    );
}

#[test]
fn processes_still_running_when_the_worker_gives_up_waiting_are_killed() {
    let db = db_with_events(1, "x");
    let dir = TempDir::new("pipe-abandon");
    let body = format!("{READ}\n  echo \"busy $$\" >> \"$dir/log\"\n  sleep 60\ndone");
    let publisher = script(&dir, "publisher.sh", &body);
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", &route(&publisher)])
        .args(["--shutdown-timeout", "1", "--poll-interval", "0.05"]);
    let supervisor = common::spawn(&mut cmd);
    common::wait_until(Duration::from_secs(30), "the process has the event", || {
        !logged(&dir, "busy").is_empty()
    });
    let group: i32 = logged(&dir, "busy")[0].parse().unwrap();
    supervisor.signal("TERM");
    let out = supervisor.wait(Duration::from_secs(30));
    common::wait_until(
        Duration::from_secs(5),
        &format!("group {group} is gone after the worker exited\n{out}"),
        || live_members(group).is_empty(),
    );
    assert!(
        out.stderr.contains("`pipe:` process(es) still running"),
        "{out}"
    );
}

#[test]
fn the_example_publisher_delivers_every_event() {
    let db = db_with_events(50, "order.created");
    let dir = TempDir::new("pipe-example");
    let out_file = dir.join("published");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pipe-publisher-example.sh");
    let mut cmd = common::dispatchbox();
    cmd.env("PIPE_EXAMPLE_OUT", &out_file);
    let out = super::drain_cmd(cmd, &db, &["--route", &route(&example), "--threads", "3"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        50,
        "{out}"
    );
    let published = std::fs::read_to_string(&out_file).unwrap();
    assert_exactly_once(50, super::delivered_ids(&published));
}
