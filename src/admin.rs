//! The admin commands: `dispatchbox migrate` and `dispatchbox stats`.
//!
//! Their connections are bounded like a worker's (`--connect-timeout`, one attempt in flight)
//! and run without a statement timeout whatever the role says: `migrate` may build an index.

use crate::config::{AdminConfig, Notify};
use crate::connect::connect_until;
use crate::error::{read_only_message, Result};
use crate::info;
use crate::store;
use std::io::Write;
use std::time::Instant;

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
    .ok_or_else(|| crate::Error::Unreachable(what))
    .and_then(|mut client| {
        store::admin_session_settings(&mut client)?;
        Ok(client)
    })
}

/// Creates or upgrades the table (idempotent; `sql/schema.sql` is the text it runs).
pub fn migrate(cfg: &AdminConfig) -> Result<()> {
    let mut client = connect(cfg)?;
    // A standby or a read-only role would fail on the first DDL with 25006: say it plainly.
    if store::is_read_only(&mut client)? {
        return Err(crate::Error::Database(read_only_message(&format!(
            "database {}",
            cfg.dsn.redacted()
        ))));
    }
    let notify = match cfg.notify {
        Notify::Auto => None,
        Notify::On => Some(true),
        Notify::Off => Some(false),
    };
    let changed = store::migrate(&mut client, &cfg.table, notify)?;
    store::check_table(&mut client, &cfg.table)?;
    if changed {
        info!("table {} is ready (created or upgraded)", cfg.table);
    } else {
        info!("table {} is already up to date", cfg.table);
    }
    Ok(())
}

/// Prints `status count` per line: pending, retry, done, dead, then any other status.
pub fn stats(cfg: &AdminConfig) -> Result<()> {
    let mut client = connect(cfg)?;
    store::check_table(&mut client, &cfg.table)?;
    let mut out = std::io::stdout().lock();
    for (status, n) in store::stats(&mut client, &cfg.table)? {
        writeln!(out, "{status} {n}")?;
    }
    Ok(())
}
