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

// This file is the library's face and the module list only; the program's top (modes, exit
// codes) is `app.rs`. The public API is what a compiled-in handler needs: the types below,
// `main_with`, and the logging macros (`info!`, `warn!`, ... write through `log`). Everything
// else is internal.
pub mod log;

mod admin;
mod app;
mod backoff;
mod child;
mod cli;
mod config;
mod config_file;
mod connect;
mod dsn;
mod error;
mod event;
mod handler;
mod metrics;
mod protocol;
mod redact;
mod sink;
mod store;
mod supervisor;
mod worker;

pub use app::main_with;
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
