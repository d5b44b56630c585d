//! Streaming `pipe:`: many events outstanding per process, answers in any order, the window
//! as the bound, several processes per route, and what the end of a process costs: nothing
//! for the events it never read (it exits between answers, stops reading, is killed), one
//! attempt for those it read and did not answer. Also the protocol's limits (an answer for an
//! id that is not outstanding) and the causes named in the log (a closed stdout).

use super::pipe::{logged, route, row, script, READ};
use super::{assert_exactly_once, db_with_events, drain};
use crate::common::TempDir;
use std::path::PathBuf;
use std::time::Duration;

/// A perl bridge: reads whatever lines have arrived (waiting 20 ms for more), logs how many
/// it holds (`batch N`), then answers them in reverse order and logs them as delivered.
/// With `stall_once`, the first process never reads anything (and never answers).
fn batching_bridge(dir: &TempDir, stall_once: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let stall = if stall_once {
        "if (! -e \"$dir/stalled\") { open(my $m, '>', \"$dir/stalled\"); close $m; sleep 60; exit 0; }"
    } else {
        ""
    };
    let text = format!(
        r#"#!/usr/bin/env perl
use strict; use warnings; use IO::Select;
my $dir = '{}';
open(my $log, '>>', "$dir/log") or die; select((select($log), $| = 1)[0]); $| = 1;
print $log "start $$\n";
{stall}
my $sel = IO::Select->new(\*STDIN);
my ($buf, $eof) = ('', 0);
while (!$eof) {{
    $sel->can_read(5) or next;
    my @ids;
    do {{
        my $n = sysread(STDIN, $buf, 65536, length $buf);
        $eof = 1 if !$n;
        while ($buf =~ s/^(.*)\n//) {{
            $1 =~ /^\{{"id":(\d+),/ or die "not an event: $1";
            push @ids, $1;
        }}
    }} while (!$eof && $sel->can_read(0.02));
    next unless @ids;
    print $log "batch " . scalar(@ids) . "\n";
    print $log "delivered $_\n" for @ids;
    print "ok $_\n" for reverse @ids;
}}
print $log "eof $$\n";
"#,
        dir.path().display()
    );
    let path = dir.join("bridge.pl");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn batches(dir: &TempDir) -> Vec<usize> {
    logged(dir, "batch")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn answers_in_any_order_deliver_every_event_once_within_the_window() {
    let db = db_with_events(600, "order.created");
    let dir = TempDir::new("pipe-stream");
    let bridge = batching_bridge(&dir, false);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&bridge),
            "--batch-size",
            "100",
            "--pipe-window",
            "64",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        600,
        "{out}"
    );
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(600, ids);
    let sizes = batches(&dir);
    let most = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        most <= 64,
        "{most} events outstanding at once, window 64\n{out}"
    );
    assert!(
        most > 1,
        "never more than one event outstanding: {sizes:?}\n{out}"
    );
    assert_eq!(logged(&dir, "start").len(), 1, "{out}");
    assert_eq!(
        logged(&dir, "eof").len(),
        1,
        "a graceful end of input\n{out}"
    );
    assert!(!out.stderr.contains("WARN"), "{out}");
}

#[test]
fn events_go_to_several_processes_in_turn() {
    let db = db_with_events(90, "x");
    let dir = TempDir::new("pipe-procs");
    let body = format!(
        "{READ}\n  echo \"delivered $id\" >> \"$dir/log\"\n  echo \"by $$\" >> \"$dir/log\"\n  \
         echo \"ok $id\"\ndone\necho \"eof $$\" >> \"$dir/log\""
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &["--route", &route(&publisher), "--pipe-processes", "3"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(90, ids);
    let mut starts = logged(&dir, "start");
    assert_eq!(starts.len(), 3, "{out}");
    let mut by = logged(&dir, "by");
    by.sort();
    by.dedup();
    starts.sort();
    assert_eq!(by, starts, "every process delivered some\n{out}");
    let mut eofs = logged(&dir, "eof");
    eofs.sort();
    assert_eq!(eofs, starts, "{out}");
}

/// Issue 17, item 8: the next event was written into a process that had exited after its
/// answer, and charged an attempt (with 5 attempts, 1 of 10 events went dead).
#[test]
fn a_process_that_exits_after_each_answer_costs_no_attempt_for_what_it_never_read() {
    let db = db_with_events(10, "x");
    let dir = TempDir::new("pipe-one-shot");
    // bash's `read` takes one line from a pipe (a byte at a time): the rest stays unread.
    let body = format!(
        "{READ}\n  echo \"delivered $id\" >> \"$dir/log\"\n  echo \"ok $id\"\n  exit 0\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&publisher),
            "--retry-backoff",
            "0",
            "--max-attempts",
            "2",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(10, ids);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        10,
        "no event used more than its one delivery's attempt\n{out}"
    );
}

/// Issue 17, item 7: a process that closed its stdout was reported as "killed by signal 9",
/// the kill Dispatchbox itself sent.
#[test]
fn a_process_that_closes_its_stdout_is_reported_as_such() {
    let db = db_with_events(3, "x");
    let dir = TempDir::new("pipe-close-stdout");
    let body = format!(
        "{READ}\n  if [[ ! -e $dir/closed ]]; then touch \"$dir/closed\"; exec 1>&-; sleep 60; fi\n  \
         echo \"ok $id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &["--route", &route(&publisher), "--retry-backoff", "0"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        3,
        "{out}"
    );
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("closed its stdout"))
        .unwrap_or_else(|| panic!("no warning names the closed stdout\n{out}"));
    assert!(
        warning.contains("closed its stdout while still running; killed"),
        "{out}"
    );
    assert!(!out.stderr.contains("signal 9"), "{out}");
}

#[test]
fn a_process_that_stops_reading_is_killed_and_what_it_never_read_uses_no_attempt() {
    // 2,000 events of ~100 bytes overflow the pipe's 64 KiB: the writer waits, then gives up
    // at --pipe-timeout (or the oldest answer is overdue first); either way the process is
    // killed, and as it read nothing, nothing used an attempt.
    let db = db_with_events(2000, "x");
    let dir = TempDir::new("pipe-stall");
    let bridge = batching_bridge(&dir, true);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&bridge),
            "--batch-size",
            "100",
            "--pipe-window",
            "1000",
            "--pipe-timeout",
            "1",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        2000,
        "{out}"
    );
    let ids = logged(&dir, "delivered")
        .into_iter()
        .map(|s| s.parse().unwrap());
    assert_exactly_once(2000, ids);
    assert!(
        out.stderr.lines().any(|l| l.contains("WARN")
            && (l.contains("took no input for 1s (--pipe-timeout); killed")
                || l.contains("within 1s (--pipe-timeout); killed"))
            && l.contains(": 0 it had read are retried")),
        "{out}"
    );
}

