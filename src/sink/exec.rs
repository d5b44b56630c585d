//! The `exec:COMMAND ARGS...` target: runs the program once per event, without a shell.
//!
//! The event's JSON line is written to the program's stdin; metadata is in environment
//! variables (DISPATCHBOX_EVENT_ID, _EVENT_TYPE, _AGGREGATE_TYPE, _AGGREGATE_ID, _ATTEMPT).
//! Exit 0 = delivered; exit 65 (EX_DATAERR) = permanent failure, the event goes to `dead`;
//! anything else (other codes, killed by a signal, timeout, program not found) is retried.
//! The tail of its stderr becomes the stored error. Its stdout is discarded.

use crate::handler::{Event, Handler, Outcome};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exit code a program uses to say "never retry this event".
pub const PERMANENT_EXIT: i32 = 65;
/// How much of the program's stderr is kept for the error message.
const STDERR_TAIL: usize = 1500;

pub struct Exec {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Exec {
    pub fn new(command: &str, timeout: Duration) -> Result<Exec, String> {
        let mut words = split_words(command)?;
        if words.is_empty() {
            return Err("`exec:` needs a command, e.g. `exec:/usr/local/bin/notify --fast`".into());
        }
        let program = words.remove(0);
        Ok(Exec {
            program,
            args: words,
            timeout,
        })
    }

    fn run(&self, event: &Event) -> Result<(), Outcome> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("DISPATCHBOX_EVENT_ID", event.id.to_string())
            .env("DISPATCHBOX_EVENT_TYPE", opt(&event.event_type))
            .env("DISPATCHBOX_AGGREGATE_TYPE", opt(&event.aggregate_type))
            .env("DISPATCHBOX_AGGREGATE_ID", opt(&event.aggregate_id))
            .env("DISPATCHBOX_ATTEMPT", event.attempt.to_string())
            .env_remove("DISPATCHBOX_DSN")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C meant for dispatchbox does not kill a delivery
            // in progress; graceful shutdown lets it finish.
            .process_group(0)
            .spawn()
            .map_err(|e| Outcome::Retry(format!("exec {}: {e}", self.program)))?;

        let mut line = event.to_json_line();
        line.push('\n');
        let stdin = child.stdin.take();
        // Writer and reader threads, detached: a grandchild that keeps the pipes open after a
        // timeout must not hold this handler thread hostage.
        std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                // A program that ignores its stdin closes the pipe: not an error.
                let _ = stdin.write_all(line.as_bytes());
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut tail: Vec<u8> = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
                let _ = tx.send(tail);
            });
        }

        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    // The whole process group (the command runs in its own), so that what it
                    // started dies too; std can only signal the child itself.
                    let group = format!("-{}", child.id());
                    for kill in ["kill", "/usr/bin/kill", "/bin/kill"] {
                        let killed = Command::new(kill)
                            .args(["-KILL", "--", &group])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        if killed.is_ok() {
                            break;
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Outcome::Retry(format!(
                        "exec {}: timed out after {:?}, killed",
                        self.program, self.timeout
                    )));
                }
                Ok(None) => {
                    std::thread::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(Outcome::Retry(format!("exec {}: {e}", self.program))),
            }
        };
        if status.success() {
            return Ok(());
        }
        // The program exited: its stderr is closed unless a grandchild holds it; wait briefly.
        let tail = rx
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default();
        let tail = String::from_utf8_lossy(&tail[tail.len().saturating_sub(STDERR_TAIL)..])
            .trim()
            .to_string();
        let what = match status.code() {
            Some(code) => format!("exec {}: exit code {code}", self.program),
            None => format!("exec {}: {status}", self.program),
        };
        let msg = if tail.is_empty() {
            what
        } else {
            format!("{what}: {tail}")
        };
        if status.code() == Some(PERMANENT_EXIT) {
            Err(Outcome::Permanent(msg))
        } else {
            Err(Outcome::Retry(msg))
        }
    }
}

impl Handler for Exec {
    fn handle(&self, event: &Event) -> Outcome {
        match self.run(event) {
            Ok(()) => Outcome::Delivered,
            Err(o) => o,
        }
    }
}

/// Splits a command line into words like a shell would for simple cases: white space
/// separates, single quotes keep everything literal, double quotes and backslashes escape.
/// No variables, globs or pipes: there is no shell.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("exec command: unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err("exec command: trailing backslash".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("exec command: unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("exec command: trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_words(r#"sh -c 'cat >> "/tmp/a b"' x\ y "q\"d""#).unwrap(),
            vec!["sh", "-c", r#"cat >> "/tmp/a b""#, "x y", "q\"d"]
        );
        assert!(split_words("sh 'oops").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("a ''").unwrap(), vec!["a", ""]);
    }
}
