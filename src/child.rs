//! A worker child's start-up: read the configuration the supervisor wrote on our stdin, take
//! the report pipe, wire signals and the rest of stdin to the worker's inbox, run the worker.
//!
//! Stdin after the configuration carries `stop` / `stop-now` (`protocol::Control`); EOF means
//! the supervisor is gone (even killed with SIGKILL), and the worker shuts down gracefully.
//! SIGTERM/SIGINT stop it like `stop` / `stop-now`; SIGHUP is logged and ignored (no reload).
//! Reports to the supervisor (`ready`, `counters`, and the entry point's error through
//! `report_fatal`) go through `report`, which writes nothing when the supervisor gave us no
//! report pipe (a child started by hand).

use crate::error::{exit, Error, Result};
use crate::handler::Router;
use crate::protocol::{Control, Report, Setup};
use crate::worker::{self, Ended, Msg};
use crate::{info, warn};
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// The write end of the report pipe, once the configuration named it.
static REPORTS: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// The entry point's error, for the supervisor (which reports it once, with context); false
/// when there is none to send it to (a child started by hand says it itself).
pub(crate) fn report_fatal(e: &Error) -> bool {
    report(&Report::Fatal {
        code: e.exit_code(),
        message: e.to_string(),
    })
}

/// Sends `r` to the supervisor; false when there is none to send it to.
pub(crate) fn report(r: &Report) -> bool {
    let Some(pipe) = REPORTS.get() else {
        return false;
    };
    let mut pipe = pipe.lock().unwrap_or_else(|e| e.into_inner());
    // A supervisor that is gone cannot read it; nothing else to do.
    let _ = pipe.write_all(format!("{}\n", r.encode()).as_bytes());
    true
}

pub fn run(index: u32, compiled: &Router) -> Result<u8> {
    crate::log::set_process(&format!("worker {index}"));
    let (tx, rx) = mpsc::channel::<Msg>();
    // Signals first, before any other thread starts.
    listen_for_signals(tx.clone())?;
    let cfg = read_setup()?;
    listen_to_supervisor(tx.clone());
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        crate::log::write(
            crate::log::Level::Error,
            format_args!("panic in thread {}: {info}", thread.name().unwrap_or("?")),
        );
    }));

    let router = crate::sink::build_router(&cfg, compiled)?;
    let send = |r: Report| {
        report(&r);
    };
    match worker::run(&cfg, &router, index, tx, rx, send, exit_now)? {
        // A clean end; 6 tells the supervisor that events went dead meanwhile (it fails the
        // run with it only under --fail-on-dead).
        Ended::Drained | Ended::Stopped if worker::tally::went_dead() => {
            info!("exiting (events went dead during this run)");
            Ok(exit::DEAD_EVENTS)
        }
        Ended::Drained | Ended::Stopped => {
            info!("exiting");
            Ok(exit::OK)
        }
        abandoned @ Ended::Abandoned { .. } => Ok(report_abandoned(&abandoned)),
    }
}

/// SIGTERM/SIGINT: the first stops, the second stops now. SIGHUP is logged and ignored.
fn listen_for_signals(tx: mpsc::Sender<Msg>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    std::thread::spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                warn!("SIGHUP ignored: there is no configuration reload; restart to apply changes");
                continue;
            }
            let msg = if stops == 0 { Msg::Stop } else { Msg::StopNow };
            stops += 1;
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The first line on stdin: the setup the supervisor sends (configuration, descriptors).
fn read_setup() -> Result<crate::config::Config> {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err(Error::Usage(
            "--worker-index is internal: worker processes are started by the supervisor, which \
             passes their configuration on stdin"
                .into(),
        ));
    }
    let setup = Setup::decode(&line)?;
    // Before the configuration is checked, so that a refusal reaches the supervisor.
    if let Some(fd) = setup.report_fd() {
        if let Some(file) = adopt_fd(fd) {
            let _ = REPORTS.set(Mutex::new(file));
        }
    }
    let cfg = setup.config()?;
    crate::log::set_level(cfg.log.level);
    crate::log::set_format(cfg.log.format);
    crate::log::install_bridge();
    crate::log::set_journal(cfg.log.journal);
    if let Some(file) = cfg.log.fd.and_then(adopt_fd) {
        crate::log::set_fallback(file);
    }
    Ok(cfg)
}

/// The rest of stdin: control messages; EOF means the supervisor is gone (even killed with
/// SIGKILL), and the worker stops gracefully.
fn listen_to_supervisor(tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            match lines.next().map(|l| l.map(|l| Control::decode(&l))) {
                Some(Ok(Ok(Control::Stop))) => {
                    let _ = tx.send(Msg::Stop);
                }
                Some(Ok(Ok(Control::StopNow))) => {
                    let _ = tx.send(Msg::StopNow);
                }
                Some(Ok(Err(_))) => {}
                Some(Err(_)) | None => {
                    // Our stderr went through the supervisor: log where it logs instead.
                    crate::log::use_fallback();
                    warn!("the supervisor is gone (stdin closed): stopping");
                    let _ = tx.send(Msg::Stop);
                    return;
                }
            }
        }
    });
}

/// Tells the supervisor why an abandoning worker ends with an error; returns the exit code.
fn report_abandoned(ended: &Ended) -> u8 {
    let Ended::Abandoned { code, why } = ended else {
        return exit::OK;
    };
    if let (Some(message), true) = (why, *code != exit::OK) {
        report(&Report::Fatal {
            code: *code,
            message: message.clone(),
        });
    }
    *code
}

/// Ends the process at once: the worker abandoned handler threads that may never return,
/// so it cannot return through the scope that runs them (see `worker`).
fn exit_now(ended: &Ended) -> ! {
    std::process::exit(i32::from(report_abandoned(ended)))
}

/// A descriptor the supervisor placed for us at `fd` (`protocol::LOG_FD`, `REPORT_FD`):
/// made close on exec, so that `exec:` commands do not inherit it, and owned from now on.
/// `None` when it is not open.
fn adopt_fd(fd: i32) -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl only flags the descriptor and fails when it is not open. The supervisor
    // put it there for us and nothing else in this process owns it, so the File may own it.
    unsafe {
        (libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0)
            .then(|| std::fs::File::from_raw_fd(fd))
    }
}
