//! `--ordered`: the events of one aggregate are handed out one at a time in id order, across
//! threads, processes and supervisors, with retries; a dead predecessor blocks (or not); ids
//! that become visible out of commit order; the claim itself, statement by statement.

use super::drain;
use crate::common::{self, TestDb};
use dispatchbox::internals::{ClaimArgs, Completion, Conn, Order, Status, Table, TypeFilter};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// A migrated database (with the ordered index) holding `events` rows, inserted in this
/// order: `(aggregate_id or None, event_type)`.
fn db_with(events: &[(Option<&str>, &str)]) -> TestDb {
    let db = common::test_db();
    let mut m = common::dispatchbox();
    m.args(["migrate", "--ordered", "--dsn", &db.dsn]);
    let run = common::run(&mut m, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{run}");
    let mut c = db.client();
    for (agg, ty) in events {
        c.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) \
             VALUES (CASE WHEN $1::text IS NULL THEN NULL ELSE 'order' END, $1, $2, '{}')",
            &[agg, ty],
        )
        .unwrap();
    }
    db
}

/// An `exec:` route that logs `B agg id` when it starts and `D agg id` when it delivers, and
/// fails (exit 1, logging `F agg id`) the first attempt of every id listed in `fail_once`, and
/// every attempt (exit 65: dead at once) of the ids in `fail_dead`.
fn logging_route(dir: &Path) -> String {
    let script = dir.join("handler.sh");
    std::fs::write(
        &script,
        format!(
            "id=$DISPATCHBOX_EVENT_ID; agg=${{DISPATCHBOX_AGGREGATE_ID:--}}; d={dir}\n\
             echo \"B $agg $id\" >> $d/log\n\
             if grep -qx \"$id\" $d/fail_dead 2>/dev/null; then echo \"F $agg $id\" >> $d/log; exit 65; fi\n\
             if grep -qx \"$id\" $d/fail_once 2>/dev/null && ! grep -qx \"$id\" $d/failed 2>/dev/null; then\n\
               echo \"$id\" >> $d/failed; echo \"F $agg $id\" >> $d/log; exit 1\n\
             fi\n\
             echo \"D $agg $id\" >> $d/log\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    format!("*=exec:sh {}", script.display())
}

/// The log's lines as (kind, aggregate, id).
fn log_lines(dir: &Path) -> Vec<(String, String, i64)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let kind = w.next().unwrap().to_string();
            let agg = w.next().unwrap().to_string();
            (kind, agg, w.next().unwrap().parse().unwrap())
        })
        .collect()
}

/// Per aggregate (not `-`): every start is followed by its own end before the next start (no
/// two of one aggregate in flight at once), and the delivered ids are increasing. Returns
/// the delivered ids.
fn assert_ordered(lines: &[(String, String, i64)]) -> Vec<i64> {
    let mut open: BTreeMap<&str, i64> = BTreeMap::new();
    let mut last_done: BTreeMap<&str, i64> = BTreeMap::new();
    let mut delivered = Vec::new();
    for (kind, agg, id) in lines {
        if kind == "D" {
            delivered.push(*id);
        }
        if agg == "-" {
            continue;
        }
        match kind.as_str() {
            "B" => {
                if let Some(other) = open.insert(agg, *id) {
                    panic!("aggregate {agg}: {id} started while {other} was in flight");
                }
                if let Some(prev) = last_done.get(agg.as_str()) {
                    assert!(
                        id > prev,
                        "aggregate {agg}: {id} started after {prev} was done"
                    );
                }
            }
            _ => {
                assert_eq!(open.remove(agg.as_str()), Some(*id), "aggregate {agg}");
                if kind == "D" {
                    last_done.insert(agg, *id);
                }
            }
        }
    }
    delivered
}

fn ordered_run(db: &TestDb, route: &str, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "--ordered",
        "--route",
        route,
        "--retry-backoff",
        "0",
        "--threads",
        "4",
    ];
    args.extend_from_slice(extra);
    drain(db, &args)
}

