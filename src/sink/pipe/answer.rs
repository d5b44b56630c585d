//! The `pipe:` protocol's answers: one line per event on the process's stdout, in any
//! order, parsed into the event id and what the handler returns. Pure code.
//!
//! ```text
//! ok ID                               delivered
//! retry ID [REASON]                   retried with backoff
//! retry ID after=SECS [REASON]        retried, not sooner than SECS seconds
//! dead ID [REASON]                    rejected for good: the event goes to `dead` at once
//! unavailable ID [after=SECS] [REASON] the destination (not this event) is unavailable
//! ```
//! Invariant: a line is either exactly one of these or a [`ProtocolError`]; nothing on
//! stdout is ever skipped or guessed at. Whether ID is outstanding is the caller's check.

use crate::handler::Outcome;
use std::time::Duration;

/// The longest `after=` accepted (a day); a longer wait is the backoff cap's business.
const MAX_AFTER_SECS: f64 = 86_400.0;

/// A line that is not an answer. The text says what was wrong and quotes the line
/// (shortened).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProtocolError(pub String);

/// Parses `line` (without its newline) as an answer: the event id and its outcome.
pub(super) fn parse(line: &[u8]) -> Result<(i64, Outcome), ProtocolError> {
    let bad = |why: &str| ProtocolError(format!("{why}: `{}`", quote(line)));
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(bad("answer is not UTF-8"));
    };
    let text = text.strip_suffix('\r').unwrap_or(text);
    let (verb, rest) = split_word(text);
    let (id, rest) = split_word(rest);
    if !matches!(verb, "ok" | "retry" | "dead" | "unavailable") {
        return Err(bad(
            "expected `ok ID`, `retry ID …`, `dead ID …` or `unavailable ID …`",
        ));
    }
    let Ok(id) = id.parse::<i64>() else {
        return Err(bad("the answer's second word is not an event id"));
    };
    let reason = rest.trim();
    if verb == "ok" {
        return Ok((id, Outcome::Delivered));
    }
    if verb == "dead" {
        return Ok((id, Outcome::Permanent(or_default(reason, "dead"))));
    }
    let (after, reason) = match reason.strip_prefix("after=") {
        None => (None, reason),
        Some(after) => {
            let (secs, reason) = split_word(after);
            let secs = secs
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=MAX_AFTER_SECS).contains(s))
                .ok_or_else(|| {
                    bad("`after=` wants seconds (a number from 0 to 86400) before the reason")
                })?;
            (Some(Duration::from_secs_f64(secs)), reason.trim())
        }
    };
    let reason = or_default(reason, verb);
    let outcome = match (verb, after) {
        ("unavailable", after) => Outcome::Unavailable(reason, after),
        (_, None) => Outcome::Retry(reason),
        (_, Some(after)) => Outcome::RetryAfter(reason, after),
    };
    Ok((id, outcome))
}

/// The first word of `s` (split at one space) and what follows it.
fn split_word(s: &str) -> (&str, &str) {
    s.split_once(' ').unwrap_or((s, ""))
}

fn or_default(reason: &str, verb: &str) -> String {
    if reason.is_empty() {
        format!("the pipe process answered `{verb}` without a reason")
    } else {
        reason.to_string()
    }
}

/// `line` for a message: lossy UTF-8, at most 200 bytes (the log escapes control bytes).
pub(super) fn quote(line: &[u8]) -> String {
    const MAX: usize = 200;
    let shown = String::from_utf8_lossy(&line[..line.len().min(MAX)]).into_owned();
    if line.len() > MAX {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Outcome, ProtocolError> {
        parse(line.as_bytes()).map(|(id, o)| {
            assert_eq!(id, 17);
            o
        })
    }

    #[test]
    fn answers_map_to_outcomes() {
        assert_eq!(p("ok 17"), Ok(Outcome::Delivered));
        assert_eq!(p("ok 17\r"), Ok(Outcome::Delivered));
        assert_eq!(
            p("retry 17 broker busy"),
            Ok(Outcome::Retry("broker busy".into()))
        );
        assert_eq!(
            p("retry 17"),
            Ok(Outcome::Retry(
                "the pipe process answered `retry` without a reason".into()
            ))
        );
        assert_eq!(
            p("dead 17 schema  mismatch "),
            Ok(Outcome::Permanent("schema  mismatch".into()))
        );
        assert_eq!(
            p("retry 17 after=2.5 rate limited"),
            Ok(Outcome::RetryAfter(
                "rate limited".into(),
                Duration::from_millis(2500)
            ))
        );
        assert_eq!(
            p("unavailable 17 after=2 broker down"),
            Ok(Outcome::Unavailable(
                "broker down".into(),
                Some(Duration::from_secs(2))
            ))
        );
        assert_eq!(
            p("unavailable 17"),
            Ok(Outcome::Unavailable(
                "the pipe process answered `unavailable` without a reason".into(),
                None
            ))
        );
        assert_eq!(
            p("retry 17 after=60"),
            Ok(Outcome::RetryAfter(
                "the pipe process answered `retry` without a reason".into(),
                Duration::from_secs(60)
            ))
        );
    }

    #[test]
    fn anything_else_is_a_protocol_error() {
        let err = |line: &str| p(line).unwrap_err().0;
        assert_eq!(
            err("hello"),
            "expected `ok ID`, `retry ID …`, `dead ID …` or `unavailable ID …`: `hello`"
        );
        assert!(err("").starts_with("expected `ok ID`"));
        assert!(err("OK 17").starts_with("expected"));
        assert!(err(" ok 17").starts_with("expected"));
        assert_eq!(parse(b"ok 18").unwrap().0, 18);
        assert!(err("ok x17").contains("not an event id"));
        assert!(err("ok").contains("not an event id"));
        assert!(err("retry 17 after=soon x").contains("`after=` wants seconds"));
        assert!(err("retry 17 after=-1").contains("`after=` wants seconds"));
        assert!(err("retry 17 after=NaN").contains("`after=` wants seconds"));
        assert!(parse(b"ok 17\xff").unwrap_err().0.contains("not UTF-8"));
        let long = format!("x{}", "y".repeat(500));
        assert!(err(&long).ends_with("y…`"));
    }
}
