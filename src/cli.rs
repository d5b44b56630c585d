//! The command line as typed: `HELP`, the mode, and the raw flag values (pico-args).
//! Nothing is validated here beyond "is this a flag we know"; `config.rs` does the rest.

use crate::error::{Error, Result};
use std::ffi::OsString;

pub const HELP: &str = "\
dispatchbox — deliver transactional-outbox events from PostgreSQL, at least once

USAGE:
    dispatchbox [OPTIONS]              run the supervisor and its worker processes
    dispatchbox migrate [OPTIONS]      create or upgrade the outbox table (idempotent)
    dispatchbox stats [OPTIONS]        print the number of events per status

OPTIONS (each also read from DISPATCHBOX_<NAME>, e.g. DISPATCHBOX_BATCH_SIZE; flags win):
    --dsn DSN                 libpq key=value string or postgres:// URI. Also DISPATCHBOX_DSN, or
                              the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
                              (and ~/.pgpass) when neither is given. sslmode: disable, prefer,
                              require, verify-ca, verify-full (with sslrootcert=FILE|system)
    --processes N             worker processes [default: 1]
    --threads N               handler threads per process [default: 10]
    --batch-size N            events claimed per round trip [default: 10]
    --poll-interval SECS      sleep when nothing is due [default: 1.0]
    --max-attempts N          attempts before an event is dead [default: 5]
    --retry-backoff SECS      first retry delay; doubles per attempt, ±25 % jitter [default: 30]
    --retry-backoff-max SECS  cap on the retry delay [default: 3600]
    --lease SECS              how long a claim is held before another worker may take the
                              event over; extended while its handler runs [default: 30]
    --table NAME              outbox table, optionally schema.table [default: outbox_event]
    --route PATTERN=TARGET    send event types matching PATTERN (exact, prefix `order.*`, or
                              `*`) to TARGET: `stdout` or `exec:COMMAND ARGS...`. Repeatable
                              (one target per pattern); DISPATCHBOX_ROUTE takes several
                              separated by `;` [default: *=stdout]
    --exec-timeout SECS       kill an exec target that runs longer [default: 30]
    --drain                   exit 0 once no event is due (for cron)
    --max-runtime SECS        stop gracefully after this long (exit 5 if --drain had not finished)
    --shutdown-timeout SECS   on SIGTERM, wait this long for running handlers [default: 30]
    --connect-timeout SECS    keep retrying an unreachable database at start-up this long [default: 30]
    --log-level LEVEL         DEBUG, INFO, WARNING, ERROR or CRITICAL [default: INFO]
    -h, --help                print this help
    -V, --version             print the version

EXIT CODES:
    0 drained or stopped cleanly   2 bad flags/environment/DSN   3 database unreachable
    4 database refused (auth, missing table: run `dispatchbox migrate`)   5 --max-runtime hit
    1 anything else
";

/// Flags that take a value, in the order `--help` lists them. The environment variable is
/// `DISPATCHBOX_` + the name upper-cased with `-` as `_`.
pub const VALUE_FLAGS: &[&str] = &[
    "dsn",
    "processes",
    "threads",
    "batch-size",
    "poll-interval",
    "max-attempts",
    "retry-backoff",
    "retry-backoff-max",
    "lease",
    "table",
    "exec-timeout",
    "max-runtime",
    "shutdown-timeout",
    "connect-timeout",
    "log-level",
];

/// `VALUE_FLAGS` as typed on the command line (pico-args wants `&'static str` keys).
const VALUE_KEYS: &[&str] = &[
    "--dsn",
    "--processes",
    "--threads",
    "--batch-size",
    "--poll-interval",
    "--max-attempts",
    "--retry-backoff",
    "--retry-backoff-max",
    "--lease",
    "--table",
    "--exec-timeout",
    "--max-runtime",
    "--shutdown-timeout",
    "--connect-timeout",
    "--log-level",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    Migrate,
    Stats,
    /// A worker child started by the supervisor; its configuration arrives on stdin.
    Worker(u32),
    Help,
    Version,
}

