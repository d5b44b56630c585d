//! Leveled log lines on stderr: `2026-11-29T09:10:11.123Z INFO  [worker 0 pid 42] message`.
//!
//! Hand-written (no framework): one global level and one process tag, set once at start-up.
//! Each line is formatted first and written with a single `write_all`, so lines from several
//! threads and processes sharing stderr do not interleave. Callers never pass a DSN here; the
//! redacted form from `dsn::Dsn::redacted` is the only one that may be logged.
//!
//! One call is one physical line: control characters in the message (a newline in an event
//! type, a table name, a route) are escaped, so logged values cannot forge a line.
//!
//! A worker's stderr is a pipe to its supervisor, which forwards it. Once the supervisor is
//! gone, a worker logs to the copy of the supervisor's own stderr it was given instead
//! (`protocol::LOG_FD`), so its shutdown lines are not lost.

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

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static TAG: OnceLock<String> = OnceLock::new();

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Names the process in every line: `supervisor` or `worker N`, plus the pid.
pub fn set_process(name: &str) {
    let _ = TAG.set(format!("{name} pid {}", std::process::id()));
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let tag = TAG.get().map(String::as_str).unwrap_or("dispatchbox");
    let message = args.to_string();
    let line = format!(
        "{} {:<8} [{}] {}\n",
        rfc3339_now(),
        level.name(),
        tag,
        escape_controls(&message)
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

#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warning, format_args!($($t)*)) } }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }

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

    #[test]
    fn parses_levels_in_any_case() {
        assert_eq!(Level::parse("warn"), Some(Level::Warning));
        assert_eq!(Level::parse("Warning"), Some(Level::Warning));
        assert_eq!(Level::parse("critical"), Some(Level::Critical));
        assert_eq!(Level::parse("trace"), None);
    }
}
