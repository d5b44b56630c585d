//! A worker child's start-up: read the configuration line the supervisor wrote on our stdin,
//! wire signals and the rest of stdin to the worker's inbox, run the worker.
//!
//! Stdin after the configuration line carries `stop` / `stop-now`; EOF means the supervisor
//! is gone (even killed with SIGKILL), and the worker shuts down gracefully. SIGTERM/SIGINT
//! stop it like `stop` / `stop-now`; SIGHUP is logged and ignored (no reload).

use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::handler::Router;
use crate::worker::{self, Ended, Msg};
use crate::{info, warn};
use std::io::BufRead;
use std::sync::mpsc;

pub fn run(index: u32, compiled: &Router) -> Result<u8> {
    crate::log::set_process(&format!("worker {index}"));
    let (tx, rx) = mpsc::channel::<Msg>();

    // Signals first, before any other thread starts.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let sig_tx = tx.clone();
    std::thread::spawn(move || {
        let mut stops = 0;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                warn!("SIGHUP ignored: there is no configuration reload; restart to apply changes");
                continue;
            }
            let msg = if stops == 0 { Msg::Stop } else { Msg::StopNow };
            stops += 1;
            if sig_tx.send(msg).is_err() {
                return;
            }
        }
    });

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
    let cfg = Config::from_child_json(line.trim())?;
    crate::log::set_level(cfg.log_level);
    if let Some(fd) = cfg.log_fd {
        adopt_log_fd(fd);
    }
    drop(stdin);

    let ctl_tx = tx.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.trim() == "stop" => {
                    let _ = ctl_tx.send(Msg::Stop);
                }
                Some(Ok(l)) if l.trim() == "stop-now" => {
                    let _ = ctl_tx.send(Msg::StopNow);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    // Our stderr went through the supervisor: log where it logs instead.
                    crate::log::use_fallback();
                    warn!("the supervisor is gone (stdin closed): stopping");
                    let _ = ctl_tx.send(Msg::Stop);
                    return;
                }
            }
        }
    });

    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        crate::log::write(
            crate::log::Level::Error,
            format_args!("panic in thread {}: {info}", thread.name().unwrap_or("?")),
        );
    }));

    let router = crate::sink::build_router(&cfg, compiled)?;
    let mut ready = || {
        use std::io::Write;
        let line = format!("{}\n", crate::supervisor::READY_MARKER);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    };
    match worker::run(&cfg, &router, index, tx, rx, &mut ready, exit_now)? {
        Ended::Drained | Ended::Stopped => {
            info!("exiting");
            Ok(exit::OK)
        }
        Ended::Abandoned { code } => Ok(code),
    }
}

/// Ends the process at once: the worker abandoned handler threads that may never return,
/// so it cannot return through the scope that runs them (see `worker`).
fn exit_now(code: u8) -> ! {
    std::process::exit(i32::from(code))
}

/// The copy of the supervisor's stderr the supervisor placed at `fd`: kept as the log
/// fallback, and not inherited by `exec:` commands.
fn adopt_log_fd(fd: i32) {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl only inspects and flags the descriptor. The supervisor put it there for
    // us (`supervisor::WORKER_LOG_FD`) and nothing else in this process owns it, so the File
    // may own it.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == 0 {
            crate::log::set_fallback(std::fs::File::from_raw_fd(fd));
        }
    }
}
