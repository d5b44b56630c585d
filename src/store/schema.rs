//! The table's shape: `sql/schema.sql` for any table name, `migrate` (with or without the
//! notify trigger), and the start-up check that the table has what the worker needs.
//! "Up to date" means every column, the claim index and the index of dead rows.
//!
//! Invariant: `migrate` changes nothing on an up-to-date table (no exclusive lock that would
//! stall the workers), and several `migrate` runs at once are serialized. "Up to date"
//! includes the notify trigger being there (`--notify on`) or not (`--notify off`).

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
    substitute(SCHEMA_SQL, table)
}

/// `sql/ordered.sql` for `table`, renamed as [`schema_for`] does.
pub fn ordered_schema_for(table: &Table) -> String {
    substitute(ORDERED_SQL, table)
}

/// Where the notify section of `sql/schema.sql` begins (the rest of the file).
const NOTIFY_SECTION: &str = "-- ---- notify:";

/// What `migrate --notify off` runs instead of the notify section: drops the trigger and
/// its function, if there (the function found through the trigger, wherever it lives).
const DROP_NOTIFY_SQL: &str = "
DO $no_notify$
DECLARE
    f regprocedure := (SELECT tgfoid::regprocedure FROM pg_trigger
                       WHERE tgrelid = 'outbox_event'::regclass
                         AND tgname = (parse_ident('outbox_event_notify'))[1]);
BEGIN
    IF f IS NOT NULL THEN
        DROP TRIGGER outbox_event_notify ON outbox_event;
        EXECUTE 'DROP FUNCTION IF EXISTS ' || f::text;
    END IF;
END
$no_notify$;
";

/// `sql/schema.sql` for `table` without its notify section (`drop`: dropping the trigger).
pub fn schema_without_notify(table: &Table, drop: bool) -> String {
    let end = SCHEMA_SQL.find(NOTIFY_SECTION).unwrap_or(SCHEMA_SQL.len());
    let mut sql = substitute(&SCHEMA_SQL[..end], table);
    if drop {
        sql += &substitute(DROP_NOTIFY_SQL, table);
    }
    sql
}

/// `text` with every `outbox_event` in its statements replaced by the quoted table name and
/// every `outbox_event_suffix` by the quoted derived name. Comments (`--` to the end of the
/// line, outside string literals) are copied as written: a name never goes into a comment,
/// where quoting would not keep it from ending the comment.
fn substitute(text: &str, table: &Table) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut rest = text;
    let mut in_literal = false;
    while !rest.is_empty() {
        // The next piece of code or literal ends at a comment's start (outside a literal).
        let mut end = rest.len();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                in_literal = !in_literal; // `''` inside a literal toggles twice: no change
            } else if !in_literal && c == '-' && chars.peek().is_some_and(|(_, n)| *n == '-') {
                end = i;
                break;
            }
        }
        out.push_str(&rename(&rest[..end], table));
        rest = &rest[end..];
        let comment = rest.find('\n').map_or(rest.len(), |n| n + 1);
        out.push_str(&rest[..comment]);
        rest = &rest[comment..];
    }
    out
}

/// `code` with every `outbox_event` replaced by the quoted table name and every
/// `outbox_event_suffix` by the quoted derived name.
fn rename(code: &str, table: &Table) -> String {
    const NAME: &str = "outbox_event";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(code.len() + 64);
    let mut rest = code;
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

/// The text `migrate` runs for `table` (see `migrate` for `notify`).
pub fn migration_sql(table: &Table, notify: Option<bool>) -> String {
    match notify {
        Some(true) => schema_for(table),
        Some(false) => schema_without_notify(table, true),
        None => schema_without_notify(table, false),
    }
}

/// Creates or upgrades the table; returns false when it was already up to date. Serialized
/// with an advisory lock so that several `migrate` runs at once do not trip over each other.
/// An up-to-date table is left alone: `ALTER TABLE ... IF NOT EXISTS` would still take an
/// exclusive lock and stall every worker behind it. `notify`: install the notify trigger
/// (`Some(false)`: drop it if there; `None`: leave it as it is).
pub fn migrate(client: &mut Client, table: &Table, notify: Option<bool>) -> Result<bool> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('dispatchbox migrate'))",
        &[],
    )?;
    let ready = inspect(&mut tx, table)? == TableState::Ready;
    let trigger_ok = match notify {
        None => true,
        Some(want) => ready && super::notify::has_trigger(&mut tx, table)? == want,
    };
    if ready && trigger_ok {
        return Ok(false);
    }
    // Waiting behind a long reader would queue every claim behind us: give up instead.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")?;
    tx.batch_execute(&migration_sql(table, notify))?;
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

/// The same test as in sql/schema.sql: a valid index whose predicate is `status = 'dead'`
/// (on a varchar column PostgreSQL renders it with casts), whatever its columns.
const HAS_DEAD_INDEX: &str = "
    SELECT EXISTS (SELECT 1 FROM pg_index i
        WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indisready
          AND regexp_replace(pg_get_expr(i.indpred, i.indrelid),
                             '[() ]|::(text|character varying)', '', 'g') = 'status=''dead''')";

/// Whether `table` has an index of its dead rows: then counting them (`status`, the dead-rows
/// gauge) reads only that index.
pub fn has_dead_index(client: &mut impl postgres::GenericClient, table: &Table) -> Result<bool> {
    Ok(client.query_one(HAS_DEAD_INDEX, &[&table.quoted()])?.get(0))
}

