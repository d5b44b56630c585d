//! The operators' statements: `status` (cheap counts, lag, who holds what), `dead` (list,
//! show, retry, purge) and `prune`. None runs on the claim path; each says which index serves
//! it.
//!
//! Invariants: what changes rows works in short batches (one statement, one transaction per
//! batch, rows taken `FOR UPDATE SKIP LOCKED` and their status checked again under the lock),
//! so it is safe while workers run: `retry` and `purge` touch only `dead` rows and `prune`
//! only `done` rows, which no worker writes. A batch resumes after the highest id the last one
//! took (keyset on the primary key), so a run visits each row once.

use super::{bind, bind_parts};
use crate::config::{quote_ident, Table};
use crate::error::Result;
use postgres::Client;

/// For the commands that change rows (`dead retry`/`purge`, `prune`): a batch waits at most
/// 10 s for a lock (a DDL, a long transaction) rather than queue the workers' claims behind it.
pub fn batch_settings(client: &mut Client) -> Result<()> {
    client.batch_execute("SET lock_timeout = '10s'")?;
    Ok(())
}

/// Waiting events (pending/retry) of one type and status.
pub struct Waiting {
    pub event_type: String,
    pub status: String,
    pub count: i64,
    /// Due now (not leased, `next_run_at` passed).
    pub due: i64,
    pub in_flight: i64,
    /// Seconds since the oldest due one became due.
    pub lag: Option<f64>,
}

/// Served by the claim index (`next_run_at` WHERE status IN ('pending','retry')): only waiting
/// rows are read, however many done/dead rows exist. date_part: an infinite next_run_at
/// gives Infinity, not an error.
const WAITING: &str = "
    SELECT coalesce(event_type::text, '(null)'), status::text, count(*),
           count(*) FILTER (WHERE next_run_at <= now()),
           count(*) FILTER (WHERE locked_by IS NOT NULL AND next_run_at > now()),
           date_part('epoch', now())
               - min(date_part('epoch', next_run_at)) FILTER (WHERE next_run_at <= now())
    FROM {t} WHERE status IN ('pending', 'retry')
    GROUP BY 1, 2 ORDER BY 1, 2";

pub fn waiting(client: &mut Client, table: &Table) -> Result<Vec<Waiting>> {
    let rows = client.query(&bind(WAITING, table, &[]), &[])?;
    Ok(rows
        .iter()
        .map(|r| Waiting {
            event_type: r.get(0),
            status: r.get(1),
            count: r.get(2),
            due: r.get(3),
            in_flight: r.get(4),
            lag: r.get(5),
        })
        .collect())
}

/// A worker holding leases.
pub struct Holder {
    pub locked_by: String,
    pub events: i64,
    /// Seconds since its oldest claim (`locked_at`).
    pub oldest_claim: Option<f64>,
    /// Seconds until its last lease ends.
    pub lease_left: Option<f64>,
}

/// Served by the claim index: leased rows are the waiting rows with `next_run_at` in the future.
const HOLDERS: &str = "
    SELECT locked_by::text, count(*),
           date_part('epoch', now()) - min(date_part('epoch', locked_at)),
           max(date_part('epoch', next_run_at)) - date_part('epoch', now())
    FROM {t} WHERE status IN ('pending', 'retry') AND next_run_at > now()
      AND locked_by IS NOT NULL
    GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 100";

pub fn holders(client: &mut Client, table: &Table) -> Result<Vec<Holder>> {
    let rows = client.query(&bind(HOLDERS, table, &[]), &[])?;
    Ok(rows
        .iter()
        .map(|r| Holder {
            locked_by: r.get(0),
            events: r.get(1),
            oldest_claim: r.get(2),
            lease_left: r.get(3),
        })
        .collect())
}

/// The planner's estimates: no row is read.
pub struct Estimates {
    /// Rows in the table; None when it was never analyzed.
    pub rows: Option<f64>,
    /// `(status, fraction of rows)` from the statistics' most common values.
    pub fractions: Vec<(String, f64)>,
}

impl Estimates {
    /// The estimated number of rows with this status (0 when the statistics' sample did not
    /// find it common); None without statistics.
    pub fn of(&self, status: &str) -> Option<i64> {
        let rows = self.rows?;
        if self.fractions.is_empty() {
            return None;
        }
        let f = self
            .fractions
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0.0, |(_, f)| *f);
        Some((rows * f).round() as i64)
    }
}

/// `reltuples` scaled to the table's current size (as the planner does), and the status
/// column's most common values with their frequencies (`pg_stats`, kept by ANALYZE).
const ESTIMATES: &str = "
    SELECT CASE WHEN c.reltuples < 0 THEN NULL
                WHEN c.relpages > 0 THEN c.reltuples::float8 / c.relpages
                     * (pg_relation_size(c.oid) / current_setting('block_size')::int)
                ELSE c.reltuples::float8 END,
           s.most_common_vals::text::text[], s.most_common_freqs::float8[]
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
                        AND s.attname = 'status' AND NOT s.inherited
    WHERE c.oid = to_regclass($1)";

