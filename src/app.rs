//! The program's top: parse the command line, pick the mode (help, version, `generate`, an
//! admin command, a worker child, the supervisor), and map every error to its exit code.
//! Nothing below this module exits the process except a worker that abandons its handler
//! threads (`child.rs`).
//!
//! Usage errors are one line on stderr (escaped), or one JSON log line once the configuration
//! chose JSON; other errors are logged. The codes are `error::exit`'s.

use crate::error::{Error, Result};
use crate::handler::Router;
use crate::{admin, child, cli, config, dsn, error, log, sink, supervisor, warn};
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
        cli::Mode::Generate(what) => {
            let _ = std::io::stdout().write_all(cli::generate::render(what).as_bytes());
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

/// A worker child (`--worker-index N`, started by the supervisor). Its error goes to the
/// supervisor, which reports it once with context; a child started without one says it here.
fn run_worker(index: u32, compiled: &Router) -> ExitCode {
    match child::run(index, compiled) {
        Ok(c) => ExitCode::from(c),
        Err(e) if child::report_fatal(&e) => ExitCode::from(e.exit_code()),
        Err(e) => usage_error(&e),
    }
}

/// The supervisor: everything that can be checked before a worker starts is checked here,
/// so that bad input is one line and exit 2, not a crash loop.
fn run_supervisor(raw: &cli::RawArgs, compiled: &Router) -> ExitCode {
    let cfg = match config::Config::from_raw(raw, &env) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    log::set_level(cfg.log.level);
    log::set_format(cfg.log.format);
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
