//! `--metrics-addr` through a database outage (the test's own cluster, stopped and started
//! again): `/readyz` and `dispatchbox_ready` go to 503/0 while the workers cannot reach the
//! database and back afterwards, `/healthz` stays 200; the outbox gauges are left out and
//! `dispatchbox_outbox_scrape_success` is 0 meanwhile; the `process_*` families and the
//! dead-rows gauge are there, parsed by the strict parser of `metrics`.

use super::metrics::{get, scrape, served_port, value, Sample};
use crate::common::{self, dispatchbox, spawn, wait_until, Cluster};
use std::time::Duration;

/// A migrated database on `cluster` with 1 event nobody routes (due) and 2 dead ones.
fn outage_db(cluster: &Cluster) -> String {
    let mut admin = postgres::Client::connect(&cluster.dsn("postgres"), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE DATABASE outage").unwrap();
    let dsn = cluster.dsn("outage");
    let out = common::run(
        dispatchbox().args(["migrate", "--dsn", &dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    common::insert_events(&mut c, "outbox_event", 1, "nobody");
    common::insert_events(&mut c, "outbox_event", 2, "gone");
    c.execute(
        "UPDATE outbox_event SET status = 'dead' WHERE event_type = 'gone'",
        &[],
    )
    .unwrap();
    dsn
}

fn has(m: &[Sample], name: &str) -> bool {
    m.iter().any(|s| s.name == name)
}

/// The supervisor's `process_*` samples (unlabelled) and each worker slot's, sane.
fn check_process_families(m: &[Sample]) {
    for labels in [&[][..], &[("worker", "0")][..], &[("worker", "1")][..]] {
        let v = |name| value(m, name, labels);
        let one = |name: &str| {
            m.iter()
                .filter(|s| s.name == name)
                .filter(|s| {
                    s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .count()
        };
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert_eq!(one(name), 1, "{name} {labels:?}");
        }
        assert!(v("process_resident_memory_bytes") > 0.0, "{labels:?}");
        assert!(v("process_virtual_memory_bytes") >= v("process_resident_memory_bytes"));
        assert!(v("process_cpu_seconds_total") >= 0.0);
        assert!(v("process_open_fds") > 0.0, "{labels:?}");
        assert!(v("process_max_fds") >= v("process_open_fds"), "{labels:?}");
        assert!(v("process_start_time_seconds") > 1.6e9, "{labels:?}");
    }
}

#[test]
fn readiness_and_backlog_gauges_follow_a_database_outage() {
    let cluster = common::private_cluster(false);
    let dsn = outage_db(&cluster);
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &dsn, "--poll-interval", "0.05", "--processes", "2"]);
    cmd.args(["--metrics-addr", "127.0.0.1:0", "--route", "x=stdout"]);
    let sup = spawn(&mut cmd);
    let port = served_port(&sup);
    let ready = || get(port, "/readyz").0 == 200;
    wait_until(Duration::from_secs(30), "ready", || {
        ready() && has(&scrape(port), "process_open_fds")
    });
    // Before: the backlog as it is, fresh, and every process's figures.
    wait_until(Duration::from_secs(30), "the workers' figures", || {
        value(&scrape(port), "process_open_fds", &[("worker", "1")]) > 0.0
    });
    let m = scrape(port);
    assert_eq!(value(&m, "dispatchbox_ready", &[]), 1.0);
    assert_eq!(value(&m, "dispatchbox_workers_db_disconnected", &[]), 0.0);
    assert_eq!(value(&m, "dispatchbox_outbox_due", &[]), 1.0);
    assert_eq!(value(&m, "dispatchbox_outbox_dead", &[]), 2.0);
    assert_eq!(value(&m, "dispatchbox_outbox_scrape_success", &[]), 1.0);
    let seen = value(&m, "dispatchbox_outbox_last_success_timestamp_seconds", &[]);
    assert!(seen > 1.6e9, "{seen}");
    check_process_families(&m);

    // The server goes away: not ready (the process tree is fine), no stale backlog.
    cluster.stop();
    wait_until(
        Duration::from_secs(30),
        "not ready without the database",
        || {
            let (status, body) = get(port, "/readyz");
            status == 503 && body.contains("2 without a database connection")
        },
    );
    assert_eq!(get(port, "/healthz").0, 200);
    wait_until(
        Duration::from_secs(30),
        "the backlog gauges are left out",
        || {
            let m = scrape(port);
            value(&m, "dispatchbox_outbox_scrape_success", &[]) == 0.0
        },
    );
    let m = scrape(port);
    assert_eq!(value(&m, "dispatchbox_ready", &[]), 0.0);
    assert_eq!(value(&m, "dispatchbox_workers_db_disconnected", &[]), 2.0);
    assert_eq!(value(&m, "dispatchbox_workers", &[("state", "ready")]), 2.0);
    for gone in [
        "dispatchbox_outbox_due",
        "dispatchbox_outbox_oldest_due_age_seconds",
        "dispatchbox_outbox_dead",
    ] {
        assert!(!has(&m, gone), "{gone} shown while the database is down");
    }
    let last = value(&m, "dispatchbox_outbox_last_success_timestamp_seconds", &[]);
    assert!(last >= seen, "{last} < {seen}");
    check_process_families(&m);

    // Back: ready again, the backlog fresh again.
    cluster.start_again();
    wait_until(Duration::from_secs(60), "ready again", ready);
    wait_until(Duration::from_secs(30), "the backlog is read again", || {
        let m = scrape(port);
        value(&m, "dispatchbox_outbox_scrape_success", &[]) == 1.0
            && value(&m, "dispatchbox_outbox_dead", &[]) == 2.0
            && value(&m, "dispatchbox_outbox_due", &[]) == 1.0
    });
    let m = scrape(port);
    assert_eq!(value(&m, "dispatchbox_ready", &[]), 1.0);
    assert!(value(&m, "dispatchbox_outbox_last_success_timestamp_seconds", &[]) > last);
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("lost the database connection"), "{out}");
    assert!(
        out.stderr.contains("cannot query the outbox backlog"),
        "{out}"
    );
}