pub fn estimates(client: &mut Client, table: &Table) -> Result<Estimates> {
    let row = client.query_opt(ESTIMATES, &[&table.quoted()])?;
    let Some(row) = row else {
        return Ok(Estimates {
            rows: None,
            fractions: Vec::new(),
        });
    };
    let vals: Option<Vec<String>> = row.get(1);
    let freqs: Option<Vec<f64>> = row.get(2);
    Ok(Estimates {
        rows: row.get(0),
        fractions: vals
            .unwrap_or_default()
            .into_iter()
            .zip(freqs.unwrap_or_default())
            .collect(),
    })
}

/// Exact number of dead events: reads only the index of dead rows (`(id) WHERE status =
/// 'dead'`, `migrate` builds it); a full scan of the table without it.
pub fn dead_count(client: &mut Client, table: &Table) -> Result<i64> {
    let sql = bind("SELECT count(*) FROM {t} WHERE status = 'dead'", table, &[]);
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// Which dead events a `dead` command acts on. Every field narrows; none given = all.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub ids: Option<Vec<i64>>,
    /// Exact, or a prefix when it ends with `*` (`order.*`).
    pub event_type: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    /// Created within this many seconds.
    pub since: Option<f64>,
}

/// The selection as a predicate; its parameters are `SEL_PARAMS`, first.
pub(super) const SELECTED: &str = "
    status = 'dead'
    AND (@ids::bigint[] IS NULL OR id = ANY(@ids::bigint[]))
    AND (@type::text IS NULL OR event_type = @type::text
         OR (right(@type::text, 1) = '*' AND starts_with(event_type, left(@type::text, -1))))
    AND (@agg_type::text IS NULL OR aggregate_type = @agg_type::text)
    AND (@agg_id::text IS NULL OR aggregate_id = @agg_id::text)
    AND (@since::float8 IS NULL OR created_at >= now() - make_interval(secs => @since::float8))";

pub(super) const SEL_PARAMS: &[&str] = &["ids", "type", "agg_type", "agg_id", "since"];

impl Selection {
    pub(super) fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 5] {
        [
            &self.ids,
            &self.event_type,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.since,
        ]
    }
}

/// A column's name and its value as text (None: NULL).
pub type Column = (String, Option<String>);

/// The whole row of one event, every column as text (NULL as None), in table order: for
/// `dead show` without `--json` (the table may carry columns of its own, of any type). A
/// primary-key lookup.
pub fn event(client: &mut Client, table: &Table, id: i64) -> Result<Option<Vec<Column>>> {
    let names = columns(client, table)?.unwrap_or_default();
    let select: Vec<String> = names
        .iter()
        .map(|n| format!("{}::text", quote_ident(n)))
        .collect();
    let sql = bind_parts(
        "SELECT {cols} FROM {t} WHERE id = @id",
        table,
        &["id"],
        &[("cols", &select.join(", "))],
    );
    let Some(row) = client.query_opt(&sql, &[&id])? else {
        return Ok(None);
    };
    Ok(Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, row.get(i)))
            .collect(),
    ))
}

/// How many dead events the selection takes (`--dry-run`). Served by the index of dead rows
/// (without it: a full scan unless ids are given).
pub fn selected_count(client: &mut Client, table: &Table, sel: &Selection) -> Result<i64> {
    let sql = bind(
        &format!("SELECT count(*) FROM {{t}} WHERE {SELECTED}"),
        table,
        SEL_PARAMS,
    );
    Ok(client.query_one(&sql, &sel.params())?.get(0))
}

/// The next batch of the selection, in id order after `@after`, locked; skipped when another
/// transaction holds them. Served by the index of dead rows, or the primary key (a range scan
/// from `@after`).
const PICK: &str = "
    SELECT id FROM {t} WHERE id > @after AND {sel}
    ORDER BY id LIMIT @n FOR UPDATE SKIP LOCKED";

/// Back to pending as if new: attempts 0 (else the claim marks it dead again at once: its
/// attempts are used up), due now, no lease; `last_error` is kept for history.
const RETRY: &str = "
    WITH picked AS ({pick}),
         done AS (UPDATE {t} AS e SET status = 'pending', attempts = 0, next_run_at = now(),
                                      locked_by = NULL, locked_at = NULL
                  WHERE e.id = ANY (ARRAY(SELECT id FROM picked)) AND e.status = 'dead'
                  RETURNING e.id)
    SELECT count(*), max(id)::bigint FROM done";

const PURGE: &str = "
    WITH picked AS ({pick}),
         done AS (DELETE FROM {t} AS e
                  WHERE e.id = ANY (ARRAY(SELECT id FROM picked)) AND e.status = 'dead'
                  RETURNING e.id)
    SELECT count(*), max(id)::bigint FROM done";

/// What a batch did: rows changed, and the id to resume after (None: nothing was taken).
pub struct Batch {
    pub rows: i64,
    pub last_id: Option<i64>,
}

