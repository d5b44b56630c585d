//! The table's shape: `sql/schema.sql` for any table name, `migrate`, and the start-up
//! check that the table has what the worker needs.
//!
//! Invariant: `migrate` changes nothing on an up-to-date table (no exclusive lock that would
//! stall the workers), and several `migrate` runs at once are serialized.

use crate::config::Table;
use crate::error::{Error, Result};
use postgres::Client;

/// The schema, compiled in from `sql/schema.sql`: `migrate` and the file cannot drift apart.
pub const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");

/// The index ordered claims use, compiled in from `sql/ordered.sql` (`migrate --ordered`).
pub const ORDERED_SQL: &str = include_str!("../../sql/ordered.sql");

/// Columns the worker needs; a table missing any of them needs `dispatchbox migrate`.
const REQUIRED_COLUMNS: &[&str] = &[
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
    "status",
    "attempts",
    "next_run_at",
    "created_at",
    "locked_by",
    "locked_at",
    "last_error",
    "delivered_at",
];

/// `sql/schema.sql` for another table: every `outbox_event` becomes the quoted table name,
/// and every `outbox_event_suffix` (index names) the quoted `<name>_suffix`, shortened with
/// a hash of the name when it would pass 63 bytes (`Table::derived_name`).
pub fn schema_for(table: &Table) -> String {
    for_table(SCHEMA_SQL, table)
}

/// `sql/ordered.sql` for `table`, renamed as [`schema_for`] does.
pub fn ordered_schema_for(table: &Table) -> String {
    for_table(ORDERED_SQL, table)
}

fn for_table(sql: &str, table: &Table) -> String {
    const NAME: &str = "outbox_event";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(sql.len() + 256);
    let mut rest = sql;
    while let Some(pos) = rest.find(NAME) {
        let before_ok = rest[..pos].chars().next_back().is_none_or(|c| !is_ident(c));
        out.push_str(&rest[..pos]);
        let after = &rest[pos + NAME.len()..];
        let suffix_len = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
        if before_ok {
            let suffix = &after[..suffix_len];
            if suffix.is_empty() {
                out.push_str(&table.quoted());
            } else {
                out.push_str(&table.quoted_derived(suffix));
            }
        } else {
            out.push_str(NAME);
            out.push_str(&after[..suffix_len]);
        }
        rest = &after[suffix_len..];
    }
    out.push_str(rest);
    out
}

/// Creates or upgrades the table; returns false when it was already up to date. Serialized
/// with an advisory lock so that several `migrate` runs at once do not trip over each other.
/// An up-to-date table is left alone: `ALTER TABLE ... IF NOT EXISTS` would still take an
/// exclusive lock and stall every worker behind it.
pub fn migrate(client: &mut Client, table: &Table) -> Result<bool> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('dispatchbox migrate'))",
        &[],
    )?;
    if inspect(&mut tx, table)? == TableState::Ready {
        return Ok(false);
    }
    // Waiting behind a long reader would queue every claim behind us: give up instead.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")?;
    tx.batch_execute(&schema_for(table))?;
    tx.commit()?;
    Ok(true)
}

/// Builds the index ordered claims use when no valid index leads with (aggregate_type,
/// aggregate_id) yet; returns false when there was one. Serialized like [`migrate`].
pub fn migrate_ordered(client: &mut Client, table: &Table) -> Result<bool> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('dispatchbox migrate'))",
        &[],
    )?;
    if has_ordered_index(&mut tx, table)? {
        return Ok(false);
    }
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")?;
    tx.batch_execute(&ordered_schema_for(table))?;
    tx.commit()?;
    Ok(true)
}

/// Whether a valid index on `table` leads with (aggregate_type, aggregate_id, id) and keeps
/// the waiting rows (its predicate, if any, names pending and retry).
pub fn has_ordered_index(client: &mut impl postgres::GenericClient, table: &Table) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
                WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indisready
                  AND i.indnatts >= 3
                  AND (SELECT array_agg(a.attname::text ORDER BY k.n)
                       FROM unnest(i.indkey[0:2]) WITH ORDINALITY AS k(attnum, n)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
                      = ARRAY['aggregate_type', 'aggregate_id', 'id']
                  AND (i.indpred IS NULL
                       OR (pg_get_expr(i.indpred, i.indrelid) LIKE '%pending%'
                           AND pg_get_expr(i.indpred, i.indrelid) LIKE '%retry%')))",
            &[&table.quoted()],
        )?
        .get(0))
}

