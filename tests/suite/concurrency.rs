//! Several workers on one table: exactly-once delivery while healthy, and lease takeover
//! with the stale owner's late result ignored (fencing).

use super::{assert_exactly_once, db_with_events, delivered_ids};
use crate::common;
use dispatchbox::internals::TypeFilter;
use dispatchbox::internals::{ClaimArgs, Claimed, Completion, Conn, Status};
use dispatchbox::internals::{Order, Table};
use std::time::Duration;

#[test]
fn two_workers_on_one_table_deliver_every_event_exactly_once() {
    let n = 5000;
    let db = db_with_events(n, "order.created");
    let mut a = common::dispatchbox();
    a.args([
        "--dsn",
        &db.dsn,
        "--drain",
        "--batch-size",
        "10",
        "--poll-interval",
        "0.01",
    ]);
    let mut b = common::dispatchbox();
    b.args([
        "--dsn",
        &db.dsn,
        "--drain",
        "--batch-size",
        "7",
        "--poll-interval",
        "0.01",
    ]);
    let a = common::spawn(&mut a);
    let b = common::spawn(&mut b);
    let a = a.wait(Duration::from_secs(120));
    let b = b.wait(Duration::from_secs(120));
    assert_eq!(a.code, Some(0), "{a}");
    assert_eq!(b.code, Some(0), "{b}");
    let ids_a = delivered_ids(&a.stdout);
    let ids_b = delivered_ids(&b.stdout);
    assert!(
        !ids_a.is_empty() && !ids_b.is_empty(),
        "one worker did everything: {} / {}",
        ids_a.len(),
        ids_b.len()
    );
    assert_exactly_once(n, ids_a.into_iter().chain(ids_b));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        n
    );
}

/// `Conn::claim` with positional arguments, to keep the tests short.
trait Take {
    fn take(
        &mut self,
        n: u32,
        lease: Duration,
        owner: &str,
        filter: &TypeFilter,
        max_attempts: i32,
    ) -> Result<Vec<Claimed>, postgres::Error>;
}

impl Take for Conn {
    fn take(
        &mut self,
        n: u32,
        lease: Duration,
        owner: &str,
        filter: &TypeFilter,
        max_attempts: i32,
    ) -> Result<Vec<Claimed>, postgres::Error> {
        self.claim(&ClaimArgs {
            n,
            lease,
            owner,
            filter,
            max_attempts,
        })
    }
}

fn conn(db: &common::TestDb) -> Conn {
    Conn::prepare(
        db.client(),
        &Table::parse("outbox_event").unwrap(),
        Duration::from_secs(30),
        Order::Unordered,
    )
    .unwrap()
}

fn all() -> TypeFilter {
    TypeFilter {
        all: true,
        ..Default::default()
    }
}

#[test]
fn an_expired_lease_is_taken_over_and_the_stale_result_is_ignored() {
    let db = db_with_events(1, "x");
    let (mut a, mut b) = (conn(&db), conn(&db));
    let lease = Duration::from_secs(60);

    let claimed = a.take(10, lease, "worker-a", &all(), 5).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].token, 1);
    // While A's lease holds, B gets nothing.
    assert!(b.take(10, lease, "worker-b", &all(), 5).unwrap().is_empty());

    // A's lease runs out (its end is moved to now instead of waited for: no test stall can
    // make the check above see an expired lease).
    db.client()
        .execute("UPDATE outbox_event SET next_run_at = now()", &[])
        .unwrap();
    let taken = b.take(10, lease, "worker-b", &all(), 5).unwrap();
    assert_eq!(taken.len(), 1, "B takes the expired lease over");
    assert_eq!(taken[0].token, 2);

    // A finishes late: its result, its extension and its release change nothing.
    let late = Completion {
        id: 1,
        token: 1,
        status: Status::Done,
        delay: 0.0,
        error: None,
    };
    assert_eq!(a.complete("worker-a", &[late]).unwrap(), 0);
    assert_eq!(a.extend("worker-a", &[(1, 1)], lease).unwrap().len(), 0);
    assert_eq!(a.release("worker-a", &[(1, 1)], &[0.0]).unwrap(), 0);
    // Even with the right token, the owner check holds.
    let forged = Completion {
        id: 1,
        token: 2,
        status: Status::Dead,
        delay: 0.0,
        error: None,
    };
    assert_eq!(a.complete("worker-a", &[forged]).unwrap(), 0);
    let r = db
        .client()
        .query_one("SELECT status, attempts, locked_by FROM outbox_event", &[])
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, i32>(1),
            r.get::<_, Option<String>>(2)
        ),
        ("pending".into(), 2, Some("worker-b".into()))
    );

    // B's result is the one that counts.
    let ok = Completion {
        id: 1,
        token: 2,
        status: Status::Done,
        delay: 0.0,
        error: None,
    };
    assert_eq!(b.complete("worker-b", &[ok]).unwrap(), 1);
    assert_eq!(db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 2 AND locked_by IS NULL"), 1);
}