fn dead_batch(
    client: &mut Client,
    table: &Table,
    sel: &Selection,
    template: &str,
    after: i64,
    n: i64,
) -> Result<Batch> {
    let pick = PICK.replace("{sel}", SELECTED);
    let mut names = SEL_PARAMS.to_vec();
    names.extend(["after", "n"]);
    let sql = bind(&template.replace("{pick}", &pick), table, &names);
    let mut params = sel.params().to_vec();
    params.push(&after);
    params.push(&n);
    let row = client.query_one(&sql, &params)?;
    Ok(Batch {
        rows: row.get(0),
        last_id: row.get(1),
    })
}

/// One batch of `dead retry` (one statement, its own transaction).
pub fn dead_retry_batch(
    client: &mut Client,
    table: &Table,
    sel: &Selection,
    after: i64,
    n: i64,
) -> Result<Batch> {
    dead_batch(client, table, sel, RETRY, after, n)
}

/// One batch of `dead purge`.
pub fn dead_purge_batch(
    client: &mut Client,
    table: &Table,
    sel: &Selection,
    after: i64,
    n: i64,
) -> Result<Batch> {
    dead_batch(client, table, sel, PURGE, after, n)
}

/// Done rows old enough to prune. No index leads with the delivery time: the primary key is
/// walked from `@after` (each batch resumes where the last stopped, so a run reads the table
/// once), rows taken `FOR UPDATE SKIP LOCKED` and their status checked again under the lock.
const PRUNABLE: &str = "
    SELECT id FROM {t}
    WHERE id > @after AND status = 'done'
      AND coalesce(delivered_at, created_at) < now() - make_interval(secs => @older::float8)
    ORDER BY id LIMIT @n FOR UPDATE SKIP LOCKED";

/// The rows are deleted and, with an archive table, inserted there in the same statement (a
/// data-modifying CTE: both or neither).
const PRUNE: &str = "
    WITH doomed AS ({prunable}),
         moved AS (DELETE FROM {t} AS e
                   WHERE e.id = ANY (ARRAY(SELECT id FROM doomed)) AND e.status = 'done'
                   RETURNING {cols})
         {archived}
    SELECT count(*), max(id)::bigint FROM moved";

/// The archive's part of [`PRUNE`]: the moved rows go into `{archive}` in the same statement.
const ARCHIVED: &str = ", archived AS (INSERT INTO {archive} ({list}) SELECT {list} FROM moved)";

/// One batch of `prune`: deletes (or moves into `archive`) up to `n` done rows delivered more
/// than `older` seconds ago, after id `after`. `columns`: the table's, for the archive insert.
pub fn prune_batch(
    client: &mut Client,
    table: &Table,
    older: f64,
    after: i64,
    n: i64,
    archive: Option<(&Table, &[String])>,
) -> Result<Batch> {
    let sql = moving(
        PRUNE.replace("{prunable}", PRUNABLE),
        table,
        &["older", "after", "n"],
        archive,
    );
    let row = client.query_one(&sql, &[&older, &after, &n])?;
    Ok(Batch {
        rows: row.get(0),
        last_id: row.get(1),
    })
}

/// `template` (with `{cols}` returned by its DELETE and `{archived}` after it) bound, deleting
/// or, with `archive`, moving the rows into it.
pub(super) fn moving(
    template: String,
    table: &Table,
    names: &[&str],
    archive: Option<(&Table, &[String])>,
) -> String {
    let (cols, list, insert) = match archive {
        None => ("e.id".to_string(), String::new(), ""),
        Some((_, columns)) => {
            let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            let returning: Vec<String> = columns
                .iter()
                .map(|c| format!("e.{}", quote_ident(c)))
                .collect();
            (returning.join(", "), list.join(", "), ARCHIVED)
        }
    };
    let archive_name = archive.map(|(to, _)| to.quoted()).unwrap_or_default();
    bind_parts(
        &template.replace("{archived}", insert),
        table,
        names,
        &[("cols", &cols), ("list", &list), ("archive", &archive_name)],
    )
}

/// How many done rows `prune` would take now (`--dry-run`): a full scan.
pub fn prunable_count(client: &mut Client, table: &Table, older: f64) -> Result<i64> {
    let sql = bind(
        "SELECT count(*) FROM {t} WHERE status = 'done'
           AND coalesce(delivered_at, created_at) < now() - make_interval(secs => @older::float8)",
        table,
        &["older"],
    );
    Ok(client.query_one(&sql, &[&older])?.get(0))
}

/// The table's columns in order, or None when it does not exist.
pub fn columns(client: &mut Client, table: &Table) -> Result<Option<Vec<String>>> {
    let row = client.query_one("SELECT to_regclass($1)::oid::bigint", &[&table.quoted()])?;
    let Some(oid): Option<i64> = row.get(0) else {
        return Ok(None);
    };
    let rows = client.query(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::bigint::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&oid],
    )?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}
