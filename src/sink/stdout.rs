//! The `stdout` target: one JSON line per event on standard output, flushed before the
//! event counts as delivered. A failed write (a closed pipe, a full disk) is not the event's
//! fault: the event is given back without using an attempt and the worker stops.
//!
//! Lines never interleave: within a process the stdout lock serialises threads; across the
//! worker processes that share stdout, a write of up to 4 KiB to a pipe is atomic, and longer
//! lines are written under an exclusive lock on a file the supervisor created for this.

use crate::handler::{Event, Handler, Outcome};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// POSIX guarantees atomic pipe writes up to PIPE_BUF bytes (4096 on Linux).
const ATOMIC_WRITE: usize = 4096;

pub struct Stdout {
    /// Shared with the other worker processes (each opens the file itself).
    cross_process: Option<File>,
}

impl Stdout {
    pub fn new(lock_path: Option<&Path>) -> Result<Stdout, String> {
        let cross_process = match lock_path {
            Some(p) => Some(
                File::open(p)
                    .map_err(|e| format!("cannot open stdout lock {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Stdout { cross_process })
    }
}

impl Handler for Stdout {
    fn handle(&self, event: &Event) -> Outcome {
        let mut line = event.to_json_line();
        line.push('\n');
        let shared = self
            .cross_process
            .as_ref()
            .filter(|_| line.len() > ATOMIC_WRITE);
        // The in-process lock first: threads of one process share the lock file's open file
        // description, so only one of them at a time may take and release the file lock.
        let mut out = std::io::stdout().lock();
        if let Some(f) = shared {
            if let Err(e) = f.lock() {
                return Outcome::Retry(format!("cannot lock stdout: {e}"));
            }
        }
        // One write_all under the lock: lines from concurrent handler threads never interleave.
        let written = out.write_all(line.as_bytes()).and_then(|_| out.flush());
        if let Some(f) = shared {
            let _ = f.unlock();
        }
        drop(out);
        match written {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Abort(format!("cannot write to stdout: {e}")),
        }
    }
}
