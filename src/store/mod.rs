//! Every SQL statement Dispatchbox runs, in one module, with the index that serves it; one
//! file per role: `claim` (the hot path: claim, complete, extend, release), `schema`
//! (migrate, the start-up table check), `report` (counts for stats, start-up and drain),
//! `backlog` (the metrics' backlog query), `notify` (LISTEN for the trigger's wake-ups), `ops`
//! (the operators' commands: status, dead, prune), `event` (one event's columns, typed, for
//! `dead list` and `dead show --json`).
//! This file holds what they share: placeholders, statuses, session settings.
//!
//! Invariants kept here:
//! - the claim is one statement in its own (autocommit) transaction: no transaction is ever
//!   open while a handler runs;
//! - every write after the claim (complete, extend, release) is fenced by
//!   `locked_by = <this worker> AND attempts = <token>`, so a worker that lost its lease can
//!   never overwrite the result of the worker that took the event over;
//! - one statement per batch (arrays + unnest), never one per event;
//! - the table name is always a quoted identifier; every value is a bind parameter.

mod backlog;
mod claim;
mod event;
mod notify;
pub mod ops;
mod report;
pub mod retain;
mod schema;

pub use backlog::backlog;
pub use claim::{ClaimArgs, Claimed, Completion, Conn};
pub use event::{dead_list, event_row, EventRow};
pub use notify::{channel as notify_channel, has_trigger as has_notify_trigger, listen};
pub use report::{
    held_back, never_due, remaining_work, stats, unrouted, waiting, HeldBack, RemainingWork,
};
pub use schema::{
    check_table, has_dead_index, has_ordered_index, migrate, migrate_ordered, migration_sql,
    needs_migration, ordered_schema_for,
};

use crate::config::Table;
use postgres::Client;
use std::time::Duration;

/// A handler's verdict as the `status` column stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    Retry,
    Dead,
}

impl Status {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Retry => "retry",
            Status::Dead => "dead",
        }
    }
}

/// Longest error text stored in `last_error`.
pub const MAX_ERROR_LEN: usize = 2000;

/// Replaces `{t}` with the quoted table and each `@name` with `$k`, k = its 1-based position in
/// `names` (a name may occur several times).
fn bind(sql: &str, table: &Table, names: &[&str]) -> String {
    bind_parts(sql, table, names, &[])
}

/// [`bind`], and each `{key}` of `parts` replaced by its text (identifiers quoted by the
/// caller). One pass over the template: what is put in is never searched again, so a quoted
/// name holding `@n`, `{t}` or `{archive}` stays as it is.
fn bind_parts(sql: &str, table: &Table, names: &[&str], parts: &[(&str, &str)]) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(pos) = rest.find(['{', '@']) {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let after = &rest[1..];
        let taken = if rest.starts_with('{') {
            let key = after.split_once('}').map_or("", |(k, _)| k);
            let part = match key {
                "t" => Some(table.quoted()),
                _ => parts
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string()),
            };
            part.map(|text| (text, key.len() + 2))
        } else {
            let len = after.find(|c| !is_ident(c)).unwrap_or(after.len());
            let position = names.iter().position(|n| *n == &after[..len]);
            position.map(|i| (format!("${}", i + 1), len + 1))
        };
        match taken {
            Some((text, len)) => {
                out.push_str(&text);
                rest = &rest[len..];
            }
            None => {
                debug_assert!(false, "unbound placeholder at {rest}");
                out.push_str(&rest[..1]);
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A worker session's settings, chosen here rather than inherited from the role, database
/// or server (`ALTER ROLE ... SET statement_timeout = '3ms'` would otherwise livelock every
/// claim):
/// - `lock_timeout` = lease / 3: a worker stuck behind an `ALTER TABLE` cannot extend its
///   leases, so it gives up and retries instead of silently losing its events to another
///   worker;
/// - `statement_timeout` = the lease: no statement of ours takes anywhere near that long,
///   and one that does has outlived the leases it guards, so retrying is right;
/// - `plan_cache_mode = force_generic_plan`: these statements run thousands of times with the
///   same shape and their generic plans are good (index scans only); otherwise PostgreSQL
///   may keep re-planning them (a custom plan costs ~0.7 ms here, more than the execution).
pub fn session_settings(client: &mut Client, lease: Duration) -> Result<(), postgres::Error> {
    let lock_ms = (lease.as_millis() / 3).max(100);
    let statement_ms = lease.as_millis().max(1000);
    client.batch_execute(&format!(
        "SET plan_cache_mode = force_generic_plan; SET lock_timeout = {lock_ms}; \
         SET statement_timeout = {statement_ms}"
    ))
}

/// The admin commands' settings: no statement timeout (`migrate` may build an index on a
/// big table, `stats` counts it), whatever the role or database says.
pub fn admin_session_settings(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute("SET statement_timeout = 0")
}

/// True when the session cannot write: a standby, or `default_transaction_read_only`.
pub fn is_read_only(client: &mut Client) -> Result<bool, postgres::Error> {
    let row = client.query_one("SHOW transaction_read_only", &[])?;
    Ok(row.try_get::<_, String>(0)? == "on")
}

/// What `last_error` holds for a handler's reason, whichever handler gave it: control
/// characters escaped as the logs escape them (`\n`, `\x1b`, `\x00`: one line, nothing a
/// terminal acts on, and no NUL, which PostgreSQL text cannot hold), then at most
/// `MAX_ERROR_LEN` bytes, cut on a character boundary with `…` counted inside the limit.
pub fn stored_error(s: String) -> String {
    let mut s = match crate::log::escape_controls(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(escaped) => escaped,
    };
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_numbers_placeholders_by_position() {
        let t = Table::parse("x").unwrap();
        assert_eq!(
            bind("SELECT @a, @ab, @a::int FROM {t}", &t, &["a", "ab"]),
            "SELECT $1, $2, $1::int FROM \"x\""
        );
    }

    #[test]
    fn what_is_put_in_is_never_replaced_again() {
        let t = Table::parse("x{archive}@n{t}").unwrap();
        assert_eq!(
            bind_parts(
                "SELECT {cols} FROM {t} WHERE n = @n; INSERT INTO {archive}",
                &t,
                &["n"],
                &[("cols", "\"@n\", \"{t}\""), ("archive", "\"a{cols}\"")],
            ),
            "SELECT \"@n\", \"{t}\" FROM \"x{archive}@n{t}\" WHERE n = $1; INSERT INTO \"a{cols}\""
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(stored_error("a\0b".into()), "a\\x00b");
        assert_eq!(
            stored_error("x\n\r\x1b[31mred\u{85}".into()),
            "x\\n\\r\\x1b[31mred\\u{85}"
        );
        assert_eq!(stored_error("plain é".into()), "plain é");
    }

    #[test]
    fn errors_are_cut_at_the_limit_on_char_boundaries() {
        for long in [
            "x".repeat(60_000),
            "é".repeat(MAX_ERROR_LEN),
            "\n".repeat(1500),
        ] {
            let s = stored_error(long);
            assert!(s.len() <= MAX_ERROR_LEN, "{}", s.len());
            assert!(s.len() > MAX_ERROR_LEN - 4, "{}", s.len());
            assert!(s.ends_with('…'));
        }
        let exact = "x".repeat(MAX_ERROR_LEN);
        assert_eq!(stored_error(exact.clone()), exact);
        assert_eq!(stored_error("short".into()), "short");
    }
}
