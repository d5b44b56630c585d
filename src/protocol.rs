//! The messages between the supervisor and its worker children: typed values, each encoded
//! as one JSON object per line with a `"type"` tag.
//!
//! ```text
//! supervisor → child, on the child's stdin
//!   {"type":"config","report-fd":4,"config":{"dsn":"…","table":"…",…}}   first line, once
//!   {"type":"stop"}        finish running handlers, write results, exit (a first SIGTERM)
//!   {"type":"stop-now"}    stop without waiting for running handlers (a second SIGTERM)
//!   EOF                    the supervisor is gone: stop gracefully
//! child → supervisor, on the report pipe (the child's fd `REPORT_FD`)
//!   {"type":"ready"}                               start-up succeeded (connected, checked)
//!   {"type":"fatal","code":4,"message":"…"}        the error the child exits with
//!   {"type":"counters","claims":3,"claimed":25,"db-errors":0,"in-flight":2,
//!    "db-down":0,"db-down-us":0,
//!    "process":{"rss":9158656,"vsize":…,"cpu-us":41000,"open-fds":12,"max-fds":1024,
//!               "start-ms":1764890000123},
//!    "routes":[{"route":"stdout","delivered":20,"retried":1,"dead":0,"released":2,
//!               "deferred":0,"duration-us":5310,"buckets":[18,3,0,…]}]}
//!                          about every second and once at exit: the worker's counts since it
//!                          started (`metrics::counts`; buckets per `counts::BUCKETS`, then +Inf),
//!                          whether its database connection is down (1) and for how long, and
//!                          its `process_*` figures (`metrics::process`)
//!   {"type":"<anything else>",…}                   a report this build does not know: ignored
//! ```
//! The configuration carries every run flag's resolved text (flag, variable or default), found
//! by walking the flag table (`Config::flag_texts`), so a new flag needs nothing here; then
//! what is not one flag's text: the resolved DSN (with its password: it travels on a pipe,
//! never in argv; `--dsn-file` is read by the supervisor and never sent), the `routes`, the
//! child-only settings `stdout-lock`, `log-fd` and `log-journal`, and `webhook-secret`
//! (DISPATCHBOX_WEBHOOK_SECRET, which the child's environment lacks); the child validates it
//! with the same `Config::from_raw` as the supervisor did.
//!
//! Reports have a pipe of their own rather than sharing the child's stderr: stderr also
//! carries whatever a compiled-in handler prints, and a partial line there (an `eprint!`
//! without a newline) would swallow the report written after it; a report pipe that is close
//! on exec in the child cannot be written, nor held open, by the programs `exec:` targets
//! run, so its EOF comes with the child's exit; and the periodic `counters` report (summed by
//! the supervisor for `/metrics`) does not mix with the log lines the supervisor forwards
//! untouched. Unknown report types decode to `Report::Other` and are
//! ignored, so a new report does not break a supervisor that does not know it.
//!
//! Invariant: the supervisor learns about a child only through these values and the child's
//! exit status; it never parses a log line.

use crate::cli::defs::{DSN, FLAGS, ROUTE};
use crate::cli::RawArgs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::counts::Counts;
use serde_json::{Map, Value};

/// Where a worker finds the copy of the supervisor's stderr, its log fallback once the
/// supervisor (which forwards its stderr) is gone.
pub(crate) const LOG_FD: i32 = 3;
/// Where a worker writes its reports.
pub(crate) const REPORT_FD: i32 = 4;

/// Supervisor → child, after the configuration line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Stop gracefully: no new claims, finish running handlers, write every result.
    Stop,
    /// Stop without waiting for running handlers (their events stay leased).
    StopNow,
}

/// Child → supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// Start-up succeeded: the database answered and the table is usable.
    Ready,
    /// The error the child is about to exit with, and that exit code.
    Fatal { code: u8, message: String },
    /// The worker's counts since it started (cumulative, except the in-flight gauge).
    Counters(Box<Counts>),
    /// A report of a type this build does not know (its type name): ignored.
    Other(String),
}

/// The first line on a child's stdin: its configuration, and where it reports.
pub(crate) struct Setup {
    msg: Map<String, Value>,
}

