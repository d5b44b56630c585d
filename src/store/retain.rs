//! The daemon's retention statements (`--retain-done`, run by `supervisor::retain`): a sweep
//! walks the primary key in spans of at most `@n` rows and removes the done rows of each span
//! delivered longer ago than the retention, like `prune` (`ops::prune_batch`) but with a bound
//! on the rows each statement reads, not only on those it removes: a span full of young or
//! kept rows costs one short statement, never a walk to the end of the table.
//!
//! Invariants: only `done` rows are removed, taken `FOR UPDATE SKIP LOCKED` and their status
//! checked again under the lock; with an archive table the delete and the insert are one
//! statement (`ops::moving`).

use super::bind;
use super::ops::{moving, Batch};
use crate::config::Table;
use crate::error::Result;
use postgres::Client;
use std::time::Duration;

/// One span: the ids after `@after` (and below `@below`), at most `@n` of them (served by the
/// primary key), and of those the done rows old enough. Returns the rows removed and the
/// span's last id (NULL: no row is left after `@after`: the sweep is over).
const SPAN: &str = "
    WITH span AS (SELECT id FROM {t} WHERE id > @after AND id < @below ORDER BY id LIMIT @n),
         upto AS (SELECT max(id) AS id FROM span),
         doomed AS (SELECT e.id FROM {t} AS e
                    WHERE e.id > @after AND e.id <= (SELECT id FROM upto)
                      AND e.status = 'done'
                      AND coalesce(e.delivered_at, e.created_at)
                          < now() - make_interval(secs => @older::float8)
                    FOR UPDATE SKIP LOCKED),
         moved AS (DELETE FROM {t} AS e
                   WHERE e.id = ANY (ARRAY(SELECT id FROM doomed)) AND e.status = 'done'
                   RETURNING {cols})
         {archived}
    SELECT (SELECT count(*) FROM moved), (SELECT id FROM upto)";

/// Where a span starts and what it removes.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Done rows delivered more than this many seconds ago.
    pub older: f64,
    pub after: i64,
    pub below: i64,
    /// At most this many ids are read.
    pub n: i64,
}

/// Removes the old done rows of one span (deletes them, or moves them into `archive`, whose
/// columns are given); `last_id` is where the next span starts (None: the sweep is over).
pub fn span(
    client: &mut Client,
    table: &Table,
    span: Span,
    archive: Option<(&Table, &[String])>,
) -> Result<Batch> {
    let names = ["older", "after", "below", "n"];
    let sql = moving(SPAN.to_string(), table, &names, archive);
    let row = client.query_one(&sql, &[&span.older, &span.after, &span.below, &span.n])?;
    Ok(Batch {
        rows: row.get(0),
        last_id: row.get(1),
    })
}

/// Where a quick sweep may stop: the lowest id created `older` seconds ago or later. A done
/// row delivered before then was created before then, and ids follow creation (up to the
/// length of the inserting transactions), so the rows above it are young; the walk reads only
/// the rows created before then (old done rows, dead ones, a backlog), not the retained
/// window. A producer that sets `created_at` out of id order defeats it: the full sweeps
/// (no bound) take what the quick ones miss. None: no row is that young.
const QUICK_BOUND: &str = "
    SELECT id FROM {t}
    WHERE created_at >= now() - make_interval(secs => @older::float8)
    ORDER BY id LIMIT 1";

pub fn quick_bound(client: &mut Client, table: &Table, older: f64) -> Result<Option<i64>> {
    let sql = bind(QUICK_BOUND, table, &["older"]);
    Ok(client.query_opt(&sql, &[&older])?.map(|r| r.get(0)))
}

/// The retention connection's limits: a statement waits at most `lock` for a lock and runs at
/// most `statement` (cancelled by the server, tried again at the next pass), so it never
/// queues the workers' claims behind it for long; and its name in `pg_stat_activity`.
pub fn settings(client: &mut Client, lock: Duration, statement: Duration) -> Result<()> {
    client.batch_execute(&format!(
        "SET lock_timeout = {}; SET statement_timeout = {}; \
         SET application_name = 'dispatchbox retention'",
        lock.as_millis().max(1),
        statement.as_millis().max(1)
    ))?;
    Ok(())
}
