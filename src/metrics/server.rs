//! The metrics server's connections, std and `libc::poll` only. One thread polls them all:
//! it accepts, reads request heads, writes answers and drains what a client still sends
//! before closing. Requests that may wait (a scrape waits up to a second for the backlog
//! query) go to a pool of `THREADS` threads, which only compute answers and never touch a
//! socket; quick ones (`/healthz`, `/readyz`) are answered on the polling thread at once.
//! So an idle or trickling client holds a socket, never a thread, and a health check is
//! never queued behind slow clients or scrapes.
//!
//! Limits, so that a slow or malicious client cannot stall the server (nor anything else:
//! the workers never talk to it and the supervisor's loop never waits on it):
//! - the request head must arrive within `READ_TIME` in all, however slowly it trickles in;
//!   otherwise the connection is answered 408;
//! - the answer must be taken within `WRITE_TIME` (a client that does not read loses it);
//! - at most `MAX_READING` connections are read at once; a connection beyond that, or a
//!   request that finds the pool and its `QUEUE` full, is answered 503 at once;
//! - at most `MAX_OPEN` connections are open; more wait in the listen backlog
//!   (`BACKLOG`) until one closes, rather than being reset.
//!
//! Every answer is followed by a lingering close: shut down our side, read and drop what the
//! client still sends for up to `LINGER`, then close, so that unread request bytes do not make
//! the kernel reset the connection before the client has read the answer (a 503 included).
//!
//! Invariant: every connection is closed within `READ_TIME` + the pool's answer +
//! `WRITE_TIME` + `LINGER` of being accepted.

use super::http::{complete_head, encode, request_path, App, Response};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const READ_TIME: Duration = Duration::from_secs(2);
const WRITE_TIME: Duration = Duration::from_secs(2);
const LINGER: Duration = Duration::from_millis(500);
const THREADS: usize = 8;
const QUEUE: usize = 16;
const MAX_READING: usize = 512;
const MAX_OPEN: usize = 1024;
/// The listen backlog (std's is 128; the kernel caps it at `net.core.somaxconn`).
const BACKLOG: libc::c_int = 1024;
/// After running out of descriptors, how long to leave new connections in the backlog.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Serves `listener` with `app` on threads of its own, for the rest of the process's life;
/// the paths in `quick` are answered without waiting for the pool.
pub(crate) fn serve(
    listener: TcpListener,
    app: Arc<App>,
    quick: &'static [&'static str],
) -> std::io::Result<()> {
    // Listening again on a listening socket only sets its backlog (Linux); keep std's if not.
    // SAFETY: a plain call on a descriptor we own.
    let _ = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    listener.set_nonblocking(true)?;
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let wake_tx = Arc::new(wake_tx);
    let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUE);
    let (done, answers) = mpsc::channel::<(u64, Response)>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    for i in 0..THREADS {
        let (rx, app, done, wake) = (
            Arc::clone(&job_rx),
            Arc::clone(&app),
            done.clone(),
            Arc::clone(&wake_tx),
        );
        std::thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || pool_loop(&rx, &*app, &done, &wake))?;
    }
    let mut server = Server {
        listener,
        wake: wake_rx,
        app,
        quick,
        jobs,
        answers,
        conns: HashMap::new(),
        next_id: 0,
        accept_after: None,
    };
    std::thread::Builder::new()
        .name("metrics-poll".into())
        .spawn(move || loop {
            server.turn();
        })?;
    Ok(())
}

/// A request for the pool: the connection's id and the path.
type Job = (u64, String);

fn pool_loop(
    rx: &Mutex<Receiver<Job>>,
    app: &App,
    done: &mpsc::Sender<(u64, Response)>,
    wake: &UnixStream,
) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok((id, path)) = next else { return };
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| app(&path)))
            .unwrap_or_else(|_| Response::text(500, "internal error\n"));
        if done.send((id, answer)).is_err() {
            return;
        }
        // A full pipe already wakes the polling thread.
        let _ = (&*wake).write(&[1]);
    }
}