impl Control {
    pub(crate) fn encode(self) -> String {
        tagged(
            match self {
                Control::Stop => "stop",
                Control::StopNow => "stop-now",
            },
            Map::new(),
        )
    }

    pub(crate) fn decode(line: &str) -> Result<Control> {
        let (kind, _) = untag(line)?;
        match kind.as_str() {
            "stop" => Ok(Control::Stop),
            "stop-now" => Ok(Control::StopNow),
            other => Err(Error::Other(format!("unknown control message `{other}`"))),
        }
    }
}

impl Report {
    pub(crate) fn encode(&self) -> String {
        match self {
            Report::Ready => tagged("ready", Map::new()),
            Report::Fatal { code, message } => {
                let mut m = Map::new();
                m.insert("code".into(), (*code).into());
                m.insert("message".into(), message.as_str().into());
                tagged("fatal", m)
            }
            Report::Counters(c) => tagged("counters", c.to_json()),
            Report::Other(kind) => tagged(kind, Map::new()),
        }
    }

    pub(crate) fn decode(line: &str) -> Result<Report> {
        let (kind, m) = untag(line)?;
        match kind.as_str() {
            "ready" => Ok(Report::Ready),
            "fatal" => {
                let code = m
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u8::try_from(c).ok())
                    .ok_or_else(|| Error::Other("fatal report without a valid code".into()))?;
                let message = m
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Ok(Report::Fatal { code, message })
            }
            "counters" => Counts::from_json(&m)
                .map(|c| Report::Counters(Box::new(c)))
                .ok_or_else(|| Error::Other("counters report of the wrong shape".into())),
            _ => Ok(Report::Other(kind)),
        }
    }
}

impl Setup {
    /// The configuration line (contains the password: pipe only).
    pub(crate) fn encode(cfg: &Config, report_fd: Option<i32>) -> String {
        let mut m = Map::new();
        if let Some(fd) = report_fd {
            m.insert("report-fd".into(), fd.into());
        }
        m.insert("config".into(), Value::Object(config_to_json(cfg)));
        tagged("config", m)
    }

    /// Checks the framing only; the configuration itself is validated by `config`, after
    /// the child has taken its report descriptor (so that a refusal can be reported).
    pub(crate) fn decode(line: &str) -> Result<Setup> {
        let (kind, msg) = untag(line)?;
        if kind != "config" {
            return Err(Error::Other(format!(
                "expected the configuration from the supervisor, got `{kind}`"
            )));
        }
        Ok(Setup { msg })
    }

    pub(crate) fn report_fd(&self) -> Option<i32> {
        self.msg
            .get("report-fd")
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    }

    pub(crate) fn config(&self) -> Result<Config> {
        let obj = self
            .msg
            .get("config")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Other("configuration from supervisor is not an object".into()))?;
        config_from_json(obj)
    }
}

fn tagged(kind: &str, mut m: Map<String, Value>) -> String {
    m.insert("type".into(), kind.into());
    Value::Object(m).to_string()
}

fn untag(line: &str) -> Result<(String, Map<String, Value>)> {
    let v: Value = serde_json::from_str(line.trim())?;
    let Value::Object(mut m) = v else {
        return Err(Error::Other("message is not a JSON object".into()));
    };
    match m.remove("type") {
        Some(Value::String(kind)) => Ok((kind, m)),
        _ => Err(Error::Other("message without a type".into())),
    }
}

/// Everything a worker child needs, keyed by flag name (values as they would be typed): every
/// run flag's resolved text (`Config::flag_texts`), then what is not one flag's text.
fn config_to_json(cfg: &Config) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, text) in &cfg.flag_texts {
        m.insert((*name).into(), text.as_str().into());
    }
    m.insert(DSN.name().into(), cfg.dsn.to_conninfo().into());
    let routes: Vec<String> = cfg
        .sinks
        .routes
        .iter()
        .map(|(p, t)| format!("{p}={t}"))
        .collect();
    m.insert(ROUTES.into(), routes.into());
    if let Some(s) = &cfg.sinks.webhook_secret {
        m.insert(WEBHOOK_SECRET.into(), s.expose().into());
    }
    if let Some(p) = &cfg.sinks.stdout_lock {
        m.insert(STDOUT_LOCK.into(), p.to_string_lossy().into_owned().into());
    }
    if let Some(fd) = cfg.log.fd {
        m.insert(LOG_FD_KEY.into(), fd.into());
    }
    if cfg.log.journal {
        m.insert(LOG_JOURNAL.into(), true.into());
    }
    m
}

