//! Raw flags + `DISPATCHBOX_*` environment + libpq environment → one validated `Config`.
//!
//! Flags win over the environment. Every value is checked here, once, with an error that
//! names the flag (and never echoes a DSN). The supervisor hands the resolved configuration
//! to its worker children on a pipe (`protocol::Setup`), so secrets never appear in a
//! child's argv and both sides go through the same validation.

use crate::backoff::Backoff;
use crate::cli::defs;
use crate::cli::RawArgs;
use crate::dsn::Dsn;
use crate::error::{Error, Result};
use crate::log::{Format, Level};
use std::time::Duration;

mod source;
mod table;

use source::{Env, Source};
pub use table::{quote_ident, Table};

/// Text that must not be printed (a secret from the environment): `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(text: String) -> SecretText {
        SecretText(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(…)")
    }
}

/// The resolved run configuration, grouped by who reads it: the top-level fields are the
/// database's and the worker's (its DB thread and pool), [`Sinks`] the built-in targets',
/// [`Supervision`] the supervisor's alone, [`Logging`] every process's logger.
#[derive(Clone, Debug)]
pub struct Config {
    pub dsn: Dsn,
    pub table: Table,
    pub connect_timeout: Duration,
    pub threads: usize,
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub lease: Duration,
    pub drain: bool,
    /// `--notify`: whether the worker LISTENs (auto: when the table has the trigger).
    pub notify: Notify,
    /// `--ordered`, `--ordered-dead`.
    pub order: Order,
    /// `--on-done`: a delivered event's row is kept as `done` or deleted.
    pub on_done: OnDone,
    pub shutdown_timeout: Duration,
    pub sinks: Sinks,
    pub supervision: Supervision,
    pub log: Logging,
    /// `(name, text)`: what each run flag resolved to (the flag, else its variable, else its
    /// default), as the flag parser takes it back; a switch that is on as `true`. The
    /// supervisor hands these to its workers (`protocol`), so a new flag reaches them with
    /// nothing to add. Without the DSN (sent resolved) and the routes (sent as their list).
    pub flag_texts: Vec<(&'static str, String)>,
}

/// The routes and what the built-in targets need (`sink::build_router`).
#[derive(Clone, Debug)]
pub struct Sinks {
    /// `(pattern, target)` as given; `*=stdout` when none were.
    pub routes: Vec<(String, String)>,
    /// Where the routes came from, for error messages: `--route` or `DISPATCHBOX_ROUTE`.
    pub route_source: &'static str,
    pub exec_timeout: Duration,
    pub pipe_timeout: Duration,
    /// `--pipe-window`: events outstanding per `pipe:` process.
    pub pipe_window: usize,
    /// `--pipe-processes`: `pipe:` processes per route per worker.
    pub pipe_processes: usize,
    /// `--webhook-config`: read (and checked) where the routes are built.
    pub webhook_config: Option<std::path::PathBuf>,
    pub webhook_timeout: Duration,
    /// `DISPATCHBOX_WEBHOOK_SECRET`, checked where the routes are built. Environment only;
    /// a worker gets it on its configuration pipe (the variable is not passed on).
    pub webhook_secret: Option<SecretText>,
    /// The lock the supervisor creates when several workers share stdout (a path under
    /// `/proc/<supervisor pid>/fd/`): every `stdout` line is written under it. Not a flag.
    pub stdout_lock: Option<std::path::PathBuf>,
}

/// What only the supervisor reads (workers receive it with every other flag and ignore it).
#[derive(Clone, Debug)]
pub struct Supervision {
    /// `--processes`: worker processes.
    pub processes: u32,
    pub max_runtime: Option<Duration>,
    /// `--fail-on-dead`: the supervisor exits 6 when a worker saw an event go dead.
    pub fail_on_dead: bool,
    /// `--metrics-addr`: where the supervisor serves its metrics (None: it does not).
    pub metrics_addr: Option<String>,
    /// `--retain-done`: the supervisor deletes done events delivered longer ago (None: never).
    pub retain_done: Option<Duration>,
    /// `--retain-archive`: retention moves the rows into this table instead.
    pub retain_archive: Option<Table>,
}

/// How a process logs.
#[derive(Clone, Debug)]
pub struct Logging {
    pub level: Level,
    pub format: Format,
    /// Log lines carry syslog priority prefixes: the supervisor's stderr, where a worker's
    /// lines end up, is the systemd journal. Not a flag (detected by the supervisor).
    pub journal: bool,
    /// A worker's descriptor holding a copy of the supervisor's stderr, where it logs once
    /// the supervisor (which forwards its stderr) is gone. Not a flag.
    pub fd: Option<i32>,
}

/// `--notify`: wake-ups by notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Workers LISTEN when the table has the trigger; `migrate` leaves the trigger as it is.
    Auto,
    /// Workers LISTEN; `migrate` installs the trigger.
    On,
    /// Workers only poll; `migrate` drops the trigger.
    Off,
}