/// Where a connection is.
enum Phase {
    /// Reading the request head; how much of it was searched for its end.
    Head { buf: Vec<u8>, searched: usize },
    /// The pool is computing the answer (not polled, no deadline: the pool always answers).
    Pool,
    /// Writing the answer.
    Write { bytes: Vec<u8>, sent: usize },
    /// Answered and shut down on our side: dropping what the client still sends.
    Drain,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    deadline: Instant,
}

struct Server {
    listener: TcpListener,
    wake: UnixStream,
    app: Arc<App>,
    quick: &'static [&'static str],
    jobs: SyncSender<Job>,
    answers: Receiver<(u64, Response)>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    /// Set after running out of descriptors: no accepting before then.
    accept_after: Option<Instant>,
}

impl Server {
    /// Waits for something to do (at most until the next deadline) and does it.
    fn turn(&mut self) {
        let now = Instant::now();
        let accepting = self.conns.len() < MAX_OPEN && self.accept_after.is_none_or(|t| t <= now);
        let mut fds = vec![pollfd(self.wake.as_raw_fd(), libc::POLLIN)];
        if accepting {
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        }
        let mut polled = Vec::with_capacity(self.conns.len());
        let mut next = now + Duration::from_secs(1);
        for (id, c) in &self.conns {
            let events = match c.phase {
                Phase::Head { .. } | Phase::Drain => libc::POLLIN,
                Phase::Write { .. } => libc::POLLOUT,
                Phase::Pool => continue,
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
            polled.push(*id);
            next = next.min(c.deadline);
        }
        if let Some(t) = self.accept_after.filter(|_| !accepting) {
            next = next.min(t);
        }
        let ms = next.saturating_duration_since(now).as_millis().min(1000) as libc::c_int;
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            // EINTR: go round. ENOMEM: do not spin.
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        if fds[0].revents != 0 {
            self.take_answers();
        }
        let skip = if accepting { 2 } else { 1 };
        if accepting && fds[1].revents != 0 {
            self.accept();
        }
        for (fd, id) in fds[skip..].iter().zip(polled) {
            if fd.revents != 0 {
                self.advance(id);
            }
        }
        self.expire(Instant::now());
    }

    /// The pool's answers: written from here on.
    fn take_answers(&mut self) {
        let mut sink = [0u8; 64];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        while let Ok((id, answer)) = self.answers.try_recv() {
            self.answer(id, &answer);
        }
    }

    fn accept(&mut self) {
        while self.conns.len() < MAX_OPEN {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.accept_after = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                // A connection reset before it was accepted, and the like: the next one.
                Err(_) => continue,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let reading = self
                .conns
                .values()
                .filter(|c| matches!(c.phase, Phase::Head { .. }))
                .count();
            let id = self.next_id;
            self.next_id += 1;
            let phase = Phase::Head {
                buf: Vec::new(),
                searched: 0,
            };
            let deadline = Instant::now() + READ_TIME;
            self.conns.insert(
                id,
                Conn {
                    stream,
                    phase,
                    deadline,
                },
            );
            if reading >= MAX_READING {
                self.answer(id, &busy());
            }
        }
    }

    /// Moves connection `id` on after poll said it is ready.
    fn advance(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match step(c) {
            Next::Stay => {}
            Next::Close => self.close(id),
            Next::Dispatch(head) => self.dispatch(id, &head),
            Next::Refuse(r) => self.answer(id, &r),
        }
    }

    /// A complete head: answered here, handed to the pool, or refused.
    fn dispatch(&mut self, id: u64, head: &[u8]) {
        let path = match request_path(head) {
            Ok(path) => path,
            Err(refusal) => return self.answer(id, &refusal),
        };
        if self.quick.contains(&path) {
            let answer = (self.app)(path);
            return self.answer(id, &answer);
        }
        match self.jobs.try_send((id, path.to_string())) {
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Pool;
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.answer(id, &busy()),
        }
    }

    /// Starts writing `r` to connection `id`; the first write is tried at once.
    fn answer(&mut self, id: u64, r: &Response) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = Phase::Write {
                bytes: encode(r),
                sent: 0,
            };
            c.deadline = Instant::now() + WRITE_TIME;
            self.advance(id);
        }
    }

    /// Connections past their deadline: a head that did not arrive in time is answered 408;
    /// an answer not taken, or a drain that lasted its time, ends.
    fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now && !matches!(c.phase, Phase::Pool))
            .map(|(id, c)| (*id, matches!(c.phase, Phase::Head { .. })))
            .collect();
        for (id, reading) in late {
            if reading {
                self.answer(id, &Response::text(408, "request timeout\n"));
            } else {
                self.close(id);
            }
        }
    }

    fn close(&mut self, id: u64) {
        self.conns.remove(&id);
    }
}

