//! Dispatchbox: a transactional-outbox worker for PostgreSQL.
//!
//! Applications insert an event row into the outbox table in the same transaction as their
//! business rows; Dispatchbox claims due events with `FOR UPDATE SKIP LOCKED` and a lease,
//! hands them to handlers on a thread pool, and writes the results back in batches. Delivery
//! is at least once; while the system is healthy, never twice.
//!
//! The binary is a thin `main.rs` over [`main_with`]. To compile your own handlers in, build
//! your own binary the same way (see `examples/custom_handler.rs`):
//!
//! ```no_run
//! use dispatchbox::{Event, Outcome, Pattern, Router};
//! use std::sync::Arc;
//!
//! fn main() -> std::process::ExitCode {
//!     let mut routes = Router::new();
//!     routes.add(Pattern::parse("order.*").unwrap(), "orders", Arc::new(|e: &Event| {
//!         println!("order event {}", e.id);
//!         Outcome::Delivered
//!     }));
//!     dispatchbox::main_with(routes)
//! }
//! ```

// The public API is what a compiled-in handler needs: the types below, `main_with`, and the
// logging macros (`info!`, `warn!`, ... write through `log`). Everything else is internal.
pub mod log;

mod admin;
mod backoff;
mod child;
mod cli;
mod config;
mod config_file;
mod connect;
mod dsn;
mod error;
mod handler;
mod metrics;
mod protocol;
mod redact;
mod sink;
mod store;
mod supervisor;
mod worker;

pub use error::{Error, Result};
pub use handler::{Event, Handler, Outcome, Pattern, Reply, Router};

/// For this crate's integration tests only (they test the SQL fencing and the DSN helpers
/// directly): not part of the API, no stability promised.
#[doc(hidden)]
pub mod internals {
    pub use crate::config::{OnDone, Order, Table};
    pub use crate::dsn::Dsn;
    pub use crate::handler::TypeFilter;
    pub use crate::store::{ClaimArgs, Claimed, Completion, Conn, Status};
}

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The whole command line: parse, pick the mode, map errors to exit codes. `compiled` routes
/// are added before any `--route` (and `*=stdout` is the default only when both are empty).
pub fn main_with(compiled: Router) -> ExitCode {
    // Keeps the start-up probe of fd 1 (a constructor) in every binary that links us.
    std::hint::black_box(&sink::stdout::PROBE_AT_START);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Before anything is logged. (A worker's stderr is a pipe to its supervisor, never the
    // journal itself: the supervisor tells it in its configuration's `log-journal`.)
    log::set_journal(log::stderr_is_journal());
    let (mode, raw) = match cli::parse(args) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    match mode {
        // A closed stdout (`dispatchbox --help | true`) is not worth a panic.
        cli::Mode::Help => {
            let _ = std::io::stdout().write_all(cli::HELP.as_bytes());
            ExitCode::from(error::exit::OK)
        }
        cli::Mode::Version => {
            let _ = std::io::stdout().write_all(version().as_bytes());
            ExitCode::from(error::exit::OK)
        }
        cli::Mode::Admin(command) => run_admin(command, &raw),
        cli::Mode::Worker(index) => run_worker(index, &compiled),
        cli::Mode::Run => run_supervisor(&raw, &compiled),
    }
}

/// `--version`: what a bug report needs (the git revision and target come from `build.rs`;
/// the OpenSSL version is the library loaded at run time, not the headers built against).
fn version() -> String {
    format!(
        "dispatchbox {}\ngit revision: {}\ntarget: {}\nTLS: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("DBX_BUILD_GIT_REV"),
        env!("DBX_BUILD_TARGET"),
        openssl::version::version()
    )
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// An admin command (`migrate`, `status`, `dead ...`, `prune`, `stats`).
fn run_admin(command: cli::Command, raw: &cli::RawArgs) -> ExitCode {
    let cfg = match config::AdminConfig::from_raw(raw, &env) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    log::set_level(cfg.log_level);
    log::set_format(cfg.log_format);
    log::set_process(command.name());
    log::install_bridge();
    if let Some(w) = dsn::cert_env_warning(&env) {
        warn!("{w}");
    }
    finish(admin::run(command, &cfg, raw))
}

/// A worker child (`--worker-index N`, started by the supervisor).
fn run_worker(index: u32, compiled: &Router) -> ExitCode {
    match child::run(index, compiled) {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            // For the supervisor, which reports it once with context; a child started
            // without one says it here.
            let fatal = protocol::Report::Fatal {
                code: e.exit_code(),
                message: e.to_string(),
            };
            if !child::report(&fatal) {
                return usage_error(&e);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// The supervisor: everything that can be checked before a worker starts is checked here,
/// so that bad input is one line and exit 2, not a crash loop.
fn run_supervisor(raw: &cli::RawArgs, compiled: &Router) -> ExitCode {
    let cfg = match config::Config::from_raw(raw, &env) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    log::set_level(cfg.log_level);
    log::set_format(cfg.log_format);
    log::set_process("supervisor");
    log::install_bridge();
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    for name in config::unknown_env_vars(names.iter().map(String::as_str)) {
        warn!("ignoring unknown environment variable {name} (see --help)");
    }
    if let Some(w) = dsn::cert_env_warning(&env) {
        warn!("{w}");
    }
    // The routes: a bad `exec:` target is a usage error, not a crash loop.
    let router = match sink::build_router(&cfg, compiled) {
        Ok(r) => r,
        Err(e) => return usage_error(&e),
    };
    // A closed stdout would be reopened on /dev/null by the runtime: every event routed
    // there would be marked done and lost. Workers inherit our stdout.
    if let Err(e) = sink::stdout::check_at_start(&router) {
        return usage_error(&e);
    }
    // And the TLS files: unreadable certificates are a usage error, reported once.
    if let Err(e) = cfg.dsn.check() {
        return usage_error(&e);
    }
    finish(supervisor::run(&cfg))
}

fn finish(r: Result<u8>) -> ExitCode {
    match r {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn usage_error(e: &Error) -> ExitCode {
    // Once the configuration chose JSON, a refusal is a JSON line like every other.
    if log::format() == log::Format::Json {
        error!("{e}");
        return ExitCode::from(e.exit_code());
    }
    let priority = if log::journal() { "<3>" } else { "" };
    let line = format!(
        "{priority}dispatchbox: {}\n",
        log::escape_controls(&e.to_string())
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    ExitCode::from(e.exit_code())
}
