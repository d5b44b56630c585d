//! HTTP/1.1 as the metrics server speaks it, without the sockets (`server` has those): where
//! a request head ends, which requests are acceptable, and the bytes of an answer.
//!
//! Only GET is answered (405 otherwise, with `Allow`); a head must fit in `MAX_HEAD` (431
//! beyond); a malformed head is 400. A body is never read. Every answer says
//! `Connection: close`: one request per connection.
//!
//! Invariant: the app only ever sees the path of a well-formed GET (query string removed).

/// The largest request head read.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

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

/// Whether `buf` (read so far) holds a whole head: `Ok(Some(len))` with the head's length,
/// `Ok(None)` when more is to come, `Err(())` when it is, or would be, larger than
/// `MAX_HEAD`. `searched` is how much of `buf` an earlier call already looked at.
pub(crate) fn complete_head(buf: &[u8], searched: usize) -> Result<Option<usize>, ()> {
    match head_end(buf, searched.saturating_sub(3)) {
        Some(end) if end > MAX_HEAD => Err(()),
        Some(end) => Ok(Some(end)),
        None if buf.len() > MAX_HEAD => Err(()),
        None => Ok(None),
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

/// The path a complete head asks for, or the refusal to send instead.
pub(crate) fn request_path(head: &[u8]) -> Result<&str, Response> {
    let bad = || Response::text(400, "bad request\n");
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let line = text.lines().next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Err(bad());
    }
    if method != "GET" {
        return Err(Response::text(405, "only GET is supported\n"));
    }
    Ok(target.split('?').next().unwrap_or(target))
}

/// The bytes of `r`, head and body.
pub(crate) fn encode(r: &Response) -> Vec<u8> {
    let mut bytes = head(r.status, r.content_type, r.body.len());
    bytes.extend_from_slice(r.body.as_bytes());
    bytes
}

fn head(status: u16, content_type: &str, len: usize) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // Found across reads: the search goes back over the end of what was searched.
        let whole = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(complete_head(&whole[..17], 0), Ok(None));
        assert_eq!(complete_head(whole, 17), Ok(Some(18)));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(complete_head(&big, 0), Err(()));
        big.extend(b"\r\n\r\n");
        assert_eq!(complete_head(&big, 0), Err(()));
    }

    #[test]
    fn requests_are_checked_before_the_app_sees_them() {
        fn status(head: &[u8]) -> Result<&str, u16> {
            request_path(head).map_err(|r| r.status)
        }
        assert_eq!(status(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Ok("/metrics"));
        assert_eq!(status(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status(b"GET /metrics\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / SPDY/3\r\n\r\n"), Err(400));
        assert_eq!(status(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Err(400));
    }

    #[test]
    fn answers_are_framed_with_their_length_and_close() {
        let a = String::from_utf8(encode(&Response::text(405, "no\n"))).unwrap();
        assert!(a.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{a}");
        assert!(a.contains("\r\nContent-Length: 3\r\nAllow: GET\r\n"), "{a}");
        assert!(a.ends_with("Connection: close\r\n\r\nno\n"), "{a}");
    }
}
