//! The `stdout` target: one JSON line per event on standard output, flushed before the
//! event counts as delivered. A failed write (a closed pipe, a full disk) is not the event's
//! fault: the event is given back without using an attempt and the worker stops.

use crate::handler::{Event, Handler, Outcome};
use std::io::Write;

pub struct Stdout;

impl Handler for Stdout {
    fn handle(&self, event: &Event) -> Outcome {
        let mut line = event.to_json_line();
        line.push('\n');
        // One write_all under the lock: lines from concurrent handler threads never interleave.
        let mut out = std::io::stdout().lock();
        match out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Abort(format!("cannot write to stdout: {e}")),
        }
    }
}
