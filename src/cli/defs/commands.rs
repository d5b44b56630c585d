//! The admin commands' own options: command line only (no variable, so that a stray
//! `DISPATCHBOX_YES` can never confirm a purge); `cli` says which command takes which.

use super::{Bare, Flag, Kind, DAY};

/// The longest admin duration: a century.
const CENTURY: f64 = 100.0 * 365.0 * DAY;

/// A duration option; its value shows whether a bare number is seconds (`SECS`) or needs a
/// unit (`DURATION`).
const fn arg_secs(key: &'static str, bare: Bare, help: &'static str) -> Flag {
    Flag {
        key,
        short: None,
        value: Some(match bare {
            Bare::Secs => "SECS",
            Bare::Refused => "DURATION",
        }),
        default: None,
        help,
        note: None,
        kind: Kind::ArgSecs {
            min: 0.0,
            max: CENTURY,
            bare,
        },
    }
}

const fn arg(key: &'static str, value: &'static str, help: &'static str) -> Flag {
    Flag {
        key,
        short: None,
        value: Some(value),
        default: None,
        help,
        note: None,
        kind: Kind::Arg,
    }
}

const fn arg_switch(key: &'static str, help: &'static str) -> Flag {
    Flag {
        key,
        short: None,
        value: None,
        default: None,
        help,
        note: None,
        kind: Kind::ArgSwitch,
    }
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
pub const MAX_DEAD: Flag = arg(
    "--max-dead",
    "N",
    "status: exit 7 when more events are dead (counted exactly)",
);
pub const MAX_DUE: Flag = arg(
    "--max-due",
    "N",
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
pub const LIMIT: Flag = arg("--limit", "N", "dead list: at most N events [default: 50]");
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
