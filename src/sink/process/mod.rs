//! What the two targets that run a program — `exec:` (one run per event) and `pipe:` (one
//! long-running process) — share: the command line split like a shell would and the program
//! found like `execvp` would (`words.rs`, `program.rs`), the command itself (no shell, its own
//! process group, no secrets in its environment), the registry of running
//! process groups that a worker kills when it exits without waiting (`registry.rs`), and the
//! system calls for learning an exit without blocking (`os.rs`).
//!
//! Invariant: every process started through here runs as the leader of its own process group
//! and is in the registry from its start until just before it is reaped, so a group killed
//! through the registry is never a recycled pid.

mod os;
mod program;
mod registry;
mod words;

pub(crate) use os::{has_exited, pidfd_open, poll_millis, set_nonblocking};
pub(crate) use program::check_program;
pub(crate) use registry::{kill_group, kill_running, register, unregister};
pub(crate) use words::split_words;

use std::os::unix::process::CommandExt;
use std::process::Command;

/// How much of a program's stderr is kept for the error message.
pub(crate) const STDERR_TAIL: usize = 1500;

/// `program args`, without a shell, without secrets in its environment (DISPATCHBOX_DSN,
/// PGPASSWORD, the webhook secret: the supervisor keeps them from its workers already, this
/// is the second lock), in its own process group: a Ctrl-C meant for dispatchbox does not
/// kill a delivery in progress (a graceful stop lets it finish), and a kill of the group
/// reaches what the program started too. The caller sets the pipes.
pub(crate) fn command(program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("DISPATCHBOX_DSN")
        .env_remove("PGPASSWORD")
        .env_remove(crate::cli::defs::WEBHOOK_SECRET_VAR)
        .process_group(0);
    cmd
}

/// Out of file descriptors, processes or memory: this machine's problem, not the event's.
pub(crate) fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
    )
}