#[test]
fn an_answer_for_an_event_answered_already_is_a_protocol_error() {
    let db = db_with_events(5, "x");
    let dir = TempDir::new("pipe-twice");
    let body = format!(
        "{READ}\n  echo \"ok $id\"\n  if [[ ! -e $dir/twice ]]; then touch \"$dir/twice\"; echo \"ok $id\"; fi\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&publisher),
            "--pipe-window",
            "1",
            "--retry-backoff",
            "0",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("which is not outstanding (never sent to this process, or answered already)"),
        "{out}"
    );
    // The first answer stands.
    assert_eq!(row(&db, 1).0, "done", "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        5,
        "{out}"
    );
    assert_eq!(logged(&dir, "start").len(), 2, "{out}");
}

#[test]
fn a_stop_waits_for_the_outstanding_answers_then_closes_the_input() {
    let db = db_with_events(300, "x");
    let dir = TempDir::new("pipe-stop");
    // A slow publisher, one event at a time: most of the window waits in its stdin.
    let body = format!(
        "{READ}\n  sleep 0.02\n  echo \"delivered $id\" >> \"$dir/log\"\n  echo \"ok $id\"\ndone\n\
         echo \"eof $$\" >> \"$dir/log\""
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let mut cmd = crate::common::dispatchbox();
    cmd.args([
        "--dsn",
        &db.dsn,
        "--route",
        &route(&publisher),
        "--pipe-window",
        "40",
        "--poll-interval",
        "0.05",
    ]);
    let daemon = crate::common::spawn(&mut cmd);
    crate::common::wait_until(Duration::from_secs(60), "20 events delivered", || {
        logged(&dir, "delivered").len() >= 20
    });
    daemon.signal("TERM");
    let out = daemon.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    // Every event written to the publisher was answered before its input closed: whatever is
    // done was delivered once, nothing else used an attempt, nothing failed.
    let delivered: Vec<i64> = logged(&dir, "delivered")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let done = db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1");
    assert_eq!(done as usize, delivered.len(), "{out}");
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), delivered.len(), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        300 - done,
        "{out}"
    );
    assert_eq!(logged(&dir, "eof"), logged(&dir, "start"), "{out}");
    assert!(!out.stderr.contains("WARN"), "{out}");
}

#[test]
fn ordered_delivery_holds_with_a_window_and_answers_out_of_order() {
    let db = crate::common::test_db();
    db.migrate();
    // 6 aggregates × 30 events, interleaved by id.
    db.client()
        .execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', (g % 6)::text, 'x', '{}'::jsonb FROM generate_series(1, 180) AS g",
            &[],
        )
        .unwrap();
    let dir = TempDir::new("pipe-ordered");
    let bridge = batching_bridge(&dir, false);
    let out = drain(
        &db,
        &[
            "--route",
            &route(&bridge),
            "--ordered",
            "--batch-size",
            "50",
            "--pipe-window",
            "64",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let delivered: Vec<i64> = logged(&dir, "delivered")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_exactly_once(180, delivered.iter().copied());
    // Within each aggregate (id % 6), ids were delivered (read by the bridge) in order.
    for agg in 0..6 {
        let seq: Vec<i64> = delivered
            .iter()
            .copied()
            .filter(|id| id % 6 == agg)
            .collect();
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "aggregate {agg}: {seq:?}\n{out}"
        );
    }
    // Several aggregates were outstanding at once (one event each).
    assert!(batches(&dir).iter().any(|&n| n > 1), "{out}");
}

#[test]
fn a_flood_on_stdout_is_a_protocol_error_not_a_growing_buffer() {
    let db = db_with_events(3, "x");
    let dir = TempDir::new("pipe-flood");
    // The first process answers with 1 MiB and no newline (then more), once.
    let body = format!(
        "{READ}\n  if [[ ! -e $dir/flooded ]]; then touch \"$dir/flooded\"; \
         head -c 1048576 /dev/zero | tr '\\0' 'x'; sleep 60; fi\n  echo \"ok $id\"\ndone"
    );
    let publisher = script(&dir, "publisher.sh", &body);
    let out = drain(
        &db,
        &["--route", &route(&publisher), "--retry-backoff", "0"],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("protocol error: an answer line longer than 65536 bytes"),
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        3,
        "{out}"
    );
}
