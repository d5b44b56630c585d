//! One duration grammar for every flag (`500ms`, `1.5s`, `15m`, `12h`, `7d`): the run flags
//! still take bare seconds (the original's contract), from flags and `DISPATCHBOX_*` alike;
//! `--older-than` and `--since` refuse a bare number (`prune --older-than 7` reads as days).

use super::db_with_events;
use crate::common::{self, dispatchbox, run, Run, TestDb};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A drain of `db` with `args` and the environment `env`.
fn drain_with(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--drain", "--route", "*=stdout"])
        .args(args)
        .envs(env.iter().copied());
    run(&mut cmd, LONG)
}

#[test]
fn run_flags_take_units_and_bare_seconds_alike() {
    for (args, env) in [
        (&["--poll-interval", "500ms", "--lease", "1m"][..], &[][..]),
        (&["--poll-interval", "0.5", "--lease", "60"][..], &[][..]),
        (
            &[][..],
            &[
                ("DISPATCHBOX_POLL_INTERVAL", "0.5s"),
                ("DISPATCHBOX_LEASE", "1m"),
            ][..],
        ),
    ] {
        let db = db_with_events(3, "order.created");
        let out = drain_with(&db, args, env);
        assert_eq!(out.code, Some(0), "{out}");
        assert!(
            out.stderr.contains("lease 60s, poll 0.5s"),
            "{args:?} {env:?}: {out}"
        );
        assert_eq!(
            db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
            3
        );
    }
    let db = db_with_events(1, "order.created");
    let out = drain_with(&db, &["--lease", "2x"], &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--lease: `2x` is not"), "{out}");
}

#[test]
fn older_than_and_since_refuse_a_bare_number() {
    let db = db_with_events(2, "order.created");
    db.client()
        .batch_execute(
            "UPDATE outbox_event SET status = 'done', attempts = 1,
                    delivered_at = now() - interval '1 hour' WHERE id = 1;
             UPDATE outbox_event SET status = 'dead', attempts = 3 WHERE id = 2",
        )
        .unwrap();
    let admin = |args: &[&str]| run(dispatchbox().args(args).args(["--dsn", &db.dsn]), LONG);
    let out = admin(&["prune", "--older-than", "7"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .trim_end()
            .ends_with("] --older-than 7: give a unit, e.g. 7d or 7h"),
        "{out}"
    );
    assert_eq!(out.stdout, "", "{out}");
    // Read as seconds, as before, the hour-old done event would have gone.
    assert_eq!(db.count("SELECT count(*) FROM outbox_event"), 2);
    let out = admin(&["dead", "list", "--since", "30"]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("--since 30: give a unit, e.g. 30d or 30h"),
        "{out}"
    );
    // With a unit (a decimal one too), and `--max-lag` still in bare seconds.
    let out = admin(&["dead", "list", "--since", "1.5d"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("order.created"), "{out}");
    let out = admin(&["status", "--max-lag", "3600"]);
    assert_eq!(out.code, Some(0), "{out}");
    let out = admin(&["prune", "--older-than", "30m"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        0
    );
    common::wait_until(LONG, "nothing else deleted", || {
        db.count("SELECT count(*) FROM outbox_event") == 1
    });
}
