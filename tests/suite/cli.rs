//! The binary's contract as a user meets it: flags, errors, exit codes.

use super::drain;
use crate::common::{self, dispatchbox, run};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn help_and_version() {
    let out = run(dispatchbox().arg("--help"), T);
    assert_eq!(out.code, Some(0), "{out}");
    for flag in [
        "--dsn",
        "--processes",
        "--batch-size",
        "--poll-interval",
        "--log-level",
        "--threads",
        "--max-attempts",
        "--retry-backoff",
        "--retry-backoff-max",
        "--lease",
        "--table",
        "--route",
        "--drain",
        "--exec-timeout",
        "--pipe-timeout",
        "--max-runtime",
        "--shutdown-timeout",
        "--connect-timeout",
    ] {
        assert!(out.stdout.contains(flag), "--help lacks {flag}\n{out}");
    }
    let out = run(dispatchbox().arg("--version"), T);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("dispatchbox "), "{out}");
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_problem() {
    let dsn = "host=127.0.0.1 user=u password=hunter2";
    let cases: &[(&[&str], &str)] = &[
        (&["--batch-size", "0"], "--batch-size: 0 is out of range"),
        (
            &["--poll-interval", "-1"],
            "--poll-interval: -1 is out of range",
        ),
        (
            &["--max-attempts", "0"],
            "--max-attempts: 0 is out of range",
        ),
        (
            &["--threads", "many"],
            "--threads: `many` is not a whole number",
        ),
        (
            &["--log-level", "chatty"],
            "--log-level: `chatty` is not one of",
        ),
        (&["--bogus"], "unexpected argument: --bogus"),
        (
            &["--route", "nothing"],
            "--route `nothing`: expected PATTERN=TARGET",
        ),
        (
            &["--route", "a=carrier-pigeon"],
            "unknown route target `carrier-pigeon`",
        ),
        (&["--route", "a*b=stdout"], "only allowed at the end"),
        (&["--table", "a.b.c"], "--table `a.b.c`"),
        (
            &["--retry-backoff", "100", "--retry-backoff-max", "10"],
            "--retry-backoff-max",
        ),
    ];
    for (args, expect) in cases {
        let out = run(dispatchbox().args(["--dsn", dsn]).args(*args), T);
        assert_eq!(out.code, Some(2), "{args:?}\n{out}");
        assert!(
            out.stderr.contains(expect),
            "{args:?}: expected {expect:?}\n{out}"
        );
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: not one line\n{out}"
        );
        assert!(
            !out.stderr.contains("hunter2"),
            "{args:?}: password echoed\n{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");
    }
}

#[test]
fn bad_dsns_exit_2_without_echoing_the_password() {
    for dsn in [
        "host=h password=hunter2 port=notaport",
        "host=h password=hunter2 frobnicate=1",
        "host=h password='hunter2",
        "hunter2",
        "host=h password=hunter2 sslmode=maybe",
        "postgres://u:hunter2@h:5432/db?sslmode=nope",
        "postgres://u:hunter2@h:notaport/db",
    ] {
        let out = run(dispatchbox().args(["--dsn", dsn]), T);
        assert_eq!(out.code, Some(2), "{dsn}\n{out}");
        assert!(out.stderr.contains("invalid DSN"), "{dsn}\n{out}");
        assert!(
            !out.stderr.contains("hunter2"),
            "{dsn}: password echoed\n{out}"
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    }
    let out = run(&mut dispatchbox(), T);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("no database given"), "{out}");
}

#[test]
fn environment_variables_configure_and_flags_win() {
    let db = super::db_with_events(3, "order.created");
    // DSN from DISPATCHBOX_DSN; a bad DISPATCHBOX_BATCH_SIZE is overridden by the flag.
    let mut cmd = dispatchbox();
    cmd.env("DISPATCHBOX_DSN", &db.dsn)
        .env("DISPATCHBOX_BATCH_SIZE", "0")
        .env("DISPATCHBOX_ROUTE", "order.*=stdout")
        .env("DISPATCHBOX_DRAIN", "true")
        .args(["--batch-size", "2"]);
    let out = run(&mut cmd, T);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 3, "{out}");
    // Without the flag, the bad environment value is reported by its variable name.
    let mut cmd = dispatchbox();
    cmd.env("DISPATCHBOX_DSN", &db.dsn)
        .env("DISPATCHBOX_BATCH_SIZE", "0");
    let out = run(&mut cmd, T);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("DISPATCHBOX_BATCH_SIZE: 0 is out of range"),
        "{out}"
    );
}

#[test]
fn libpq_environment_supplies_the_connection() {
    let db = super::local_db_with_events(2, "x");
    let cluster = common::local();
    let mut cmd = dispatchbox();
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", common::PASSWORD)
        .env("PGDATABASE", &db.name)
        .env("PGSSLMODE", "disable")
        .args(["--drain", "--poll-interval", "0.05"]);
    let out = run(&mut cmd, T);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(super::delivered_ids(&out.stdout).len(), 2, "{out}");
}

#[test]
fn missing_table_exits_4_and_suggests_migrate() {
    let db = common::test_db();
    let out = drain(&db, &[]);
    assert_eq!(out.code, Some(4), "{out}");
    assert!(out.stderr.contains("does not exist"), "{out}");
    assert!(out.stderr.contains("dispatchbox migrate"), "{out}");
    assert!(!out.stderr.contains(common::PASSWORD), "{out}");
}

