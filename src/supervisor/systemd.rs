//! Talking to systemd (its notification protocol, `Type=notify`; not to be confused with
//! PostgreSQL's LISTEN/NOTIFY, `--notify`), for the supervisor: `READY=1` once
//! every worker has reported ready, `STOPPING=1` when stopping begins, `STATUS=` lines, and
//! `WATCHDOG=1` every half `WATCHDOG_USEC` while the main loop turns.
//!
//! A message is one datagram to the unix socket `NOTIFY_SOCKET` names (a path, or an
//! abstract name when it starts with `@`), as `sd_notify(3)` sends it; no crate needed.
//! Invariants: nothing is sent when `NOTIFY_SOCKET` is not set; the watchdog is only kept
//! when `WATCHDOG_PID` is absent or ours; a failed send is logged once and never stops
//! anything (systemd then acts on its own timeouts). Workers get none of these variables
//! (`spawn` removes them): only the main process speaks for the service.

use crate::warn;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub(super) struct Systemd {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `WATCHDOG_USEC`, and when the next ping is due.
    watchdog: Option<(Duration, Instant)>,
    ready_sent: bool,
    stopping_sent: bool,
    status: String,
    failed: bool,
}

impl Systemd {
    /// None when systemd did not ask for notifications (or the socket is unusable: logged).
    pub fn from_env() -> Option<Systemd> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = match path.as_encoded_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            _ => SocketAddr::from_pathname(&path),
        };
        let socket = addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        let (socket, addr) = match socket {
            Ok(s) => s,
            Err(e) => {
                warn!("NOTIFY_SOCKET is set but unusable ({e}): not notifying systemd");
                return None;
            }
        };
        Some(Systemd {
            socket,
            addr,
            watchdog: watchdog_interval(
                std::env::var("WATCHDOG_USEC").ok().as_deref(),
                std::env::var("WATCHDOG_PID").ok().as_deref(),
                std::process::id(),
            )
            .map(|every| (every, Instant::now())),
            ready_sent: false,
            stopping_sent: false,
            status: String::new(),
            failed: false,
        })
    }

    /// One round of the main loop: what changed since the last, and the watchdog when due.
    pub fn tick(&mut self, ready: usize, workers: usize, stopping: bool) {
        if stopping && !self.stopping_sent {
            self.stopping_sent = true;
            self.send("STOPPING=1\nSTATUS=stopping");
        } else if !stopping {
            let status = format!("{ready} of {workers} workers ready");
            if ready == workers && !self.ready_sent {
                self.ready_sent = true;
                self.send(&format!("READY=1\nSTATUS={status}"));
            } else if status != self.status && self.ready_sent {
                self.send(&format!("STATUS={status}"));
            }
            self.status = status;
        }
        if let Some((every, due)) = &mut self.watchdog {
            if Instant::now() >= *due {
                *due = Instant::now() + *every;
                self.send("WATCHDOG=1");
            }
        }
    }

    /// When the loop must turn next for the watchdog.
    pub fn next_wake(&self) -> Option<Instant> {
        self.watchdog.map(|(_, due)| due)
    }

    fn send(&mut self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            if !self.failed {
                self.failed = true;
                warn!("cannot notify systemd through NOTIFY_SOCKET: {e}");
            }
        }
    }
}

/// Half of `WATCHDOG_USEC` (systemd's advice), when the watchdog is set for this process.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(own)) {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_only_when_its_pid_is() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some("200000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }
}
