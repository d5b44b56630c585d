//! The one error type of Dispatchbox, and how each kind maps to an exit code.
//!
//! Messages are short, lowercase, and never contain a DSN's password: DSN errors name the
//! offending parameter, never its value.

use postgres::error::SqlState;
use std::fmt;

/// Exit codes, in one table ([`exit::CODES`]): the constants, the EXIT CODES section of
/// `--help`, the man page, docs/reference.md and (checked by a test) docs/operations.md's "Exit
/// codes" table come from it. A cron wrapper can act on them.
pub mod exit {
    /// One exit code: its number, its constant's name, and what it means (a docs table
    /// cell: Markdown, one line).
    #[derive(Debug)]
    pub struct ExitCode {
        pub code: u8,
        pub name: &'static str,
        pub meaning: &'static str,
    }

    const fn entry(code: u8, name: &'static str, meaning: &'static str) -> ExitCode {
        ExitCode {
            code,
            name,
            meaning,
        }
    }

    /// Every exit code, in order.
    pub const CODES: &[ExitCode] = &[
        entry(
            0,
            "OK",
            "drained (`--drain`), or stopped cleanly by a signal",
        ),
        entry(
            1,
            "FAILURE",
            "unexpected failure (a worker crash-looping, an I/O error)",
        ),
        entry(
            2,
            "USAGE",
            "bad flags, environment or DSN, a missing `exec:` program, or stdout closed while a \
             route writes to it; nothing was started",
        ),
        entry(
            3,
            "UNREACHABLE",
            "the database could not be reached within `--connect-timeout` (also: it accepted the \
             connection but never answered)",
        ),
        entry(
            4,
            "DATABASE",
            "the database refused: authentication, missing database/table/column (run \
             `dispatchbox migrate`), privileges, TLS verification, a read-only server \
             (standby), something that is not PostgreSQL on the port",
        ),
        entry(
            5,
            "TIME_LIMIT",
            "`--max-runtime` elapsed before a `--drain` finished",
        ),
        entry(
            6,
            "DEAD_EVENTS",
            "only with `--fail-on-dead`: the run ended cleanly (drained, or stopped), but events \
             went dead during it (each was logged with a WARNING)",
        ),
        entry(
            7,
            "THRESHOLD",
            "`dispatchbox status` with `--max-lag`/`--max-dead`/`--max-due`: a threshold was \
             exceeded",
        ),
        entry(
            8,
            "MIGRATION_NEEDED",
            "`dispatchbox migrate --check`: the table is missing, lacks columns, the claim index \
             or the index of dead rows",
        ),
    ];

    /// The code named `name` in [`CODES`]; a name that is not there does not compile.
    const fn code(name: &str) -> u8 {
        let mut i = 0;
        while i < CODES.len() {
            let (a, b) = (CODES[i].name.as_bytes(), name.as_bytes());
            let mut same = a.len() == b.len();
            let mut j = 0;
            while same && j < a.len() {
                same = a[j] == b[j];
                j += 1;
            }
            if same {
                return CODES[i].code;
            }
            i += 1;
        }
        panic!("not in exit::CODES")
    }

    pub const OK: u8 = code("OK");
    /// Also a bug, or a crash-looping worker.
    pub const FAILURE: u8 = code("FAILURE");
    pub const USAGE: u8 = code("USAGE");
    pub const UNREACHABLE: u8 = code("UNREACHABLE");
    /// Retrying will not help.
    pub const DATABASE: u8 = code("DATABASE");
    pub const TIME_LIMIT: u8 = code("TIME_LIMIT");
    /// A worker ending cleanly exits with this code whenever it saw an event go dead; the
    /// supervisor passes it on only with `--fail-on-dead` (see `supervisor::policy::run_code`).
    pub const DEAD_EVENTS: u8 = code("DEAD_EVENTS");
    pub const THRESHOLD: u8 = code("THRESHOLD");
    pub const MIGRATION_NEEDED: u8 = code("MIGRATION_NEEDED");
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
/// a configuration error, a read-only server (25006: a standby, or
/// `default_transaction_read_only`) — fails the same way next time. Decided with the
/// driver's predicates, its `SqlState` constants and error types, never by message text.
pub fn is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Whole classes too: a code added later to class 08 (connection exception) or 53
        // (insufficient resources) is still a passing connection or resource problem.
        let class = code.code().get(..2);
        return matches!(class, Some("08" | "53")) || TRANSIENT.contains(code);
    }
    // No SQLSTATE: transient only when an I/O error is the cause (refused, reset, timed out;
    // also inside a TLS handshake). A certificate that fails verification has no I/O cause.
    io_cause(e).is_some()
}

