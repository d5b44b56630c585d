//! Raw flags + `DISPATCHBOX_*` environment + libpq environment → one validated `Config`.
//!
//! Flags win over the environment. Every value is checked here, once, with an error that
//! names the flag (and never echoes a DSN). The supervisor hands the resolved configuration
//! to its worker children on a pipe (`protocol::Setup`), so secrets never appear in a
//! child's argv and both sides go through the same validation.

use crate::backoff::Backoff;
use crate::cli::defs::{self, Flag, Kind};
use crate::cli::RawArgs;
use crate::dsn::Dsn;
use crate::error::{Error, Result};
use crate::log::Level;
use std::time::Duration;

/// A table name, optionally schema-qualified, always quoted when put into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub schema: Option<String>,
    pub name: String,
}

impl Table {
    /// `name` or `schema.name`, taken literally (case-sensitive, like a quoted identifier).
    pub fn parse(s: &str) -> Result<Table> {
        let bad = |why: &str| Error::Usage(format!("--table `{s}`: {why}"));
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("expected NAME or SCHEMA.NAME"));
        }
        // `'` and `$` would end the string and dollar quotes `migrate` puts the name in.
        if s.contains(['\0', '\'', '$']) {
            return Err(bad("NUL, `'` and `$` are not allowed in the table name"));
        }
        match parts.as_slice() {
            [name] => Ok(Table {
                schema: None,
                name: name.to_string(),
            }),
            [schema, name] => Ok(Table {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            }),
            _ => Err(bad("expected NAME or SCHEMA.NAME")),
        }
    }

    /// The table as SQL: `"schema"."name"` with embedded quotes doubled.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// An object named after the table (index names): `"name_suffix"`, quoted.
    pub fn quoted_derived(&self, suffix: &str) -> String {
        quote_ident(&self.derived_name(suffix))
    }

    /// `name` + `suffix` when that fits PostgreSQL's 63-byte identifiers. Otherwise the name
    /// is cut (on a character boundary) and an 8-hex-digit FNV-1a hash of the whole name goes
    /// before the suffix: PostgreSQL would cut the plain concatenation to the table's own
    /// (cut) name, and `CREATE INDEX IF NOT EXISTS` would then skip the index. The hash keeps
    /// the name the same on every run, so `migrate` stays idempotent.
    pub fn derived_name(&self, suffix: &str) -> String {
        let plain = format!("{}{suffix}", self.name);
        if plain.len() <= MAX_IDENT_LEN {
            return plain;
        }
        let hash = format!("_{:08x}", fnv1a32(self.name.as_bytes()));
        let mut end = MAX_IDENT_LEN
            .saturating_sub(suffix.len() + hash.len())
            .min(self.name.len());
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{hash}{suffix}", &self.name[..end])
    }
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1) in bytes.
const MAX_IDENT_LEN: usize = 63;

/// 32-bit FNV-1a: a small, stable hash (not for security).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[derive(Clone, Debug)]
pub struct Config {
    pub dsn: Dsn,
    pub table: Table,
    pub processes: u32,
    pub threads: usize,
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub lease: Duration,
    /// `(pattern, target)` as given; `*=stdout` when none were.
    pub routes: Vec<(String, String)>,
    /// Where the routes came from, for error messages: `--route` or `DISPATCHBOX_ROUTE`.
    pub route_source: &'static str,
    pub exec_timeout: Duration,
    pub drain: bool,
    /// `--fail-on-dead`: the supervisor exits 6 when a worker saw an event go dead.
    pub fail_on_dead: bool,
    pub max_runtime: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub connect_timeout: Duration,
    pub log_level: Level,
    /// The lock the supervisor creates when several workers share stdout (a path under
    /// `/proc/<supervisor pid>/fd/`): every `stdout` line is written under it. Not a flag.
    pub stdout_lock: Option<std::path::PathBuf>,
    /// A worker's descriptor holding a copy of the supervisor's stderr, where it logs once
    /// the supervisor (which forwards its stderr) is gone. Not a flag.
    pub log_fd: Option<i32>,
}

/// What `migrate` and `stats` need: no worker settings.
pub struct AdminConfig {
    pub dsn: Dsn,
    pub table: Table,
    pub log_level: Level,
    pub connect_timeout: Duration,
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Source<'a> {
    raw: &'a RawArgs,
    env: Env<'a>,
}

