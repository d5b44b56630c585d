//! Claiming ahead: a worker claims its next batch while the last one is being handled when its
//! route takes a claim's events together (`stdout`), so its connection does not idle between
//! round trips; it never claims ahead of a queue of events waiting for a thread of their own
//! (`exec:`, webhooks), which would only hold leases another worker could use.

use crate::common::{self, TempDir};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::Duration;

/// Claimed and not finished: leased (attempts used, still pending).
const LEASED: &str = "SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts > 0";

fn db_with_big_events(n: i64) -> common::TestDb {
    let db = common::test_db();
    db.migrate();
    db.client()
        .batch_execute(&format!(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)
             SELECT 'order', 'o-' || g, 'order.created', jsonb_build_object('pad', repeat('x', 50000))
             FROM generate_series(1, {n}) AS g"
        ))
        .expect("insert events");
    db
}

#[test]
fn a_blocked_stdout_holds_the_batch_it_writes_and_one_claimed_ahead() {
    let db = db_with_big_events(20);
    let dir = TempDir::new("claim-ahead");
    let fifo = dir.join("out");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // Nothing ever reads it, so the worker's write of its first batch (2 × 50 kB) blocks once
    // the pipe's 64 KiB are full. (The read end is opened first, without waiting for a
    // writer; the worker gets the only write end.)
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open the fifo's read end");
    let writer = OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("write end");
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", "*=stdout", "--batch-size", "2"]);
    cmd.args(["--threads", "1", "--poll-interval", "0.05"]);
    let run = common::spawn_with_stdout(&mut cmd, Stdio::from(writer));
    drop(cmd); // it holds our copy of the write end
    common::wait_until(
        Duration::from_secs(60),
        "a second batch claimed ahead",
        || db.count(LEASED) == 4,
    );
    // Never a third: at most --threads + 2 × --batch-size (1 + 4) fit.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(db.count(LEASED), 4, "{}", run.stderr_so_far());
    run.signal("TERM");
    drop(reader); // the blocked write fails (EPIPE): nobody can read it any more
    let end = run.wait(Duration::from_secs(60));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'")
            + db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'"),
        20,
        "{end}"
    );
}

#[test]
fn no_batch_is_claimed_ahead_of_events_waiting_for_a_thread() {
    let db = db_with_big_events(20);
    let dir = TempDir::new("claim-ahead-exec");
    let go = dir.join("go");
    let started = dir.join("started");
    // Each command says it started, then waits for the test.
    let script = format!(
        "exec:sh -c 'echo x >> {}; while [ ! -e {} ]; do sleep 0.05; done; cat >/dev/null'",
        started.display(),
        go.display()
    );
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", &format!("*={script}")]);
    cmd.args([
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--poll-interval",
        "0.05",
    ]);
    let run = common::spawn(&mut cmd);
    common::wait_until(Duration::from_secs(60), "the first command started", || {
        std::fs::read_to_string(&started).is_ok_and(|s| !s.is_empty())
    });
    // One event runs, one waits for the only thread: nothing more is claimed.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(db.count(LEASED), 2, "{}", run.stderr_so_far());
    std::fs::write(&go, "").expect("go");
    common::wait_until(Duration::from_secs(60), "every event delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 20
    });
    run.signal("TERM");
    let end = run.wait(Duration::from_secs(60));
    assert_eq!(end.code, Some(0), "{end}");
}