#[test]
fn wrong_password_exits_4_fast_without_echoing_it() {
    let db = common::local_test_db();
    let cluster = common::local();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password=wrong-secret dbname={} sslmode=disable",
        cluster.port(),
        db.name
    );
    let out = run(dispatchbox().args(["--dsn", &dsn, "--processes", "2"]), T);
    assert_eq!(out.code, Some(4), "{out}");
    // Refused at the first attempt: neither the connection nor a worker is retried.
    assert!(!out.stderr.contains("retrying"), "{out}");
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out}"
    );
    assert!(!out.stderr.contains("wrong-secret"), "{out}");
}

#[test]
fn unreachable_database_exits_3_after_connect_timeout() {
    // A port nothing listens on.
    let refused = common::refused_port();
    let port = refused.port();
    let dsn = format!("host=127.0.0.1 port={port} user=u password=hunter2 dbname=d");
    let out = run(
        dispatchbox().args(["--dsn", &dsn, "--connect-timeout", "1", "--drain"]),
        T,
    );
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("cannot connect"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
}

#[test]
fn sigterm_during_start_up_exits_0_at_once() {
    let refused = common::refused_port();
    let port = refused.port();
    let dsn = format!("host=127.0.0.1 port={port} user=u password=hunter2 dbname=d");
    let sup = common::spawn(dispatchbox().args(["--dsn", &dsn, "--connect-timeout", "60"]));
    common::wait_until(Duration::from_secs(20), "the worker is retrying", || {
        sup.stderr_so_far().contains("retrying")
    });
    sup.signal("TERM");
    // Exit 0 within the wait, long before the 60 s connect timeout would end it (exit 3).
    let out = sup.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn a_missing_password_is_refused_at_once() {
    let db = common::local_test_db();
    let cluster = common::local();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslmode=disable",
        cluster.port(),
        db.name
    );
    let out = run(dispatchbox().args(["--dsn", &dsn, "--drain"]), T);
    assert_eq!(out.code, Some(4), "{out}");
    assert!(!out.stderr.contains("retrying"), "retried: {out}");
    assert!(out.stderr.contains("password"), "{out}");
}

#[test]
fn table_names_are_quoted_identifiers() {
    let db = common::test_db();
    for name in ["we@ird", "Mixed Case", "dq\"uote"] {
        let out = run(
            dispatchbox().args(["migrate", "--dsn", &db.dsn, "--table", name]),
            T,
        );
        assert_eq!(out.code, Some(0), "{name}: {out}");
        common::insert_events(&mut db.client(), name, 2, "x");
        let out = drain(&db, &["--table", name]);
        assert_eq!(out.code, Some(0), "{name}: {out}");
        assert_eq!(super::delivered_ids(&out.stdout).len(), 2, "{name}: {out}");
    }
    let out = run(
        dispatchbox().args(["migrate", "--dsn", &db.dsn, "--table", "o'brien"]),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("not allowed in the table name"),
        "{out}"
    );
}

#[test]
fn usage_errors_name_the_real_problem() {
    let dsn = "host=127.0.0.1 user=u password=hunter2";
    // (environment, arguments, expected message)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        // An integer that does not fit is out of range, not "not a whole number".
        (
            &[],
            &["--processes", "4294967296"],
            "--processes: 4294967296 is out of range (1 to 1024)",
        ),
        // A flag given twice says so.
        (
            &[],
            &["--drain", "--drain"],
            "--drain is given more than once",
        ),
        (
            &[],
            &["--batch-size", "1", "--batch-size", "2"],
            "--batch-size is given more than once",
        ),
        // Routes from the environment are blamed on the variable.
        (
            &[("DISPATCHBOX_ROUTE", "a=carrier-pigeon")],
            &[],
            "DISPATCHBOX_ROUTE a=carrier-pigeon: unknown route target",
        ),
        (
            &[("DISPATCHBOX_ROUTE", "a*b=stdout")],
            &[],
            "DISPATCHBOX_ROUTE: pattern `a*b`",
        ),
        // A pattern routed twice is refused instead of silently keeping the first.
        (
            &[],
            &["--route", "order.*=stdout", "--route", "order.*=exec:true"],
            "--route: pattern `order.*` is given twice",
        ),
    ];
    for (env, args, expect) in cases {
        let mut cmd = dispatchbox();
        cmd.args(["--dsn", dsn]).args(*args);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd, T);
        assert_eq!(out.code, Some(2), "{env:?} {args:?}\n{out}");
        assert!(
            out.stderr.contains(expect),
            "{env:?} {args:?}: expected {expect:?}\n{out}"
        );
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(!out.stderr.contains("hunter2"), "{out}");
    }
}

#[test]
fn a_route_for_a_compiled_in_pattern_is_refused() {
    // The example binary has `demo.*` compiled in; a `--route demo.*=...` would be ignored.
    let mut cmd = std::process::Command::new(super::example_bin());
    common::remove_env(&mut cmd, &["DISPATCHBOX_", "PG"]);
    cmd.args([
        "--dsn",
        "host=127.0.0.1 user=u",
        "--connect-timeout",
        "1",
        "--route",
        "demo.*=stdout",
    ]);
    let out = run(&mut cmd, T);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("--route demo.*=stdout: this binary has a compiled-in route"),
        "{out}"
    );
}