#[derive(Debug, PartialEq, Eq)]
enum TableState {
    Missing {
        database: String,
    },
    LacksColumns(Vec<&'static str>),
    /// Usable, but no valid claim index: `migrate` builds it.
    NoClaimIndex,
    Ready,
}

fn inspect(client: &mut impl postgres::GenericClient, table: &Table) -> Result<TableState> {
    let row = client.query_one(
        "SELECT to_regclass($1)::oid::bigint, current_database()::text",
        &[&table.quoted()],
    )?;
    let Some(oid): Option<i64> = row.get(0) else {
        return Ok(TableState::Missing {
            database: row.get(1),
        });
    };
    let rows = client.query(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::bigint::oid AND attnum > 0 AND NOT attisdropped",
        &[&oid],
    )?;
    let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&'static str> = REQUIRED_COLUMNS
        .iter()
        .copied()
        .filter(|c| !have.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Ok(TableState::LacksColumns(missing));
    }
    // The same test as in sql/schema.sql (the original tool's index counts; so does one on a
    // varchar status, whose predicate PostgreSQL renders with casts).
    let indexed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = $1::bigint::oid AND i.indisvalid AND i.indisready
                  AND i.indnatts = 1 AND a.attname = 'next_run_at'
                  AND pg_get_expr(i.indpred, i.indrelid) LIKE '%pending%'
                  AND pg_get_expr(i.indpred, i.indrelid) LIKE '%retry%')",
            &[&oid],
        )?
        .get(0);
    Ok(if indexed {
        TableState::Ready
    } else {
        TableState::NoClaimIndex
    })
}

/// What `migrate` would change (None: the table is up to date), in one line for people.
pub fn needs_migration(client: &mut Client, table: &Table) -> Result<Option<String>> {
    Ok(match inspect(client, table)? {
        TableState::Missing { database } => Some(format!(
            "table {table} does not exist in database {database}"
        )),
        TableState::LacksColumns(missing) => Some(format!(
            "table {table} lacks column(s) {}",
            missing.join(", ")
        )),
        TableState::NoClaimIndex => Some(format!(
            "table {table} has no valid claim index on (next_run_at) for pending/retry rows"
        )),
        TableState::Ready => None,
    })
}

/// Checks that the table exists and has every column the worker needs, with an error a user
/// can act on. A missing claim index is only a warning: claims work, but slowly.
pub fn check_table(client: &mut Client, table: &Table) -> Result<()> {
    match inspect(client, table)? {
        TableState::Missing { database } => Err(Error::Database(format!(
            "table {table} does not exist in database {database}: run `dispatchbox migrate` first"
        ))),
        TableState::LacksColumns(missing) => Err(Error::Database(format!(
            "table {table} lacks column(s) {}: run `dispatchbox migrate` to upgrade it",
            missing.join(", ")
        ))),
        TableState::NoClaimIndex => {
            crate::warn!(
                "table {table} has no valid index on (next_run_at) for pending/retry rows: \
                 claims will scan the table; run `dispatchbox migrate`"
            );
            Ok(())
        }
        TableState::Ready => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_for_default_table_only_quotes() {
        let t = Table::parse("outbox_event").unwrap();
        let s = schema_for(&t);
        assert!(s.contains("CREATE TABLE IF NOT EXISTS \"outbox_event\" ("));
        assert!(
            s.contains("CREATE INDEX IF NOT EXISTS \"outbox_event_due_idx\" ON \"outbox_event\"")
        );
        assert!(s.contains("'\"outbox_event\"'::regclass"));
    }

    #[test]
    fn schema_for_other_table_renames_everything() {
        let t = Table::parse("ops.Events").unwrap();
        let s = schema_for(&t);
        assert!(!s.contains("outbox_event"), "{s}");
        assert!(s.contains("CREATE TABLE IF NOT EXISTS \"ops\".\"Events\" ("));
        assert!(s.contains("CREATE INDEX IF NOT EXISTS \"Events_due_idx\" ON \"ops\".\"Events\""));
        let o = ordered_schema_for(&t);
        assert!(!o.contains("outbox_event"), "{o}");
        assert!(
            o.contains("\"Events_aggregate_idx\"\n    ON \"ops\".\"Events\""),
            "{o}"
        );
    }
}
