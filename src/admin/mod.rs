//! The admin commands, one file each: `migrate` (and `--check`, `--print-sql`), `status` (and
//! `stats`), `dead` (list, show, retry, purge), `prune`. This file connects and hands each
//! command its options; every statement they run is in `store`.
//!
//! Their connections are bounded like a worker's (`--connect-timeout`, one attempt in flight)
//! and run without a statement timeout whatever the role says: `migrate` may build an index.
//! Each command returns its exit code; errors map to theirs at the entry point, except a
//! closed stdout, which ends a command quietly (exit 0).

mod dead;
mod migrate;
mod prune;
mod status;

use crate::cli::{Command, RawArgs};
use crate::config::AdminConfig;
use crate::connect::connect_until;
use crate::error::{exit, Error, Result};
use crate::store;
use std::time::Instant;

/// Runs `cmd`; returns the exit code. A reader that stops reading (`dead list | head -1`)
/// ends the output quietly with exit 0, as `ls` or `grep` do: the broken pipe is the reader's
/// choice, not a failure. (Writes to a closed pipe fail with EPIPE: Rust ignores SIGPIPE.)
pub fn run(cmd: Command, cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    match command(cmd, cfg, raw) {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        other => other,
    }
}

fn command(cmd: Command, cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    match cmd {
        Command::Migrate => migrate::run(cfg, raw),
        Command::Stats => status::stats(cfg),
        Command::Status => status::run(cfg, raw),
        Command::DeadList | Command::DeadShow | Command::DeadRetry | Command::DeadPurge => {
            dead::run(cmd, cfg, raw)
        }
        Command::Prune => prune::run(cfg, raw),
    }
}

fn connect(cfg: &AdminConfig) -> Result<postgres::Client> {
    let mut connector = cfg.dsn.connector()?;
    connector.cap_attempt_timeout(cfg.connect_timeout);
    let what = format!("cannot connect to {}", cfg.dsn.redacted());
    let sleep = &mut |d| {
        std::thread::sleep(d);
        false
    };
    connect_until(
        &connector,
        Instant::now() + cfg.connect_timeout,
        &what,
        sleep,
    )?
    .ok_or_else(|| Error::Unreachable(what))
    .and_then(|mut client| {
        store::admin_session_settings(&mut client)?;
        Ok(client)
    })
}

/// Seconds as people read them: `12.3 s`, `4 min 2 s`, `3 h 20 min`, `2 d 4 h`.
pub(crate) fn human_secs(secs: f64) -> String {
    if !secs.is_finite() {
        return "for ever".into();
    }
    let s = secs.max(0.0);
    let whole = s as u64;
    match whole {
        0..60 => format!("{s:.1} s"),
        60..3600 => format!("{} min {} s", whole / 60, whole % 60),
        3600..86_400 => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
        _ => format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use crate::cli::defs::{MAX_LAG, OLDER_THAN, SINCE};
        assert_eq!(OLDER_THAN.duration("x", "7d").unwrap(), 604_800.0);
        assert_eq!(SINCE.duration("x", "1.5h").unwrap(), 5400.0);
        assert_eq!(MAX_LAG.duration("x", "90").unwrap(), 90.0);
        for bad in ["", "d", "7x", "-1d", "NaNs", "1e300d", "7 days", "7"] {
            let e = OLDER_THAN
                .duration("--older-than", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--older-than"), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_and_human_times() {
        use crate::cli::defs::LIMIT;
        assert_eq!(LIMIT.whole("--limit", "5").unwrap(), 5);
        assert!(LIMIT.whole("--limit", "0").is_err());
        assert!(LIMIT.whole("--limit", "x").is_err());
        assert_eq!(human_secs(12.34), "12.3 s");
        assert_eq!(human_secs(242.0), "4 min 2 s");
        assert_eq!(human_secs(12_000.0), "3 h 20 min");
        assert_eq!(human_secs(187_200.0), "2 d 4 h");
        assert_eq!(human_secs(f64::INFINITY), "for ever");
    }
}
