//! The checks of the value kinds other than durations (`duration.rs`): a whole number in its
//! range, and a choice among a flag's words.
//!
//! Invariant: a refusal is one line that names the flag (or variable) and the value, and says
//! what is allowed: the range, or every word.

use super::Choices;
use crate::error::{Error, Result};

/// `text` as a whole number in `min..=max`, for `who`.
pub fn whole(who: &str, text: &str, min: i64, max: i64) -> Result<i64> {
    let v = text.trim();
    let range = || match max {
        i64::MAX => format!("at least {min}"),
        _ => format!("{min} to {max}"),
    };
    let n: i64 = v.parse().map_err(|_| {
        // A whole number that does not fit is out of range, not malformed.
        if v.parse::<i128>().is_ok() {
            Error::Usage(format!("{who}: {v} is out of range ({})", range()))
        } else {
            Error::Usage(format!("{who}: `{v}` is not a whole number"))
        }
    })?;
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(Error::Usage(format!(
            "{who}: {n} is out of range ({})",
            range()
        )))
    }
}

/// `text` as one of `c`'s words, given back as listed; for `who`.
pub fn choice(who: &str, text: &str, c: &Choices) -> Result<&'static str> {
    let v = text.trim();
    let same = |a: &str| match c.any_case {
        true => a.eq_ignore_ascii_case(v),
        false => a == v,
    };
    if let Some(w) = c.words.iter().find(|w| same(w)) {
        return Ok(w);
    }
    if let Some((_, w)) = c.aliases.iter().find(|(a, _)| same(a)) {
        return Ok(w);
    }
    Err(Error::Usage(format!(
        "{who}: `{}` is not {}",
        crate::log::escape_controls(v),
        listed(c.words)
    )))
}

/// `keep or delete`, `auto, on or off`; past three words `one of A, B, C, D, E`.
pub fn listed(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] if words.len() <= 3 => format!("{} or {last}", init.join(", ")),
        _ => format!("one of {}", words.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: Choices = Choices {
        words: &["keep", "delete"],
        any_case: false,
        aliases: &[],
    };
    const LEVELS: Choices = Choices {
        words: &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        any_case: true,
        aliases: &[("WARN", "WARNING")],
    };

    #[test]
    fn choices_take_their_words_and_name_them_when_refusing() {
        assert_eq!(choice("--on-done", " delete ", &MODES).unwrap(), "delete");
        assert_eq!(
            choice("--on-done", "Delete", &MODES)
                .unwrap_err()
                .to_string(),
            "--on-done: `Delete` is not keep or delete"
        );
        assert_eq!(choice("--log-level", "debug", &LEVELS).unwrap(), "DEBUG");
        assert_eq!(choice("--log-level", "warn", &LEVELS).unwrap(), "WARNING");
        assert_eq!(
            choice("X", "loud\n", &LEVELS).unwrap_err().to_string(),
            "X: `loud` is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        );
        assert_eq!(
            choice("X", "a\u{1b}b", &MODES).unwrap_err().to_string(),
            "X: `a\\x1bb` is not keep or delete"
        );
        assert_eq!(listed(&["auto", "on", "off"]), "auto, on or off");
    }

    #[test]
    fn whole_numbers_are_range_checked() {
        assert_eq!(whole("--limit", " 5", 1, i64::MAX).unwrap(), 5);
        for (text, e) in [
            ("0", "--limit: 0 is out of range (at least 1)"),
            ("x", "--limit: `x` is not a whole number"),
            (
                "99999999999999999999",
                "--limit: 99999999999999999999 is out of range (at least 1)",
            ),
        ] {
            assert_eq!(
                whole("--limit", text, 1, i64::MAX).unwrap_err().to_string(),
                e
            );
        }
        assert_eq!(
            whole("--processes", "4294967296", 1, 1024)
                .unwrap_err()
                .to_string(),
            "--processes: 4294967296 is out of range (1 to 1024)"
        );
    }
}
