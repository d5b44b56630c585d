//! The integration-test harness: a real PostgreSQL, a fresh database per test, and the
//! `dispatchbox` binary run the way a user runs it.
//!
//! The server is a throwaway cluster (initdb + pg_ctl in a temp dir, as the `postgres` OS
//! user when running as root), shared by every test in the process, unless
//! `DISPATCHBOX_TEST_DSN` names a server where this user may `CREATE DATABASE`. Tests that
//! stop or restart the server take a [`private_cluster`]. Invariants: no cluster outlives
//! the test process (Drop, and a watchdog for the shared one, which as a static is never
//! dropped); every wait has a deadline; every failure shows the command, its output and
//! the server log tail.
//!
//! By role: `cluster.rs` a throwaway PostgreSQL; `db.rs` the shared server and a database per
//! test; `binary.rs` running dispatchbox (and any command) with deadlines; `ports.rs` ports
//! for servers and refused connections; `brokers.rs` the message brokers the bridges talk to.
//! Tests use everything through this module (`common::test_db`, `common::run`, ...).
#![allow(dead_code)] // each test area uses its own part of the harness

mod binary;
pub mod brokers;
mod cluster;
mod db;
mod ports;

pub use binary::{
    bin_path, dispatchbox, remove_env, run, spawn, spawn_with_stdout, wait_until, Run, Spawned,
};
pub use cluster::{private_cluster, Cluster, PASSWORD};
pub use db::{insert_events, local, local_test_db, shared, test_db, TestDb};
pub use ports::refused_port;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number not handed out before in this process (for names of directories, databases).
fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh directory under the system temp dir, removed with what is in it when dropped,
/// also when the test fails.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `dbx-<tag>-<pid>-<n>`, empty.
    pub fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("dbx-{tag}-{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
