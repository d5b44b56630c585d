//! The outbox backlog for the metrics: how many events are due now and how long the oldest
//! of them has waited. Run by the supervisor (see `metrics::backlog`), never on the claim
//! path.

use crate::config::Table;
use postgres::Client;

/// `(due, seconds since the oldest due event became due)`. Served by the claim index
/// (`(next_run_at) WHERE status IN ('pending', 'retry')`): a range scan up to now(), and
/// its first entry for the age. A leased event is not due (its `next_run_at` is its lease's
/// expiry). The age is computed from epochs so that an infinite `next_run_at` gives
/// Infinity rather than an error.
pub fn backlog(client: &mut Client, table: &Table) -> Result<(i64, f64), postgres::Error> {
    let sql = format!(
        "SELECT count(*),
                coalesce(date_part('epoch', now()) - date_part('epoch', min(next_run_at)), 0)
         FROM {} WHERE status IN ('pending', 'retry') AND next_run_at <= now()",
        table.quoted()
    );
    let row = client.query_one(&sql, &[])?;
    Ok((row.try_get(0)?, row.try_get::<_, f64>(1)?.max(0.0)))
}
