//! What a `pipe:` process writes on stderr: each line goes to the log at INFO (escaped by the
//! logger, cut at [`MAX_LOGGED`] bytes, rate-limited), and the tail is kept for the message
//! when the process fails.
//!
//! Invariants: memory is bounded whatever the process writes (the tail, one partial line of
//! at most [`MAX_LOGGED`] bytes); at most [`BURST`] lines are logged at once and
//! [`PER_SECOND`] a second after that, and lines left out are counted in the next line logged.

use crate::info;
use crate::sink::process::STDERR_TAIL;
use std::time::Instant;

const MAX_LOGGED: usize = 2000;
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 5.0;

pub(super) struct Stderr {
    who: String,
    tail: Vec<u8>,
    line: Vec<u8>,
    /// The line being read is longer than MAX_LOGGED: the rest of it is dropped.
    cut: bool,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl Stderr {
    /// `who`: e.g. `pipe publisher [1234]`.
    pub fn new(who: String) -> Stderr {
        Stderr {
            who,
            tail: Vec::new(),
            line: Vec::new(),
            cut: false,
            tokens: BURST,
            refilled: Instant::now(),
            suppressed: 0,
        }
    }

    /// Bytes read from the process's stderr.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * STDERR_TAIL {
            self.tail.drain(..self.tail.len() - STDERR_TAIL);
        }
        for &b in bytes {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LOGGED {
                self.line.push(b);
            } else {
                self.cut = true;
            }
        }
    }

    /// The process is gone: log a last line without its newline, if any.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }

    /// The last [`STDERR_TAIL`] bytes, trimmed (for the failure message).
    pub fn tail(&self) -> String {
        let tail = &self.tail[self.tail.len().saturating_sub(STDERR_TAIL)..];
        String::from_utf8_lossy(tail).trim().to_string()
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_string();
        let cut = std::mem::take(&mut self.cut);
        self.line.clear();
        if line.is_empty() {
            return;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1.0;
        let more = if cut { "…" } else { "" };
        let skipped = std::mem::take(&mut self.suppressed);
        if skipped > 0 {
            info!(
                "{} stderr: {line}{more} ({skipped} earlier line(s) not logged: rate limit)",
                self.who
            );
        } else {
            info!("{} stderr: {line}{more}", self.who);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_and_the_partial_line_stay_bounded() {
        let mut s = Stderr::new("pipe x [1]".into());
        for _ in 0..100 {
            s.feed(&[b'y'; 10_000]);
        }
        assert!(s.line.len() <= MAX_LOGGED);
        assert!(s.tail.len() <= 2 * STDERR_TAIL);
        assert_eq!(s.tail().len(), STDERR_TAIL);
        s.feed(b"\nlast words");
        assert!(s.tail().ends_with("last words"));
    }

    #[test]
    fn lines_beyond_the_burst_are_counted_not_logged() {
        let mut s = Stderr::new("pipe x [1]".into());
        for i in 0..200 {
            s.feed(format!("line {i}\n").as_bytes());
        }
        // The burst, then (almost) nothing within the same instant.
        assert!(s.suppressed >= 140, "{}", s.suppressed);
    }
}
