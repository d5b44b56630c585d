//! Read-only counts for people and for start-up and drain decisions: `dispatchbox stats`,
//! event types no route takes, events that can never become due, and what a drain still
//! waits for. None of them runs on the claim path.

use crate::config::{Order, Table};
use crate::error::Result;
use crate::handler::TypeFilter;
use postgres::Client;

/// `(status, count)` for every status present, plus the four standard ones even when zero.
pub fn stats(client: &mut Client, table: &Table) -> Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT coalesce(status::text, '(null)'), count(*) FROM {} GROUP BY 1",
        table.quoted()
    );
    let mut out: Vec<(String, i64)> = ["pending", "retry", "done", "dead"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for row in client.query(&sql, &[])? {
        let status: String = row.get(0);
        let n: i64 = row.get(1);
        match out.iter_mut().find(|(s, _)| *s == status) {
            Some(slot) => slot.1 = n,
            None => out.push((status, n)),
        }
    }
    Ok(out)
}

/// Event types waiting in the table that `filter` does not take (at most 10, busiest first).
pub fn unrouted(client: &mut Client, table: &Table, f: &TypeFilter) -> Result<Vec<(String, i64)>> {
    if f.all {
        return Ok(Vec::new());
    }
    // Served by the claim index (status predicate); a start-up-only scan of waiting rows.
    let sql = format!(
        "SELECT coalesce(event_type::text, '(null)'), count(*) FROM {} \
         WHERE status IN ('pending', 'retry') \
           AND NOT coalesce(event_type = ANY($1::text[]) OR event_type LIKE ANY($2::text[]), false) \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
        table.quoted()
    );
    Ok(client
        .query(&sql, &[&f.exact, &f.like])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// What a drain still has to wait for.
pub struct RemainingWork {
    /// Events this worker could take that are due now (if the claim found none, they are
    /// row-locked by another transaction).
    pub due: i64,
    /// Events of such types leased by other workers (or by an earlier incarnation of us).
    pub leased: i64,
    /// Seconds until the latest of those leases expires (None: nothing is leased). May be
    /// infinite (`next_run_at = 'infinity'` on a leased row).
    pub leased_for: Option<f64>,
}

/// Ordered (`order`), a due event held back by an earlier one of its aggregate is not work
/// this drain waits for: its predecessor is leased (counted), not due yet, or dead.
pub fn remaining_work(
    client: &mut Client,
    table: &Table,
    f: &TypeFilter,
    order: Order,
) -> Result<RemainingWork, postgres::Error> {
    let free = match order {
        Order::Unordered => "true".to_string(),
        Order::ByAggregate { dead_blocks } => {
            super::claim::predecessor_guard("e", dead_blocks).replace("{t}", &table.quoted())
        }
    };
    // Served by the claim index (status predicate); runs only when a claim found nothing.
    // date_part, not a timestamp subtraction: an infinite next_run_at gives Infinity, not an
    // error.
    let sql = format!(
        "SELECT count(*) FILTER (WHERE next_run_at <= now() AND {free}),
                count(*) FILTER (WHERE locked_by IS NOT NULL AND next_run_at > now()),
                max(date_part('epoch', next_run_at)) FILTER (WHERE locked_by IS NOT NULL AND next_run_at > now())
                    - date_part('epoch', now())
         FROM {} AS e WHERE status IN ('pending', 'retry')
           AND (next_run_at <= now() OR locked_by IS NOT NULL)
           AND ($1::bool OR event_type = ANY($2::text[]) OR event_type LIKE ANY($3::text[]))",
        table.quoted()
    );
    let row = client.query_one(&sql, &[&f.all, &f.exact, &f.like])?;
    Ok(RemainingWork {
        due: row.get(0),
        leased: row.get(1),
        leased_for: row.get(2),
    })
}

/// Pending or retrying events of the types `f` takes (its `all`, `exact` and `like`), due or
/// not: what waits for a route. Served by the claim index (status predicate).
pub fn waiting(client: &mut Client, table: &Table, f: &TypeFilter) -> Result<i64, postgres::Error> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE status IN ('pending', 'retry')
           AND ($1::bool OR event_type = ANY($2::text[]) OR event_type LIKE ANY($3::text[]))",
        table.quoted()
    );
    Ok(client.query_one(&sql, &[&f.all, &f.exact, &f.like])?.get(0))
}

/// Pending or retrying events with a NULL `next_run_at`: never due, never claimed (the claim
/// compares `next_run_at <= now()`). Served by the claim index (btree indexes NULLs).
pub fn never_due(client: &mut Client, table: &Table) -> Result<i64, postgres::Error> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE status IN ('pending', 'retry') AND next_run_at IS NULL",
        table.quoted()
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// An aggregate held back by a dead event: (aggregate_type, aggregate_id, the dead event's
/// id, events waiting behind it).
pub type HeldBack = (String, String, i64, i64);

/// Aggregates held back by a dead event (`--ordered`, `--ordered-dead block`): how many, and
/// the first `limit` as (aggregate_type, aggregate_id, the dead event's id, events waiting).
/// Reads the dead rows (the ordered index holds them) and probes their aggregates.
pub fn held_back(
    client: &mut Client,
    table: &Table,
    limit: i64,
) -> Result<(i64, Vec<HeldBack>), postgres::Error> {
    let sql = format!(
        "WITH h AS (
             SELECT d.aggregate_type, d.aggregate_id, min(d.id) AS dead_id
             FROM {t} AS d
             WHERE d.status = 'dead' AND d.aggregate_type IS NOT NULL
               AND d.aggregate_id IS NOT NULL
               AND EXISTS (SELECT 1 FROM {t} AS s
                           WHERE s.aggregate_type = d.aggregate_type
                             AND s.aggregate_id = d.aggregate_id
                             AND s.id > d.id AND s.status IN ('pending', 'retry'))
             GROUP BY 1, 2)
         SELECT count(*) OVER (), h.aggregate_type::text, h.aggregate_id::text, h.dead_id::bigint,
                (SELECT count(*) FROM {t} AS s
                 WHERE s.aggregate_type = h.aggregate_type AND s.aggregate_id = h.aggregate_id
                   AND s.id > h.dead_id AND s.status IN ('pending', 'retry'))
         FROM h ORDER BY h.dead_id LIMIT $1",
        t = table.quoted()
    );
    let rows = client.query(&sql, &[&limit])?;
    let count = rows.first().map_or(0, |r| r.get(0));
    let first = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    Ok((count, first))
}
