//! The multi-process supervisor as an operator runs it: exactly-once across processes and
//! supervisors, crash safety under SIGKILL, graceful shutdown, lease extension, no secrets
//! in any command line.

use super::{assert_exactly_once, db_with_events, delivered_ids};
use crate::common::{self, dispatchbox, spawn, wait_until};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Pids of a process's direct children (Linux: /proc/PID/task/*/children).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status();
}

/// The worker children (dispatchbox processes) under a supervisor.
fn workers_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains("--worker-index"))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn three_processes_deliver_20000_events_exactly_once() {
    let n = 20_000;
    let db = db_with_events(n, "order.created");
    let out = super::drain(&db, &["--processes", "3", "--batch-size", "50"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(n, delivered_ids(&out.stdout));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        n
    );
    for i in 0..3 {
        assert!(
            out.stderr.contains(&format!("[worker {i} pid")),
            "worker {i} never logged\n{}",
            out.stderr
        );
    }
}

#[test]
fn two_supervisors_at_once_deliver_every_event_exactly_once() {
    let n = 10_000;
    let db = db_with_events(n, "order.created");
    let start = |bs: &str| {
        spawn(dispatchbox().args([
            "--dsn",
            &db.dsn,
            "--drain",
            "--processes",
            "2",
            "--batch-size",
            bs,
            "--poll-interval",
            "0.02",
        ]))
    };
    let (a, b) = (start("20"), start("30"));
    let (a, b) = (
        a.wait(Duration::from_secs(180)),
        b.wait(Duration::from_secs(180)),
    );
    assert_eq!((a.code, b.code), (Some(0), Some(0)), "{a}\n{b}");
    assert_exactly_once(
        n,
        delivered_ids(&a.stdout)
            .into_iter()
            .chain(delivered_ids(&b.stdout)),
    );
}

#[test]
fn sigkill_of_random_children_loses_nothing() {
    let n = 20_000;
    let db = db_with_events(n, "demo.slow");
    // The example's `demo.slow` handler takes 20 ms per event: with 3 × 10 threads the drain
    // lasts over 13 s, so the kills below land in the middle of it.
    let mut cmd = std::process::Command::new(super::example_bin());
    common::remove_env(&mut cmd, &["DISPATCHBOX_", "PG"]);
    let sup = spawn(cmd.args([
        "--dsn",
        &db.dsn,
        "--drain",
        "--processes",
        "3",
        "--batch-size",
        "20",
        "--lease",
        "3",
        "--poll-interval",
        "0.05",
    ]));
    let mut kills = 0;
    let mut rng = fastrand::Rng::with_seed(42);
    let deadline = Instant::now() + Duration::from_secs(240);
    while alive(sup.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let workers = workers_of(sup.pid());
        if !workers.is_empty()
            && db.count("SELECT count(*) FROM outbox_event WHERE status <> 'done'") > 0
        {
            kill(workers[rng.usize(..workers.len())], "KILL");
            kills += 1;
        }
    }
    let out = sup.wait(Duration::from_secs(120));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        n,
        "{out}"
    );
    let ids = delivered_ids(&out.stdout);
    let mut counts = vec![0u32; n as usize + 1];
    for id in &ids {
        counts[*id as usize] += 1;
    }
    assert!(
        counts[1..].iter().all(|&c| c >= 1),
        "an event was never delivered"
    );
    let twice = counts.iter().filter(|&&c| c > 1).count();
    // Only events in flight at a kill may repeat: per kill at most threads + batch (10 + 20).
    assert!(twice <= kills * 30, "{twice} duplicates for {kills} kills");
    // Those are exactly the events whose attempts went above 1.
    let reclaimed = db.count("SELECT count(*) FROM outbox_event WHERE attempts > 1") as usize;
    assert!(
        twice <= reclaimed,
        "{twice} duplicates but only {reclaimed} events were claimed twice"
    );
    assert!(
        kills >= 5,
        "only {kills} kills: the drain was too quick to test anything"
    );
    assert!(
        out.stderr.contains("exited unexpectedly"),
        "no child was killed?\n{}",
        out.stderr
    );
}