impl Notify {
    pub fn parse(s: &str) -> Option<Notify> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(Notify::Auto),
            "on" => Some(Notify::On),
            "off" => Some(Notify::Off),
            _ => None,
        }
    }
}

/// `--ordered`: whether the events of one `(aggregate_type, aggregate_id)` are handed out one
/// at a time in id order, and (`--ordered-dead`) whether a dead one holds back the later ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Unordered,
    ByAggregate { dead_blocks: bool },
}

/// `--on-done`: what the completion does with a delivered event's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDone {
    /// Updated to `done` (`delivered_at` set), as the original did.
    Keep,
    /// Deleted, in the same fenced statement: no history is kept.
    Delete,
}

impl OnDone {
    pub fn parse(s: &str) -> Option<OnDone> {
        match s {
            "keep" => Some(OnDone::Keep),
            "delete" => Some(OnDone::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnDone::Keep => "keep",
            OnDone::Delete => "delete",
        }
    }
}

/// What `migrate` and `stats` need: no worker settings.
pub struct AdminConfig {
    pub dsn: Dsn,
    pub table: Table,
    pub log_level: Level,
    pub log_format: Format,
    pub connect_timeout: Duration,
    /// `--notify`: `migrate` installs the trigger (on), drops it (off) or leaves it (auto).
    pub notify: Notify,
    /// `--ordered` (or its variable): `migrate` also builds the index ordered claims use.
    pub ordered: bool,
    /// `--ordered-dead` (or its variable) is `block`: `status` counts the aggregates a dead
    /// event holds back (the workers' setting cannot be seen from here; give it the same).
    pub ordered_dead_blocks: bool,
}

impl Config {
    pub fn from_raw(raw: &RawArgs, env: Env<'_>) -> Result<Config> {
        let src = Source { raw, env };
        let log_level = src.log_level()?;
        let log_format = src.log_format()?;
        let processes: u32 = src.whole(&defs::PROCESSES)?;
        let threads: usize = src.whole(&defs::THREADS)?;
        let batch_size: u32 = src.whole(&defs::BATCH_SIZE)?;
        let poll_interval = src.secs(&defs::POLL_INTERVAL)?.unwrap_or_default();
        let max_attempts: i32 = src.whole(&defs::MAX_ATTEMPTS)?;
        let base = src.secs(&defs::RETRY_BACKOFF)?.unwrap_or_default();
        let max = src.secs(&defs::RETRY_BACKOFF_MAX)?.unwrap_or_default();
        if max < base {
            return Err(Error::Usage(format!(
                "{} ({}) is below {} ({})",
                defs::RETRY_BACKOFF_MAX.key,
                max.as_secs_f64(),
                defs::RETRY_BACKOFF.key,
                base.as_secs_f64()
            )));
        }
        let lease = src.secs(&defs::LEASE)?.unwrap_or_default();
        let exec_timeout = src.secs(&defs::EXEC_TIMEOUT)?.unwrap_or_default();
        let pipe_timeout = src.secs(&defs::PIPE_TIMEOUT)?.unwrap_or_default();
        let pipe_window: usize = src.whole(&defs::PIPE_WINDOW)?;
        let pipe_processes: usize = src.whole(&defs::PIPE_PROCESSES)?;
        let webhook_timeout = src.secs(&defs::WEBHOOK_TIMEOUT)?.unwrap_or_default();
        let webhook_config = src
            .get(&defs::WEBHOOK_CONFIG)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from);
        let max_runtime = src.secs(&defs::MAX_RUNTIME)?;
        let shutdown_timeout = src.secs(&defs::SHUTDOWN_TIMEOUT)?.unwrap_or_default();
        let connect_timeout = src.secs(&defs::CONNECT_TIMEOUT)?.unwrap_or_default();

