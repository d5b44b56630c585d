//! The flags of a run (the supervisor and its workers), in `--help` order; the shared ones
//! (`--dsn`, `--table`, `--log-level`, ...) serve the admin commands too.

use super::{choice, duration_with_unit, secs, whole, Choices, Flag, Kind, Scope, DAY};

pub const DSN: Flag = Flag {
    key: "--dsn",
    short: None,
    value: Some("DSN"),
    default: None,
    help: "libpq key=value string or postgres:// URI",
    note: Some(
        "also DISPATCHBOX_DSN, or the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, \
         PGDATABASE (and ~/.pgpass) when neither is given. sslmode: disable, prefer, require, \
         verify-ca, verify-full (with sslrootcert=FILE|system)",
    ),
    kind: Kind::Text,
    scope: Scope::Run,
};

pub const DSN_FILE: Flag = Flag {
    key: "--dsn-file",
    short: None,
    value: Some("FILE"),
    default: None,
    help: "read the DSN from FILE instead of --dsn",
    note: Some(
        "e.g. a systemd credential: `--dsn-file %d/dsn`; read by the supervisor at start-up, \
         trailing whitespace ignored",
    ),
    kind: Kind::Text,
    scope: Scope::Run,
};

pub const PROCESSES: Flag = Flag {
    key: "--processes",
    short: None,
    value: Some("N"),
    default: Some("1"),
    help: "worker processes",
    note: None,
    kind: whole(1, 1024),
    scope: Scope::Run,
};

pub const THREADS: Flag = Flag {
    key: "--threads",
    short: None,
    value: Some("N"),
    default: Some("10"),
    help: "handler threads per process (the original's pool size)",
    note: None,
    kind: whole(1, 4096),
    scope: Scope::Run,
};

pub const BATCH_SIZE: Flag = Flag {
    key: "--batch-size",
    short: None,
    value: Some("N"),
    default: Some("10"),
    help: "events claimed per round trip",
    note: None,
    kind: whole(1, 100_000),
    scope: Scope::Run,
};

pub const POLL_INTERVAL: Flag = Flag {
    key: "--poll-interval",
    short: None,
    value: Some("SECS"),
    default: Some("1.0"),
    help: "sleep when nothing is due",
    note: None,
    kind: secs(0.001, DAY),
    scope: Scope::Run,
};

pub const MAX_ATTEMPTS: Flag = Flag {
    key: "--max-attempts",
    short: None,
    value: Some("N"),
    default: Some("5"),
    help: "attempts before an event is dead",
    note: None,
    kind: whole(1, 1_000_000),
    scope: Scope::Run,
};

pub const RETRY_BACKOFF: Flag = Flag {
    key: "--retry-backoff",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "first retry delay; doubles per attempt, ±25 % jitter",
    note: None,
    kind: secs(0.0, 30.0 * DAY),
    scope: Scope::Run,
};

pub const RETRY_BACKOFF_MAX: Flag = Flag {
    key: "--retry-backoff-max",
    short: None,
    value: Some("SECS"),
    default: Some("3600"),
    help: "cap on the retry delay",
    note: None,
    kind: secs(0.0, 365.0 * DAY),
    scope: Scope::Run,
};

pub const LEASE: Flag = Flag {
    key: "--lease",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "how long a claim is held before another worker may take the event over",
    note: Some("extended while its handler runs"),
    kind: secs(1.0, DAY),
    scope: Scope::Run,
};

pub const TABLE: Flag = Flag {
    key: "--table",
    short: None,
    value: Some("NAME"),
    default: Some("outbox_event"),
    help: "outbox table, optionally schema.table",
    note: Some(
        "taken literally (case-sensitive) and always quoted; `'`, `$` and control characters \
         are refused (also in `prune --archive`)",
    ),
    kind: Kind::Text,
    scope: Scope::Run,
};

pub const ROUTE: Flag = Flag {
    key: "--route",
    short: None,
    value: Some("PATTERN=TARGET"),
    // Applied where the router is built, and only when no route is compiled in either:
    // `Config::routes` stays empty.
    default: Some("*=stdout"),
    help: "send event types matching PATTERN to TARGET",
    note: Some(
        "PATTERN is exact, a prefix (`order.*`) or `*`; TARGET is `stdout`, \
         `exec:COMMAND ARGS...`, `pipe:COMMAND ARGS...` or an http:// or https:// URL (a \
         webhook). Repeatable (one target per pattern); DISPATCHBOX_ROUTE takes several \
         separated by `;` or newlines",
    ),
    kind: Kind::Routes,
    scope: Scope::Run,
};

