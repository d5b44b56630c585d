//! The one grammar of every duration flag: a number with a unit, `250ms`, `1.5s`, `15m`,
//! `12h`, `7d` (also `2w`); decimals allowed, no sign, no exponent. Whether a bare number is
//! accepted (as seconds) is the flag's own: yes for the run flags (`--poll-interval 0.5`, the
//! original's contract) and `--max-lag`; no where a bare number is a trap (`prune
//! --older-than 7` reads as days in a cron line).
//!
//! Invariant: a value is range-checked before it becomes a `Duration`, so no input can make
//! `Duration::from_secs_f64` panic; errors name the flag (or variable) and echo the value.

use crate::error::{Error, Result};

/// The units, longest suffix first where one ends another (`ms` before `s`).
const UNITS: &[(&str, f64)] = &[
    ("ms", 0.001),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86_400.0),
    ("w", 604_800.0),
];

/// What a bare number (no unit) means for a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    /// Seconds.
    Secs,
    /// Refused: the flag needs a unit.
    Refused,
}

/// `text` read by the grammar: seconds (negative when it has a leading `-`, so the caller
/// reports it as out of range) and whether it had a unit; None when it is not a duration.
fn read(text: &str) -> Option<(f64, bool)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let unit = UNITS.iter().find(|(u, _)| rest.ends_with(u));
    let number = unit.map_or(rest, |(u, _)| &rest[..rest.len() - u.len()]);
    let digits = number.replacen('.', "", 1);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        // Divided, not multiplied by 0.001: `250ms` is exactly 0.25.
        Some(("ms", _)) => n / 1000.0,
        Some((_, scale)) => n * scale,
        None => n,
    };
    Some((if negative { -secs } else { secs }, unit.is_some()))
}

/// The value `text` of the duration flag `who`, in seconds within `min..=max`.
pub fn parse(who: &str, text: &str, min: f64, max: f64, bare: Bare) -> Result<f64> {
    let t = text.trim();
    let Some((secs, unit)) = read(t) else {
        let e = match bare {
            Bare::Secs => "seconds, or a duration such as 500ms, 30s, 15m, 12h, 7d",
            Bare::Refused => "a duration such as 30s, 15m, 12h, 7d",
        };
        return Err(Error::Usage(format!("{who}: `{t}` is not {e}")));
    };
    if !unit && bare == Bare::Refused {
        return Err(Error::Usage(format!(
            "{who} {t}: give a unit, e.g. {t}d or {t}h"
        )));
    }
    if !(secs.is_finite() && min <= secs && secs <= max) {
        return Err(Error::Usage(format!(
            "{who}: {t} is out of range ({} to {})",
            show(min),
            show(max)
        )));
    }
    Ok(secs)
}

/// Seconds in the largest unit that shows them whole: `1ms`, `30s`, `1d`, `365d`.
pub fn show(secs: f64) -> String {
    for (unit, scale) in UNITS.iter().rev().filter(|(u, _)| *u != "w") {
        let n = secs / scale;
        if n >= 1.0 && n.fract() == 0.0 {
            return format!("{n}{unit}");
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Result<f64> {
        parse("--x", text, 0.0, 400.0 * 86_400.0, Bare::Secs)
    }

    #[test]
    fn every_unit_and_decimals() {
        for (text, want) in [
            ("250ms", 0.25),
            ("1ms", 0.001),
            ("1.5s", 1.5),
            ("30s", 30.0),
            ("15m", 900.0),
            ("0.5m", 30.0),
            ("12h", 43_200.0),
            ("1.5h", 5400.0),
            ("7d", 604_800.0),
            ("2w", 1_209_600.0),
            (".5s", 0.5),
            ("5.s", 5.0),
            (" 3s ", 3.0),
            ("0", 0.0),
        ] {
            assert_eq!(secs(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn bare_numbers_are_seconds_or_refused_by_flag() {
        assert_eq!(secs("0.5").unwrap(), 0.5);
        assert_eq!(secs("90").unwrap(), 90.0);
        let e = parse("--older-than", "7", 0.0, 1e9, Bare::Refused).unwrap_err();
        assert_eq!(e.to_string(), "--older-than 7: give a unit, e.g. 7d or 7h");
        assert!(matches!(e, Error::Usage(_)));
        assert_eq!(
            parse("--older-than", "7d", 0.0, 1e9, Bare::Refused).unwrap(),
            604_800.0
        );
    }

    #[test]
    fn bad_input_is_named() {
        for bad in [
            "", "s", "ms", "d", "7x", "7 days", "7dd", "1.2.3s", "1e3", "1e3s", "+5s", "NaNs",
            "inf", "infs", "0x10", "5 s", "1,5s", "--1s", "7D", "½s",
        ] {
            let e = secs(bad).unwrap_err().to_string();
            assert!(e.starts_with("--x: `"), "{bad}: {e}");
            assert!(e.contains("is not seconds, or a duration"), "{bad}: {e}");
        }
        let e = parse("--since", "soon", 0.0, 1.0, Bare::Refused).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--since: `soon` is not a duration such as 30s, 15m, 12h, 7d"
        );
    }

    #[test]
    fn out_of_range_and_overflow_are_refused() {
        let p = |t| parse("--poll-interval", t, 0.001, 86_400.0, Bare::Secs);
        assert_eq!(
            p("-1").unwrap_err().to_string(),
            "--poll-interval: -1 is out of range (1ms to 1d)"
        );
        assert!(p("0.5ms").is_err());
        assert!(p("1.5d").is_err());
        assert_eq!(p("1d").unwrap(), 86_400.0);
        assert_eq!(p("1ms").unwrap(), 0.001);
        // Far past f64's range (infinite), and finite but far past any range.
        let huge = format!("1{}d", "0".repeat(400));
        for t in [huge.as_str(), "99999999999999999999999999w", "-0.5s"] {
            let e = p(t).unwrap_err().to_string();
            assert!(e.contains("is out of range"), "{t}: {e}");
        }
    }

    #[test]
    fn bounds_are_shown_in_their_unit() {
        assert_eq!(show(0.001), "1ms");
        assert_eq!(show(0.0), "0s");
        assert_eq!(show(1.0), "1s");
        assert_eq!(show(90.0), "90s");
        assert_eq!(show(3600.0), "1h");
        assert_eq!(show(86_400.0), "1d");
        assert_eq!(show(365.0 * 86_400.0), "365d");
    }
}
