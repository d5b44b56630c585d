//! The system calls behind a non-blocking wait for a program: has it exited (without reaping
//! it), a pidfd that becomes readable when it does, non-blocking pipes, `poll` timeouts.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// True once the child `pid` has exited; it stays unreaped (a zombie) until it is waited for.
pub(crate) fn has_exited(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: waitid writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info.si_pid() != 0)
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> bool {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    }
}

/// A descriptor that becomes readable when the process exits (close-on-exec), or None on
/// kernels without pidfd_open (before 5.3) or when out of descriptors: then the exit is polled.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: just opened, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `poll` timeout in milliseconds, rounded up.
pub(crate) fn poll_millis(d: Duration) -> i32 {
    i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
}
