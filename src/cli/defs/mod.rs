//! Every flag, defined once (the model is ripgrep's `flags/defs.rs`).
//!
//! A [`Flag`] says how it is typed, whether it takes a value, its default, its `--help` text
//! and how its value is checked. Everything else is derived from [`FLAGS`]: the OPTIONS
//! section of `--help`, the `DISPATCHBOX_*` variable names, the list of variables that
//! configure something (the "unknown variable" warning), the flags `cli` accepts and
//! what the supervisor hands its workers. `config.rs` reads values through these definitions, so a range or a
//! default exists in one place only.
//!
//! Invariant: a flag's key is `--` + its name; its variable is `DISPATCHBOX_` + the name
//! upper-cased with `-` as `_` (none for `--help` and `--version`).

use crate::error::{Error, Result};
use std::sync::OnceLock;

pub use duration::Bare;

/// How a flag's value is read and checked (the same for a run flag and a command option).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A whole number in `min..=max`.
    Whole { min: i64, max: i64 },
    /// A duration in `min..=max` seconds, in the grammar of [`duration`] (`500ms`, `30s`,
    /// `15m`); `bare` says whether a bare number is seconds (`--poll-interval 0.5`, the
    /// original's contract) or refused (`prune --older-than 7`).
    Secs { min: f64, max: f64, bare: Bare },
    /// One of a fixed set of words (`--on-done keep|delete`), checked here; `--help`, the man
    /// page, the completions and the reference list them.
    Choice(Choices),
    /// Text checked by its own parser (the DSN, the table, an event type).
    Text,
    /// `PATTERN=TARGET`, repeatable; the variable takes several, separated by `;` or newlines.
    Routes,
    /// On when given (no value); a run flag's variable takes a boolean (1/0, true/false,
    /// yes/no).
    Switch,
    /// Answered at once (`--help`, `--version`); no variable.
    Info,
}

/// The words a [`Kind::Choice`] flag takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choices {
    /// As listed, in this order; a value is one of them (given back as listed).
    pub words: &'static [&'static str],
    /// Whether `JSON` is `json` too.
    pub any_case: bool,
    /// Also taken, not listed: `(alias, word)`, e.g. `WARN` for `WARNING`.
    pub aliases: &'static [(&'static str, &'static str)],
}

/// Who reads a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A run (the supervisor and its workers); the shared ones (`--dsn`, `--table`, ...) serve
    /// the admin commands too. Also read from its `DISPATCHBOX_*` variable.
    Run,
    /// An admin command's option (`dead list --limit 20`): command line only, no variable, so a
    /// threshold or a selection is visible where it is used and a stray `DISPATCHBOX_YES` can
    /// never confirm a purge. `cli` says which command takes which.
    Command,
}

/// One flag.
#[derive(Clone, Copy, Debug)]
pub struct Flag {
    /// As typed: `--batch-size` (pico-args wants `&'static str` keys).
    pub key: &'static str,
    /// The short form, if any: `-h`.
    pub short: Option<&'static str>,
    /// What the value looks like in `--help` (`N`, `SECS`); None when it takes none.
    pub value: Option<&'static str>,
    /// Used when neither the flag nor its variable is given, and shown in `--help`.
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
    /// More, continuing the help line after a `;` (the two are then wrapped together).
    pub note: Option<&'static str>,
    pub kind: Kind,
    pub scope: Scope,
}