        let (routes, route_source) = src.routes()?;
        let drain = src.drain()?;
        let fail_on_dead = src.switch(&defs::FAIL_ON_DEAD, raw.has(defs::FAIL_ON_DEAD.name()))?;
        let notify = src.notify()?;
        let order = src.order(raw.has(defs::ORDERED.name()))?;
        let on_done = src.on_done()?;
        let retain_done = src.secs(&defs::RETAIN_DONE)?;
        let retain_archive = src.retain_archive(retain_done.is_some())?;

        Ok(Config {
            dsn: src.dsn()?,
            table: src.table()?,
            connect_timeout,
            threads,
            batch_size,
            poll_interval,
            max_attempts,
            backoff: Backoff { base, max },
            lease,
            drain,
            notify,
            order,
            on_done,
            shutdown_timeout,
            sinks: Sinks {
                routes,
                route_source,
                exec_timeout,
                pipe_timeout,
                pipe_window,
                pipe_processes,
                webhook_config,
                webhook_timeout,
                webhook_secret: env(defs::WEBHOOK_SECRET_VAR).map(SecretText::new),
                stdout_lock: None,
            },
            supervision: Supervision {
                processes,
                max_runtime,
                fail_on_dead,
                metrics_addr: src.metrics_addr()?,
                retain_done,
                retain_archive,
            },
            log: Logging {
                level: log_level,
                format: log_format,
                journal: false,
                fd: None,
            },
            flag_texts: src.flag_texts()?,
        })
    }
}

impl AdminConfig {
    pub fn from_raw(raw: &RawArgs, env: Env<'_>) -> Result<AdminConfig> {
        let src = Source { raw, env };
        Ok(AdminConfig {
            log_level: src.log_level()?,
            log_format: src.log_format()?,
            connect_timeout: src.secs(&defs::CONNECT_TIMEOUT)?.unwrap_or_default(),
            notify: src.notify()?,
            dsn: src.dsn()?,
            table: src.table()?,
            ordered: src.switch(&defs::ORDERED, raw.has(defs::ORDERED.name()))?,
            ordered_dead_blocks: src.ordered_dead_blocks()?,
        })
    }
}

