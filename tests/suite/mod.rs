//! The integration tests, one module per area. Each test gets its own database on the shared
//! throwaway server (or its own cluster when it restarts the server).

mod admin;
mod admin_output;
mod bad_input;
mod brokers;
mod choices;
mod claim_ahead;
mod cli;
mod concurrency;
mod connect;
mod docs;
mod durations;
mod exec;
mod faults;
mod generated;
mod lifecycle;
mod logging;
pub(super) mod metrics;
mod metrics_outage;
mod migrate;
mod notify;
mod on_done;
mod ordered;
mod outage;
mod outcome_counts;
pub(super) mod pipe;
mod pipe_stream;
mod reliability;
mod retention;
mod samples;
mod service;
mod sinks;
mod stdout;
mod supervisor;
mod tls;
pub(super) mod webhook;

use crate::common::{self, Run, TestDb};
use std::process::Command;
use std::time::Duration;

/// `dispatchbox --dsn <db> --drain` plus `args`, run to its end.
pub fn drain(db: &TestDb, args: &[&str]) -> Run {
    drain_cmd(common::dispatchbox(), db, args)
}

pub fn drain_cmd(mut cmd: Command, db: &TestDb, args: &[&str]) -> Run {
    cmd.args(["--dsn", &db.dsn, "--drain", "--poll-interval", "0.05"]);
    cmd.args(args);
    common::run(&mut cmd, Duration::from_secs(120))
}

/// A migrated database holding `n` events of `event_type`.
pub fn db_with_events(n: i64, event_type: &str) -> TestDb {
    let db = common::test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", n, event_type);
    db
}

/// The same on the local cluster (for tests that use its port, socket or certificates).
pub fn local_db_with_events(n: i64, event_type: &str) -> TestDb {
    let db = common::local_test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", n, event_type);
    db
}

/// Event ids printed by the stdout target, in output order.
pub fn delivered_ids(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            v["id"].as_i64().unwrap_or_else(|| panic!("no id in {l}"))
        })
        .collect()
}

/// Asserts every id 1..=n appears exactly once across all outputs.
pub fn assert_exactly_once(n: i64, ids: impl IntoIterator<Item = i64>) {
    let mut seen = vec![0u32; n as usize + 1];
    for id in ids {
        assert!(id >= 1 && id <= n, "unexpected id {id}");
        seen[id as usize] += 1;
    }
    let missing: Vec<usize> = (1..=n as usize).filter(|&i| seen[i] == 0).collect();
    let twice: Vec<usize> = (1..=n as usize).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "{} never delivered (first: {:?}), {} delivered more than once (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)]
    );
}

/// The example binary with compiled-in handlers (`cargo test` builds examples).
pub fn example_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/it-<hash> → target/<profile>/examples/custom_handler
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let bin = dir.join("examples").join("custom_handler");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test` builds examples; run `cargo build --examples`",
        bin.display()
    );
    bin
}