impl Flag {
    /// The name without the dashes: `batch-size`.
    pub const fn name(&self) -> &'static str {
        self.key.split_at(2).1
    }

    /// Whether it is given as `--flag VALUE` once (not a switch, not repeatable).
    pub const fn takes_one_value(&self) -> bool {
        matches!(
            self.kind,
            Kind::Whole { .. } | Kind::Secs { .. } | Kind::Choice(_) | Kind::Text
        )
    }

    /// Whether it belongs to an admin command (no variable, not accepted when running).
    pub const fn is_command_option(&self) -> bool {
        matches!(self.scope, Scope::Command)
    }

    /// Whether it configures a run (the supervisor and its workers): not `--help` or
    /// `--version`, not an admin command's option.
    pub const fn is_run_flag(&self) -> bool {
        !matches!(self.kind, Kind::Info) && !self.is_command_option()
    }

    /// The words it takes, for a choice.
    pub const fn choices(&self) -> Option<&'static [&'static str]> {
        match self.kind {
            Kind::Choice(c) => Some(c.words),
            _ => None,
        }
    }

    /// `text` as this duration flag's seconds, range-checked; `who` (the flag or its variable)
    /// is named in errors.
    pub fn duration(&self, who: &str, text: &str) -> Result<f64> {
        match self.kind {
            Kind::Secs { min, max, bare } => duration::parse(who, text, min, max, bare),
            _ => Err(Error::Other(format!("{} is not a duration", self.key))),
        }
    }

    /// `text` as this whole-number flag's value, range-checked; `who` is named in errors.
    pub fn whole(&self, who: &str, text: &str) -> Result<i64> {
        match self.kind {
            Kind::Whole { min, max } => check::whole(who, text, min, max),
            _ => Err(Error::Other(format!("{} is not a whole number", self.key))),
        }
    }

    /// `text` as one of this choice flag's words (as listed); `who` is named in errors.
    pub fn choice(&self, who: &str, text: &str) -> Result<&'static str> {
        match self.kind {
            Kind::Choice(c) => check::choice(who, text, &c),
            _ => Err(Error::Other(format!("{} is not a choice", self.key))),
        }
    }

    /// `DISPATCHBOX_BATCH_SIZE` for `--batch-size`; None for `--help` and `--version`.
    pub fn env_var(&self) -> Option<&'static str> {
        static NAMES: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
        NAMES
            .get_or_init(|| {
                FLAGS
                    .iter()
                    .filter(|f| f.is_run_flag())
                    .map(|f| (f.key, env_name(f.name())))
                    .collect()
            })
            .iter()
            .find(|(k, _)| *k == self.key)
            .map(|(_, v)| v.as_str())
    }
}

