//! `dispatchbox prune --older-than 7d [--archive TABLE]`: deletes `done` events delivered
//! longer ago than that (by `delivered_at`, else `created_at`), or moves them into an
//! existing table of the same shape, in batches of [`BATCH`] rows.
//!
//! Safe from cron while workers run: each batch is one short statement (its own transaction)
//! that takes its rows `FOR UPDATE SKIP LOCKED` and deletes only rows still `done` under the
//! lock; no worker writes a done row. With `--archive`, the delete and the insert are one
//! statement: a row is in exactly one of the two tables at every instant.

use super::{connect, human_secs};
use crate::cli::{defs, RawArgs};
use crate::config::{AdminConfig, Table};
use crate::error::{exit, Error, Result};
use crate::info;
use crate::store::{self, ops};
use std::io::Write;
use std::time::Instant;

/// Rows per statement (and transaction).
const BATCH: i64 = 5000;

pub fn run(cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    let Some(older) = raw.secs(&defs::OLDER_THAN)? else {
        return Err(Error::Usage(
            "prune: give --older-than DURATION (e.g. 7d): done events delivered longer ago are \
             deleted"
                .into(),
        ));
    };
    let archive = raw
        .text(&defs::ARCHIVE)
        .map(|a| Table::parse_for(defs::ARCHIVE.key, a))
        .transpose()?;
    let mut client = connect(cfg)?;
    store::check_table(&mut client, &cfg.table)?;
    let mut out = std::io::stdout().lock();
    if raw.switch(&defs::DRY_RUN) {
        let n = ops::prunable_count(&mut client, &cfg.table, older)?;
        writeln!(
            out,
            "{n} done event(s) delivered more than {} ago would be pruned (dry run)",
            human_secs(older)
        )?;
        return Ok(exit::OK);
    }
    let columns = match &archive {
        None => Vec::new(),
        Some(to) => archive_columns(&mut client, cfg, to)?,
    };
    ops::batch_settings(&mut client)?;
    let started = Instant::now();
    let (mut total, mut after) = (0i64, 0i64);
    loop {
        let to = archive.as_ref().map(|t| (t, columns.as_slice()));
        let batch = ops::prune_batch(&mut client, &cfg.table, older, after, BATCH, to)?;
        total += batch.rows;
        match batch.last_id {
            Some(last) if batch.rows == BATCH => after = last,
            _ => break,
        }
    }
    let verb = match &archive {
        Some(to) => format!("moved to {to}"),
        None => "deleted".into(),
    };
    writeln!(
        out,
        "{total} done event(s) delivered more than {} ago {verb}",
        human_secs(older)
    )?;
    info!(
        "prune took {:.1} s; the space is reused after (auto)vacuum",
        started.elapsed().as_secs_f64()
    );
    Ok(exit::OK)
}

/// The outbox table's columns, once the archive table is known to have them all.
fn archive_columns(
    client: &mut postgres::Client,
    cfg: &AdminConfig,
    to: &Table,
) -> Result<Vec<String>> {
    let Some(theirs) = ops::columns(client, to)? else {
        return Err(Error::Database(format!(
            "--archive: table {to} does not exist; create it first, e.g. CREATE TABLE {} (LIKE {})",
            to.quoted(),
            cfg.table.quoted()
        )));
    };
    let ours = ops::columns(client, &cfg.table)?.unwrap_or_default();
    let missing: Vec<&str> = ours
        .iter()
        .filter(|c| !theirs.contains(c))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Database(format!(
            "--archive: table {to} lacks column(s) {} of {}",
            missing.join(", "),
            cfg.table
        )));
    }
    Ok(ours)
}
