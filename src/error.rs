//! The one error type of Dispatchbox, and how each kind maps to an exit code.
//!
//! Messages are short, lowercase, and never contain a DSN's password: DSN errors name the
//! offending parameter, never its value.

use std::fmt;

/// Exit codes, documented in the README ("Exit codes"). A cron wrapper can act on them.
pub mod exit {
    /// Drained, or stopped by a signal after a clean shutdown.
    pub const OK: u8 = 0;
    /// Unexpected failure (a bug, an I/O error on our own pipes, a crash-looping worker).
    pub const FAILURE: u8 = 1;
    /// Bad flags, environment or DSN: nothing was started.
    pub const USAGE: u8 = 2;
    /// The database could not be reached within `--connect-timeout`.
    pub const UNREACHABLE: u8 = 3;
    /// The database answered but refused us: bad password, missing database, table or
    /// column (run `dispatchbox migrate`), missing privilege. Retrying will not help.
    pub const DATABASE: u8 = 4;
    /// `--max-runtime` elapsed in `--drain` mode before every due event was processed.
    pub const TIME_LIMIT: u8 = 5;
}

#[derive(Debug)]
pub enum Error {
    /// A flag, an environment variable or the DSN is invalid.
    Usage(String),
    /// The database could not be reached (connection refused, timeout, network).
    Unreachable(String),
    /// The database refused us for a reason that retrying will not fix.
    Database(String),
    /// A postgres error in the middle of work (the caller decides retry vs fatal).
    Postgres(postgres::Error),
    Io(std::io::Error),
    Json(serde_json::Error),
    /// Anything else worth a one-line message.
    Other(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Unreachable(_) => exit::UNREACHABLE,
            Error::Database(_) => exit::DATABASE,
            Error::Postgres(e) if is_transient(e) => exit::UNREACHABLE,
            Error::Postgres(_) => exit::DATABASE,
            Error::Io(_) | Error::Json(_) | Error::Other(_) => exit::FAILURE,
        }
    }
}

/// True when a postgres error is worth retrying after reconnecting: the connection broke or
/// could not be made (an I/O error underneath), the server is shutting down or restarting,
/// or it is out of resources or a lock for now. Everything else — authentication, a missing
/// table, a certificate that does not verify, a server without TLS under sslmode=require,
/// a configuration error — fails the same way next time. Decided with the driver's
/// predicates, SQLSTATE classes and error types, never by matching message text.
pub fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        // 08: connection exception, 53: insufficient resources, 57P0x: admin/crash
        // shutdown or cannot connect now.
        return c.starts_with("08")
            || c.starts_with("53")
            || c.starts_with("57P0")
            || c == "57014" // query_canceled (statement_timeout)
            || c == "55P03" // lock_not_available (lock_timeout)
            || c == "25006" // read_only_sql_transaction (during a failover)
            || c == "40001" // serialization_failure
            || c == "40P01"; // deadlock_detected
    }
    // No SQLSTATE: transient only when an I/O error is the cause (refused, reset, timed out;
    // also inside a TLS handshake). A certificate that fails verification has no I/O cause.
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        src = cause.source();
    }
    false
}

/// A postgres error as one line: the server's message (with its SQLSTATE) when there is one,
/// otherwise the driver's description. Neither contains connection parameters.
pub fn describe_pg(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                src = cause.source();
            }
            s
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Unreachable(m) | Error::Database(m) | Error::Other(m) => {
                f.write_str(m)
            }
            Error::Postgres(e) => write!(f, "database error: {}", describe_pg(e)),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Json(e) => write!(f, "json error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Postgres(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Postgres(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