#[test]
fn sigterm_lets_running_handlers_finish_and_releases_the_rest() {
    let db = db_with_events(20, "x");
    let sup = spawn(dispatchbox().args([
        "--dsn",
        &db.dsn,
        "--threads",
        "2",
        "--batch-size",
        "5",
        "--route",
        "*=exec:sleep 3",
        "--shutdown-timeout",
        "20",
        "--poll-interval",
        "0.05",
    ]));
    // First claim: 5 events, 2 start at once, 3 wait in the queue (none finishes for 3 s).
    wait_until(
        Duration::from_secs(30),
        "the first batch is claimed",
        || db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL") == 5,
    );
    wait_until(
        Duration::from_secs(30),
        "two handlers run their command",
        || {
            let workers = workers_of(sup.pid());
            workers.len() == 1 && children_of(workers[0]).len() == 2
        },
    );
    sup.signal("TERM");
    // The unstarted ones are back before the running handlers finish: only then are exactly
    // the two running ones still leased (5 before, none after they finish).
    wait_until(
        Duration::from_secs(30),
        "unstarted claims are released",
        || db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL") == 2,
    );
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    // Both running handlers finished (not killed at the 20 s shutdown timeout).
    assert!(!out.stderr.contains("did not stop in time"), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        2,
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0 AND locked_by IS NULL AND next_run_at <= now()"),
        18
    );
    assert!(out.stderr.contains("released 3 unstarted"), "{out}");
}

#[test]
fn second_sigterm_stops_without_waiting() {
    let db = db_with_events(2, "x");
    let sup = spawn(dispatchbox().args([
        "--dsn",
        &db.dsn,
        "--threads",
        "2",
        "--route",
        "*=exec:sleep 30",
        "--lease",
        "5",
    ]));
    wait_until(Duration::from_secs(30), "handlers are running", || {
        db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL") == 2
    });
    sup.signal("TERM");
    wait_until(
        Duration::from_secs(10),
        "the first SIGTERM is handled",
        || {
            sup.stderr_so_far()
                .contains("signal received: stopping workers")
        },
    );
    sup.signal("TERM");
    // Well before the handlers' 30 s sleep (and the 30 s shutdown timeout) would end it.
    let out = sup.wait(Duration::from_secs(20));
    assert_eq!(out.code, Some(0), "{out}");
    // Still leased: another worker takes them over after the lease.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM outbox_event WHERE status = 'pending' AND locked_by IS NOT NULL"
        ),
        2
    );
}

#[test]
fn a_handler_slower_than_the_lease_is_delivered_once() {
    let db = db_with_events(3, "x");
    let dir = common::TempDir::new("slow");
    let log = dir.join("runs.log");
    let route = format!("*=exec:sh -c 'cat >> {}; sleep 8'", log.display());
    // Two supervisors compete; the lease is 2 s and each handler takes 8 s.
    let start = || {
        spawn(dispatchbox().args([
            "--dsn",
            &db.dsn,
            "--drain",
            "--lease",
            "2",
            "--route",
            &route,
            "--poll-interval",
            "0.1",
        ]))
    };
    let (a, b) = (start(), start());
    let (a, b) = (
        a.wait(Duration::from_secs(60)),
        b.wait(Duration::from_secs(60)),
    );
    assert_eq!((a.code, b.code), (Some(0), Some(0)), "{a}\n{b}");
    assert_exactly_once(3, delivered_ids(&std::fs::read_to_string(&log).unwrap()));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        3
    );
}

#[test]
fn children_stop_when_the_supervisor_is_killed() {
    let db = db_with_events(0, "x");
    let sup = spawn(dispatchbox().args([
        "--dsn",
        &db.dsn,
        "--processes",
        "2",
        "--poll-interval",
        "0.05",
    ]));
    wait_until(Duration::from_secs(30), "two workers run", || {
        workers_of(sup.pid()).len() == 2
    });
    let workers = workers_of(sup.pid());
    wait_until(Duration::from_secs(30), "both workers are ready", || {
        sup.stderr_so_far().matches("worker ready").count() == 2
    });
    sup.signal("KILL");
    wait_until(Duration::from_secs(5), "the orphaned workers exit", || {
        workers.iter().all(|w| !alive(*w))
    });
    // Their shutdown lines are not lost with the supervisor that forwarded their stderr:
    // they go to the supervisor's own stderr (here, the test's pipe) directly.
    let out = sup.wait(Duration::from_secs(10));
    assert_eq!(
        out.stderr.matches("the supervisor is gone").count(),
        2,
        "{out}"
    );
    assert_eq!(out.stderr.matches("] exiting").count(), 2, "{out}");
}

#[test]
fn no_password_in_any_command_line() {
    let db = super::local_db_with_events(0, "x"); // the local cluster: a DSN with a password
    let sup = spawn(dispatchbox().env("DISPATCHBOX_DSN", &db.dsn).args([
        "--processes",
        "2",
        "--route",
        "*=exec:sleep 20",
        "--poll-interval",
        "0.05",
    ]));
    wait_until(Duration::from_secs(30), "two workers run", || {
        workers_of(sup.pid()).len() == 2
    });
    assert!(db.dsn.contains(common::PASSWORD));
    for pid in std::iter::once(sup.pid()).chain(workers_of(sup.pid())) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(common::PASSWORD), "pid {pid}: {cmdline}");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if pid != sup.pid() {
            assert!(
                !String::from_utf8_lossy(&environ).contains(common::PASSWORD),
                "worker {pid} has the password in its environment"
            );
        }
    }
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert!(!out.stderr.contains(common::PASSWORD), "{out}");
}

