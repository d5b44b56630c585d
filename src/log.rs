//! Leveled log lines on stderr: `2026-11-29T09:10:11.123Z INFO  [worker 0 pid 42] message`,
//! or with `--log-format json` one object per line with the same fields:
//! `{"ts":"2026-11-29T09:10:11.123Z","level":"INFO","process":"worker 0","pid":42,"msg":"message"}`.
//!
//! Under systemd (stderr is the stream `JOURNAL_STREAM` names), every line starts with its
//! syslog priority (`<3>` for ERROR, `<6>` for INFO, ...), which journald strips and stores, so
//! `journalctl -p err` works; text lines then leave out the timestamp (journald keeps its
//! own). Workers do not detect this themselves (their stderr is a pipe to the supervisor):
//! the supervisor tells them in their configuration, and the lines it forwards keep their
//! prefix.
//!
//! Hand-written (no framework): one global level, format and process tag, set once at start-up.
//! Each line is formatted first and written with a single `write_all`, so lines from several
//! threads and processes sharing stderr do not interleave. Callers never pass a DSN here; the
//! redacted form from `dsn::Dsn::redacted` is the only one that may be logged.
//!
//! One call is one physical line: control characters in the message (a newline in an event
//! type, a table name, a route) are escaped (in JSON, by JSON's own escapes), so logged values
//! cannot forge a line.
//!
//! A line about an event can carry its id, type, aggregate, route, attempt and outcome as
//! fields (`fields`; `warn!(event: f, "...")`): JSON lines add them as keys after `msg`, text
//! lines are unchanged (the message names them).
//!
//! The `log` crate's records (our dependencies') and the server's notices become lines of
//! ours too (`bridge`).
//!
//! A worker's stderr is a pipe to its supervisor, which forwards it. Once the supervisor is
//! gone, a worker logs to the copy of the supervisor's own stderr it was given instead
//! (`protocol::LOG_FD`), so its shutdown lines are not lost.

mod bridge;
mod fields;

pub(crate) use bridge::{install as install_bridge, server_notice};
pub use fields::{EventFields, EventOutcome};

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
    Critical = 50,
}

impl Level {
    /// The original tool's names (Python logging), in any case; `WARN` is accepted too.
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Some(Level::Debug),
            "INFO" => Some(Level::Info),
            "WARNING" | "WARN" => Some(Level::Warning),
            "ERROR" => Some(Level::Error),
            "CRITICAL" => Some(Level::Critical),
            _ => None,
        }
    }

    /// The syslog priority journald reads from a `<N>` prefix.
    fn priority(self) -> u8 {
        match self {
            Level::Debug => 7,
            Level::Info => 6,
            Level::Warning => 4,
            Level::Error => 3,
            Level::Critical => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }

    pub fn as_str(self) -> &'static str {
        self.name()
    }
}

/// `--log-format`: how a line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

impl Format {
    pub(crate) fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);
static JOURNAL: AtomicBool = AtomicBool::new(false);
/// The process's name (`supervisor`, `worker N`) and pid.
static PROCESS: OnceLock<(String, u32)> = OnceLock::new();

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    bridge::follow_level();
}

pub(crate) fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

pub(crate) fn format() -> Format {
    if JSON.load(Ordering::Relaxed) {
        Format::Json
    } else {
        Format::Text
    }
}

/// Whether lines carry syslog priority prefixes (they end up in the journal).
pub(crate) fn set_journal(on: bool) {
    JOURNAL.store(on, Ordering::Relaxed);
}

pub(crate) fn journal() -> bool {
    JOURNAL.load(Ordering::Relaxed)
}

/// Whether our stderr is the journal stream systemd connected us to: `JOURNAL_STREAM` holds
/// `DEV:INODE` of that stream, and it is ours only if fd 2 still is that file (a shell
/// redirect in between, or a child that inherited the variable, does not count).
pub(crate) fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_dev_ino(&v))
    else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// `DEV:INODE` as systemd writes it (two decimal numbers).