#[test]
fn two_supervisors_of_two_processes_keep_every_aggregate_in_order() {
    let (aggregates, per) = (60usize, 6usize);
    // Interleaved: the events of one aggregate have spread-out ids.
    let ids: Vec<String> = (0..aggregates).map(|a| a.to_string()).collect();
    let mut events: Vec<(Option<&str>, &str)> = Vec::new();
    for _ in 0..per {
        for a in &ids {
            events.push((Some(a.as_str()), "order.changed"));
        }
    }
    // A few without an aggregate: not ordered, delivered all the same.
    events.extend([(None, "ping"); 10]);
    let n = events.len() as i64;
    let db = db_with(&events);
    let dir = common::TempDir::new("ordered");
    // About one event in four fails its first attempt (a fixed LCG, so runs are alike).
    let mut x: u64 = 42;
    let fail: Vec<String> = (1..=n)
        .filter(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33).is_multiple_of(4)
        })
        .map(|i| i.to_string())
        .collect();
    std::fs::write(dir.join("fail_once"), fail.join("\n") + "\n").unwrap();
    let route = logging_route(dir.path());
    let args = |batch: &'static str| {
        let mut c = common::dispatchbox();
        c.args(["--dsn", &db.dsn, "--drain", "--poll-interval", "0.02"]);
        c.args(["--ordered", "--route", &route, "--retry-backoff", "0"]);
        c.args(["--processes", "2", "--threads", "4", "--batch-size", batch]);
        c
    };
    let (mut a, mut b) = (args("5"), args("3"));
    let (a, b) = (common::spawn(&mut a), common::spawn(&mut b));
    let (a, b) = (
        a.wait(Duration::from_secs(180)),
        b.wait(Duration::from_secs(180)),
    );
    assert_eq!(a.code, Some(0), "{a}");
    assert_eq!(b.code, Some(0), "{b}");
    let lines = log_lines(dir.path());
    let delivered = assert_ordered(&lines);
    super::assert_exactly_once(n, delivered);
    assert!(
        lines.iter().filter(|l| l.0 == "F").count() == fail.len(),
        "every listed id failed once"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        n
    );
}

#[test]
fn ordered_delivery_holds_with_on_done_delete() {
    // 20 aggregates of 5 interleaved events; ids 3, 8, 13, ... fail their first attempt.
    let ids: Vec<String> = (0..20).map(|a| a.to_string()).collect();
    let mut events: Vec<(Option<&str>, &str)> = Vec::new();
    for _ in 0..5 {
        events.extend(ids.iter().map(|a| (Some(a.as_str()), "order.changed")));
    }
    let n = events.len() as i64;
    let db = db_with(&events);
    let dir = common::TempDir::new("ordered-delete");
    let fail: Vec<String> = (1..=n)
        .filter(|i| i % 5 == 3)
        .map(|i| i.to_string())
        .collect();
    std::fs::write(dir.join("fail_once"), fail.join("\n") + "\n").unwrap();
    let route = logging_route(dir.path());
    let extra = [
        "--on-done",
        "delete",
        "--processes",
        "2",
        "--batch-size",
        "4",
    ];
    let run = ordered_run(&db, &route, &extra);
    assert_eq!(run.code, Some(0), "{run}");
    let lines = log_lines(dir.path());
    super::assert_exactly_once(n, assert_ordered(&lines));
    assert_eq!(lines.iter().filter(|l| l.0 == "F").count(), fail.len());
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 0);
}

