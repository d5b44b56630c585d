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
//! The configuration carries the resolved flags (the DSN with its password: it travels on a
//! pipe, never in argv; `--dsn-file` is read by the supervisor and never sent) plus the
//! child-only settings `stdout-lock`, `log-fd` and `log-journal`, and `webhook-secret`
//! (DISPATCHBOX_WEBHOOK_SECRET, which the child's environment lacks); the child
//! validates it with the same `Config::from_raw` as the supervisor did.
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

use crate::cli::RawArgs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::counts::Counts;
use serde_json::{Map, Value};
use std::time::Duration;

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

/// Everything a worker child needs, keyed by flag name (values as they would be typed).
fn config_to_json(cfg: &Config) -> Map<String, Value> {
    let d = |d: Duration| Value::from(d.as_secs_f64().to_string());
    let mut m = Map::new();
    m.insert("dsn".into(), cfg.dsn.to_conninfo().into());
    m.insert("table".into(), cfg.table.to_string().into());
    m.insert("processes".into(), cfg.processes.to_string().into());
    m.insert("threads".into(), cfg.threads.to_string().into());
    m.insert("batch-size".into(), cfg.batch_size.to_string().into());
    m.insert("poll-interval".into(), d(cfg.poll_interval));
    m.insert("max-attempts".into(), cfg.max_attempts.to_string().into());
    m.insert("retry-backoff".into(), d(cfg.backoff.base));
    m.insert("retry-backoff-max".into(), d(cfg.backoff.max));
    m.insert("lease".into(), d(cfg.lease));
    m.insert("exec-timeout".into(), d(cfg.exec_timeout));
    m.insert("pipe-timeout".into(), d(cfg.pipe_timeout));
    m.insert("pipe-window".into(), cfg.pipe_window.to_string().into());
    m.insert(
        "pipe-processes".into(),
        cfg.pipe_processes.to_string().into(),
    );
    if let Some(p) = &cfg.webhook_config {
        m.insert(
            "webhook-config".into(),
            p.to_string_lossy().into_owned().into(),
        );
    }
    m.insert("webhook-timeout".into(), d(cfg.webhook_timeout));
    if let Some(s) = &cfg.webhook_secret {
        m.insert("webhook-secret".into(), s.expose().into());
    }
    if let Some(r) = cfg.max_runtime {
        m.insert("max-runtime".into(), d(r));
    }
    m.insert("shutdown-timeout".into(), d(cfg.shutdown_timeout));
    m.insert("connect-timeout".into(), d(cfg.connect_timeout));
    m.insert("log-level".into(), cfg.log_level.as_str().into());
    m.insert("log-format".into(), cfg.log_format.as_str().into());
    let routes: Vec<String> = cfg.routes.iter().map(|(p, t)| format!("{p}={t}")).collect();
    m.insert("routes".into(), routes.into());
    m.insert("drain".into(), cfg.drain.into());
    m.insert("notify".into(), cfg.notify.as_str().into());
    if let crate::config::Order::ByAggregate { dead_blocks } = cfg.order {
        m.insert("ordered".into(), true.into());
        let dead = if dead_blocks { "block" } else { "skip" };
        m.insert("ordered-dead".into(), dead.into());
    }
    m.insert("on-done".into(), cfg.on_done.as_str().into());
    if let Some(p) = &cfg.stdout_lock {
        m.insert(
            "stdout-lock".into(),
            p.to_string_lossy().into_owned().into(),
        );
    }
    if let Some(fd) = cfg.log_fd {
        m.insert("log-fd".into(), fd.into());
    }
    if cfg.log_journal {
        m.insert("log-journal".into(), true.into());
    }
    m
}

/// The inverse of `config_to_json`, through the same validation as the command line.
fn config_from_json(obj: &Map<String, Value>) -> Result<Config> {
    let mut raw = RawArgs::default();
    for flag in crate::cli::VALUE_FLAGS {
        if let Some(s) = obj.get(*flag).and_then(|v| v.as_str()) {
            raw.values.push((flag, s.to_string()));
        }
    }
    raw.routes = obj
        .get("routes")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    raw.drain = obj.get("drain").and_then(|d| d.as_bool()).unwrap_or(false);
    if obj.get("ordered").and_then(Value::as_bool) == Some(true) {
        raw.switches.push(crate::cli::defs::ORDERED.name());
    }
    // Everything is resolved already: no environment lookups on this side.
    let mut cfg = Config::from_raw(&raw, &|_| None)?;
    cfg.stdout_lock = obj
        .get("stdout-lock")
        .and_then(|v| v.as_str())
        .map(std::path::PathBuf::from);
    cfg.webhook_secret = obj
        .get("webhook-secret")
        .and_then(|v| v.as_str())
        .map(|s| crate::config::SecretText::new(s.to_string()));
    cfg.log_fd = obj
        .get("log-fd")
        .and_then(|v| v.as_i64())
        .and_then(|v| i32::try_from(v).ok());
    cfg.log_journal = obj
        .get("log-journal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        c.stdout_lock = Some("/proc/1/fd/12".into());
        c.log_fd = Some(LOG_FD);
        c.log_journal = true;
        let line = Setup::encode(&c, Some(REPORT_FD));
        assert!(!line.contains('\n'));
        let setup = Setup::decode(&line).unwrap();
        assert_eq!(setup.report_fd(), Some(REPORT_FD));
        let back = setup.config().unwrap();
        assert_eq!(back.dsn, c.dsn);
        assert_eq!(back.batch_size, 77);
        assert_eq!(back.poll_interval, Duration::from_millis(250));
        assert_eq!(back.max_runtime, Some(Duration::from_secs(9)));
        assert_eq!(back.routes, c.routes);
        assert!(back.drain);
        assert_eq!(back.notify, crate::config::Notify::Off);
        assert_eq!(back.stdout_lock, c.stdout_lock);
        assert_eq!(back.log_fd, Some(LOG_FD));
        assert_eq!(back.log_format, crate::log::Format::Json);
        assert!(back.log_journal);
        assert_eq!(back.webhook_config, c.webhook_config);
        assert_eq!(back.webhook_timeout, Duration::from_millis(2500));
        assert_eq!(back.webhook_secret.as_ref().unwrap().expose(), "whsec_x y");
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
        counts.count("stdout", crate::metrics::counts::Outcome::Delivered);
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
