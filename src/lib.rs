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

pub mod log;

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod connect;
pub mod dsn;
pub mod error;
pub mod handler;
pub mod sink;
pub mod store;
pub mod supervisor;
pub mod worker;

mod child;
mod protocol;

pub use error::{Error, Result};
pub use handler::{Event, Handler, Outcome, Pattern, Router};

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// The whole command line: parse, pick the mode, map errors to exit codes. `compiled` routes
/// are added before any `--route` (and `*=stdout` is the default only when both are empty).
pub fn main_with(compiled: Router) -> ExitCode {
    // Keeps the start-up probe of fd 1 (a constructor) in every binary that links us.
    std::hint::black_box(&sink::stdout::PROBE_AT_START);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    let (mode, raw) = match cli::parse(args) {
        Ok(p) => p,
        Err(e) => return usage_error(&e),
    };
    let code = match mode {
        // A closed stdout (`dispatchbox --help | true`) is not worth a panic.
        cli::Mode::Help => {
            let _ = std::io::stdout().write_all(cli::HELP.as_bytes());
            Ok(error::exit::OK)
        }
        cli::Mode::Version => {
            let _ = writeln!(
                std::io::stdout(),
                "dispatchbox {}",
                env!("CARGO_PKG_VERSION")
            );
            Ok(error::exit::OK)
        }
        cli::Mode::Migrate | cli::Mode::Stats => {
            let cfg = match config::AdminConfig::from_raw(&raw, &env) {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            log::set_level(cfg.log_level);
            log::set_process(if mode == cli::Mode::Migrate {
                "migrate"
            } else {
                "stats"
            });
            let r = if mode == cli::Mode::Migrate {
                admin::migrate(&cfg)
            } else {
                admin::stats(&cfg)
            };
            r.map(|_| error::exit::OK)
        }
        cli::Mode::Worker(index) => match child::run(index, &compiled) {
            Ok(c) => Ok(c),
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
                return ExitCode::from(e.exit_code());
            }
        },
        cli::Mode::Run => {
            let cfg = match config::Config::from_raw(&raw, &env) {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            log::set_level(cfg.log_level);
            log::set_process("supervisor");
            let names: Vec<String> = std::env::vars_os()
                .filter_map(|(k, _)| k.into_string().ok())
                .collect();
            for name in config::unknown_env_vars(names.iter().map(String::as_str)) {
                warn!("ignoring unknown environment variable {name} (see --help)");
            }
            // Check the routes now: a bad `exec:` target is a usage error, not a crash loop.
            let router = match sink::build_router(&cfg, &compiled) {
                Ok(r) => r,
                Err(e) => return usage_error(&e),
            };
            // A closed stdout would be reopened on /dev/null by the runtime: every event
            // routed there would be marked done and lost. Workers inherit our stdout.
            if let Err(e) = sink::stdout::check_at_start(&router) {
                return usage_error(&e);
            }
            // And the TLS files: unreadable certificates are a usage error, reported once.
            if let Err(e) = cfg.dsn.check() {
                return usage_error(&e);
            }
            supervisor::run(&cfg)
        }
    };
    match code {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn usage_error(e: &Error) -> ExitCode {
    let line = format!("dispatchbox: {}\n", log::escape_controls(&e.to_string()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    ExitCode::from(e.exit_code())
}