fn parse_dev_ino(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Names the process in every line: `supervisor` or `worker N`, plus the pid.
pub fn set_process(name: &str) {
    let _ = PROCESS.set((name.to_string(), std::process::id()));
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    write_line(level, None, args);
}

/// A line about an event: `fields` become keys of their own in JSON.
pub fn write_event(level: Level, fields: &EventFields<'_>, args: fmt::Arguments<'_>) {
    write_line(level, Some(fields), args);
}

fn write_line(level: Level, fields: Option<&EventFields<'_>>, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let (name, pid) = match PROCESS.get() {
        Some((name, pid)) => (name.as_str(), *pid),
        None => ("dispatchbox", std::process::id()),
    };
    let line = format_line(
        Line {
            level,
            ts: &rfc3339_now(),
            process: name,
            pid,
            msg: &args.to_string(),
            fields,
        },
        format(),
        journal(),
    );
    if !USE_FALLBACK.load(Ordering::Relaxed) {
        match std::io::stderr().lock().write_all(line.as_bytes()) {
            // The reader of our stderr (a worker's supervisor) is gone: go on in the copy of
            // the supervisor's own stderr, if we were given one.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && FALLBACK.get().is_some() => {
                USE_FALLBACK.store(true, Ordering::Relaxed);
            }
            _ => return,
        }
    }
    if let Some(mut f) = FALLBACK.get() {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A line that reached a worker's stderr without going through `write` (a compiled-in
/// handler's `eprintln!`), as the supervisor forwards it: when lines are JSON, wrapped into
/// a line of its own (level INFO, the worker as its process), so that every line stays an
/// object; None when it is to be copied as it is (text, or already one of our JSON lines).
pub(crate) fn foreign_line(text: &str, process: &str, pid: u32) -> Option<String> {
    if format() != Format::Json || is_json_line(text) {
        return None;
    }
    let l = Line {
        level: Level::Info,
        ts: &rfc3339_now(),
        process,
        pid,
        msg: text,
        fields: None,
    };
    Some(format_line(l, Format::Json, journal()))
}

/// `{"ts":...`, with or without a priority prefix: what `format_line` writes for JSON.
fn is_json_line(text: &str) -> bool {
    let rest = match text.strip_prefix('<') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => text,
    };
    let rest = rest.strip_prefix('>').unwrap_or(rest);
    rest.starts_with("{\"ts\":")
}

/// What one line says.
struct Line<'a> {
    level: Level,
    ts: &'a str,
    process: &'a str,
    pid: u32,
    msg: &'a str,
    fields: Option<&'a EventFields<'a>>,
}

/// The physical line, newline included.
fn format_line(l: Line<'_>, format: Format, journal: bool) -> String {
    let mut out = String::with_capacity(l.msg.len() + 64);
    if journal {
        out.push_str(&format!("<{}>", l.level.priority()));
    }
    match format {
        // journald stamps every line itself.
        Format::Text if journal => out.push_str(&format!(
            "{:<8} [{} pid {}] {}",
            l.level.name(),
            l.process,
            l.pid,
            escape_controls(l.msg)
        )),
        Format::Text => out.push_str(&format!(
            "{} {:<8} [{} pid {}] {}",
            l.ts,
            l.level.name(),
            l.process,
            l.pid,
            escape_controls(l.msg)
        )),
        Format::Json => {
            let s = |v: &str| serde_json::Value::from(v).to_string();
            let mut json = format!(
                "{{\"ts\":{},\"level\":{},\"process\":{},\"pid\":{},\"msg\":{}",
                s(l.ts),
                s(l.level.name()),
                s(l.process),
                l.pid,
                s(l.msg)
            );
            if let Some(f) = l.fields {
                f.write_json(&mut json);
            }
            json.push('}');
            out.push_str(&escape_json_controls(&json));
        }
    }
    out.push('\n');
    out
}