#[test]
fn a_dead_event_blocks_its_aggregate_until_retried() {
    // Aggregate a: 1 (dies), 2, 3; aggregate b: 4, 5.
    let a = Some("a");
    let b = Some("b");
    let db = db_with(&[(a, "x"), (a, "x"), (a, "x"), (b, "x"), (b, "x")]);
    let dir = common::TempDir::new("ordered-dead");
    std::fs::write(dir.join("fail_dead"), "1\n").unwrap();
    let route = logging_route(dir.path());
    let run = ordered_run(&db, &route, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(assert_ordered(&log_lines(dir.path())), vec![4, 5]);
    assert!(
        run.stderr.contains("held back") && run.stderr.contains("order:a"),
        "{}",
        run.stderr
    );
    let mut status = common::dispatchbox();
    status.args(["status", "--json", "--dsn", &db.dsn]);
    let st = common::run(&mut status, Duration::from_secs(60));
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status JSON");
    assert_eq!(v["held_back_aggregates"], 1, "{}", st.stdout);

    // The operator re-queues it (now it succeeds): 1, 2, 3 go, in order.
    std::fs::remove_file(dir.join("fail_dead")).unwrap();
    let mut retry = common::dispatchbox();
    retry.args(["dead", "retry", "1", "--dsn", &db.dsn]);
    let r = common::run(&mut retry, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{r}");
    let run = ordered_run(&db, &route, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(assert_ordered(&log_lines(dir.path())), vec![4, 5, 1, 2, 3]);
}

#[test]
fn with_ordered_dead_skip_a_dead_event_does_not_block() {
    let a = Some("a");
    let db = db_with(&[(a, "x"), (a, "x"), (a, "x")]);
    let dir = common::TempDir::new("ordered-skip");
    std::fs::write(dir.join("fail_dead"), "1\n").unwrap();
    let route = logging_route(dir.path());
    let run = ordered_run(&db, &route, &["--ordered-dead", "skip"]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(assert_ordered(&log_lines(dir.path())), vec![2, 3]);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        1
    );
}

#[test]
fn status_counts_held_back_aggregates_as_the_workers_are_told() {
    // Aggregate a: 1 dead, 2 waiting behind it.
    let a = Some("a");
    let db = db_with(&[(a, "x"), (a, "x")]);
    db.client()
        .batch_execute("UPDATE outbox_event SET status = 'dead' WHERE id = 1")
        .unwrap();
    let status = |args: &[&str], env: Option<&str>| {
        let mut c = common::dispatchbox();
        c.args(["status", "--dsn", &db.dsn]).args(args);
        if let Some(v) = env {
            c.env("DISPATCHBOX_ORDERED_DEAD", v);
        }
        let out = common::run(&mut c, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{out}");
        out
    };
    let json = |out: &common::Run| -> serde_json::Value {
        serde_json::from_str(&out.stdout).expect("status JSON")
    };
    // The default, block: the figure says what it assumes.
    let out = status(&[], None);
    assert!(
        out.stdout.contains(
            "held back 1 aggregate(s) behind a dead event (--ordered, --ordered-dead block)"
        ),
        "{out}"
    );
    let v = json(&status(&["--json"], None));
    assert_eq!(v["held_back_aggregates"], 1, "{v}");
    assert_eq!(v["ordered_dead"], "block", "{v}");
    // Told skip, by flag or variable, as the workers are: nothing is held back.
    for (args, env) in [
        (&["--ordered-dead", "skip"][..], None),
        (&[][..], Some("skip")),
    ] {
        let out = status(args, env);
        assert!(
            out.stdout
                .contains("held back 0 (--ordered-dead skip: a dead event holds nothing back)"),
            "{out}"
        );
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let v = json(&status(&json_args, env));
        assert_eq!(v["held_back_aggregates"], 0, "{v}");
        assert_eq!(v["ordered_dead"], "skip", "{v}");
    }
    // A value it does not know is refused as for a run.
    let mut c = common::dispatchbox();
    c.args(["status", "--dsn", &db.dsn, "--ordered-dead", "maybe"]);
    let out = common::run(&mut c, Duration::from_secs(60));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("--ordered-dead: `maybe` is not block or skip"),
        "{out}"
    );
}

#[test]
fn a_lower_id_committed_later_is_delivered_after_the_higher_one() {
    let db = db_with(&[]);
    let dir = common::TempDir::new("ordered-commit");
    let route = logging_route(dir.path());
    let insert = "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload) \
                  VALUES ('order', 'x', 'x', '{}') RETURNING id";
    // T1 takes id 1 and stays open; T2 takes id 2 and commits.
    let mut c1 = db.client();
    let mut t1 = c1.transaction().unwrap();
    let first: i64 = t1.query_one(insert, &[]).unwrap().get(0);
    let second: i64 = db.client().query_one(insert, &[]).unwrap().get(0);
    assert!(first < second);
    // The worker sees only 2: it delivers it (the guarantee covers the events visible when
    // the claim runs).
    let run = ordered_run(&db, &route, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(assert_ordered(&log_lines(dir.path())), vec![second]);
    t1.commit().unwrap();
    let run = ordered_run(&db, &route, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    // 1 after 2: the documented exception (a lower id that commits later).
    let delivered: Vec<i64> = log_lines(dir.path())
        .into_iter()
        .filter(|l| l.0 == "D")
        .map(|l| l.2)
        .collect();
    assert_eq!(delivered, vec![second, first]);
}

fn all() -> TypeFilter {
    TypeFilter {
        all: true,
        ..Default::default()
    }
}

fn conn(db: &TestDb) -> Conn {
    let table = Table::parse("outbox_event").unwrap();
    let order = Order::ByAggregate { dead_blocks: true };
    Conn::prepare(db.client(), &table, Duration::from_secs(30), order).unwrap()
}

fn take(c: &mut Conn, owner: &str) -> Vec<(i64, i32)> {
    let args = ClaimArgs {
        n: 10,
        lease: Duration::from_secs(30),
        owner,
        filter: &all(),
        max_attempts: 5,
    };
    let mut got: Vec<(i64, i32)> = c
        .claim(&args)
        .unwrap()
        .iter()
        .map(|c| (c.event.id, c.token))
        .collect();
    got.sort();
    got
}

#[test]
fn the_claim_takes_one_event_per_aggregate_and_none_behind_a_leased_one() {
    let (a, b) = (Some("a"), Some("b"));
    // 1 a, 2 a, 3 b, 4 -, 5 -, 6 b
    let db = db_with(&[
        (a, "x"),
        (a, "x"),
        (b, "x"),
        (None, "x"),
        (None, "x"),
        (b, "x"),
    ]);
    let (mut w1, mut w2) = (conn(&db), conn(&db));
    let got = take(&mut w1, "w1");
    let ids: HashSet<i64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        ids,
        HashSet::from([1, 3, 4, 5]),
        "one per aggregate; none-aggregate free"
    );
    // 2 and 6 wait behind 1 and 3, leased by w1.
    assert!(take(&mut w2, "w2").is_empty());
    let done = |id: i64, status: Status| Completion {
        id,
        token: 1,
        status,
        delay: 0.0,
        error: None,
    };
    // 1 done, 3 retry (due at once): 2 is free; 6 still waits behind 3.
    w1.complete("w1", &[done(1, Status::Done), done(3, Status::Retry)])
        .unwrap();
    let got: Vec<i64> = take(&mut w2, "w2").iter().map(|g| g.0).collect();
    assert_eq!(got, vec![2, 3]);
}