#[derive(Debug, PartialEq, Eq)]
enum TableState {
    Missing {
        database: String,
    },
    LacksColumns(Vec<&'static str>),
    /// Usable, but without a valid claim index (`claim`) or an index of dead rows (`dead`):
    /// `migrate` builds what is missing.
    LacksIndexes {
        claim: bool,
        dead: bool,
    },
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
    let dead_indexed = has_dead_index(client, table)?;
    Ok(if indexed && dead_indexed {
        TableState::Ready
    } else {
        TableState::LacksIndexes {
            claim: !indexed,
            dead: !dead_indexed,
        }
    })
}

/// What [`TableState::LacksIndexes`] lacks, for people.
fn missing_indexes(table: &Table, claim: bool, dead: bool) -> String {
    let mut what = Vec::new();
    if claim {
        what.push("no valid claim index on (next_run_at) for pending/retry rows".to_string());
    }
    if dead {
        what.push(format!(
            "no index of dead rows ({} on (id) WHERE status = 'dead')",
            table.quoted_derived("_dead_idx")
        ));
    }
    format!("table {table} has {}", what.join(" and "))
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
        TableState::LacksIndexes { claim, dead } => Some(missing_indexes(table, claim, dead)),
        TableState::Ready => None,
    })
}

/// Checks that the table exists and has every column the worker needs, with an error a user
/// can act on. A missing claim index is only a warning: claims work, but slowly. A missing
/// index of dead rows is not even that: only counting dead rows needs it.
pub fn check_table(client: &mut Client, table: &Table) -> Result<()> {
    match inspect(client, table)? {
        TableState::Missing { database } => Err(Error::Database(format!(
            "table {table} does not exist in database {database}: run `dispatchbox migrate` first"
        ))),
        TableState::LacksColumns(missing) => Err(Error::Database(format!(
            "table {table} lacks column(s) {}: run `dispatchbox migrate` to upgrade it",
            missing.join(", ")
        ))),
        TableState::LacksIndexes { claim: true, .. } => {
            crate::warn!(
                "table {table} has no valid index on (next_run_at) for pending/retry rows: \
                 claims will scan the table; run `dispatchbox migrate`"
            );
            Ok(())
        }
        // Nothing the worker needs: `status` says what it costs.
        TableState::LacksIndexes { .. } | TableState::Ready => Ok(()),
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
        assert!(s.contains("NOTIFY \"outbox_event_notify\";"));
        assert!(
            s.contains("CREATE TRIGGER \"outbox_event_notify\" AFTER INSERT ON \"outbox_event\"")
        );
    }

    #[test]
    fn without_notify_the_trigger_is_dropped_not_created() {
        let t = Table::parse("ops.Events").unwrap();
        assert!(!schema_without_notify(&t, false).contains("TRIGGER"));
        let s = schema_without_notify(&t, true);
        assert!(s.contains("CREATE TABLE IF NOT EXISTS \"ops\".\"Events\" ("));
        assert!(
            !s.contains("CREATE TRIGGER") && !s.contains("NOTIFY "),
            "{s}"
        );
        assert!(s.contains("DROP TRIGGER \"Events_notify\" ON \"ops\".\"Events\";"));
        assert!(schema_for(&t).contains("NOTIFY \"Events_notify\";"));
    }

    /// The statements of `sql`, without its comments (none of the templates has `--` in a
    /// string literal).
    fn code(sql: &str) -> String {
        sql.lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn names_never_go_into_comments() {
        let t = Table::parse("ops.Events").unwrap();
        for (template, sql) in [
            (SCHEMA_SQL, schema_for(&t)),
            (ORDERED_SQL, ordered_schema_for(&t)),
            (SCHEMA_SQL, schema_without_notify(&t, true)),
        ] {
            let comments = |s: &str| -> Vec<String> {
                s.lines()
                    .filter_map(|l| l.find("--").map(|i| l[i..].to_string()))
                    .collect()
            };
            let ours = comments(&sql);
            assert!(!ours.is_empty());
            for c in &ours {
                assert!(!c.contains("Events"), "{c}");
                assert!(comments(template).contains(c), "{c}");
            }
        }
        // A quote in a comment does not start a literal: the statements after it are renamed.
        let s = substitute(
            "-- the table's\nSELECT 1 FROM outbox_event; -- outbox_event\n",
            &t,
        );
        assert_eq!(
            s,
            "-- the table's\nSELECT 1 FROM \"ops\".\"Events\"; -- outbox_event\n"
        );
        // `--` in a literal is not a comment.
        let s = substitute("SELECT '--', 'outbox_event'::regclass", &t);
        assert_eq!(s, "SELECT '--', '\"ops\".\"Events\"'::regclass");
    }

    #[test]
    fn schema_for_other_table_renames_everything() {
        let t = Table::parse("ops.Events").unwrap();
        let s = schema_for(&t);
        assert!(!code(&s).contains("outbox_event"), "{s}");
        assert!(s.contains("CREATE TABLE IF NOT EXISTS \"ops\".\"Events\" ("));
        assert!(s.contains("CREATE INDEX IF NOT EXISTS \"Events_due_idx\" ON \"ops\".\"Events\""));
        assert!(
            s.contains("CREATE INDEX IF NOT EXISTS \"Events_dead_idx\" ON \"ops\".\"Events\" (id)")
        );
        let o = ordered_schema_for(&t);
        assert!(!code(&o).contains("outbox_event"), "{o}");
        assert!(
            o.contains("\"Events_aggregate_idx\"\n    ON \"ops\".\"Events\""),
            "{o}"
        );
    }
}
