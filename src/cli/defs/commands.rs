//! The admin commands' own options: command line only (no variable, so that a stray
//! `DISPATCHBOX_YES` can never confirm a purge); `cli` says which command takes which. Each is
//! typed like a run flag (a whole number, a duration, text, a switch) and its default lives
//! here, so the commands read checked values, never a string by name.

use super::{Bare, Flag, Kind, Scope, DAY};

/// The longest admin duration: a century.
const CENTURY: f64 = 100.0 * 365.0 * DAY;

/// A command option.
const fn option(
    key: &'static str,
    value: Option<&'static str>,
    kind: Kind,
    help: &'static str,
) -> Flag {
    Flag {
        key,
        short: None,
        value,
        default: None,
        help,
        note: None,
        kind,
        scope: Scope::Command,
    }
}

/// A duration option; its value shows whether a bare number is seconds (`SECS`) or needs a
/// unit (`DURATION`).
const fn arg_secs(key: &'static str, bare: Bare, help: &'static str) -> Flag {
    let value = match bare {
        Bare::Secs => "SECS",
        Bare::Refused => "DURATION",
    };
    let kind = Kind::Secs {
        min: 0.0,
        max: CENTURY,
        bare,
    };
    option(key, Some(value), kind, help)
}

/// A whole number from `min` up.
const fn arg_whole(key: &'static str, min: i64, help: &'static str) -> Flag {
    let kind = Kind::Whole { min, max: i64::MAX };
    option(key, Some("N"), kind, help)
}

/// Text, checked by the command (an event type, an aggregate, a table).
const fn arg(key: &'static str, value: &'static str, help: &'static str) -> Flag {
    option(key, Some(value), Kind::Text, help)
}

const fn arg_switch(key: &'static str, help: &'static str) -> Flag {
    option(key, None, Kind::Switch, help)
}

// The admin commands' options (command line only; `cli::COMMAND_OPTIONS` says which command
// takes which).
pub const JSON: Flag = arg_switch("--json", "status, dead list, dead show: one JSON document");
pub const EXACT: Flag = arg_switch(
    "--exact",
    "status: count done and dead rows exactly (a full scan) instead of estimating",
);
pub const MAX_LAG: Flag = arg_secs(
    "--max-lag",
    Bare::Secs,
    "status: exit 7 when the oldest due event has waited longer (60, 90s, 5m)",
);
pub const MAX_DEAD: Flag = arg_whole(
    "--max-dead",
    0,
    "status: exit 7 when more events are dead (counted exactly)",
);
pub const MAX_DUE: Flag = arg_whole(
    "--max-due",
    0,
    "status: exit 7 when more events are due now",
);
pub const TYPE: Flag = arg(
    "--type",
    "TYPE",
    "dead: only this event type (exact, or a prefix as `order.*`)",
);
pub const AGGREGATE: Flag = arg(
    "--aggregate",
    "TYPE[:ID]",
    "dead: only this aggregate type (and id)",
);
pub const SINCE: Flag = arg_secs(
    "--since",
    Bare::Refused,
    "dead: only events created within DURATION (30s, 15m, 12h, 7d)",
);
pub const LIMIT: Flag = Flag {
    default: Some("50"),
    ..arg_whole("--limit", 1, "dead list: at most N events")
};
pub const ALL: Flag = arg_switch("--all", "dead retry/purge: every dead event");
pub const DRY_RUN: Flag = arg_switch(
    "--dry-run",
    "dead retry/purge, prune: say how many, change nothing",
);
pub const YES: Flag = arg_switch("--yes", "dead purge: really delete");
pub const OLDER_THAN: Flag = arg_secs(
    "--older-than",
    Bare::Refused,
    "prune: done events delivered longer ago than this (12h, 7d)",
);
pub const ARCHIVE: Flag = arg(
    "--archive",
    "TABLE",
    "prune: move the rows into this existing table of the same shape",
);
pub const CHECK: Flag = arg_switch(
    "--check",
    "migrate: change nothing; exit 8 when the table needs `migrate`",
);
pub const PRINT_SQL: Flag = arg_switch(
    "--print-sql",
    "migrate: print the SQL migrate runs, run nothing",
);