/// The keys of the settings that are not one flag's text (no flag has these names).
const ROUTES: &str = "routes";
const WEBHOOK_SECRET: &str = "webhook-secret";
const STDOUT_LOCK: &str = "stdout-lock";
const LOG_FD_KEY: &str = "log-fd";
const LOG_JOURNAL: &str = "log-journal";

/// The inverse of `config_to_json`, through the same validation as the command line: each
/// run flag's text is given back as if typed.
fn config_from_json(obj: &Map<String, Value>) -> Result<Config> {
    let mut raw = RawArgs::default();
    for flag in FLAGS.iter().filter(|f| f.is_run_flag()) {
        if let Some(text) = obj.get(flag.name()).and_then(Value::as_str) {
            raw.give(flag, text);
        }
    }
    let routes = obj.get(ROUTES).and_then(Value::as_array);
    for route in routes.into_iter().flatten().filter_map(Value::as_str) {
        raw.give(&ROUTE, route);
    }
    // Everything is resolved already: no environment lookups on this side.
    let mut cfg = Config::from_raw(&raw, &|_| None)?;
    cfg.sinks.stdout_lock = obj
        .get(STDOUT_LOCK)
        .and_then(Value::as_str)
        .map(std::path::PathBuf::from);
    cfg.sinks.webhook_secret = obj
        .get(WEBHOOK_SECRET)
        .and_then(Value::as_str)
        .map(|s| crate::config::SecretText::new(s.to_string()));
    cfg.log.fd = obj
        .get(LOG_FD_KEY)
        .and_then(Value::as_i64)
        .and_then(|v| i32::try_from(v).ok());
    cfg.log.journal = obj
        .get(LOG_JOURNAL)
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::defs::{self, Flag};
    use std::time::Duration;

    /// A value for every run flag: none is its default, and all are valid together.
    const SAMPLES: &[(&Flag, &str)] = &[
        (&defs::DSN, "host=h user=u password='p w'"),
        // Written by the test: a DSN file (it is never given with `--dsn`).
        (&defs::DSN_FILE, "dsn-file"),
        (&defs::PROCESSES, "3"),
        (&defs::THREADS, "4"),
        (&defs::ON_DONE, "delete"),
        (&defs::BATCH_SIZE, "77"),
        (&defs::POLL_INTERVAL, "250ms"),
        (&defs::MAX_ATTEMPTS, "9"),
        (&defs::RETRY_BACKOFF, "2.5"),
        (&defs::RETRY_BACKOFF_MAX, "90m"),
        (&defs::LEASE, "45"),
        (&defs::TABLE, "app.events"),
        (&defs::ROUTE, "order.*=exec:sh -c 'cat > /dev/null'"),
        (&defs::EXEC_TIMEOUT, "7"),
        (&defs::PIPE_TIMEOUT, "8s"),
        (&defs::PIPE_WINDOW, "16"),
        (&defs::PIPE_PROCESSES, "2"),
        (&defs::WEBHOOK_CONFIG, "/etc/dispatchbox/hooks.json"),
        (&defs::WEBHOOK_TIMEOUT, "2.5"),
        (&defs::DRAIN, "true"),
        (&defs::NOTIFY, "off"),
        (&defs::MAX_RUNTIME, "9"),
        (&defs::SHUTDOWN_TIMEOUT, "11"),
        (&defs::CONNECT_TIMEOUT, "1m"),
        (&defs::LOG_LEVEL, "debug"),
        (&defs::LOG_FORMAT, "json"),
        (&defs::METRICS_ADDR, "127.0.0.1:9187"),
        (&defs::FAIL_ON_DEAD, "true"),
        (&defs::ORDERED, "true"),
        (&defs::ORDERED_DEAD, "skip"),
        (&defs::RETAIN_DONE, "7d"),
        (&defs::RETAIN_ARCHIVE, "app.events_archive"),
    ];

    #[test]
    fn every_run_flag_has_a_sample_and_no_flag_takes_a_settings_key() {
        for f in FLAGS.iter().filter(|f| f.is_run_flag()) {
            assert!(
                SAMPLES.iter().any(|(s, _)| s.key == f.key),
                "{}: give it a sample value in protocol::tests::SAMPLES",
                f.key
            );
        }
        for key in [ROUTES, WEBHOOK_SECRET, STDOUT_LOCK, LOG_FD_KEY, LOG_JOURNAL] {
            assert!(FLAGS.iter().all(|f| f.name() != key), "{key}");
        }
    }

    /// The configuration from every sample but those named in `skip` (`dsn-file` points at
    /// `dsn_file`), and the webhook secret from the environment.
    fn sampled(skip: &[&str], dsn_file: &std::path::Path) -> Config {
        let mut raw = RawArgs::default();
        for (flag, text) in SAMPLES.iter().filter(|(f, _)| !skip.contains(&f.name())) {
            match flag.key == defs::DSN_FILE.key {
                true => raw.give(flag, &dsn_file.to_string_lossy()),
                false => raw.give(flag, text),
            }
        }
        let secret = |v: &str| (v == defs::WEBHOOK_SECRET_VAR).then(|| "whsec_x y".to_string());
        let mut c = Config::from_raw(&raw, &secret).unwrap();
        c.sinks.stdout_lock = Some("/proc/1/fd/12".into());
        c.log.fd = Some(LOG_FD);
        c.log.journal = true;
        c
    }

    /// Every field, the secret ones too; without `flag_texts` unless `texts`.
    fn fields(c: &Config, texts: bool) -> String {
        let mut c = c.clone();
        if !texts {
            c.flag_texts.clear();
        }
        let secret = c
            .sinks
            .webhook_secret
            .as_ref()
            .map(|s| s.expose().to_string());
        format!("{c:?} {} {secret:?}", c.dsn.to_conninfo())
    }

    #[test]
    fn every_run_flag_reaches_a_worker_as_resolved() {
        let dir = std::env::temp_dir().join(format!("dbx-protocol-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dsn_file = dir.join("dsn");
        std::fs::write(&dsn_file, "host=file user=f password='q r'\n").unwrap();
        let (dsn, file) = (defs::DSN.name(), defs::DSN_FILE.name());
        for (flag, _) in SAMPLES {
            // With every sample, and without this one (the DSN from the file instead).
            let (with, without) = match flag.name() {
                n if n == dsn => (vec![file], vec![dsn]),
                n if n == file => (vec![dsn], vec![file]),
                // The archive is refused without retention.
                n if n == defs::RETAIN_DONE.name() => {
                    (vec![file], vec![file, n, defs::RETAIN_ARCHIVE.name()])
                }
                n => (vec![file], vec![file, n]),
            };
            let (with, without) = (sampled(&with, &dsn_file), sampled(&without, &dsn_file));
            assert_ne!(
                fields(&with, false),
                fields(&without, false),
                "{}: its sample is its default, or Config::from_raw does not read it",
                flag.key
            );
            for c in [with, without] {
                let setup = Setup::decode(&Setup::encode(&c, Some(REPORT_FD))).unwrap();
                assert_eq!(setup.report_fd(), Some(REPORT_FD));
                let back = setup.config().unwrap();
                assert_eq!(fields(&back, true), fields(&c, true), "{}", flag.key);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_round_trips_with_the_child_only_settings() {
        let mut r = RawArgs::default();
        for (k, v) in [
            ("dsn", "host=h user=u password='p w'"),
            ("batch-size", "77"),
            ("poll-interval", "0.25"),
            ("max-runtime", "9"),
            ("log-format", "json"),
        ] {
            r.values.push((k, v.to_string()));
        }
        r.routes = vec!["order.*=exec:sh -c 'cat > /dev/null'".into()];
        r.drain = true;
        r.values.push(("notify", "off".into()));
        r.values
            .push(("webhook-config", "/etc/dispatchbox/hooks.json".into()));
        r.values.push(("webhook-timeout", "2.5".into()));
        let mut c = Config::from_raw(&r, &|v| {
            (v == "DISPATCHBOX_WEBHOOK_SECRET").then(|| "whsec_x y".to_string())
        })
        .unwrap();
        c.sinks.stdout_lock = Some("/proc/1/fd/12".into());
        c.log.fd = Some(LOG_FD);
        c.log.journal = true;
        let line = Setup::encode(&c, Some(REPORT_FD));
        assert!(!line.contains('\n'));
        let setup = Setup::decode(&line).unwrap();
        assert_eq!(setup.report_fd(), Some(REPORT_FD));
        let back = setup.config().unwrap();
        assert_eq!(back.dsn, c.dsn);
        assert_eq!(back.batch_size, 77);
        assert_eq!(back.poll_interval, Duration::from_millis(250));
        assert_eq!(back.supervision.max_runtime, Some(Duration::from_secs(9)));
        assert_eq!(back.sinks.routes, c.sinks.routes);
        assert!(back.drain);
        assert_eq!(back.notify, crate::config::Notify::Off);
        assert_eq!(back.sinks.stdout_lock, c.sinks.stdout_lock);
        assert_eq!(back.log.fd, Some(LOG_FD));
        assert_eq!(back.log.format, crate::log::Format::Json);
        assert!(back.log.journal);
        assert_eq!(back.sinks.webhook_config, c.sinks.webhook_config);
        assert_eq!(back.sinks.webhook_timeout, Duration::from_millis(2500));
        assert_eq!(
            back.sinks.webhook_secret.as_ref().unwrap().expose(),
            "whsec_x y"
        );
        assert!(!format!("{back:?}").contains("whsec_x"));
        let without = Setup::decode(&Setup::encode(&c, None)).unwrap();
        assert_eq!(without.report_fd(), None);
    }

    #[test]
    fn a_bad_configuration_is_refused_after_the_report_fd_is_known() {
        let line = r#"{"type":"config","report-fd":4,"config":{"batch-size":"0"}}"#;
        let setup = Setup::decode(line).unwrap();
        assert_eq!(setup.report_fd(), Some(4));
        assert!(matches!(setup.config(), Err(Error::Usage(_))));
        assert!(Setup::decode(r#"{"type":"stop"}"#).is_err());
        assert!(Setup::decode("stop").is_err());
    }

    #[test]
    fn controls_round_trip_and_others_are_refused() {
        for c in [Control::Stop, Control::StopNow] {
            assert_eq!(Control::decode(&c.encode()).unwrap(), c);
        }
        assert_eq!(Control::Stop.encode(), r#"{"type":"stop"}"#);
        assert_eq!(Control::StopNow.encode(), r#"{"type":"stop-now"}"#);
        assert!(Control::decode(r#"{"type":"reload"}"#).is_err());
        assert!(Control::decode("stop").is_err());
        assert!(Control::decode("").is_err());
    }

    #[test]
    fn reports_round_trip_on_one_line_and_unknown_ones_are_kept_apart() {
        let fatal = Report::Fatal {
            code: 4,
            message: "line one\nline \"two\"\u{1}".into(),
        };
        let mut counts = Counts::default();
        counts.count("stdout", crate::metrics::counts::Label::Delivered);
        counts.claims = 3;
        for r in [Report::Ready, fatal, Report::Counters(Box::new(counts))] {
            let line = r.encode();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Report::decode(&line).unwrap(), r);
        }
        assert_eq!(
            Report::decode(r#"{"type":"progress","claimed":3}"#).unwrap(),
            Report::Other("progress".into())
        );
        assert!(Report::decode(r#"{"type":"counters","claimed":"3"}"#).is_err());
        assert!(Report::decode(r#"{"type":"fatal","code":300}"#).is_err());
        assert!(Report::decode(r#"{"code":3}"#).is_err());
        assert!(Report::decode("2026-01-01T00:00:00.000Z ERROR    [worker 0] x").is_err());
    }
}
