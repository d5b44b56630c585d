//! The built-in targets. A route maps an event-type pattern to a target (`--route
//! PATTERN=TARGET`); a target is built as a [`Handler`]. Built in: `stdout` (one JSON line per
//! event), `exec:COMMAND ARGS...` (run a program per event) and `pipe:COMMAND ARGS...` (a
//! long-running process that acknowledges each event). The HTTP webhook target will
//! live here too. Compiled-in handlers are the other kind of target (see `lib.rs`);
//! `build_router` joins the `--route`s to the compiled-in routes.

pub mod exec;
pub mod pipe;
pub mod stdout;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::handler::{Handler, Pattern, Router};
use std::sync::Arc;
use std::time::Duration;

/// Settings the built-in targets share.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub exec_timeout: Duration,
    pub pipe_timeout: Duration,
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
    if let Some(cmd) = target.strip_prefix("pipe:") {
        return Ok(Arc::new(pipe::Pipe::new(cmd, opts.pipe_timeout)?));
    }
    Err(Error::Usage(format!(
        "unknown route target `{target}` (expected `stdout`, `exec:COMMAND ARGS...` or `pipe:COMMAND ARGS...`)"
    )))
}

/// Builds the router from compiled-in routes plus `--route`s (`*=stdout` when both are empty).
pub(crate) fn build_router(cfg: &Config, compiled: &Router) -> Result<Router> {
    let opts = SinkOptions {
        exec_timeout: cfg.exec_timeout,
        pipe_timeout: cfg.pipe_timeout,
        stdout_lock: cfg.stdout_lock.clone(),
    };
    let mut router = compiled.clone();
    let mut routes = cfg.routes.clone();
    if routes.is_empty() && router.is_empty() {
        routes.push(("*".into(), "stdout".into()));
    }
    let from = cfg.route_source;
    for (pattern, target) in &routes {
        let p = Pattern::parse(pattern).map_err(|e| Error::Usage(format!("{from}: {e}")))?;
        if compiled.has(&p) {
            return Err(Error::Usage(format!(
                "{from} {pattern}={target}: this binary has a compiled-in route for `{p}`, \
                 which would take precedence; remove the route or use another pattern"
            )));
        }
        let h = build(target, &opts)
            .map_err(|e| Error::Usage(format!("{from} {pattern}={target}: {e}")))?;
        router.add(p, target.clone(), h);
    }
    Ok(router)
}