pub const EXEC_TIMEOUT: Flag = Flag {
    key: "--exec-timeout",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "kill an exec target that runs longer (and retry its event)",
    note: None,
    kind: secs(0.001, DAY),
    scope: Scope::Run,
};

pub const PIPE_TIMEOUT: Flag = Flag {
    key: "--pipe-timeout",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "restart a pipe target process that has not answered an event for this long",
    note: Some(
        "counted from when the event was written (a process that takes no input for this long \
         is restarted too); what the process had read and not answered is retried, what it \
         never read is given back without using an attempt",
    ),
    kind: secs(0.001, DAY),
    scope: Scope::Run,
};

pub const PIPE_WINDOW: Flag = Flag {
    key: "--pipe-window",
    short: None,
    value: Some("N"),
    default: Some("256"),
    help: "events written to a pipe target process and not yet answered, at most",
    note: Some(
        "answers may come in any order; 1 sends one event at a time and waits for its answer",
    ),
    kind: whole(1, 100_000),
    scope: Scope::Run,
};

pub const PIPE_PROCESSES: Flag = Flag {
    key: "--pipe-processes",
    short: None,
    value: Some("N"),
    default: Some("1"),
    help: "processes per pipe target in each worker process",
    note: Some("events go to them in turn; each has its own --pipe-window"),
    kind: whole(1, 1024),
    scope: Scope::Run,
};

pub const WEBHOOK_CONFIG: Flag = Flag {
    key: "--webhook-config",
    short: None,
    value: Some("FILE"),
    default: None,
    help:
        "per-route webhook secrets, headers, timeouts and CA files (JSON, keyed by the route's URL)",
    note: Some(
        "readable by its owner only (or 0640 owned by root). DISPATCHBOX_WEBHOOK_SECRET (a \
         `whsec_…` secret, environment only) signs the webhook routes without their own",
    ),
    kind: Kind::Text,
    scope: Scope::Run,
};

/// The signing secret of webhook routes without their own: environment only, never a flag
/// (argv is visible to every local user).
pub const WEBHOOK_SECRET_VAR: &str = "DISPATCHBOX_WEBHOOK_SECRET";

pub const WEBHOOK_TIMEOUT: Flag = Flag {
    key: "--webhook-timeout",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "retry a webhook request without a complete answer after this long",
    note: Some(
        "connecting (TLS handshake included) gets at most 10 s of it; per route in \
         --webhook-config",
    ),
    kind: secs(0.001, DAY),
    scope: Scope::Run,
};

pub const DRAIN: Flag = Flag {
    key: "--drain",
    short: None,
    value: None,
    default: None,
    help: "exit 0 once no event is due and none is leased (for cron)",
    note: None,
    kind: Kind::Switch,
    scope: Scope::Run,
};

pub const NOTIFY: Flag = Flag {
    key: "--notify",
    short: None,
    value: Some("MODE"),
    default: Some("auto"),
    help: "wake-ups by notification (LISTEN) besides polling",
    note: Some(
        "workers: auto listens when the table has the insert trigger, on always, off never \
         (off behind a transaction-pooling PgBouncer: LISTEN needs a session). `migrate`: on \
         installs the trigger, off drops it, auto leaves it as it is. The trigger serializes \
         the commits of inserting transactions (docs/guide.md, \"Wake-ups by notification\")",
    ),
    kind: choice(&["auto", "on", "off"], true),
    scope: Scope::Run,
};

pub const MAX_RUNTIME: Flag = Flag {
    key: "--max-runtime",
    short: None,
    value: Some("SECS"),
    default: None,
    help: "stop gracefully after this long (exit 5 if --drain had not finished)",
    note: None,
    kind: secs(0.001, 365.0 * DAY),
    scope: Scope::Run,
};

pub const SHUTDOWN_TIMEOUT: Flag = Flag {
    key: "--shutdown-timeout",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "on SIGTERM, wait this long for running handlers",
    note: None,
    kind: secs(0.0, DAY),
    scope: Scope::Run,
};

pub const CONNECT_TIMEOUT: Flag = Flag {
    key: "--connect-timeout",
    short: None,
    value: Some("SECS"),
    default: Some("30"),
    help: "keep retrying an unreachable database at start-up this long",
    note: Some(
        "with --drain also during an outage; it also bounds each attempt, so a server that \
         accepts and never answers ends in exit 3",
    ),
    kind: secs(0.0, DAY),
    scope: Scope::Run,
};

