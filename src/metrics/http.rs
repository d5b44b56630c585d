//! A minimal HTTP/1.1 server for the metrics endpoints, std only: one thread accepts, a fixed
//! pool of `THREADS` threads answers, one request per connection (`Connection: close`).
//!
//! Limits, so that a slow or malicious client cannot stall the server (nor anything else:
//! the workers never talk to it and the supervisor's loop never waits on it):
//! - the request head (request line and headers) must arrive within `READ_TIME` in all,
//!   however slowly it trickles in; otherwise the connection is answered 408 and closed;
//! - a head larger than `MAX_HEAD` is answered 431, a malformed one 400, a method other than
//!   GET 405; a body is never read;
//! - the answer is written with a `WRITE_TIME` timeout (a client that does not read loses it);
//! - at most `THREADS` connections are served at once and `QUEUE` more wait; beyond that a
//!   new connection is answered 503 at once and closed, without waiting for its request.
//!
//! Invariant: every connection is closed within about `READ_TIME + WRITE_TIME + LINGER`
//! of being taken by a thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const MAX_HEAD: usize = 8 * 1024;
pub(crate) const READ_TIME: Duration = Duration::from_secs(2);
const WRITE_TIME: Duration = Duration::from_secs(2);
/// After answering, how long unread input is drained (so that closing with unread bytes
/// does not reset the connection before the client has read the answer).
const LINGER: Duration = Duration::from_millis(200);
const THREADS: usize = 8;
const QUEUE: usize = 16;

/// An answer.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers a GET of `path` (query string removed).
pub(crate) type App = dyn Fn(&str) -> Response + Send + Sync;

/// Serves `listener` with `app` on threads of its own, for the rest of the process's life.
pub(crate) fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<TcpStream>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..THREADS {
        let (rx, app) = (Arc::clone(&rx), Arc::clone(&app));
        std::thread::Builder::new()
            .name(format!("metrics-{i}"))
            .spawn(move || answer_loop(&rx, &*app))?;
    }
    std::thread::Builder::new()
        .name("metrics-accept".into())
        .spawn(move || accept_loop(&listener, &tx))?;
    Ok(())
}

fn accept_loop(listener: &TcpListener, tx: &SyncSender<TcpStream>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(mut stream)) => {
                    // A fresh socket's send buffer takes this without blocking.
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.write_all(&head(503, "text/plain", 0));
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            // Out of descriptors, a connection reset before it was accepted: go on.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer_loop(rx: &Mutex<Receiver<TcpStream>>, app: &App) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(stream) = next else { return };
        answer(stream, app);
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    TooLarge,
    TooSlow,
    /// Closed or broken before the head was complete: nobody to answer.
    Gone,
}

fn answer(mut stream: TcpStream, app: &App) {
    let response = match read_head(&mut stream, Instant::now() + READ_TIME) {
        Ok(head) => respond(&head, app),
        Err(Refusal::TooLarge) => Response::text(431, "request header fields too large\n"),
        Err(Refusal::TooSlow) => Response::text(408, "request timeout\n"),
        Err(Refusal::Gone) => return,
    };
    let _ = stream.set_write_timeout(Some(WRITE_TIME));
    let mut bytes = head(response.status, response.content_type, response.body.len());
    bytes.extend_from_slice(response.body.as_bytes());
    if stream.write_all(&bytes).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    linger(&mut stream);
}

/// Reads until the blank line ending the head; at most `MAX_HEAD` bytes, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::TooSlow);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Refusal::Gone)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(Refusal::Gone),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Refusal::TooSlow)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(Refusal::Gone),
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            if end > MAX_HEAD {
                return Err(Refusal::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Refusal::TooLarge);
        }
    }
}

/// Where the head ends (after its blank line: CRLF CRLF, or LF LF), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// The answer to a complete head.
fn respond(head: &[u8], app: &App) -> Response {
    let Ok(text) = std::str::from_utf8(head) else {
        return Response::text(400, "bad request\n");
    };
    let line = text.lines().next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Response::text(400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Response::text(400, "bad request\n");
    }
    if method != "GET" {
        return Response::text(405, "only GET is supported\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    app(path)
}

fn head(status: u16, content_type: &str, len: usize) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Reads and drops what the client still sends, briefly and boundedly.
fn linger(stream: &mut TcpStream) {
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    for _ in 0..64 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Arc<App> {
        Arc::new(|path: &str| Response::text(200, format!("path {path}\n")))
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn requests_are_checked_before_the_app_sees_them() {
        let a = app();
        let r = respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &*a);
        assert_eq!((r.status, r.body.as_str()), (200, "path /metrics\n"));
        assert_eq!(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &*a).status, 405);
        assert_eq!(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &*a).status, 405);
        assert_eq!(respond(b"GET /metrics\r\n\r\n", &*a).status, 400);
        assert_eq!(respond(b"GET metrics HTTP/1.1\r\n\r\n", &*a).status, 400);
        assert_eq!(respond(b"GET / SPDY/3\r\n\r\n", &*a).status, 400);
        assert_eq!(respond(b"\xff\xfe / HTTP/1.1\r\n\r\n", &*a).status, 400);
    }

    #[test]
    fn a_served_listener_answers_and_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, app()).unwrap();
        let ask = |req: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\npath /healthz\n"), "{ok}");
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        let refused = ask(&big);
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    }
}