impl Source<'_> {
    /// The flag's value, else its environment variable's; with the name to blame.
    fn get(&self, flag: &Flag) -> Option<(String, String)> {
        if let Some(v) = self.raw.get(flag.name()) {
            return Some((flag.key.to_string(), v.to_string()));
        }
        let var = flag.env_var()?;
        (self.env)(var).map(|v| (var.to_string(), v))
    }

    /// The flag's value, else its variable's, else its default (blamed on the flag).
    fn get_or_default(&self, flag: &Flag) -> Option<(String, String)> {
        self.get(flag)
            .or_else(|| flag.default.map(|d| (flag.key.to_string(), d.to_string())))
    }

    /// A whole number in the flag's range, as `T` (which holds the whole range).
    fn whole<T>(&self, flag: &Flag) -> Result<T>
    where
        T: std::str::FromStr + std::fmt::Display + Copy + TryInto<i64>,
    {
        let Kind::Whole { min, max } = flag.kind else {
            return Err(Error::Other(format!("{} is not a whole number", flag.key)));
        };
        let Some((who, v)) = self.get_or_default(flag) else {
            return Err(Error::Other(format!("{} has no default", flag.key)));
        };
        let v = v.trim();
        let n: T = v.parse().map_err(|_| {
            // A whole number that does not fit the type is out of range, not malformed.
            if v.parse::<i128>().is_ok() {
                Error::Usage(format!("{who}: {v} is out of range ({min} to {max})"))
            } else {
                Error::Usage(format!("{who}: `{v}` is not a whole number"))
            }
        })?;
        match n.try_into() {
            Ok(i) if (min..=max).contains(&i) => Ok(n),
            _ => Err(Error::Usage(format!(
                "{who}: {n} is out of range ({min} to {max})"
            ))),
        }
    }

    /// Seconds in the flag's range; None when not given and without a default.
    fn secs(&self, flag: &Flag) -> Result<Option<Duration>> {
        let Kind::Secs { min, max } = flag.kind else {
            return Err(Error::Other(format!("{} is not in seconds", flag.key)));
        };
        let Some((who, v)) = self.get_or_default(flag) else {
            return Ok(None);
        };
        let n: f64 = v
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| {
                Error::Usage(format!("{who}: `{}` is not a number of seconds", v.trim()))
            })?;
        if n < min || n > max {
            return Err(Error::Usage(format!(
                "{who}: {n} is out of range ({min} to {max} seconds)"
            )));
        }
        Ok(Some(Duration::from_secs_f64(n)))
    }

    /// The `(pattern, target)` pairs of `--route` (or else the variable), and which of the
    /// two they came from.
    fn routes(&self) -> Result<(Vec<(String, String)>, &'static str)> {
        let mut texts = self.raw.routes.clone();
        let mut source = defs::ROUTE.key;
        if let Some(var) = defs::ROUTE.env_var().filter(|_| texts.is_empty()) {
            if let Some(v) = (self.env)(var) {
                source = var;
                texts = v
                    .split([';', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
        }
        let mut routes: Vec<(String, String)> = Vec::new();
        let mut patterns: Vec<crate::handler::Pattern> = Vec::new();
        for r in &texts {
            let (pattern, target) = r.split_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "{source} `{r}`: expected PATTERN=TARGET, e.g. `order.*=stdout`"
                ))
            })?;
            let p = crate::handler::Pattern::parse(pattern)
                .map_err(|e| Error::Usage(format!("{source}: {e}")))?;
            // The router keeps one route per pattern: a second one would be dropped silently.
            if patterns.contains(&p) {
                return Err(Error::Usage(format!(
                    "{source}: pattern `{p}` is given twice; give each pattern one target"
                )));
            }
            patterns.push(p);
            routes.push((pattern.trim().to_string(), target.trim().to_string()));
        }
        Ok((routes, source))
    }

    fn drain(&self) -> Result<bool> {
        self.switch(&defs::DRAIN, self.raw.drain)
    }

    /// A switch: given, or else its variable as a boolean.
    fn switch(&self, flag: &Flag, given: bool) -> Result<bool> {
        if given {
            return Ok(true);
        }
        let Some(var) = flag.env_var() else {
            return Ok(false);
        };
        match (self.env)(var) {
            None => Ok(false),
            Some(v) => parse_bool(&v).ok_or_else(|| {
                Error::Usage(format!(
                    "{var}: `{v}` is not a boolean (1/0, true/false, yes/no)"
                ))
            }),
        }
    }

    fn dsn(&self) -> Result<Dsn> {
        let text = self.get(&defs::DSN).map(|(_, v)| v).unwrap_or_default();
        if text.trim().is_empty()
            && !["PGHOST", "PGHOSTADDR", "PGDATABASE", "PGUSER"]
                .iter()
                .any(|v| (self.env)(v).is_some())
        {
            return Err(Error::Usage(
                "no database given: use --dsn, DISPATCHBOX_DSN or the libpq variables (PGHOST, PGDATABASE, ...)"
                    .into(),
            ));
        }
        Dsn::resolve(&text, self.env)
    }

    fn table(&self) -> Result<Table> {
        let v = self.get_or_default(&defs::TABLE).map(|(_, v)| v);
        Table::parse(v.unwrap_or_default().trim())
    }

    fn log_level(&self) -> Result<Level> {
        match self.get_or_default(&defs::LOG_LEVEL) {
            None => Ok(Level::Info),
            Some((who, v)) => Level::parse(v.trim()).ok_or_else(|| {
                Error::Usage(format!(
                    "{who}: `{}` is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
                    v.trim()
                ))
            }),
        }
    }
}

