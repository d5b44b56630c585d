//! The process groups of the `exec:` commands and `pipe:` processes running now, so that a
//! worker that exits without waiting for its handlers kills them ([`kill_running`]): what it
//! started must not outlive it, or the event's next delivery would run next to the old one.
//!
//! Invariant: a pid leaves the registry before it is reaped, so a group killed through it is
//! never a recycled pid.

use std::sync::{Mutex, MutexGuard};

/// Process groups (= the programs' pids, each the leader of its own group).
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn running() -> MutexGuard<'static, Vec<libc::pid_t>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills (SIGKILL) the process group of every `exec:` command and `pipe:` process still
/// running, and returns how many.
pub(crate) fn kill_running() -> usize {
    let groups = running();
    for &pgid in groups.iter() {
        kill_group(pgid, libc::SIGKILL);
    }
    groups.len()
}

/// Adds a started process (the leader of its own group) to the registry.
pub(crate) fn register(pid: libc::pid_t) {
    running().push(pid);
}

/// Takes a process out of the registry; call it before reaping the process.
pub(crate) fn unregister(pid: libc::pid_t) {
    running().retain(|&p| p != pid);
}

/// Sends `sig` to the process group `pgid`. The caller makes sure its leader is not reaped
/// yet (so the group is never a recycled pid).
pub(crate) fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall; no memory is touched.
    unsafe { libc::killpg(pgid, sig) };
}
