//! `dispatchbox dead list | show ID | retry [ID...] | purge [ID...]`: look at dead events and
//! requeue or delete them.
//!
//! `retry` puts an event back as if new — `pending`, attempts 0, due now, no lease — and keeps
//! `last_error` for history: requeueing without resetting attempts would have the next claim
//! mark it dead again at once. `retry` and `purge` select by ids or by filter (`--type`,
//! `--aggregate`, `--since`) or take every dead event (`--all`, never implied), work in
//! batches of [`BATCH`] rows (one short transaction each: safe while workers run), and report
//! how many; `--dry-run` only counts; `purge` needs `--yes`.

use super::connect;
use crate::cli::defs::{AGGREGATE, ALL, DRY_RUN, JSON, LIMIT, SINCE, TYPE, YES};
use crate::cli::{Command, RawArgs};
use crate::config::AdminConfig;
use crate::error::{exit, Error, Result};
use crate::info;
use crate::log::escape_controls;
use crate::store::{self, ops, EventRow};
use serde_json::{json, Value};
use std::io::Write;

/// Rows per statement (and transaction) of `retry` and `purge`.
const BATCH: i64 = 1000;

pub fn run(cmd: Command, cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    let sel = selection(cmd, raw)?;
    // `--limit` has a default: always Some. Checked before connecting, like the selection.
    let limit = raw.whole(&LIMIT)?.unwrap_or(i64::MAX);
    let mut client = connect(cfg)?;
    store::check_table(&mut client, &cfg.table)?;
    match cmd {
        Command::DeadList => list(&mut client, cfg, raw, &sel, limit),
        Command::DeadShow => show(&mut client, cfg, raw, &sel),
        _ => change(cmd, &mut client, cfg, raw, &sel),
    }
}

/// The ids and filters as given, checked before connecting.
fn selection(cmd: Command, raw: &RawArgs) -> Result<ops::Selection> {
    let mut ids = raw.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let (aggregate_type, aggregate_id) = match raw.text(&AGGREGATE) {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((t, id)) => (Some(t.to_string()), Some(id.to_string())),
            None => (Some(a.to_string()), None),
        },
    };
    let sel = ops::Selection {
        ids: (!ids.is_empty()).then_some(ids),
        event_type: raw.text(&TYPE).map(String::from),
        aggregate_type,
        aggregate_id,
        since: raw.secs(&SINCE)?,
    };
    let filtered = sel.event_type.is_some() || sel.aggregate_type.is_some() || sel.since.is_some();
    let all = raw.switch(&ALL);
    let usage = |m: &str| Err(Error::Usage(format!("{}: {m}", cmd.name())));
    match cmd {
        Command::DeadShow if sel.ids.as_ref().is_none_or(|i| i.len() != 1) => {
            usage("give one event id")
        }
        Command::DeadRetry | Command::DeadPurge => {
            if all && (filtered || sel.ids.is_some()) {
                return usage("--all takes every dead event: give it without ids or filters");
            }
            if !all && !filtered && sel.ids.is_none() {
                return usage("give event ids, a filter (--type, --aggregate, --since) or --all");
            }
            if cmd == Command::DeadPurge && !raw.switch(&YES) && !raw.switch(&DRY_RUN) {
                return usage("deleting events needs --yes (or --dry-run to count them)");
            }
            Ok(sel)
        }
        _ => Ok(sel),
    }
}

fn list(
    client: &mut postgres::Client,
    cfg: &AdminConfig,
    raw: &RawArgs,
    sel: &ops::Selection,
    limit: i64,
) -> Result<u8> {
    let rows = store::dead_list(client, &cfg.table, sel, limit)?;
    let mut out = std::io::stdout().lock();
    if raw.switch(&JSON) {
        let v: Vec<Value> = rows.iter().map(event_json).collect();
        writeln!(out, "{:#}", Value::from(v))?;
        return Ok(exit::OK);
    }
    let esc = |v: &Option<String>| escape_controls(v.as_deref().unwrap_or("-")).into_owned();
    for r in &rows {
        writeln!(
            out,
            "{}\t{}\t{}:{}\tattempts {}\t{}\t{}",
            r.id,
            esc(&r.event_type),
            esc(&r.aggregate_type),
            esc(&r.aggregate_id),
            r.attempts.unwrap_or(0),
            r.created_at.as_deref().map_or("-".into(), to_seconds),
            esc(&r.last_error.as_deref().map(|e| head(e, LIST_ERROR_CHARS))),
        )?;
    }
    if rows.len() as i64 == limit {
        info!("showing the newest {limit}; --limit shows more");
    }
    Ok(exit::OK)
}

fn show(
    client: &mut postgres::Client,
    cfg: &AdminConfig,
    raw: &RawArgs,
    sel: &ops::Selection,
) -> Result<u8> {
    let id = sel
        .ids
        .as_ref()
        .and_then(|i| i.first())
        .copied()
        .unwrap_or(0);
    if raw.switch(&JSON) {
        let Some(row) = store::event_row(client, &cfg.table, id)? else {
            return Err(no_event(id, cfg));
        };
        writeln!(std::io::stdout().lock(), "{:#}", event_json(&row))?;
        return Ok(exit::OK);
    }
    let Some(row) = ops::event(client, &cfg.table, id)? else {
        return Err(no_event(id, cfg));
    };
    let mut out = std::io::stdout().lock();
    for (k, v) in row {
        writeln!(out, "{}: {}", escape_controls(&k), shown(&k, v))?;
    }
    Ok(exit::OK)
}