/// `DISPATCHBOX_` + `name` upper-cased with `-` as `_`.
pub fn env_name(name: &str) -> String {
    format!(
        "DISPATCHBOX_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

pub(super) const DAY: f64 = 86_400.0;

pub(super) const fn whole(min: i64, max: i64) -> Kind {
    Kind::Whole { min, max }
}

/// A run flag's duration: a bare number is seconds.
pub(super) const fn secs(min: f64, max: f64) -> Kind {
    Kind::Secs {
        min,
        max,
        bare: Bare::Secs,
    }
}

/// A choice among `words`, in any case or exactly.
pub(super) const fn choice(words: &'static [&'static str], any_case: bool) -> Kind {
    Kind::Choice(Choices {
        words,
        any_case,
        aliases: &[],
    })
}

mod check;
mod commands;
mod duration;
mod run;

pub use commands::*;
pub use run::*;

/// Every flag, in the order `--help` lists them.
pub const FLAGS: &[Flag] = &[
    DSN,
    DSN_FILE,
    PROCESSES,
    THREADS,
    BATCH_SIZE,
    POLL_INTERVAL,
    MAX_ATTEMPTS,
    RETRY_BACKOFF,
    RETRY_BACKOFF_MAX,
    LEASE,
    TABLE,
    ROUTE,
    EXEC_TIMEOUT,
    PIPE_TIMEOUT,
    PIPE_WINDOW,
    PIPE_PROCESSES,
    WEBHOOK_CONFIG,
    WEBHOOK_TIMEOUT,
    DRAIN,
    NOTIFY,
    MAX_RUNTIME,
    SHUTDOWN_TIMEOUT,
    CONNECT_TIMEOUT,
    LOG_LEVEL,
    LOG_FORMAT,
    METRICS_ADDR,
    FAIL_ON_DEAD,
    ORDERED,
    ORDERED_DEAD,
    ON_DONE,
    HELP,
    VERSION,
    JSON,
    EXACT,
    MAX_LAG,
    MAX_DEAD,
    MAX_DUE,
    TYPE,
    AGGREGATE,
    SINCE,
    LIMIT,
    ALL,
    DRY_RUN,
    YES,
    OLDER_THAN,
    ARCHIVE,
    CHECK,
    PRINT_SQL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_names_and_variables_are_derived() {
        assert_eq!(BATCH_SIZE.name(), "batch-size");
        assert_eq!(BATCH_SIZE.env_var(), Some("DISPATCHBOX_BATCH_SIZE"));
        assert_eq!(DSN.env_var(), Some("DISPATCHBOX_DSN"));
        assert_eq!(ROUTE.env_var(), Some("DISPATCHBOX_ROUTE"));
        assert_eq!(HELP.env_var(), None);
        for f in FLAGS {
            assert!(
                f.key.starts_with("--") && !f.name().contains(['_', ' ']),
                "{f:?}"
            );
            assert_eq!(
                f.value.is_some(),
                f.takes_one_value() || f.kind == Kind::Routes
            );
            assert_eq!(
                FLAGS.iter().filter(|g| g.key == f.key).count(),
                1,
                "{} twice",
                f.key
            );
        }
        assert_eq!(JSON.env_var(), None);
        assert_eq!(LIMIT.env_var(), None);
        assert!(LIMIT.is_command_option() && !LIMIT.is_run_flag());
        assert!(!HELP.is_run_flag() && HELP.env_var().is_none());
        assert_eq!(YES.env_var(), None);
        assert_eq!(FAIL_ON_DEAD.env_var(), Some("DISPATCHBOX_FAIL_ON_DEAD"));
    }

    #[test]
    fn durations_say_in_help_whether_a_bare_number_is_seconds() {
        for f in FLAGS {
            let bare = match f.kind {
                Kind::Secs { bare, .. } => bare,
                _ => {
                    assert!(f.duration(f.key, "1s").is_err());
                    continue;
                }
            };
            let want = match bare {
                Bare::Secs => "SECS",
                Bare::Refused => "DURATION",
            };
            assert_eq!(f.value, Some(want), "{}", f.key);
            assert_eq!(f.duration(f.key, "1.5s").unwrap(), 1.5, "{}", f.key);
            assert_eq!(f.duration(f.key, "1").is_ok(), bare == Bare::Secs);
        }
        let arg = |f: &Flag, text| f.duration(f.key, text);
        assert_eq!(arg(&OLDER_THAN, "2d").unwrap(), 172_800.0);
        assert_eq!(
            arg(&OLDER_THAN, "7").unwrap_err().to_string(),
            "--older-than 7: give a unit, e.g. 7d or 7h"
        );
        assert_eq!(arg(&SINCE, "30m").unwrap(), 1800.0);
        assert!(arg(&SINCE, "30").is_err());
        assert_eq!(arg(&MAX_LAG, "60").unwrap(), 60.0);
        assert_eq!(arg(&MAX_LAG, "5m").unwrap(), 300.0);
        assert_eq!(POLL_INTERVAL.duration("x", "500ms").unwrap(), 0.5);
        assert_eq!(LEASE.duration("x", "1m").unwrap(), 60.0);
    }

    #[test]
    fn defaults_are_in_range() {
        for f in FLAGS {
            let Some(d) = f.default else { continue };
            match f.kind {
                Kind::Whole { .. } => {
                    f.whole(f.key, d).unwrap();
                }
                Kind::Secs { .. } => {
                    f.duration(f.key, d).unwrap();
                }
                Kind::Choice(c) => {
                    assert_eq!(f.choice(f.key, d).unwrap(), d, "{}", f.key);
                    assert!(c.aliases.iter().all(|(_, w)| c.words.contains(w)));
                }
                _ => {}
            }
        }
    }
}
