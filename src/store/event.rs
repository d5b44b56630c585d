//! One event as the admin commands hand it out (`dead list`, `dead show --json`): the table's
//! standard columns, typed, read by one column list so that every command gets the same
//! shape.
//!
//! Invariant: timestamps leave PostgreSQL as RFC 3339 in UTC with microseconds
//! (`2026-12-04T22:31:14.123456Z`), whatever the session's time zone or `DateStyle`; an
//! infinite one (`next_run_at = 'infinity'`) as `infinity` / `-infinity`, never NULL.

use super::bind;
use super::ops::{Selection, SELECTED, SEL_PARAMS};
use crate::config::Table;
use crate::error::Result;
use postgres::{Client, Row};

/// One event's standard columns (None: NULL).
#[derive(Clone, Debug, Default)]
pub struct EventRow {
    pub id: i64,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// The payload's text (JSON in a jsonb or json column; whatever a text column holds).
    pub payload: Option<String>,
    pub status: Option<String>,
    pub attempts: Option<i32>,
    pub next_run_at: Option<String>,
    pub created_at: Option<String>,
    pub locked_by: Option<String>,
    pub locked_at: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

/// `{c}` as RFC 3339 UTC text (see the module's invariant).
const TIMESTAMP: &str = "CASE WHEN isfinite({c}::timestamptz)
        THEN to_char({c}::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
        ELSE {c}::text END";

/// The select list, in [`EventRow`]'s order.
fn columns() -> String {
    let ts = |c: &str| TIMESTAMP.replace("{c}", c);
    [
        "id::bigint".to_string(),
        "aggregate_type::text".into(),
        "aggregate_id::text".into(),
        "event_type::text".into(),
        "payload::text".into(),
        "status::text".into(),
        "attempts::int".into(),
        ts("next_run_at"),
        ts("created_at"),
        "locked_by::text".into(),
        ts("locked_at"),
        "last_error::text".into(),
        ts("delivered_at"),
    ]
    .join(", ")
}

fn from_row(r: &Row) -> EventRow {
    EventRow {
        id: r.get(0),
        aggregate_type: r.get(1),
        aggregate_id: r.get(2),
        event_type: r.get(3),
        payload: r.get(4),
        status: r.get(5),
        attempts: r.get(6),
        next_run_at: r.get(7),
        created_at: r.get(8),
        locked_by: r.get(9),
        locked_at: r.get(10),
        last_error: r.get(11),
        delivered_at: r.get(12),
    }
}

/// Newest first, at most `limit`. Served by the index of dead rows (`(id) WHERE status =
/// 'dead'`, scanned backwards), or without it by the primary key; with ids, primary-key
/// lookups.
const DEAD_LIST: &str = "SELECT {cols} FROM {t} WHERE {sel} ORDER BY id DESC LIMIT @limit";

/// The dead events of the selection, newest first.
pub fn dead_list(
    client: &mut Client,
    table: &Table,
    sel: &Selection,
    limit: i64,
) -> Result<Vec<EventRow>> {
    let mut names = SEL_PARAMS.to_vec();
    names.push("limit");
    let template = DEAD_LIST
        .replace("{sel}", SELECTED)
        .replace("{cols}", &columns());
    let sql = bind(&template, table, &names);
    let mut params = sel.params().to_vec();
    params.push(&limit);
    Ok(client.query(&sql, &params)?.iter().map(from_row).collect())
}

/// The event `id`, whatever its status. A primary-key lookup.
pub fn event_row(client: &mut Client, table: &Table, id: i64) -> Result<Option<EventRow>> {
    let sql = bind(
        &format!("SELECT {} FROM {{t}} WHERE id = @id", columns()),
        table,
        &["id"],
    );
    Ok(client.query_opt(&sql, &[&id])?.as_ref().map(from_row))
}