fn no_event(id: i64, cfg: &AdminConfig) -> Error {
    Error::Other(format!("no event {id} in table {}", cfg.table))
}

/// An event as JSON, the one shape of `dead list --json` and `dead show --json`: ids and
/// attempts as numbers, timestamps as RFC 3339 UTC text, the payload as JSON (a payload that
/// is not JSON, from a text column, as a string), every value exact, NULL as null.
fn event_json(e: &EventRow) -> Value {
    let payload = e
        .payload
        .as_deref()
        .map(|p| serde_json::from_str::<Value>(p).unwrap_or_else(|_| Value::String(p.to_string())));
    json!({
        "id": e.id,
        "event_type": e.event_type,
        "aggregate_type": e.aggregate_type,
        "aggregate_id": e.aggregate_id,
        "payload": payload,
        "status": e.status,
        "attempts": e.attempts,
        "last_error": e.last_error,
        "created_at": e.created_at,
        "next_run_at": e.next_run_at,
        "locked_by": e.locked_by,
        "locked_at": e.locked_at,
        "delivered_at": e.delivered_at,
    })
}

/// `dead list` shows this much of `last_error` (characters).
const LIST_ERROR_CHARS: usize = 300;

/// The first `n` characters of `s`.
fn head(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// An RFC 3339 time without its fraction (`…:14.123456Z` → `…:14Z`), for `dead list`'s text.
fn to_seconds(t: &str) -> String {
    match (t.find('.'), t.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &t[..dot]),
        _ => t.to_string(),
    }
}

/// A column's value for `dead show`: control characters escaped as in the logs, so that no
/// value can forge a line or act on the terminal; the payload pretty-printed (its line breaks
/// are the printer's: JSON escapes those inside strings).
fn shown(column: &str, value: Option<String>) -> String {
    match (column, value) {
        ("payload", Some(p)) => match serde_json::from_str::<serde_json::Value>(&p) {
            Ok(j) => format!("{j:#}")
                .lines()
                .map(|l| escape_controls(l).into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            Err(_) => escape_controls(&p).into_owned(),
        },
        (_, Some(v)) => escape_controls(&v).into_owned(),
        (_, None) => "NULL".into(),
    }
}

/// `retry` or `purge`, in batches; prints how many.
fn change(
    cmd: Command,
    client: &mut postgres::Client,
    cfg: &AdminConfig,
    raw: &RawArgs,
    sel: &ops::Selection,
) -> Result<u8> {
    let verb = if cmd == Command::DeadRetry {
        "requeued"
    } else {
        "deleted"
    };
    let mut out = std::io::stdout().lock();
    if raw.switch(&DRY_RUN) {
        let n = ops::selected_count(client, &cfg.table, sel)?;
        writeln!(out, "{n} dead event(s) would be {verb} (dry run)")?;
        return Ok(exit::OK);
    }
    ops::batch_settings(client)?;
    let (mut total, mut after) = (0i64, 0i64);
    loop {
        let batch = if cmd == Command::DeadRetry {
            ops::dead_retry_batch(client, &cfg.table, sel, after, BATCH)?
        } else {
            ops::dead_purge_batch(client, &cfg.table, sel, after, BATCH)?
        };
        total += batch.rows;
        match batch.last_id {
            Some(last) if batch.rows == BATCH => after = last,
            _ => break,
        }
    }
    writeln!(out, "{total} dead event(s) {verb}")?;
    if let Some(ids) = &sel.ids {
        let missing = ids.len() as i64 - total;
        if missing > 0 {
            info!(
                "{missing} of the {} id(s) given were not dead events",
                ids.len()
            );
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_one_json_shape() {
        let mut e = EventRow {
            id: 7,
            attempts: Some(5),
            payload: Some(r#"{"n": 1}"#.into()),
            created_at: Some("2026-12-04T22:31:14.123456Z".into()),
            ..EventRow::default()
        };
        let v = event_json(&e);
        assert_eq!(v["id"], 7);
        assert_eq!(v["attempts"], 5);
        assert_eq!(v["payload"], json!({"n": 1}));
        assert_eq!(v["created_at"], "2026-12-04T22:31:14.123456Z");
        assert_eq!(v["delivered_at"], Value::Null);
        assert_eq!(v.as_object().map(|m| m.len()), Some(13));
        // A payload that is not JSON (a text column) is a string, not an error.
        e.payload = Some("not json".into());
        assert_eq!(event_json(&e)["payload"], "not json");
    }

    #[test]
    fn list_text_helpers() {
        assert_eq!(
            to_seconds("2026-12-04T22:31:14.123456Z"),
            "2026-12-04T22:31:14Z"
        );
        assert_eq!(to_seconds("infinity"), "infinity");
        assert_eq!(head("ééé", 2), "éé");
    }
}
