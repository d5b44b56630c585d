//! TLS for real: the shared test cluster speaks TLS with a certificate signed by a test CA
//! (made with the `openssl` command by the harness).

use crate::common::{self, dispatchbox, run, spawn};
use std::time::Duration;

fn tls_dsn(db: &common::TestDb, host: &str, extra: &str) -> Option<String> {
    let cluster = common::local();
    Some(format!(
        "host={host} port={} user=postgres password={} dbname={} {extra}",
        cluster.port(),
        common::PASSWORD,
        db.name
    ))
}

/// Runs a (non-drain) worker with `dsn` and checks from the server's side that its
/// connection is encrypted.
fn assert_worker_uses_tls(db: &common::TestDb, dsn: &str, app: &str) {
    let dsn = format!("{dsn} application_name={app}");
    let worker = spawn(dispatchbox().args(["--dsn", &dsn, "--poll-interval", "0.05"]));
    let mut c = db.client();
    common::wait_until(Duration::from_secs(30), "the worker connects", || {
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get::<_, i64>(0)
            >= 1
    });
    let encrypted: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = $1 AND s.ssl",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the worker's connection is not encrypted");
    worker.signal("TERM");
    let out = worker.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn sslmode_require_encrypts_without_checking_the_certificate() {
    let db = super::local_db_with_events(3, "x");
    let Some(dsn) = tls_dsn(&db, "127.0.0.1", "sslmode=require") else {
        return;
    };
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--drain"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 3);
    assert_worker_uses_tls(&db, &dsn, "dbx_tls_require");
}

#[test]
fn sslmode_verify_full_checks_against_the_root_certificate() {
    let db = super::local_db_with_events(2, "x");
    let ca = common::local().ca_cert_path();
    let extra = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let dsn = tls_dsn(&db, "localhost", &extra).unwrap();
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--drain"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 2);
    assert_worker_uses_tls(&db, &dsn, "dbx_tls_verify_full");

    // The same in URI form.
    let cluster = common::local();
    let uri = format!(
        "postgresql://postgres:{}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        common::PASSWORD,
        cluster.port(),
        db.name,
        ca.display()
    );
    let out = run(
        dispatchbox().args(["stats", "--dsn", &uri]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("done 2"), "{out}");
}

#[test]
fn verify_full_rejects_an_untrusted_certificate_at_once() {
    let db = super::local_db_with_events(1, "x");
    // The test CA is not among the system's trusted roots.
    let Some(dsn) = tls_dsn(&db, "localhost", "sslmode=verify-full sslrootcert=system") else {
        return;
    };
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--drain", "--connect-timeout", "20"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(4), "{out}");
    assert!(
        !out.stderr.contains("retrying"),
        "retried a certificate error: {out}"
    );
    assert!(out.stderr.to_lowercase().contains("certificate"), "{out}");
    assert!(!out.stderr.contains(common::PASSWORD), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'"),
        1
    );
}

#[test]
fn verify_ca_without_a_readable_root_file_is_a_usage_error() {
    let out = run(
        dispatchbox().args([
            "--dsn",
            "host=localhost user=u password=hunter2 sslmode=verify-ca sslrootcert=/nonexistent/root.crt",
            "--drain",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("/nonexistent/root.crt"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
}

#[test]
fn sslmode_require_against_a_server_without_tls_fails_at_once() {
    let cluster = common::private_cluster(false);
    let dsn = cluster
        .dsn("postgres")
        .replace("sslmode=disable", "sslmode=require");
    let out = run(
        dispatchbox().args(["stats", "--dsn", &dsn, "--connect-timeout", "20"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(4), "{out}");
    assert!(!out.stderr.contains("retrying"), "retried: {out}");
    assert!(
        out.stderr.contains("TLS") || out.stderr.contains("tls"),
        "{out}"
    );
}

#[test]
fn the_default_sslmode_prefer_encrypts_over_tcp() {
    let db = super::local_db_with_events(1, "x");
    let Some(dsn) = tls_dsn(&db, "127.0.0.1", "") else {
        return;
    };
    assert_worker_uses_tls(&db, &dsn, "dbx_tls_prefer");
}

#[test]
fn sslmode_is_ignored_on_unix_sockets_like_libpq_does() {
    let db = super::local_db_with_events(2, "x");
    let cluster = common::local();
    let dsn = format!(
        "host={} port={} user=postgres dbname={} sslmode=require",
        cluster.socket_dir().display(),
        cluster.port(),
        db.name
    );
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--drain"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 2);
}

#[test]
fn hostaddr_without_host_connects_with_tls() {
    let db = super::local_db_with_events(1, "x");
    let cluster = common::local();
    let dsn = format!(
        "hostaddr=127.0.0.1 port={} user=postgres password={} dbname={}",
        cluster.port(),
        common::PASSWORD,
        db.name
    );
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--drain"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 1);
}
