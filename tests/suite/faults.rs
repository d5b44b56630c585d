//! Database faults while workers run: server restarts and killed connections.

use super::{assert_exactly_once, delivered_ids};
use crate::common::{self, dispatchbox, spawn};
use std::time::Duration;

fn private_db(cluster: &common::Cluster, n: i64) -> String {
    let admin = cluster.dsn("postgres");
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    c.batch_execute("CREATE DATABASE faults").unwrap();
    let dsn = cluster.dsn("faults");
    let out = common::run(
        dispatchbox().args(["migrate", "--dsn", &dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    common::insert_events(&mut c, "outbox_event", n, "order.created");
    dsn
}

fn count(dsn: &str, sql: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(dsn, postgres::NoTls).ok()?;
    c.query_one(sql, &[]).ok().map(|r| r.get(0))
}

#[test]
fn a_worker_survives_a_server_restart_and_loses_nothing() {
    let cluster = common::private_cluster(false);
    let n = 3000;
    let dsn = private_db(&cluster, n);
    // exec makes each delivery take a few ms, so the restart lands in the middle.
    let dir = common::TempDir::new("restart");
    let log = dir.join("delivered.log");
    let route = format!("*=exec:sh -c 'cat >> {}'", log.display());
    let worker = spawn(dispatchbox().args([
        "--dsn",
        &dsn,
        "--drain",
        "--route",
        &route,
        "--lease",
        "3",
        "--poll-interval",
        "0.05",
        "--processes",
        "2",
        "--batch-size",
        "20",
    ]));
    common::wait_until(Duration::from_secs(60), "some events are done", || {
        count(
            &dsn,
            "SELECT count(*) FROM outbox_event WHERE status = 'done'",
        )
        .unwrap_or(0)
            >= 200
    });
    cluster.restart();
    let out = worker.wait(Duration::from_secs(180));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        count(
            &dsn,
            "SELECT count(*) FROM outbox_event WHERE status = 'done'"
        ),
        Some(n),
        "{out}"
    );
    let ids = delivered_ids(&std::fs::read_to_string(&log).unwrap());
    let mut seen = std::collections::HashMap::new();
    for id in &ids {
        *seen.entry(*id).or_insert(0) += 1;
    }
    assert_eq!(seen.len() as i64, n, "some events were never delivered");
    let twice = seen.values().filter(|&&c| c > 1).count();
    // Only events in flight at the restart may repeat: at most one claim batch per process
    // plus the handler threads.
    assert!(twice <= 2 * (20 + 10), "{twice} events delivered twice");
    let outages = out.stderr.matches("lost the database connection").count();
    assert!(
        (1..=2).contains(&outages),
        "expected one outage line per worker\n{out}"
    );
    assert!(out.stderr.contains("reconnected after"), "{out}");
}

#[test]
fn a_killed_connection_is_reestablished() {
    let db = super::db_with_events(0, "x");
    let app = "dbx_terminated";
    // PGAPPNAME fills in application_name (the DSN may be a URI, not key=value).
    let worker = spawn(dispatchbox().env("PGAPPNAME", app).args([
        "--dsn",
        &db.dsn,
        "--poll-interval",
        "0.05",
    ]));
    let mut c = db.client();
    let backends = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0)
    };
    common::wait_until(Duration::from_secs(30), "the worker is ready", || {
        worker.stderr_so_far().contains("worker ready") && backends(&mut c) == 1
    });
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&app],
    )
    .unwrap();
    common::wait_until(Duration::from_secs(30), "the worker reconnects", || {
        worker.stderr_so_far().contains("reconnected after")
    });
    common::insert_events(&mut c, "outbox_event", 50, "x");
    common::wait_until(Duration::from_secs(30), "new events are delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 50
    });
    worker.signal("TERM");
    let out = worker.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(50, delivered_ids(&out.stdout));
    assert_eq!(
        out.stderr.matches("lost the database connection").count(),
        1,
        "{out}"
    );
}

#[test]
fn start_up_waits_for_a_database_that_comes_up_late() {
    let cluster = common::private_cluster(false);
    let dsn = private_db(&cluster, 5);
    cluster.stop();
    let worker = spawn(dispatchbox().args(["--dsn", &dsn, "--drain", "--connect-timeout", "60"]));
    common::wait_until(
        Duration::from_secs(30),
        "the worker finds the database down",
        || worker.stderr_so_far().contains("retrying"),
    );
    cluster.start_again();
    let out = worker.wait(Duration::from_secs(90));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(delivered_ids(&out.stdout).len(), 5, "{out}");
    assert_eq!(
        out.stderr.matches("retrying").count(),
        1,
        "logged once per outage\n{out}"
    );
}
