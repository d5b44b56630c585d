//! The `log` facade, which our dependencies write to (the PostgreSQL driver, native-tls,
//! ureq), bridged onto our own lines; and the server's NOTICE/WARNING messages, which the
//! driver hands to a callback, logged as lines of ours.
//!
//! What the crates log at which level (read from their sources) decides the mapping:
//! - `error` and `warn` (ureq's proxy warning) → ERROR and WARNING;
//! - `info` → DEBUG: the only `info` in the tree is the driver's default notice printer,
//!   which our notice callback replaces;
//! - `debug` → DEBUG: TLS set-up problems (native-tls: a CA file it could not load), ureq's
//!   request, response and pool decisions (it leaves out the URL's path and query and every
//!   header that may carry a secret) — except `tokio_postgres`'s, which is every statement
//!   with its parameter values: a line per poll, and event payloads in the log;
//! - `trace` → never (`log`'s maximum level stays at `debug`): at `trace`, ureq writes URLs
//!   in full, query tokens included.
//!
//! Invariant: a crate's record is one line of ours (`target: message`, escaped like every
//! line), shown only when `--log-level` lets its mapped level through.

use super::{enabled, write, Level};
use std::sync::atomic::{AtomicBool, Ordering};

struct Bridge;

static BRIDGE: Bridge = Bridge;
/// Whether our bridge is the `log` crate's logger (a compiled-in handler's binary may have
/// installed its own first; then its level is left alone).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Makes the `log` crate's records lines of ours, at the level set with `set_level`.
pub(crate) fn install() {
    if ::log::set_logger(&BRIDGE).is_ok() {
        INSTALLED.store(true, Ordering::Relaxed);
        follow_level();
    }
}

/// Lets through the `log` crate only the records that can be shown at our level (the crates
/// skip formatting the others).
pub(super) fn follow_level() {
    if !INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    ::log::set_max_level(if enabled(Level::Debug) {
        ::log::LevelFilter::Debug
    } else {
        ::log::LevelFilter::Warn
    });
}

/// Our level for a record, or None when it is never shown.
fn level_for(meta: &::log::Metadata<'_>) -> Option<Level> {
    match meta.level() {
        ::log::Level::Error => Some(Level::Error),
        ::log::Level::Warn => Some(Level::Warning),
        ::log::Level::Info => Some(Level::Debug),
        ::log::Level::Debug if is_statement_chatter(meta.target()) => None,
        ::log::Level::Debug => Some(Level::Debug),
        ::log::Level::Trace => None,
    }
}

fn is_statement_chatter(target: &str) -> bool {
    target == "tokio_postgres" || target.starts_with("tokio_postgres::")
}

impl ::log::Log for Bridge {
    fn enabled(&self, meta: &::log::Metadata<'_>) -> bool {
        level_for(meta).is_some_and(enabled)
    }

    fn log(&self, record: &::log::Record<'_>) {
        if let Some(level) = level_for(record.metadata()) {
            write(
                level,
                format_args!("{}: {}", record.target(), record.args()),
            );
        }
    }

    fn flush(&self) {}
}

/// A NOTICE, WARNING (or, with a lowered `client_min_messages`, INFO, LOG, DEBUG) message the
/// server sent on one of our connections: a trigger's `RAISE`, a deprecation. WARNING is a
/// WARNING line, NOTICE, INFO and LOG are INFO lines, DEBUG ones are DEBUG lines; each carries
/// the SQLSTATE and the message's detail, hint and context when there are any.
pub(crate) fn server_notice(notice: postgres::error::DbError) {
    use postgres::error::Severity;
    let level = match notice.parsed_severity() {
        Some(Severity::Debug) => Level::Debug,
        Some(Severity::Notice | Severity::Info | Severity::Log) => Level::Info,
        // WARNING, and anything an older server names only in its own language.
        _ => Level::Warning,
    };
    write(level, format_args!("{}", describe_notice(&notice)));
}

/// `server WARNING 01000: message (detail: ...; hint: ...; context: ...)`.
fn describe_notice(n: &postgres::error::DbError) -> String {
    let mut out = format!(
        "server {} {}: {}",
        n.severity(),
        n.code().code(),
        n.message()
    );
    let extra: Vec<String> = [
        ("detail", n.detail()),
        ("hint", n.hint()),
        ("context", n.where_()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
    .collect();
    if !extra.is_empty() {
        out.push_str(&format!(" ({})", extra.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(level: ::log::Level, target: &str) -> ::log::Metadata<'_> {
        ::log::Metadata::builder()
            .level(level)
            .target(target)
            .build()
    }

    #[test]
    fn crate_levels_map_onto_ours() {
        use ::log::Level as L;
        assert_eq!(level_for(&meta(L::Error, "x")), Some(Level::Error));
        assert_eq!(level_for(&meta(L::Warn, "ureq")), Some(Level::Warning));
        assert_eq!(level_for(&meta(L::Info, "postgres")), Some(Level::Debug));
        assert_eq!(level_for(&meta(L::Debug, "native_tls")), Some(Level::Debug));
        assert_eq!(level_for(&meta(L::Debug, "ureq::run")), Some(Level::Debug));
        assert_eq!(level_for(&meta(L::Debug, "tokio_postgres::query")), None);
        assert_eq!(level_for(&meta(L::Debug, "tokio_postgres")), None);
        assert_eq!(
            level_for(&meta(L::Debug, "tokio_postgresx")),
            Some(Level::Debug)
        );
        assert_eq!(level_for(&meta(L::Trace, "ureq::util")), None);
    }
}