impl Config {
    pub fn from_raw(raw: &RawArgs, env: Env<'_>) -> Result<Config> {
        let src = Source { raw, env };
        let log_level = src.log_level()?;
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
        let max_runtime = src.secs(&defs::MAX_RUNTIME)?;
        let shutdown_timeout = src.secs(&defs::SHUTDOWN_TIMEOUT)?.unwrap_or_default();
        let connect_timeout = src.secs(&defs::CONNECT_TIMEOUT)?.unwrap_or_default();

        let (routes, route_source) = src.routes()?;
        let drain = src.drain()?;
        let fail_on_dead = src.switch(&defs::FAIL_ON_DEAD, raw.has(defs::FAIL_ON_DEAD.name()))?;

        Ok(Config {
            dsn: src.dsn()?,
            table: src.table()?,
            processes,
            threads,
            batch_size,
            poll_interval,
            max_attempts,
            backoff: Backoff { base, max },
            lease,
            routes,
            route_source,
            exec_timeout,
            drain,
            fail_on_dead,
            max_runtime,
            shutdown_timeout,
            connect_timeout,
            log_level,
            stdout_lock: None,
            log_fd: None,
        })
    }
}

impl AdminConfig {
    pub fn from_raw(raw: &RawArgs, env: Env<'_>) -> Result<AdminConfig> {
        let src = Source { raw, env };
        Ok(AdminConfig {
            log_level: src.log_level()?,
            connect_timeout: src.secs(&defs::CONNECT_TIMEOUT)?.unwrap_or_default(),
            dsn: src.dsn()?,
            table: src.table()?,
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
                || n.starts_with("DISPATCHBOX_TEST_"))
        })
        .map(String::from)
        .collect()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
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
        assert_eq!(c.processes, 1);
        assert_eq!(c.threads, 10);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.table.quoted(), "\"outbox_event\"");
        assert!(c.routes.is_empty());
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
        assert_eq!(c.routes.len(), 2);
        assert!(c.drain);
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
                "--poll-interval: `NaN` is not a number",
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

    #[test]
    fn table_names_are_quoted() {
        let t = Table::parse("Sales.out\"box").unwrap();
        assert_eq!(t.quoted(), "\"Sales\".\"out\"\"box\"");
        assert_eq!(t.quoted_derived("_due_idx"), "\"out\"\"box_due_idx\"");
        assert!(Table::parse("a.").is_err());
    }

    #[test]
    fn derived_names_fit_in_63_bytes_and_are_stable() {
        let short = Table::parse("orders").unwrap();
        assert_eq!(short.derived_name("_due_idx"), "orders_due_idx");
        // Exactly 63 bytes with the suffix: unchanged.
        let name = "a".repeat(63 - "_due_idx".len());
        let t = Table::parse(&name).unwrap();
        assert_eq!(t.derived_name("_due_idx"), format!("{name}_due_idx"));
        // Longer: cut, hashed, suffixed; never equal to the table's own (cut) name.
        let long = "x".repeat(70);
        let t = Table::parse(&format!("s.{long}")).unwrap();
        let d = t.derived_name("_due_idx");
        assert_eq!(d.len(), 63, "{d}");
        assert!(d.ends_with("_due_idx"), "{d}");
        assert_ne!(&d[..], &long[..63]);
        assert_eq!(d, t.derived_name("_due_idx"));
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c); // the published FNV-1a test vector
        assert_eq!(
            d,
            format!(
                "{}_{:08x}_due_idx",
                "x".repeat(46),
                fnv1a32(long.as_bytes())
            )
        );
        // Two long names that share their first 63 bytes get different index names.
        let other = Table::parse(&format!("{}y", "x".repeat(69))).unwrap();
        assert_ne!(other.derived_name("_due_idx"), d);
        // Multi-byte characters are never split.
        let t = Table::parse(&"é".repeat(40)).unwrap();
        let d = t.derived_name("_due_idx");
        assert!(d.len() <= 63 && d.ends_with("_due_idx"), "{d}");
        assert_eq!(t.quoted_derived("_due_idx"), format!("\"{d}\""));
    }
}