/// Flag values exactly as given (None = not given).
#[derive(Clone, Debug, Default)]
pub struct RawArgs {
    pub values: Vec<(&'static str, String)>,
    pub routes: Vec<String>,
    pub drain: bool,
}

impl RawArgs {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn env_name(flag: &str) -> String {
    format!(
        "DISPATCHBOX_{}",
        flag.to_ascii_uppercase().replace('-', "_")
    )
}

fn usage(msg: String) -> Error {
    Error::Usage(format!("{msg} (see --help)"))
}

pub fn parse(args: Vec<OsString>) -> Result<(Mode, RawArgs)> {
    let mut p = pico_args::Arguments::from_vec(args);
    if p.contains(["-h", "--help"]) {
        return Ok((Mode::Help, RawArgs::default()));
    }
    if p.contains(["-V", "--version"]) {
        return Ok((Mode::Version, RawArgs::default()));
    }
    let worker: Option<u32> = p
        .opt_value_from_str("--worker-index")
        .map_err(|e| usage(format!("--worker-index: {e}")))?;
    let mut mode = match worker {
        Some(i) => Mode::Worker(i),
        None => Mode::Run,
    };
    let mut raw = RawArgs::default();
    for (flag, key) in VALUE_FLAGS.iter().zip(VALUE_KEYS) {
        let key: &'static str = key;
        let v: Option<String> = p
            .opt_value_from_str(key)
            .map_err(|e| usage(describe(e, key)))?;
        if let Some(v) = v {
            raw.values.push((flag, v));
        }
    }
    raw.routes = p
        .values_from_str("--route")
        .map_err(|e| usage(describe(e, "--route")))?;
    raw.drain = p.contains("--drain");
    if mode == Mode::Run {
        match p.subcommand().map_err(|e| usage(e.to_string()))?.as_deref() {
            None => {}
            Some("migrate") => mode = Mode::Migrate,
            Some("stats") => mode = Mode::Stats,
            // Not echoed: a misplaced DSN or password must not reach a terminal or a log.
            Some(_) => return Err(usage(
                "unexpected argument: commands are `migrate` and `stats`; the DSN goes in --dsn"
                    .into(),
            )),
        }
    }
    let rest = p.finish();
    if let Some(first) = rest.first() {
        let s = first.to_string_lossy();
        // Never echo what could be a DSN or a password given to a flag we do not know.
        let shown = if s.starts_with('-') {
            s.split('=').next().unwrap_or_default().to_string()
        } else {
            "a positional argument".to_string()
        };
        // A flag we know is left over only when it was given again (pico-args takes the
        // first occurrence), or, for `--drain`, given a value.
        if shown == "--drain" && s.contains('=') {
            return Err(usage("--drain takes no value".into()));
        }
        let known = VALUE_KEYS.contains(&shown.as_str())
            || ["--drain", "--worker-index"].contains(&shown.as_str());
        if known {
            return Err(usage(format!("{shown} is given more than once")));
        }
        return Err(usage(format!("unexpected argument: {shown}")));
    }
    Ok((mode, raw))
}

fn describe(e: pico_args::Error, key: &str) -> String {
    match e {
        pico_args::Error::OptionWithoutAValue(_) => format!("{key} needs a value"),
        pico_args::Error::NonUtf8Argument => format!("{key}: value is not valid UTF-8"),
        _ => format!("{key}: invalid value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_flags_routes_and_modes() {
        let (m, r) = parse(args(&[
            "--dsn=host=x",
            "--batch-size",
            "20",
            "--route",
            "a=stdout",
            "--route",
            "b.*=exec:true",
            "--drain",
        ]))
        .unwrap();
        assert_eq!(m, Mode::Run);
        assert_eq!(r.get("dsn"), Some("host=x"));
        assert_eq!(r.get("batch-size"), Some("20"));
        assert_eq!(r.routes, vec!["a=stdout", "b.*=exec:true"]);
        assert!(r.drain);
        assert_eq!(
            parse(args(&["migrate", "--dsn", "x"])).unwrap().0,
            Mode::Migrate
        );
        assert_eq!(
            parse(args(&["--worker-index", "3"])).unwrap().0,
            Mode::Worker(3)
        );
    }

    #[test]
    fn unknown_flags_are_errors_that_do_not_echo_values() {
        let e = parse(args(&["--passwd=hunter2"])).unwrap_err().to_string();
        assert!(e.contains("--passwd"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(args(&["hunter2"])).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(args(&["--batch-size"])).unwrap_err().to_string();
        assert!(e.contains("--batch-size needs a value"), "{e}");
    }

    #[test]
    fn a_flag_given_twice_is_named() {
        for a in [
            &["--drain", "--drain"][..],
            &["--batch-size", "1", "--batch-size", "2"][..],
            &["--dsn=a", "--dsn=hunter2"][..],
        ] {
            let e = parse(args(a)).unwrap_err().to_string();
            assert!(e.contains("is given more than once"), "{a:?}: {e}");
            assert!(e.starts_with(a[0].split('=').next().unwrap()), "{a:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse(args(&["--drain=yes"])).unwrap_err().to_string();
        assert!(e.contains("--drain takes no value"), "{e}");
        // Repeatable: no error.
        assert!(parse(args(&["--route", "a=stdout", "--route", "b=stdout"])).is_ok());
    }

    #[test]
    fn value_keys_match_value_flags() {
        assert_eq!(VALUE_FLAGS.len(), VALUE_KEYS.len());
        for (f, k) in VALUE_FLAGS.iter().zip(VALUE_KEYS) {
            assert_eq!(format!("--{f}"), *k);
        }
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("batch-size"), "DISPATCHBOX_BATCH_SIZE");
        assert_eq!(env_name("dsn"), "DISPATCHBOX_DSN");
    }
}