/// The SQLSTATEs worth a retry: every code of class 08 (connection exception) and class 53
/// (insufficient resources), the 57P0x shutdowns and "cannot connect now", and the
/// statement-level ones that the next attempt usually avoids.
const TRANSIENT: &[SqlState] = &[
    SqlState::CONNECTION_EXCEPTION,
    SqlState::CONNECTION_DOES_NOT_EXIST,
    SqlState::CONNECTION_FAILURE,
    SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
    SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
    SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
    SqlState::PROTOCOL_VIOLATION,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::CONFIGURATION_LIMIT_EXCEEDED,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::DATABASE_DROPPED,
    SqlState::IDLE_SESSION_TIMEOUT,
    SqlState::QUERY_CANCELED,     // statement_timeout
    SqlState::LOCK_NOT_AVAILABLE, // lock_timeout
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_DEADLOCK_DETECTED,
];

/// A read-only server or session (a standby, or `default_transaction_read_only`).
pub fn is_read_only(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// What a failed connection attempt means.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectFault {
    /// Refused, reset, closed, timed out, starting up: try again.
    Transient,
    /// The server is read-only (`target_session_attrs=read-write` found no writable host).
    ReadOnly,
    /// Something answered that is not a PostgreSQL server (a wrong port).
    NotPostgres,
    /// Authentication, a missing database, TLS verification, ...: retrying will not help.
    Refused,
}

/// Classifies a failed connection attempt by the driver's error kinds: bytes that do not
/// frame as PostgreSQL messages (the codec's `InvalidInput`/`InvalidData`, or `Other` for a
/// stream that ends inside a message, and the driver's "unexpected message") come from
/// something that is not PostgreSQL; end of stream, resets and refusals stay transient
/// (a restarting server). Errors the driver makes itself carry no OS error number.
pub fn classify_connect(e: &postgres::Error) -> ConnectFault {
    use std::io::ErrorKind;
    if e.is_closed() {
        return ConnectFault::Transient;
    }
    if is_read_only(e) {
        return ConnectFault::ReadOnly;
    }
    if e.code().is_some() {
        return if is_transient(e) {
            ConnectFault::Transient
        } else {
            ConnectFault::Refused
        };
    }
    match io_cause(e) {
        Some(io) if io.raw_os_error().is_none() => match io.kind() {
            // target_session_attrs=read-write on a read-only server.
            ErrorKind::PermissionDenied => ConnectFault::ReadOnly,
            ErrorKind::InvalidInput | ErrorKind::InvalidData | ErrorKind::Other => {
                ConnectFault::NotPostgres
            }
            _ => ConnectFault::Transient,
        },
        Some(_) => ConnectFault::Transient,
        // No cause at all, no SQLSTATE, not closed: the driver's "unexpected message".
        None if std::error::Error::source(e).is_none() => ConnectFault::NotPostgres,
        None => ConnectFault::Refused,
    }
}

/// The first I/O error in the cause chain.
fn io_cause(e: &postgres::Error) -> Option<&std::io::Error> {
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        src = cause.source();
    }
    None
}

/// The one line for a read-only server, at start-up or mid-run.
pub fn read_only_message(what: &str) -> String {
    format!(
        "{what}: the server is read-only (a standby, or default_transaction_read_only is on for \
         this role or database); dispatchbox needs a writable primary"
    )
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

#[cfg(test)]
mod tests {
    use super::exit::{self, CODES};

    #[test]
    fn exit_codes_are_numbered_in_order_and_named_once() {
        for (i, c) in CODES.iter().enumerate() {
            assert_eq!(usize::from(c.code), i, "{c:?}");
            assert_eq!(CODES.iter().filter(|d| d.name == c.name).count(), 1);
            assert!(!c.meaning.contains(['\n', '|']), "{c:?}");
        }
        assert_eq!(
            [
                exit::OK,
                exit::USAGE,
                exit::DEAD_EVENTS,
                exit::MIGRATION_NEEDED
            ],
            [0, 2, 6, 8]
        );
    }

    /// The "Exit codes" table of docs/operations.md lists exactly these codes, with these
    /// meanings (its last column, what a cron wrapper should do, is that page's own).
    #[test]
    fn the_operations_page_lists_exactly_these_exit_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");
        let page = std::fs::read_to_string(path).unwrap();
        let section = page.split("\n## Exit codes\n").nth(1).unwrap_or_default();
        let rows: Vec<(String, String)> = section
            .lines()
            .skip_while(|l| !l.starts_with("| --- "))
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                (
                    cells[0].to_string(),
                    cells.get(1).unwrap_or(&"").to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = CODES
            .iter()
            .map(|c| (c.code.to_string(), c.meaning.to_string()))
            .collect();
        let expected: String = CODES
            .iter()
            .map(|c| format!("| {} | {} | ... |\n", c.code, c.meaning))
            .collect();
        assert!(
            rows == want,
            "docs/operations.md \"## Exit codes\" differs from error::exit::CODES; its rows should be:\n\
             {expected}"
        );
    }
}
