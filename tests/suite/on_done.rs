//! `--on-done delete`: a delivered event's row is deleted by the completion instead of kept as
//! `done`; each event is still delivered once, retries and dead rows are kept, and the fence
//! (owner and token) holds for the delete exactly as for the update.

use super::{assert_exactly_once, db_with_events, delivered_ids, drain};
use crate::common;
use dispatchbox::internals::TypeFilter;
use dispatchbox::internals::{ClaimArgs, Completion, Conn, OnDone, Order, Status, Table};
use std::time::Duration;

#[test]
fn a_drain_with_on_done_delete_delivers_each_event_once_and_keeps_no_done_rows() {
    let n = 3000;
    let db = db_with_events(n, "order.created");
    let run = drain(
        &db,
        &[
            "--on-done",
            "delete",
            "--processes",
            "2",
            "--batch-size",
            "50",
        ],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_exactly_once(n, delivered_ids(&run.stdout));
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 0);
}

#[test]
fn on_done_delete_keeps_retries_and_dead_rows() {
    let db = db_with_events(10, "ok");
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 2, "perm");
    common::insert_events(&mut c, "outbox_event", 3, "flaky");
    let run = drain(
        &db,
        &[
            "--on-done",
            "delete",
            "--route",
            "ok=stdout",
            "--route",
            "perm=exec:sh -c 'exit 65'",
            "--route",
            "flaky=exec:false",
            "--retry-backoff",
            "1h",
        ],
    );
    assert_eq!(run.code, Some(0), "{run}");
    assert_exactly_once(10, delivered_ids(&run.stdout));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE event_type = 'ok'"),
        0
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE event_type = 'perm' AND status = 'dead' \
             AND last_error IS NOT NULL AND locked_by IS NULL"
        ),
        2
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE event_type = 'flaky' AND status = 'retry' \
             AND attempts = 1 AND next_run_at > now() + interval '30 minutes' AND locked_by IS NULL"
        ),
        3
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 5);
}

#[test]
fn a_bad_on_done_value_is_a_usage_error() {
    let db = db_with_events(1, "x");
    let run = drain(&db, &["--on-done", "archive"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("--on-done: `archive` is not keep or delete"),
        "{run}"
    );
    let mut cmd = common::dispatchbox();
    cmd.env("DISPATCHBOX_ON_DONE", "Delete");
    let run = super::drain_cmd(cmd, &db, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("DISPATCHBOX_ON_DONE: `Delete` is not keep or delete"),
        "{run}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'"),
        1
    );
}

fn conn(db: &common::TestDb, order: Order) -> Conn {
    let table = Table::parse("outbox_event").unwrap();
    let lease = Duration::from_secs(30);
    Conn::prepare_with(db.client(), &table, lease, order, OnDone::Delete).unwrap()
}

fn all() -> TypeFilter {
    TypeFilter {
        all: true,
        ..Default::default()
    }
}

fn args<'a>(owner: &'a str, filter: &'a TypeFilter) -> ClaimArgs<'a> {
    ClaimArgs {
        n: 10,
        lease: Duration::from_secs(60),
        owner,
        filter,
        max_attempts: 5,
    }
}

fn result(id: i64, token: i32, status: Status) -> Completion {
    Completion {
        id,
        token,
        status,
        delay: 0.0,
        error: (status != Status::Done).then(|| "failed".to_string()),
    }
}

#[test]
fn a_stale_workers_delete_deletes_nothing() {
    let db = db_with_events(2, "x");
    let (mut a, mut b) = (conn(&db, Order::Unordered), conn(&db, Order::Unordered));
    let filter = all();
    assert_eq!(a.claim(&args("worker-a", &filter)).unwrap().len(), 2);
    // A's leases run out; B takes both over (token 2).
    db.client()
        .execute("UPDATE outbox_event SET next_run_at = now()", &[])
        .unwrap();
    assert_eq!(b.claim(&args("worker-b", &filter)).unwrap().len(), 2);

    // A's late results, alone and riding along with a claim, delete nothing.
    assert_eq!(
        a.complete("worker-a", &[result(1, 1, Status::Done)])
            .unwrap(),
        0
    );
    let (written, claimed) = a
        .complete_and_claim(&[result(2, 1, Status::Done)], &args("worker-a", &filter))
        .unwrap();
    assert_eq!((written, claimed.len()), (0, 0));
    // The right token under the wrong owner deletes nothing either.
    assert_eq!(
        a.complete("worker-a", &[result(1, 2, Status::Done)])
            .unwrap(),
        0
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 2 \
             AND locked_by = 'worker-b'"
        ),
        2
    );

    // B's results count: the delivered one is deleted, the failed one kept as a retry.
    let batch = [result(1, 2, Status::Done), result(2, 2, Status::Retry)];
    let (written, _) = b
        .complete_and_claim(&batch, &args("worker-b", &filter))
        .unwrap();
    assert_eq!(written, 2);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE id = 1"),
        0
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE id = 2 AND status = 'retry' \
             AND locked_by IS NULL AND last_error = 'failed'"
        ),
        1
    );
    // Sent again after a lost reply: the deleted row counts as written, the retry too.
    let table = Table::parse("outbox_event").unwrap();
    assert_eq!(b.already_written(&table, &batch).unwrap(), 2);
}

#[test]
fn an_ordered_claim_sees_a_deleted_predecessor_as_delivered() {
    let db = common::test_db();
    let mut m = common::dispatchbox();
    m.args(["migrate", "--ordered", "--dsn", &db.dsn]);
    let run = common::run(&mut m, Duration::from_secs(60));
    assert_eq!(run.code, Some(0), "{run}");
    // Two calls: ids 1, 2 are aggregates 1 and 2; ids 3, 4 their successors.
    let mut c = db.client();
    common::insert_events(&mut c, "outbox_event", 2, "x");
    common::insert_events(&mut c, "outbox_event", 2, "x");
    let order = Order::ByAggregate { dead_blocks: true };
    let mut w = conn(&db, order);
    let filter = all();
    let ids = |c: &[dispatchbox::internals::Claimed]| -> Vec<i64> {
        let mut v: Vec<i64> = c.iter().map(|c| c.event.id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&w.claim(&args("w", &filter)).unwrap()), vec![1, 2]);
    // 1 delivered (deleted) and 2 failed (due again at once), in the claim's own statement:
    // its snapshot still sees both leased, so nothing comes early.
    let batch = [result(1, 1, Status::Done), result(2, 1, Status::Retry)];
    let (written, claimed) = w.complete_and_claim(&batch, &args("w", &filter)).unwrap();
    assert_eq!((written, ids(&claimed)), (2, vec![]));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE id = 1"),
        0
    );
    // At the next claim 1 is gone: 3 is free; 4 still waits behind 2 (claimed again).
    assert_eq!(ids(&w.claim(&args("w", &filter)).unwrap()), vec![2, 3]);
    assert!(w.claim(&args("w", &filter)).unwrap().is_empty());
}