#[test]
fn max_runtime_bounds_a_drain() {
    let db = db_with_events(50, "x");
    let out = super::drain(
        &db,
        &[
            "--route",
            "*=exec:sleep 1",
            "--threads",
            "1",
            "--max-runtime",
            "1.5",
        ],
    );
    assert_eq!(out.code, Some(5), "{out}");
    // Stopped long before the 50 one-second handlers were through.
    let done = db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'");
    assert!((1..40).contains(&done), "{done} done\n{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE locked_by IS NOT NULL"),
        0
    );
}

#[test]
fn a_worker_that_keeps_crashing_is_restarted() {
    // A worker killed while idle (SIGKILL, as an operator or the OOM killer would) and then
    // crashing twice (SIGABRT, as a failed assertion in a library would), each time within
    // seconds of its start: the supervisor restarts it every time and keeps running.
    let db = db_with_events(0, "x");
    let mut cmd = dispatchbox();
    // No core files from the crashes (the workers inherit the limit).
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let sup = spawn(cmd.args(["--dsn", &db.dsn, "--poll-interval", "0.05"]));
    let mut previous = None;
    for (round, signal) in ["KILL", "ABRT", "ABRT"].into_iter().enumerate() {
        // Ready: a worker killed before it is ready would count as failing to start.
        wait_until(Duration::from_secs(30), "a new worker is ready", || {
            let w = workers_of(sup.pid());
            w.len() == 1
                && Some(w[0]) != previous
                && sup.stderr_so_far().matches("worker ready").count() == round + 1
        });
        let worker = workers_of(sup.pid())[0];
        kill(worker, signal);
        previous = Some(worker);
    }
    wait_until(Duration::from_secs(30), "a fourth worker is ready", || {
        let w = workers_of(sup.pid());
        w.len() == 1
            && Some(w[0]) != previous
            && sup.stderr_so_far().matches("worker ready").count() == 4
    });
    common::insert_events(&mut db.client(), "outbox_event", 10, "x");
    wait_until(Duration::from_secs(30), "events are delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 10
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stderr.matches("exited unexpectedly").count(),
        3,
        "{out}"
    );
    assert!(!out.stderr.contains("giving up"), "{out}");
}

#[test]
fn sighup_is_logged_and_ignored() {
    let db = db_with_events(0, "x");
    let sup = spawn(dispatchbox().args(["--dsn", &db.dsn, "--poll-interval", "0.05"]));
    wait_until(Duration::from_secs(30), "the worker is ready", || {
        sup.stderr_so_far().contains("worker ready")
    });
    let worker = workers_of(sup.pid())[0];
    let ignored = |s: &common::Spawned| s.stderr_so_far().matches("SIGHUP ignored").count();
    sup.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        "the supervisor logs the SIGHUP",
        || ignored(&sup) == 1,
    );
    assert!(alive(sup.pid()), "{}", sup.stderr_so_far());
    // A worker that gets one directly (they run in their own process groups) does the same.
    kill(worker, "HUP");
    wait_until(
        Duration::from_secs(10),
        "the worker logs the SIGHUP",
        || ignored(&sup) == 2,
    );
    assert!(alive(sup.pid()) && alive(worker), "{}", sup.stderr_so_far());
    assert_eq!(workers_of(sup.pid()), vec![worker]);
    common::insert_events(&mut db.client(), "outbox_event", 3, "x");
    wait_until(Duration::from_secs(30), "events are delivered", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 3
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stderr.matches("SIGHUP ignored").count(), 2, "{out}");
    assert!(out.stderr.contains("restart to apply changes"), "{out}");
}