/// `DISPATCHBOX_*` variables in `names` that configure nothing (a typo like
/// `DISPATCHBOX_BATCHSIZE` would otherwise be ignored silently). The variables Dispatchbox
/// sets for `exec` commands and the test suite's are not flagged.
pub fn unknown_env_vars<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names
        .filter(|n| n.starts_with("DISPATCHBOX_"))
        .filter(|n| !defs::FLAGS.iter().any(|f| f.env_var() == Some(*n)))
        .filter(|n| {
            !(n.starts_with("DISPATCHBOX_EVENT_")
                || n.starts_with("DISPATCHBOX_AGGREGATE_")
                || *n == "DISPATCHBOX_ATTEMPT"
                || *n == defs::WEBHOOK_SECRET_VAR
                || n.starts_with("DISPATCHBOX_TEST_"))
        })
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&'static str, &str)]) -> RawArgs {
        RawArgs {
            values: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_the_original_tool() {
        let c = Config::from_raw(&raw(&[("dsn", "host=h user=u")]), &no_env).unwrap();
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.supervision.processes, 1);
        assert_eq!(c.threads, 10);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.log.level, Level::Info);
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.table.quoted(), "\"outbox_event\"");
        assert!(c.sinks.routes.is_empty());
    }

    #[test]
    fn flags_win_over_environment() {
        let env = |k: &str| match k {
            "DISPATCHBOX_BATCH_SIZE" => Some("50".to_string()),
            "DISPATCHBOX_THREADS" => Some("3".to_string()),
            "DISPATCHBOX_DSN" => Some("host=envhost user=u".to_string()),
            "DISPATCHBOX_ROUTE" => Some("a=stdout; b.*=exec:true".to_string()),
            "DISPATCHBOX_DRAIN" => Some("yes".to_string()),
            _ => None,
        };
        let c = Config::from_raw(&raw(&[("batch-size", "20")]), &env).unwrap();
        assert_eq!(c.batch_size, 20);
        assert_eq!(c.threads, 3);
        assert_eq!(c.dsn.get("host"), Some("envhost"));
        assert_eq!(c.sinks.routes.len(), 2);
        assert!(c.drain);
    }

    #[test]
    fn durations_take_a_unit_or_bare_seconds_from_flags_and_variables() {
        let env = |k: &str| match k {
            "DISPATCHBOX_LEASE" => Some("1m".to_string()),
            "DISPATCHBOX_RETRY_BACKOFF" => Some("2.5".to_string()),
            _ => None,
        };
        let pairs = [("dsn", "host=h"), ("poll-interval", "500ms")];
        let c = Config::from_raw(&raw(&pairs), &env).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.lease, Duration::from_secs(60));
        assert_eq!(c.backoff.base, Duration::from_millis(2500));
        let pairs = [("dsn", "host=h"), ("poll-interval", "0.5"), ("lease", "30")];
        let c = Config::from_raw(&raw(&pairs), &no_env).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.lease, Duration::from_secs(30));
        let env = |k: &str| (k == "DISPATCHBOX_LEASE").then(|| "2x".to_string());
        let e = Config::from_raw(&raw(&[("dsn", "host=h")]), &env).unwrap_err();
        assert!(
            e.to_string().starts_with("DISPATCHBOX_LEASE: `2x` is not"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_are_rejected_by_name() {
        for (flag, v, expect) in [
            ("batch-size", "0", "--batch-size: 0 is out of range"),
            ("poll-interval", "-1", "--poll-interval: -1 is out of range"),
            ("max-attempts", "0", "--max-attempts: 0 is out of range"),
            ("threads", "ten", "--threads: `ten` is not a whole number"),
            (
                "poll-interval",
                "NaN",
                "--poll-interval: `NaN` is not seconds, or a duration",
            ),
            ("log-level", "loud", "--log-level: `loud` is not one of"),
            ("table", "a.b.c", "--table `a.b.c`"),
        ] {
            let e = Config::from_raw(&raw(&[("dsn", "host=h"), (flag, v)]), &no_env)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(expect), "{flag}={v}: {e}");
        }
    }

    #[test]
    fn whole_numbers_too_large_for_the_type_are_out_of_range() {
        for (flag, v, expect) in [
            (
                "processes",
                "4294967296",
                "--processes: 4294967296 is out of range (1 to 1024)",
            ),
            (
                "batch-size",
                "-1",
                "--batch-size: -1 is out of range (1 to 100000)",
            ),
            (
                "max-attempts",
                "99999999999999999999",
                "--max-attempts: 99999999999999999999 is out of range (1 to 1000000)",
            ),
            ("threads", "1.5", "--threads: `1.5` is not a whole number"),
        ] {
            let e = Config::from_raw(&raw(&[("dsn", "host=h"), (flag, v)]), &no_env)
                .unwrap_err()
                .to_string();
            assert_eq!(e, expect, "{flag}={v}");
        }
    }

    #[test]
    fn route_errors_name_their_source_and_duplicates_are_refused() {
        let env = |k: &str| match k {
            "DISPATCHBOX_ROUTE" => Some("a=stdout; nothing".to_string()),
            _ => None,
        };
        let e = Config::from_raw(&raw(&[("dsn", "host=h")]), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("DISPATCHBOX_ROUTE `nothing`: expected"),
            "{e}"
        );
        let env = |k: &str| match k {
            "DISPATCHBOX_ROUTE" => Some("a**=stdout".to_string()),
            _ => None,
        };
        let e = Config::from_raw(&raw(&[("dsn", "host=h")]), &env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("DISPATCHBOX_ROUTE: pattern"), "{e}");
        let mut r = raw(&[("dsn", "host=h")]);
        r.routes = vec!["order.*=stdout".into(), " order.* =exec:true".into()];
        let e = Config::from_raw(&r, &no_env).unwrap_err().to_string();
        assert!(
            e.contains("--route: pattern `order.*` is given twice"),
            "{e}"
        );
        let env = |k: &str| match k {
            "DISPATCHBOX_ROUTE" => Some("x=stdout;x=exec:true".to_string()),
            _ => None,
        };
        let e = Config::from_raw(&raw(&[("dsn", "host=h")]), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DISPATCHBOX_ROUTE: pattern `x` is given twice"),
            "{e}"
        );
    }

    #[test]
    fn the_dsn_file_is_read_and_a_flag_wins_over_a_variable() {
        let dir = std::env::temp_dir().join(format!("dbx-dsn-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dsn");
        std::fs::write(&file, "host=fromfile user=u password=hunter2\n\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let c = Config::from_raw(&raw(&[("dsn-file", &path)]), &no_env).unwrap();
        assert_eq!(c.dsn.get("host"), Some("fromfile"));
        assert_eq!(c.dsn.get("password"), Some("hunter2"));
        // The flag beats the other one's variable, both ways.
        let env_file = |k: &str| (k == "DISPATCHBOX_DSN_FILE").then(|| path.clone());
        let c = Config::from_raw(&raw(&[("dsn", "host=flag")]), &env_file).unwrap();
        assert_eq!(c.dsn.get("host"), Some("flag"));
        let env_dsn = |k: &str| (k == "DISPATCHBOX_DSN").then(|| "host=env".to_string());
        let c = Config::from_raw(&raw(&[("dsn-file", &path)]), &env_dsn).unwrap();
        assert_eq!(c.dsn.get("host"), Some("fromfile"));
        // Both flags, or both variables: refused.
        let e = Config::from_raw(&raw(&[("dsn", "host=x"), ("dsn-file", &path)]), &no_env)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--dsn and --dsn-file are both given; give one");
        let both = |k: &str| match k {
            "DISPATCHBOX_DSN" => Some("host=env".to_string()),
            "DISPATCHBOX_DSN_FILE" => Some(path.clone()),
            _ => None,
        };
        let e = Config::from_raw(&raw(&[]), &both).unwrap_err().to_string();
        assert!(
            e.starts_with("DISPATCHBOX_DSN and DISPATCHBOX_DSN_FILE"),
            "{e}"
        );
        // Unreadable or empty: named by path, contents never shown.
        let missing = dir.join("nope").to_string_lossy().into_owned();
        let e = Config::from_raw(&raw(&[("dsn-file", &missing)]), &no_env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("--dsn-file {missing}: cannot read it: ")),
            "{e}"
        );
        std::fs::write(&file, " \n").unwrap();
        let e = Config::from_raw(&raw(&[("dsn-file", &path)]), &no_env)
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("--dsn-file {path}: empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn typos_in_variable_names_are_found() {
        let names = [
            "DISPATCHBOX_BATCHSIZE",
            "DISPATCHBOX_BATCH_SIZE",
            "DISPATCHBOX_DSN",
            "DISPATCHBOX_ROUTE",
            "DISPATCHBOX_EVENT_ID",
            "DISPATCHBOX_TEST_DSN",
            "PATH",
        ];
        assert_eq!(
            unknown_env_vars(names.into_iter()),
            vec!["DISPATCHBOX_BATCHSIZE"]
        );
    }
}
