//! The built-in targets. A route maps an event-type pattern to a target (`--route
//! PATTERN=TARGET`); a target is built as a [`Handler`]. Built in: `stdout` (one JSON line per
//! event) and `exec:COMMAND ARGS...` (run a program per event). The HTTP webhook target will
//! live here too. Compiled-in handlers are the other kind of target (see `lib.rs`).

pub mod exec;
pub mod stdout;

use crate::error::{Error, Result};
use crate::handler::Handler;
use std::sync::Arc;
use std::time::Duration;

/// Settings the built-in targets share.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub exec_timeout: Duration,
    /// See `Config::stdout_lock`.
    pub stdout_lock: Option<std::path::PathBuf>,
}

/// Builds the handler a `--route` target names, or says what is wrong with it (a usage error).
pub fn build(target: &str, opts: &SinkOptions) -> Result<Arc<dyn Handler>> {
    if target == "stdout" {
        return Ok(Arc::new(stdout::Stdout::new(opts.stdout_lock.as_deref())?));
    }
    if let Some(cmd) = target.strip_prefix("exec:") {
        return Ok(Arc::new(exec::Exec::new(cmd, opts.exec_timeout)?));
    }
    Err(Error::Usage(format!(
        "unknown route target `{target}` (expected `stdout` or `exec:COMMAND ARGS...`)"
    )))
}
