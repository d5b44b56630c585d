//! One count of outcomes: a worker's summary line and `/metrics` show the same figures, after
//! a run that delivered, retried, killed, released and deferred (held for a paused route)
//! events.

use super::metrics::{a_worker_of, daemon, scrape, value};
use crate::common::{self, wait_until, TempDir};
use std::time::Duration;

const OUTCOMES: [&str; 5] = ["delivered", "retried", "dead", "released", "deferred"];

/// The figures of the first `stopped: N delivered, M retried, …` line in `log`.
fn stopped_line(log: &str) -> Option<[u64; 5]> {
    let line = log
        .lines()
        .find_map(|l| l.split_once("stopped: ").map(|(_, r)| r))?;
    let mut figures = [0; 5];
    for part in line.split(", ") {
        let Some((n, what)) = part.split_once(' ') else {
            continue;
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == what) {
            figures[i] = n.parse().ok()?;
        }
    }
    Some(figures)
}

/// Every route's `dispatchbox_events_total`, by outcome.
fn scraped(port: u16) -> [u64; 5] {
    let m = scrape(port);
    OUTCOMES.map(|o| value(&m, "dispatchbox_events_total", &[("outcome", o)]) as u64)
}

#[test]
fn the_summary_line_and_the_metrics_count_the_same_outcomes() {
    let db = common::test_db();
    db.migrate();
    for (n, t) in [(3, "ok"), (2, "bad"), (1, "flaky"), (8, "down")] {
        common::insert_events(&mut db.client(), "outbox_event", n, t);
    }
    let dir = TempDir::new("outcome-counts");
    let d = dir.path().display().to_string();
    // Once `block` exists (the next worker), a handler waits for `end`, then succeeds.
    let script = format!(
        "if [ -e {d}/block ]; then while [ ! -e {d}/end ]; do sleep 0.05; done; exit 0; fi\n\
         case $1 in\n\
           bad) exit 65;;\n\
           flaky) exit 1;;\n\
           down) exit 75;;\n\
           slow) touch {d}/started; while [ ! -e {d}/go ]; do sleep 0.05; done;;\n\
         esac\n"
    );
    let handler = dir.join("handler.sh");
    std::fs::write(&handler, script).unwrap();
    let route = |t: &str| format!("{t}=exec:sh {} {t}", handler.display());
    let mut args: Vec<String> = ["--threads", "1", "--batch-size", "20"]
        .into_iter()
        .chain(["--retry-backoff", "3600", "--shutdown-timeout", "120"])
        .chain(["--exec-timeout", "600", "--route", "ok=stdout"])
        .map(String::from)
        .collect();
    for t in ["bad", "flaky", "down", "slow"] {
        args.extend(["--route".to_string(), route(t)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (sup, port) = daemon(&db, &args);
    wait_until(Duration::from_secs(120), "the quick events ended", || {
        db.count("SELECT count(*) FROM outbox_event WHERE status IN ('done', 'dead')") == 5
            && db.count(
                "SELECT count(*) FROM outbox_event WHERE event_type = 'flaky' AND attempts = 1",
            ) == 1
            && sup
                .stderr_so_far()
                .contains(" paused: 5 deliveries in a row")
    });
    // Three events for one handler thread: one runs, two wait and are released at the stop.
    common::insert_events(&mut db.client(), "outbox_event", 3, "slow");
    wait_until(Duration::from_secs(60), "a slow event started", || {
        dir.join("started").exists()
    });
    let worker = a_worker_of(sup.pid());
    let term = std::process::Command::new("kill")
        .args(["-s", "TERM", &worker.to_string()])
        .status();
    assert!(term.as_ref().is_ok_and(|s| s.success()), "{term:?}");
    wait_until(Duration::from_secs(60), "the worker is stopping", || {
        sup.stderr_so_far().contains("stopping: no new claims")
    });
    // The next worker (the supervisor restarts it) counts nothing more.
    std::fs::write(dir.join("block"), "").unwrap();
    std::fs::write(dir.join("go"), "").unwrap();
    let mut summary = None;
    wait_until(Duration::from_secs(60), "the stopped: summary", || {
        summary = stopped_line(&sup.stderr_so_far());
        summary.is_some()
    });
    let summary = summary.unwrap_or_default();
    let log = sup.stderr_so_far();
    let (delivered, retried, dead) = (summary[0], summary[1], summary[2]);
    assert_eq!((delivered, dead), (4, 2), "{summary:?}\n{log}");
    assert!(
        retried >= 2,
        "a failure, unavailable ones: {summary:?}\n{log}"
    );
    assert!(summary[3] >= 2, "released: {summary:?}\n{log}");
    assert!(
        summary[4] >= 1,
        "deferred (held for the paused route): {summary:?}\n{log}"
    );
    // The worker's last report reaches the supervisor as it exits.
    let mut metrics = scraped(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metrics != summary && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = scraped(port);
    }
    assert_eq!(metrics, summary, "/metrics vs the summary line\n{log}");

    sup.signal("TERM");
    // Whatever the next worker runs ends at once now.
    std::fs::write(dir.join("end"), "").unwrap();
    let out = sup.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out}");
}
