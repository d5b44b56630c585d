//! The outbox backlog for the metrics: how many events are due now, how long the oldest of
//! them has waited, and how many are dead. Run by the supervisor (see `metrics::backlog`),
//! never on the claim path.

use crate::config::Table;
use postgres::Client;

/// What the backlog query returns.
pub struct BacklogRow {
    /// Pending or retrying events due now (not leased).
    pub due: i64,
    /// Seconds since the oldest due event became due (0 when none is).
    pub oldest_due_age: f64,
    /// Dead events.
    pub dead: i64,
}

/// One statement. The due count and age are served by the claim index (`(next_run_at)
/// WHERE status IN ('pending', 'retry')`): a range scan up to now(), and its first entry for
/// the age. A leased event is not due (its `next_run_at` is its lease's expiry). The age is
/// computed from epochs so that an infinite `next_run_at` gives Infinity rather than an
/// error. The dead count is served by `migrate`'s partial index over dead rows (an
/// index-only scan of only those rows); on a table migrated before that index existed it
/// is a sequential scan, at most once per the metrics' refresh interval.
pub fn backlog(client: &mut Client, table: &Table) -> Result<BacklogRow, postgres::Error> {
    let t = table.quoted();
    let sql = format!(
        "SELECT count(*),
                coalesce(date_part('epoch', now()) - date_part('epoch', min(next_run_at)), 0),
                (SELECT count(*) FROM {t} WHERE status = 'dead')
         FROM {t} WHERE status IN ('pending', 'retry') AND next_run_at <= now()"
    );
    let row = client.query_one(&sql, &[])?;
    Ok(BacklogRow {
        due: row.try_get(0)?,
        oldest_due_age: row.try_get::<_, f64>(1)?.max(0.0),
        dead: row.try_get(2)?,
    })
}