#[test]
fn extending_a_lease_keeps_the_event_from_being_taken_over() {
    let db = db_with_events(1, "x");
    let (mut a, mut b) = (conn(&db), conn(&db));
    let lease_end = |db: &common::TestDb| {
        db.client()
            .query_one(
                "SELECT extract(epoch FROM next_run_at)::float8 FROM outbox_event",
                &[],
            )
            .unwrap()
            .get::<_, f64>(0)
    };
    let claimed = a
        .take(1, Duration::from_secs(2), "worker-a", &all(), 5)
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let first_end = lease_end(&db);
    let lease = Duration::from_secs(60);
    assert_eq!(a.extend("worker-a", &[(1, 1)], lease).unwrap(), vec![1]);
    assert!(lease_end(&db) > first_end);
    // Past the end of the first lease (by the server's clock), B still gets nothing.
    common::wait_until(
        Duration::from_secs(30),
        "the first lease would have ended",
        || db.count(&format!("SELECT (now() > to_timestamp({first_end}))::int")) == 1,
    );
    assert!(b.take(1, lease, "worker-b", &all(), 5).unwrap().is_empty());
    assert_eq!(a.extend("worker-a", &[(1, 1)], lease).unwrap(), vec![1]);
    assert!(b.take(1, lease, "worker-b", &all(), 5).unwrap().is_empty());
}

#[test]
fn a_deferred_release_gives_the_attempt_back_and_waits_its_delay() {
    let db = db_with_events(2, "x");
    let mut a = conn(&db);
    let lease = Duration::from_secs(60);
    assert_eq!(a.take(2, lease, "worker-a", &all(), 5).unwrap().len(), 2);
    assert_eq!(
        a.release("worker-a", &[(1, 1), (2, 1)], &[0.0, 30.0])
            .unwrap(),
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE attempts = 0 AND locked_by IS NULL"),
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox_event WHERE id = 2 AND next_run_at BETWEEN now() + interval '29 s' AND now() + interval '31 s'"), 1);
    let mut b = conn(&db);
    let taken = b.take(2, lease, "worker-b", &all(), 5).unwrap();
    assert_eq!(
        taken.iter().map(|c| c.event.id).collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn release_gives_the_event_back_at_once_with_its_attempt() {
    let db = db_with_events(2, "x");
    let mut a = conn(&db);
    let claimed = a
        .take(2, Duration::from_secs(60), "worker-a", &all(), 5)
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        a.release("worker-a", &[(1, 1), (2, 1)], &[0.0, 0.0])
            .unwrap(),
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox_event WHERE attempts = 0 AND locked_by IS NULL AND next_run_at <= now()"), 2);
    let mut b = conn(&db);
    assert_eq!(
        b.take(2, Duration::from_secs(60), "worker-b", &all(), 5)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn claim_filters_by_routed_types() {
    let db = common::test_db();
    db.migrate();
    let mut c = db.client();
    for t in ["order.created", "order.paid", "orderXpaid", "user.x", "a%b"] {
        common::insert_events(&mut c, "outbox_event", 1, t);
    }
    let mut a = conn(&db);
    let f = TypeFilter {
        all: false,
        exact: vec!["user.x".into()],
        like: vec!["order.%".into(), r"a\%%".into()],
        ..Default::default()
    };
    let mut got: Vec<String> = a
        .take(10, Duration::from_secs(60), "w", &f, 5)
        .unwrap()
        .into_iter()
        .map(|c| c.event.event_type.unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec!["a%b", "order.created", "order.paid", "user.x"]);
}
