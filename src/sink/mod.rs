//! The built-in targets. A route maps an event-type pattern to a target (`--route
//! PATTERN=TARGET`); a target is built as a [`Handler`]. Built in: `stdout` (one JSON line per
//! event), `exec:COMMAND ARGS...` (run a program per event), `pipe:COMMAND ARGS...` (a
//! long-running process that acknowledges each event) and `http://…` / `https://…` (a Standard
//! Webhooks POST per event). Compiled-in handlers are the other kind of target (see `lib.rs`);
//! `build_router` joins the `--route`s to the compiled-in routes. `process/` is what `exec:`
//! and `pipe:` share (starting a program, the registry of running process groups).

pub mod exec;
pub mod pipe;
pub(crate) mod process;
pub mod stdout;
pub mod webhook;

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
    pub pipe_window: usize,
    pub pipe_processes: usize,
    /// See `config::Sinks::stdout_lock`.
    pub stdout_lock: Option<std::path::PathBuf>,
    pub webhook: webhook::WebhookDefaults,
    /// `--webhook-config`, read and checked.
    pub webhook_file: Option<webhook::SettingsFile>,
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
        return Ok(Arc::new(pipe::Pipe::new(
            cmd,
            opts.pipe_timeout,
            opts.pipe_window,
            opts.pipe_processes,
        )?));
    }
    if webhook::is_webhook(target) {
        let own = opts.webhook_file.as_ref().and_then(|f| f.get(target));
        return Ok(Arc::new(webhook::Webhook::new(target, &opts.webhook, own)?));
    }
    Err(Error::Usage(format!(
        "unknown route target `{}` (expected `stdout`, `exec:COMMAND ARGS...`, \
         `pipe:COMMAND ARGS...` or an http:// or https:// URL)",
        crate::redact::route_target(target)
    )))
}

/// Builds the router from compiled-in routes plus `--route`s (`*=stdout` when both are empty).
pub(crate) fn build_router(cfg: &Config, compiled: &Router) -> Result<Router> {
    let opts = SinkOptions {
        exec_timeout: cfg.sinks.exec_timeout,
        pipe_timeout: cfg.sinks.pipe_timeout,
        pipe_window: cfg.sinks.pipe_window,
        pipe_processes: cfg.sinks.pipe_processes,
        stdout_lock: cfg.sinks.stdout_lock.clone(),
        webhook: webhook_defaults(cfg)?,
        webhook_file: match &cfg.sinks.webhook_config {
            Some(path) => Some(webhook::SettingsFile::load(path)?),
            None => None,
        },
    };
    let mut router = compiled.clone();
    let mut routes = cfg.sinks.routes.clone();
    if routes.is_empty() && router.is_empty() {
        routes.push(("*".into(), "stdout".into()));
    }
    let from = cfg.sinks.route_source;
    for (pattern, target) in &routes {
        let p = Pattern::parse(pattern).map_err(|e| Error::Usage(format!("{from}: {e}")))?;
        let shown = format!("{pattern}={}", crate::redact::route_target(target));
        if compiled.has(&p) {
            return Err(Error::Usage(format!(
                "{from} {shown}: this binary has a compiled-in route for `{p}`, \
                 which would take precedence; remove the route or use another pattern"
            )));
        }
        let h = build(target, &opts).map_err(|e| Error::Usage(format!("{from} {shown}: {e}")))?;
        router.add(p, target.clone(), h);
    }
    if let Some(file) = &opts.webhook_file {
        let targets: Vec<&str> = routes.iter().map(|(_, t)| t.as_str()).collect();
        file.check_used(&targets)?;
    }
    Ok(router)
}

/// The settings every webhook route starts from: the flags, and the secret from the
/// environment (checked here, so that a bad one is a usage error even without a route).
fn webhook_defaults(cfg: &Config) -> Result<webhook::WebhookDefaults> {
    let secrets = match &cfg.sinks.webhook_secret {
        Some(s) => webhook::Secret::parse_list(s.expose())
            .map_err(|e| Error::Usage(format!("{}: {e}", crate::cli::defs::WEBHOOK_SECRET_VAR)))?,
        None => Vec::new(),
    };
    Ok(webhook::WebhookDefaults {
        secrets,
        timeout: cfg.sinks.webhook_timeout,
        connect_timeout: cfg.sinks.webhook_timeout.min(webhook::CONNECT_TIMEOUT),
        threads: cfg.threads,
    })
}