/// A migrated database `outbox` on a private cluster; its DSN (as the superuser).
fn private_outbox(cluster: &common::Cluster) -> String {
    let mut c = postgres::Client::connect(&cluster.dsn("postgres"), postgres::NoTls).unwrap();
    c.batch_execute("CREATE DATABASE outbox").unwrap();
    let dsn = cluster.dsn("outbox");
    let out = common::run(
        dispatchbox().args(["migrate", "--dsn", &dsn]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    dsn
}

/// `sql`'s single bigint, or None while the server is unreachable.
fn count_on(dsn: &str, sql: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(dsn, postgres::NoTls).ok()?;
    c.query_one(sql, &[]).ok().map(|r| r.get(0))
}

#[test]
fn a_restarted_worker_that_cannot_connect_does_not_stop_the_daemon() {
    let cluster = common::private_cluster(false);
    let dsn = private_outbox(&cluster);
    let sup = spawn(dispatchbox().args([
        "--dsn",
        &dsn,
        "--processes",
        "2",
        "--connect-timeout",
        "2",
        "--poll-interval",
        "0.05",
    ]));
    wait_until(Duration::from_secs(30), "both workers are ready", || {
        sup.stderr_so_far().matches("worker ready").count() == 2
    });
    cluster.stop();
    let victim = workers_of(sup.pid())[0];
    kill(victim, "KILL");
    // The restarted worker gives up connecting after 2 s and exits 3; the supervisor must
    // restart it again instead of stopping the worker that is riding out the outage.
    wait_until(
        Duration::from_secs(60),
        "the supervisor restarts the worker that cannot connect",
        || {
            sup.stderr_so_far().contains("cannot run")
                && sup.stderr_so_far().contains("restarting it in")
                || !alive(sup.pid())
        },
    );
    // And again: it keeps restarting it (each attempt gives up after 2 s).
    wait_until(
        Duration::from_secs(60),
        "the supervisor restarts the worker a second time",
        || sup.stderr_so_far().matches("restarting it in").count() >= 2 || !alive(sup.pid()),
    );
    assert!(
        alive(sup.pid()),
        "the supervisor stopped\n{}",
        sup.stderr_so_far()
    );
    cluster.start_again();
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    common::insert_events(&mut c, "outbox_event", 20, "x");
    wait_until(Duration::from_secs(90), "the events are delivered", || {
        count_on(
            &dsn,
            "SELECT count(*) FROM outbox_event WHERE status = 'done'",
        ) == Some(20)
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(20, delivered_ids(&out.stdout));
}

#[test]
fn more_processes_than_the_server_admits_run_what_fits() {
    let cluster = common::private_cluster(false);
    let dsn = private_outbox(&cluster);
    // A role without superuser: it gets max_connections - superuser_reserved_connections
    // (default 3) = 3 connections; the test's own (superuser) connections use the reserved
    // ones.
    let mut c = postgres::Client::connect(&cluster.dsn("postgres"), postgres::NoTls).unwrap();
    c.batch_execute("CREATE ROLE app LOGIN PASSWORD 'app-pw'")
        .unwrap();
    c.batch_execute("ALTER SYSTEM SET max_connections = 6")
        .unwrap();
    drop(c);
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    c.batch_execute("GRANT SELECT, UPDATE ON outbox_event TO app")
        .unwrap();
    drop(c);
    cluster.restart();
    let app_dsn = format!(
        "host=127.0.0.1 port={} user=app password=app-pw dbname=outbox sslmode=disable",
        cluster.port()
    );
    let sup = spawn(dispatchbox().args([
        "--dsn",
        &app_dsn,
        "--processes",
        "5",
        "--connect-timeout",
        "1",
        "--poll-interval",
        "0.05",
    ]));
    wait_until(
        Duration::from_secs(60),
        "the workers that do not fit are retried",
        || sup.stderr_so_far().matches("restarting it in").count() >= 2 || !alive(sup.pid()),
    );
    assert!(
        alive(sup.pid()),
        "the supervisor stopped\n{}",
        sup.stderr_so_far()
    );
    wait_until(Duration::from_secs(30), "three workers are ready", || {
        sup.stderr_so_far().matches("worker ready").count() == 3
    });
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    common::insert_events(&mut c, "outbox_event", 50, "x");
    wait_until(Duration::from_secs(60), "the events are delivered", || {
        count_on(
            &dsn,
            "SELECT count(*) FROM outbox_event WHERE status = 'done'",
        ) == Some(50)
    });
    sup.signal("TERM");
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(50, delivered_ids(&out.stdout));
    assert!(
        out.stderr.contains("53300")
            || out.stderr.contains("too many clients")
            || out.stderr.contains("reserved"),
        "{out}"
    );

    // --drain: the slots that cannot connect are given up on with a warning; the drain
    // succeeds with the workers that fit. One event at a time, 0.25 s each: the drain lasts
    // well past the 1 s after which the others give up.
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    common::insert_events(&mut c, "outbox_event", 40, "y");
    let out = common::run(
        dispatchbox().args([
            "--dsn",
            &app_dsn,
            "--processes",
            "5",
            "--threads",
            "1",
            "--batch-size",
            "1",
            "--route",
            "*=exec:sleep 0.25",
            "--connect-timeout",
            "1",
            "--poll-interval",
            "0.05",
            "--drain",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        count_on(
            &dsn,
            "SELECT count(*) FROM outbox_event WHERE status = 'done'"
        ),
        Some(90),
        "{out}"
    );
    assert!(out.stderr.contains("giving up on it"), "{out}");
}
