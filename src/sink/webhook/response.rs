//! What an HTTP answer means for the event: the status → [`Outcome`] table, `Retry-After`
//! (delta seconds or an HTTP date), and the text stored as the event's error.
//!
//! | answer | outcome |
//! | --- | --- |
//! | 2xx | delivered |
//! | 429, 502, 503, 504 | the destination is unavailable (counts toward pausing the route), no sooner than `Retry-After` when given |
//! | 408, the other 5xx | retry, no sooner than `Retry-After` when given |
//! | 3xx | dead: redirects are not followed (the route's URL should be updated) |
//! | 410 and the other 4xx | dead at once |
//! | anything else (1xx that ends an exchange, 6xx...) | retry |
//!
//! Pure functions, no I/O: unit-tested here; network errors are mapped in `mod.rs`.

use crate::handler::Outcome;
use std::time::{Duration, SystemTime};

/// How much of a response body goes into the stored error.
pub(super) const SNIPPET: usize = 300;
/// A `Retry-After` further away than this is taken as this (the retry delay is capped at
/// `--retry-backoff-max` later anyway; this only keeps the arithmetic finite).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(365 * 86_400);

/// The answer, as far as the outcome depends on it.
pub(super) struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub location: Option<&'a str>,
    /// The start of the body (at most [`SNIPPET`] bytes are used).
    pub body: &'a [u8],
}

pub(super) fn outcome(a: &Answer<'_>, now: SystemTime) -> Outcome {
    let status = a.status;
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let mut msg = status_line(status);
    if (300..400).contains(&status) {
        msg.push_str(": redirects are not followed; update the route's URL");
        if let Some(loc) = a.location {
            msg.push_str(&format!(" (location: {})", clean(loc.as_bytes(), SNIPPET)));
        }
    }
    let snippet = clean(a.body, SNIPPET);
    if !snippet.is_empty() {
        msg.push_str(": ");
        msg.push_str(&snippet);
    }
    let after = || a.retry_after.and_then(|v| retry_after(v, now));
    match status {
        429 | 502..=504 => Outcome::Unavailable(msg, after()),
        408 | 500..=599 => match after() {
            Some(d) => Outcome::RetryAfter(msg, d),
            None => Outcome::Retry(msg),
        },
        300..=499 => Outcome::Permanent(msg),
        _ => Outcome::Retry(msg),
    }
}

/// `HTTP 503 Service Unavailable` (the standard reason, not the server's).
fn status_line(status: u16) -> String {
    let reason = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(r) => format!("HTTP {status} {r}"),
        None => format!("HTTP {status}"),
    }
}

/// At most `max` bytes of `bytes` as one line of text: invalid UTF-8 replaced, control
/// characters (newlines too) as spaces, runs of white space squeezed, cut on a character.
pub(super) fn clean(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max && text.ends_with('\u{FFFD}') {
        // The cut went through a character.
        text.pop();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// `Retry-After`: delta seconds, or an HTTP date (a date in the past means "now": None).
pub(super) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let wait = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are a very long time, not garbage.
        Duration::from_secs(
            v.parse::<u64>()
                .unwrap_or(u64::MAX)
                .min(MAX_RETRY_AFTER.as_secs()),
        )
    } else {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(http_date(v)?);
        at.duration_since(now).ok()?
    };
    (!wait.is_zero()).then(|| wait.min(MAX_RETRY_AFTER))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An HTTP date (RFC 9110 §5.6.7) as unix seconds, in its three forms:
/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate), `Sunday, 06-Nov-94 08:49:37 GMT`
/// (RFC 850) and `Sun Nov  6 08:49:37 1994` (asctime). The weekday is not checked.
pub(super) fn http_date(s: &str) -> Option<u64> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let (day, month, year, time) = match words.as_slice() {
        [_, d, m, y, t, "GMT"] => (*d, *m, *y, *t),
        [_, dmy, t, "GMT"] => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?);
            // Two-digit years: RFC 9110 says a year more than 50 years ahead is in the past.
            let yy: u64 = y.parse().ok().filter(|_| y.len() == 2)?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            return civil(d, m, &year.to_string(), t);
        }
        [_, m, d, t, y] => (*d, *m, *y, *t),
        _ => return None,
    };
    civil(day, month, year, time)
}

fn civil(day: &str, month: &str, year: &str, time: &str) -> Option<u64> {
    let day: u64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let year: u64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm, for years from 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<&str>) -> Outcome {
        let a = Answer {
            status,
            retry_after,
            location: Some("https://elsewhere/x"),
            body: b"{\"error\":\n \"nope\"}",
        };
        outcome(
            &a,
            SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777),
        )
    }

    #[test]
    fn statuses_map_to_outcomes() {
        for s in [200, 201, 204, 299] {
            assert_eq!(answer(s, None), Outcome::Delivered);
        }
        for s in [408, 500, 501, 505, 599, 600, 199] {
            assert!(matches!(answer(s, None), Outcome::Retry(_)), "{s}");
        }
        for s in [429, 502, 503, 504] {
            assert!(
                matches!(answer(s, None), Outcome::Unavailable(_, None)),
                "{s}"
            );
        }
        for s in [301, 302, 307, 308, 400, 401, 403, 404, 410, 422] {
            assert!(matches!(answer(s, None), Outcome::Permanent(_)), "{s}");
        }
        assert_eq!(
            answer(503, Some("120")),
            Outcome::Unavailable(
                "HTTP 503 Service Unavailable: {\"error\": \"nope\"}".into(),
                Some(Duration::from_secs(120))
            )
        );
        assert_eq!(
            answer(500, Some("120")),
            Outcome::RetryAfter(
                "HTTP 500 Internal Server Error: {\"error\": \"nope\"}".into(),
                Duration::from_secs(120)
            )
        );
        // 410 with Retry-After is still permanent; a 3xx says where it was sent.
        assert!(matches!(answer(410, Some("5")), Outcome::Permanent(_)));
        let Outcome::Permanent(m) = answer(301, None) else {
            panic!()
        };
        assert!(
            m.starts_with("HTTP 301 Moved Permanently: redirects are not followed"),
            "{m}"
        );
        assert!(m.contains("(location: https://elsewhere/x)"), "{m}");
    }

    #[test]
    fn retry_after_takes_seconds_and_all_three_date_forms() {
        // 784111777 = Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
        let ninety = Some(Duration::from_secs(90));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), ninety);
        assert_eq!(retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), ninety);
        assert_eq!(retry_after("Sun Nov  6 08:49:37 1994", now), ninety);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("0", now), None);
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:40:00 GMT", now),
            None,
            "past"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
        assert_eq!(retry_after("1.5", now), None);
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(clean(b"a\r\n\tb  c\x00", 300), "a b c");
        assert_eq!(clean("é".repeat(400).as_bytes(), 301).chars().count(), 150);
        assert_eq!(clean(b"", 300), "");
    }
}