pub const LOG_LEVEL: Flag = Flag {
    key: "--log-level",
    short: None,
    value: Some("LEVEL"),
    default: Some("INFO"),
    help: "the least severe level logged (any case; WARN is WARNING)",
    note: None,
    kind: Kind::Choice(Choices {
        words: &["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        any_case: true,
        aliases: &[("WARN", "WARNING")],
    }),
    scope: Scope::Run,
};

pub const LOG_FORMAT: Flag = Flag {
    key: "--log-format",
    short: None,
    value: Some("FORMAT"),
    default: Some("text"),
    help: "the format of the log lines on stderr",
    note: Some(
        "json: one object per line with the fields ts, level, process, pid, msg; a line about \
         an event adds event_id, event_type, aggregate_type, aggregate_id, route, attempt and \
         outcome (those it knows)",
    ),
    kind: choice(&["text", "json"], true),
    scope: Scope::Run,
};

pub const METRICS_ADDR: Flag = Flag {
    key: "--metrics-addr",
    short: None,
    value: Some("HOST:PORT"),
    default: None,
    help: "serve /metrics (Prometheus), /healthz and /readyz over HTTP here",
    note: Some(
        "off unless given; e.g. 127.0.0.1:9187 ([::1]:9187 for IPv6); no authentication: keep \
         it on a private network; an address that cannot be bound is exit 2",
    ),
    kind: Kind::Text,
    scope: Scope::Run,
};

pub const FAIL_ON_DEAD: Flag = Flag {
    key: "--fail-on-dead",
    short: None,
    value: None,
    default: None,
    help: "exit 6 instead of 0 when an event went dead during the run (for cron)",
    note: None,
    kind: Kind::Switch,
    scope: Scope::Run,
};

pub const ORDERED: Flag = Flag {
    key: "--ordered",
    short: None,
    value: None,
    default: None,
    help: "deliver the events of one aggregate one at a time, in id order",
    note: Some(
        "no event is handed out while an earlier one (lower id) of its (aggregate_type, \
         aggregate_id) is pending, retrying or in flight; events without an aggregate are not \
         ordered; `migrate --ordered` builds its index; see docs/guide.md, \"Ordered delivery\"",
    ),
    kind: Kind::Switch,
    scope: Scope::Run,
};

pub const ORDERED_DEAD: Flag = Flag {
    key: "--ordered-dead",
    short: None,
    value: Some("MODE"),
    default: Some("block"),
    help: "with --ordered: whether a dead event holds back its aggregate",
    note: Some(
        "block: the later events of its aggregate wait until `dead retry` or `dead purge`; \
         skip: they go on",
    ),
    kind: choice(&["block", "skip"], false),
    scope: Scope::Run,
};

pub const ON_DONE: Flag = Flag {
    key: "--on-done",
    short: None,
    value: Some("MODE"),
    default: Some("keep"),
    help: "what a delivered event's row becomes: keep (status done) or delete",
    note: Some(
        "delete: the row is deleted by the fenced completion itself, no history is kept \
         (`status` shows ~0 done, `prune` has nothing to do); retries and dead rows are kept \
         either way",
    ),
    kind: choice(&["keep", "delete"], false),
    scope: Scope::Run,
};

pub const RETAIN_DONE: Flag = Flag {
    key: "--retain-done",
    short: None,
    value: Some("DURATION"),
    default: None,
    help: "delete done events delivered longer ago than this (e.g. 7d), in the background",
    note: Some(
        "off unless given; the supervisor does it on a connection of its own, in short \
         statements (FOR UPDATE SKIP LOCKED), a pass every 10 s; like `prune --older-than` run \
         by the daemon (docs/operations.md, \"Retention\")",
    ),
    kind: duration_with_unit(1.0, 3650.0 * DAY),
    scope: Scope::Run,
};

pub const RETAIN_ARCHIVE: Flag = Flag {
    key: "--retain-archive",
    short: None,
    value: Some("TABLE"),
    default: None,
    help: "with --retain-done: move the rows into this existing table of the same shape",
    note: Some("like `prune --archive`; the delete and the insert are one statement"),
    kind: Kind::Text,
    scope: Scope::Run,
};

pub const HELP: Flag = Flag {
    key: "--help",
    short: Some("-h"),
    value: None,
    default: None,
    help: "print this help (also `dispatchbox help`)",
    note: None,
    kind: Kind::Info,
    scope: Scope::Run,
};

pub const VERSION: Flag = Flag {
    key: "--version",
    short: Some("-V"),
    value: None,
    default: None,
    help: "print the version, git revision, target and OpenSSL version",
    note: None,
    kind: Kind::Info,
    scope: Scope::Run,
};
