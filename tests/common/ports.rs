//! Ports for test servers: one free now and outside the ephemeral range, or one where
//! connections are refused for as long as it is held.

use std::fs;
use std::net::TcpListener;
use std::sync::Mutex;

/// A port for a test server to listen on: free now, and outside the kernel's ephemeral
/// range (`ip_local_port_range`), so that no outgoing connection of any process can take it
/// before the server binds it (or while it restarts). Another test process may still pick
/// the same one: callers retry on "already in use". Never the same port twice in this process.
pub(super) fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (lo, hi) = ephemeral_range();
    // Below the ephemeral range if there is room there, else above it.
    let (from, to) = if lo >= 11_024 {
        (lo - 10_000, lo)
    } else {
        (hi.saturating_add(1).max(1024), 65_535)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(from..to);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().filter_map(|p| p.parse().ok());
    match (parts.next(), parts.next()) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (32_768, 60_999),
    }
}

/// A port on 127.0.0.1 where connections are refused, for as long as this lives: a socket
/// bound there but not listening (and without `SO_REUSEADDR`, so nothing else can bind it
/// meanwhile). Race-free, unlike a port that was free a moment ago.
pub struct RefusedPort {
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

impl RefusedPort {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the port: connections are accepted from now on.
    pub fn listen(self) -> TcpListener {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        // SAFETY: listen on the socket we own, then hand its ownership to the listener.
        unsafe {
            let rc = libc::listen(self._socket.as_raw_fd(), 128);
            assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
            TcpListener::from_raw_fd(self._socket.into_raw_fd())
        }
    }
}

pub fn refused_port() -> RefusedPort {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor this function owns from its creation.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut len = len;
        let rc = libc::getsockname(socket.as_raw_fd(), (&raw mut bound).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        RefusedPort {
            _socket: socket,
            port: u16::from_be(bound.sin_port),
        }
    }
}