/// What a connection needs after a step.
enum Next {
    Stay,
    Close,
    /// Its head is complete.
    Dispatch(Vec<u8>),
    Refuse(Response),
}

/// Reads or writes what connection `c` is ready for.
fn step(c: &mut Conn) -> Next {
    let again =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted);
    match &mut c.phase {
        Phase::Head { buf, searched } => {
            let Ok(ended) = read_more(&mut c.stream, buf) else {
                return Next::Close;
            };
            match complete_head(buf, *searched) {
                Ok(Some(end)) => {
                    buf.truncate(end);
                    Next::Dispatch(std::mem::take(buf))
                }
                // Closed (or half-closed) before its head was complete: nobody to answer.
                Ok(None) if ended => Next::Close,
                Ok(None) => {
                    *searched = buf.len();
                    Next::Stay
                }
                Err(()) => Next::Refuse(Response::text(431, "request header fields too large\n")),
            }
        }
        Phase::Write { bytes, sent } => match c.stream.write(&bytes[*sent..]) {
            Ok(n) => {
                *sent += n;
                if *sent == bytes.len() {
                    let _ = c.stream.shutdown(Shutdown::Write);
                    c.phase = Phase::Drain;
                    c.deadline = Instant::now() + LINGER;
                }
                Next::Stay
            }
            Err(e) if again(&e) => Next::Stay,
            Err(_) => Next::Close,
        },
        Phase::Drain => {
            let mut sink = [0u8; 4096];
            match c.stream.read(&mut sink) {
                Ok(n) if n > 0 => Next::Stay,
                Err(e) if again(&e) => Next::Stay,
                // The client closed (or broke) its side: done.
                _ => Next::Close,
            }
        }
        Phase::Pool => Next::Stay,
    }
}

fn busy() -> Response {
    Response::text(503, "busy: too many connections\n")
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Reads what is there into `buf`; true when the client has also ended its side (a request
/// followed by a half-close still gets its answer).
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > super::http::MAX_HEAD {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Arc<App> {
        Arc::new(|path: &str| Response::text(200, format!("path {path}\n")))
    }

    fn started() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, app(), &["/healthz"]).unwrap();
        addr
    }

    fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req).unwrap();
        // Half-closed after the request, as `printf ... | nc` does: still answered.
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_served_listener_answers_and_refuses() {
        let addr = started();
        let ok = ask(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\npath /healthz\n"), "{ok}");
        let ok = ask(addr, b"GET /metrics?x HTTP/1.1\r\n\r\n");
        assert!(ok.ends_with("\r\n\r\npath /metrics\n"), "{ok}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', super::super::http::MAX_HEAD));
        let refused = ask(addr, &big);
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        let refused = ask(addr, b"PUT / HTTP/1.1\r\n\r\nbody");
        assert!(refused.starts_with("HTTP/1.1 405 "), "{refused}");
    }
}