/// JSON escapes C0 characters itself, but leaves DEL and the C1 range (which terminals may
/// act on) as they are: `\u00NN` for those, which decodes to the same text.
fn escape_json_controls(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Where a worker logs once its supervisor, which forwards its stderr, is gone: the
/// supervisor's own stderr, inherited as a separate descriptor (`protocol::LOG_FD`, placed by the supervisor's
/// `spawn` module).
static FALLBACK: OnceLock<std::fs::File> = OnceLock::new();
static USE_FALLBACK: AtomicBool = AtomicBool::new(false);

pub fn set_fallback(f: std::fs::File) {
    let _ = FALLBACK.set(f);
}

/// From now on, log to the fallback (when there is one): stderr's reader is gone.
pub fn use_fallback() {
    if FALLBACK.get().is_some() {
        USE_FALLBACK.store(true, Ordering::Relaxed);
    }
}

/// `s` with every control character escaped: `\n`, `\r`, `\t`, else `\xNN` (C0, DEL) or
/// `\u{NN}` (C1). Backslashes are kept as they are, so escaping twice changes nothing (a
/// child's message the supervisor logs again stays readable).
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

// `warn!("...")`, or `warn!(event: fields, "...")` for a line about an event.
#[macro_export]
macro_rules! debug {
    (event: $f:expr, $($t:tt)*) => { $crate::log::write_event($crate::log::Level::Debug, &$f, format_args!($($t)*)) };
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! info {
    (event: $f:expr, $($t:tt)*) => { $crate::log::write_event($crate::log::Level::Info, &$f, format_args!($($t)*)) };
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    (event: $f:expr, $($t:tt)*) => { $crate::log::write_event($crate::log::Level::Warning, &$f, format_args!($($t)*)) };
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! error {
    (event: $f:expr, $($t:tt)*) => { $crate::log::write_event($crate::log::Level::Error, &$f, format_args!($($t)*)) };
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) };
}

/// Current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-29T09:10:11.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the epoch (UTC). Civil-from-days after Howard Hinnant's algorithm.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_935_011, 123), "2026-11-29T06:50:11.123Z");
    }

    #[test]
    fn control_characters_are_escaped_onto_one_line() {
        assert_eq!(escape_controls("plain ü \\n"), "plain ü \\n");
        assert_eq!(
            escape_controls("a\nERROR forged\r\tb"),
            "a\\nERROR forged\\r\\tb"
        );
        assert_eq!(
            escape_controls("\u{1}x\u{1b}[31m\u{7f}"),
            "\\x01x\\x1b[31m\\x7f"
        );
        assert_eq!(escape_controls("\u{85}\u{9f}"), "\\u{85}\\u{9f}");
        let once = escape_controls("x\ny\u{0}").into_owned();
        assert_eq!(
            escape_controls(&once),
            once,
            "escaping twice changes nothing"
        );
        assert!(!once.contains(|c: char| c.is_control()));
    }

    fn line(level: Level, msg: &str) -> Line<'_> {
        Line {
            level,
            ts: "2026-11-29T09:10:11.123Z",
            process: "worker 0",
            pid: 42,
            msg,
            fields: None,
        }
    }

    #[test]
    fn text_lines_carry_a_priority_only_for_the_journal() {
        assert_eq!(
            format_line(line(Level::Info, "hi\nthere"), Format::Text, false),
            "2026-11-29T09:10:11.123Z INFO     [worker 0 pid 42] hi\\nthere\n"
        );
        assert_eq!(
            format_line(line(Level::Error, "bad"), Format::Text, true),
            "<3>ERROR    [worker 0 pid 42] bad\n"
        );
        for (level, p) in [
            (Level::Debug, "<7>"),
            (Level::Info, "<6>"),
            (Level::Warning, "<4>"),
            (Level::Error, "<3>"),
            (Level::Critical, "<2>"),
        ] {
            assert!(format_line(line(level, "x"), Format::Text, true).starts_with(p));
            assert!(format_line(line(level, "x"), Format::Json, true).starts_with(p));
        }
    }

    #[test]
    fn json_lines_are_one_object_with_the_text_fields() {
        let msg = "a\n\"b\"\u{1b}[31m\u{7f}\u{85}\\";
        let l = format_line(line(Level::Warning, msg), Format::Json, false);
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
        assert!(!l.trim_end().contains(|c: char| c.is_control()), "{l}");
        assert!(l.starts_with(r#"{"ts":"2026-11-29T09:10:11.123Z","level":"WARNING","#));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "WARNING");
        assert_eq!(v["process"], "worker 0");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["msg"], msg);
    }

    #[test]
    fn event_fields_are_keys_in_json_and_absent_from_text() {
        let f = EventFields::id(7)
            .event_type(Some("order.created"))
            .route(Some("exec:/bin/x"))
            .attempt(3)
            .outcome(EventOutcome::Dead);
        let with = |format| {
            let mut l = line(Level::Warning, "event 7 is dead: x\ny");
            l.fields = Some(&f);
            format_line(l, format, false)
        };
        assert_eq!(
            with(Format::Text),
            format_line(
                line(Level::Warning, "event 7 is dead: x\ny"),
                Format::Text,
                false
            )
        );
        let l = with(Format::Json);
        assert!(l.ends_with("}\n") && l.matches('\n').count() == 1, "{l}");
        assert!(is_json_line(&l));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["msg"], "event 7 is dead: x\ny");
        assert_eq!(v["event_id"], 7);
        assert_eq!(v["event_type"], "order.created");
        assert_eq!(v["route"], "exec:/bin/x");
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["outcome"], "dead");
        assert!(
            l.contains(r#""msg":"event 7 is dead: x\ny","event_id":7,"#),
            "{l}"
        );
    }

    #[test]
    fn foreign_lines_are_recognised() {
        let ours = format_line(line(Level::Info, "x"), Format::Json, false);
        assert!(is_json_line(ours.trim_end()));
        let ours = format_line(line(Level::Info, "x"), Format::Json, true);
        assert!(is_json_line(ours.trim_end()));
        assert!(!is_json_line("thread 'x' panicked"));
        assert!(!is_json_line("{\"other\":1}"));
    }

    #[test]
    fn journal_stream_values_parse() {
        assert_eq!(parse_dev_ino("8:12345"), Some((8, 12345)));
        assert_eq!(parse_dev_ino("8:"), None);
        assert_eq!(parse_dev_ino("x:1"), None);
        assert_eq!(Format::parse("JSON"), Some(Format::Json));
        assert_eq!(Format::parse("logfmt"), None);
    }

    #[test]
    fn parses_levels_in_any_case() {
        assert_eq!(Level::parse("warn"), Some(Level::Warning));
        assert_eq!(Level::parse("Warning"), Some(Level::Warning));
        assert_eq!(Level::parse("critical"), Some(Level::Critical));
        assert_eq!(Level::parse("trace"), None);
    }
}
