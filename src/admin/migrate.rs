//! `dispatchbox migrate`: create or upgrade the table (idempotent; `sql/schema.sql` is the text
//! it runs). `--check` changes nothing and exits 8 when the table needs it; `--print-sql`
//! prints that text for the configured table without connecting. With `--ordered` (or
//! DISPATCHBOX_ORDERED) it also builds the index ordered claims use (`sql/ordered.sql`).

use super::connect;
use crate::cli::{defs, RawArgs};
use crate::config::{AdminConfig, Notify};
use crate::error::{exit, read_only_message, Result};
use crate::{info, store, warn};
use std::io::Write;

pub fn run(cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    if raw.switch(&defs::PRINT_SQL) {
        // What `migrate` runs when the table is not up to date (an up-to-date one: nothing).
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "-- dispatchbox migrate for table {}: runs this (idempotent) when the table is not \
             up to date, in one transaction after pg_advisory_xact_lock(hashtext('dispatchbox \
             migrate')) with lock_timeout 10s\n",
            cfg.table.quoted()
        )?;
        out.write_all(store::migration_sql(&cfg.table, notify_choice(cfg)).as_bytes())?;
        if cfg.ordered {
            writeln!(out, "\n-- and, for --ordered (separately, same lock):\n")?;
            out.write_all(store::ordered_schema_for(&cfg.table).as_bytes())?;
        }
        return Ok(exit::OK);
    }
    let mut client = connect(cfg)?;
    if raw.switch(&defs::CHECK) {
        return Ok(match store::needs_migration(&mut client, &cfg.table)? {
            None => {
                info!("table {} is up to date", cfg.table);
                exit::OK
            }
            Some(why) => {
                warn!("{why}: run `dispatchbox migrate`");
                exit::MIGRATION_NEEDED
            }
        });
    }
    // A standby or a read-only role would fail on the first DDL with 25006: say it plainly.
    if store::is_read_only(&mut client)? {
        return Err(crate::Error::Database(read_only_message(&format!(
            "database {}",
            cfg.dsn.redacted()
        ))));
    }
    let mut changed = store::migrate(&mut client, &cfg.table, notify_choice(cfg))?;
    store::check_table(&mut client, &cfg.table)?;
    if cfg.ordered && store::migrate_ordered(&mut client, &cfg.table)? {
        info!("built the index of --ordered claims on {}", cfg.table);
        changed = true;
    }
    if changed {
        info!("table {} is ready (created or upgraded)", cfg.table);
    } else {
        info!("table {} is already up to date", cfg.table);
    }
    Ok(exit::OK)
}

/// `--notify` for `migrate`: `on` installs the wake-up trigger, `off` drops it, `auto` leaves
/// it as it is.
fn notify_choice(cfg: &AdminConfig) -> Option<bool> {
    match cfg.notify {
        Notify::Auto => None,
        Notify::On => Some(true),
        Notify::Off => Some(false),
    }
}
