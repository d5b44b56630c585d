//! Every SQL statement Dispatchbox runs, in one place, with the index that serves it.
//!
//! Invariants kept here:
//! - the claim is one statement in its own (autocommit) transaction: no transaction is ever
//!   open while a handler runs;
//! - every write after the claim (complete, extend, release) is fenced by
//!   `locked_by = <this worker> AND attempts = <token>`, so a worker that lost its lease can
//!   never overwrite the result of the worker that took the event over;
//! - one statement per batch (arrays + unnest), never one per event;
//! - the table name is always a quoted identifier; every value is a bind parameter.

use crate::config::Table;
use crate::error::{Error, Result};
use crate::handler::{Event, TypeFilter};
use postgres::{Client, Statement};
use std::time::Duration;

/// The schema, compiled in from `sql/schema.sql`: `migrate` and the file cannot drift apart.
pub const SCHEMA_SQL: &str = include_str!("../sql/schema.sql");

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

/// Longest error text stored in `last_error`.
pub const MAX_ERROR_LEN: usize = 2000;

/// `sql/schema.sql` for another table: every `outbox_event` becomes the quoted table name,
/// and every `outbox_event_suffix` (index names) the quoted `<name>_suffix`, shortened with
/// a hash of the name when it would pass 63 bytes (`Table::derived_name`).
pub fn schema_for(table: &Table) -> String {
    const NAME: &str = "outbox_event";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(SCHEMA_SQL.len() + 256);
    let mut rest = SCHEMA_SQL;
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

pub fn remaining_work(
    client: &mut Client,
    table: &Table,
    f: &TypeFilter,
) -> Result<RemainingWork, postgres::Error> {
    // Served by the claim index (status predicate); runs only when a claim found nothing.
    // date_part, not a timestamp subtraction: an infinite next_run_at gives Infinity, not an
    // error.
    let sql = format!(
        "SELECT count(*) FILTER (WHERE next_run_at <= now()),
                count(*) FILTER (WHERE locked_by IS NOT NULL AND next_run_at > now()),
                max(date_part('epoch', next_run_at)) FILTER (WHERE locked_by IS NOT NULL AND next_run_at > now())
                    - date_part('epoch', now())
         FROM {} WHERE status IN ('pending', 'retry')
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

/// Pending or retrying events with a NULL `next_run_at`: never due, never claimed (the claim
/// compares `next_run_at <= now()`). Served by the claim index (btree indexes NULLs).
pub fn never_due(client: &mut Client, table: &Table) -> Result<i64, postgres::Error> {
    let sql = format!(
        "SELECT count(*) FROM {} WHERE status IN ('pending', 'retry') AND next_run_at IS NULL",
        table.quoted()
    );
    Ok(client.query_one(&sql, &[])?.get(0))
}

/// One claimed row.
pub struct Claimed {
    pub event: Event,
    /// `attempts` after the claim: the fencing token for every later write.
    pub token: i32,
    /// The event had used all its attempts (its last worker died holding it, or it was
    /// re-queued by hand): the claim marked it `dead` instead of leasing it; do not
    /// dispatch it.
    pub exhausted: bool,
    /// Why it is dead (its new `last_error`) when `exhausted`.
    pub dead_reason: Option<String>,
}

/// A handler's verdict, ready to be written.
pub struct Completion {
    pub id: i64,
    pub token: i32,
    /// `done`, `retry` or `dead`.
    pub status: &'static str,
    /// Seconds until a `retry` is due again (ignored otherwise).
    pub delay: f64,
    pub error: Option<String>,
}

// The statements are built from these fragments, so the standalone claim, the standalone
// completion and the combined "complete + claim" round trip are the same SQL. `{t}` is the
// quoted table; `@name` placeholders become `$n` bind parameters (see `bind`).

/// Due rows in due order. Served by the partial index (next_run_at) WHERE status IN
/// ('pending','retry'): an index range scan however many done/dead rows exist. Rows leased by
/// another worker have next_run_at in the future and fall outside the range; SKIP LOCKED skips
/// rows another claim is taking at this instant.
const DUE: &str = "
    SELECT id FROM {t}
    WHERE status IN ('pending', 'retry') AND next_run_at <= now()
      AND (@all::bool OR event_type = ANY(@exact::text[]) OR event_type LIKE ANY(@like::text[]))
    ORDER BY next_run_at
    LIMIT @n
    FOR UPDATE SKIP LOCKED";

/// Leases the `due` rows: attempts + 1 (the fencing token), next_run_at = lease expiry,
/// locked_by = this worker. An event whose attempts are used up is marked dead instead: its
/// last holder died with the lease (locked_by still set), or it was re-queued by hand
/// without resetting attempts (locked_by NULL); last_error says which. `id = ANY(ARRAY(...))` rather than a join with `due`:
/// the planner cannot estimate a CTE's size and, with a generic plan, hashes the whole table.
const LEASE: &str = "
    UPDATE {t} AS e SET
        attempts    = CASE WHEN coalesce(e.attempts, 0) >= @max THEN e.attempts ELSE coalesce(e.attempts, 0) + 1 END,
        status      = CASE WHEN coalesce(e.attempts, 0) >= @max THEN 'dead' ELSE e.status END,
        last_error  = CASE WHEN coalesce(e.attempts, 0) < @max THEN e.last_error
                           WHEN e.locked_by IS NOT NULL
                           THEN 'attempts exhausted: the lease of the final attempt expired (worker died?)'
                           ELSE 'attempts exhausted: re-queued with all ' || coalesce(e.attempts, 0)
                                || ' attempts used (reset attempts to 0 to retry it)' END,
        next_run_at = CASE WHEN coalesce(e.attempts, 0) >= @max THEN e.next_run_at
                           ELSE now() + make_interval(secs => @lease::float8) END,
        locked_by   = CASE WHEN coalesce(e.attempts, 0) >= @max THEN NULL ELSE @owner::text END,
        locked_at   = CASE WHEN coalesce(e.attempts, 0) >= @max THEN NULL ELSE now() END
    WHERE e.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING e.id::bigint, e.attempts::int, e.status::text, e.event_type::text,
              e.aggregate_type::text, e.aggregate_id::text, coalesce(e.payload::text, 'null') AS payload,
              CASE WHEN e.status = 'dead' THEN e.last_error END AS dead_reason";

/// Writes a batch of results. Primary-key lookups, fenced by owner and token.
const COMPLETE: &str = "
    UPDATE {t} AS e SET
        status       = r.status,
        next_run_at  = CASE WHEN r.status = 'retry'
                            THEN now() + make_interval(secs => r.delay) ELSE e.next_run_at END,
        last_error   = CASE WHEN r.status = 'done' THEN e.last_error ELSE r.error END,
        delivered_at = CASE WHEN r.status = 'done' THEN now() ELSE e.delivered_at END,
        locked_by    = NULL,
        locked_at    = NULL
    FROM unnest(@ids::bigint[], @tokens::int[], @statuses::text[], @delays::float8[], @errors::text[])
         AS r(id, token, status, delay, error)
    WHERE e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text";

/// Returns the ids still held: the others were taken over (their lease had expired).
const EXTEND: &str = "
    UPDATE {t} AS e SET next_run_at = now() + make_interval(secs => @lease::float8)
    FROM unnest(@ids::bigint[], @tokens::int[]) AS r(id, token)
    WHERE e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text
      AND e.status IN ('pending', 'retry')
    RETURNING e.id::bigint";

/// Of a batch of results sent again after a lost reply: how many rows already hold exactly
/// what the first send wrote (same token, no lease, the intended status). Primary-key lookups.
const ALREADY_WRITTEN: &str = "
    SELECT count(*) FROM {t} AS e
    JOIN unnest(@ids::bigint[], @tokens::int[], @statuses::text[]) AS r(id, token, status)
      ON e.id = r.id
    WHERE e.attempts = r.token AND e.locked_by IS NULL AND e.status = r.status";

/// Given back with its attempt: unstarted at shutdown (delay 0, due again at once), or
/// deferred by its handler for a local reason (due again after `delay` seconds).
const RELEASE: &str = "
    UPDATE {t} AS e SET attempts = e.attempts - 1,
                        next_run_at = now() + make_interval(secs => r.delay),
                        locked_by = NULL, locked_at = NULL
    FROM unnest(@ids::bigint[], @tokens::int[], @delays::float8[]) AS r(id, token, delay)
    WHERE e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text
      AND e.status IN ('pending', 'retry')";

const CLAIM_PARAMS: &[&str] = &["n", "lease", "all", "exact", "like", "max", "owner"];
const COMPLETE_PARAMS: &[&str] = &["ids", "tokens", "statuses", "delays", "errors", "owner"];
const HELD_PARAMS: &[&str] = &["ids", "tokens", "owner", "lease"];
const RELEASE_PARAMS: &[&str] = &["ids", "tokens", "owner", "delays"];

/// Replaces `{t}` with the quoted table and each `@name` with `$k`, k = its 1-based position in
/// `names` (a name may occur several times).
fn bind(sql: &str, table: &Table, names: &[&str]) -> String {
    let mut out = sql.to_string();
    // Longest names first, so that no name is replaced inside a longer one.
    let mut order: Vec<(usize, &str)> = names.iter().copied().enumerate().collect();
    order.sort_by_key(|(_, n)| std::cmp::Reverse(n.len()));
    for (i, name) in order {
        out = out.replace(&format!("@{name}"), &format!("${}", i + 1));
    }
    debug_assert!(!out.contains('@'), "unbound placeholder in {out}");
    // The table last: a quoted name may itself contain `@`.
    out.replace("{t}", &table.quoted())
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

/// A connection with this worker's statements prepared on it.
pub struct Conn {
    pub client: Client,
    claim: Statement,
    complete: Statement,
    complete_and_claim: Statement,
    extend: Statement,
    release: Statement,
}

/// The claim's parameters.
pub struct ClaimArgs<'a> {
    pub n: u32,
    pub lease: Duration,
    pub owner: &'a str,
    pub filter: &'a TypeFilter,
    pub max_attempts: i32,
}

impl Conn {
    /// Applies [`session_settings`] (again, if the caller already did before its own
    /// start-up queries: it is one cheap round trip) and prepares the statements.
    pub fn prepare(
        mut client: Client,
        table: &Table,
        lease: Duration,
    ) -> Result<Conn, postgres::Error> {
        session_settings(&mut client, lease)?;
        let claim = client.prepare(&bind(
            &format!("WITH due AS ({DUE}) {LEASE}"),
            table,
            CLAIM_PARAMS,
        ))?;
        let complete = client.prepare(&bind(COMPLETE, table, COMPLETE_PARAMS))?;
        // One round trip and one commit for "write the last results, claim the next batch".
        // The completed rows are leased by us (next_run_at in the future), so `due` does not
        // see them. Should a result arrive after its own lease expired, the row may match both
        // updates; PostgreSQL then applies only the first and the other skips the row — either
        // the result is written, or the event is claimed again: nothing is lost.
        let mut names: Vec<&str> = COMPLETE_PARAMS.to_vec();
        names.extend(CLAIM_PARAMS.iter().filter(|n| !COMPLETE_PARAMS.contains(n)));
        let complete_and_claim = client.prepare(&bind(
            &format!(
                "WITH done AS ({COMPLETE} RETURNING 1), due AS ({DUE}), claimed AS ({LEASE})
                 SELECT w.n, c.* FROM (SELECT count(*) AS n FROM done) AS w
                 LEFT JOIN claimed AS c ON true"
            ),
            table,
            &names,
        ))?;
        let extend = client.prepare(&bind(EXTEND, table, HELD_PARAMS))?;
        let release = client.prepare(&bind(RELEASE, table, RELEASE_PARAMS))?;
        Ok(Conn {
            client,
            claim,
            complete,
            complete_and_claim,
            extend,
            release,
        })
    }

    pub fn claim(&mut self, a: &ClaimArgs<'_>) -> Result<Vec<Claimed>, postgres::Error> {
        let rows = self.client.query(
            &self.claim,
            &[
                &i64::from(a.n),
                &a.lease.as_secs_f64(),
                &a.filter.all,
                &a.filter.exact,
                &a.filter.like,
                &a.max_attempts,
                &a.owner,
            ],
        )?;
        Ok(rows.iter().map(|r| claimed_from(r, 0)).collect())
    }

    /// Writes a batch of results; returns how many still belonged to us.
    pub fn complete(&mut self, owner: &str, batch: &[Completion]) -> Result<u64, postgres::Error> {
        let c = CompletionColumns::new(batch);
        self.client.execute(
            &self.complete,
            &[&c.ids, &c.tokens, &c.statuses, &c.delays, &c.errors, &owner],
        )
    }

    /// `complete` and `claim` in one statement: (results written, events claimed).
    pub fn complete_and_claim(
        &mut self,
        batch: &[Completion],
        claim: &ClaimArgs<'_>,
    ) -> Result<(u64, Vec<Claimed>), postgres::Error> {
        let c = CompletionColumns::new(batch);
        let rows = self.client.query(
            &self.complete_and_claim,
            &[
                &c.ids,
                &c.tokens,
                &c.statuses,
                &c.delays,
                &c.errors,
                &claim.owner,
                &i64::from(claim.n),
                &claim.lease.as_secs_f64(),
                &claim.filter.all,
                &claim.filter.exact,
                &claim.filter.like,
                &claim.max_attempts,
            ],
        )?;
        let written = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0);
        let claimed = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .map(|r| claimed_from(r, 1))
            .collect();
        Ok((u64::try_from(written).unwrap_or(0), claimed))
    }

    /// Extends the leases of `held`; returns the ids that are still ours.
    pub fn extend(
        &mut self,
        owner: &str,
        held: &[(i64, i32)],
        lease: Duration,
    ) -> Result<Vec<i64>, postgres::Error> {
        let (ids, tokens): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
        let rows = self
            .client
            .query(&self.extend, &[&ids, &tokens, &owner, &lease.as_secs_f64()])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// See `ALREADY_WRITTEN`. Runs only after a lost reply, never on the hot path.
    pub fn already_written(
        &mut self,
        table: &Table,
        batch: &[Completion],
    ) -> Result<i64, postgres::Error> {
        let c = CompletionColumns::new(batch);
        let sql = bind(ALREADY_WRITTEN, table, &["ids", "tokens", "statuses"]);
        Ok(self
            .client
            .query_one(&sql, &[&c.ids, &c.tokens, &c.statuses])?
            .get(0))
    }

    /// Gives events back without using their attempt; `delays[i]` is how many seconds
    /// `held[i]` waits before it is due again.
    pub fn release(
        &mut self,
        owner: &str,
        held: &[(i64, i32)],
        delays: &[f64],
    ) -> Result<u64, postgres::Error> {
        let (ids, tokens): (Vec<i64>, Vec<i32>) = held.iter().copied().unzip();
        self.client
            .execute(&self.release, &[&ids, &tokens, &owner, &delays])
    }
}

/// A batch of completions as the parallel arrays `unnest` takes.
struct CompletionColumns<'a> {
    ids: Vec<i64>,
    tokens: Vec<i32>,
    statuses: Vec<&'a str>,
    delays: Vec<f64>,
    errors: Vec<Option<&'a str>>,
}

impl<'a> CompletionColumns<'a> {
    fn new(batch: &'a [Completion]) -> Self {
        CompletionColumns {
            ids: batch.iter().map(|c| c.id).collect(),
            tokens: batch.iter().map(|c| c.token).collect(),
            statuses: batch.iter().map(|c| c.status).collect(),
            delays: batch.iter().map(|c| c.delay).collect(),
            errors: batch.iter().map(|c| c.error.as_deref()).collect(),
        }
    }
}

/// A `LEASE ... RETURNING` row whose columns start at `at`.
fn claimed_from(r: &postgres::Row, at: usize) -> Claimed {
    let token: i32 = r.get(at + 1);
    let status: Option<String> = r.get(at + 2);
    Claimed {
        event: Event {
            id: r.get(at),
            event_type: r.get(at + 3),
            aggregate_type: r.get(at + 4),
            aggregate_id: r.get(at + 5),
            payload: r.get(at + 6),
            attempt: token,
        },
        token,
        exhausted: status.as_deref() == Some("dead"),
        dead_reason: r.get(at + 7),
    }
}

/// Makes an error message storable: NUL bytes (which PostgreSQL text cannot hold) become
/// `\0`, and it is cut to `MAX_ERROR_LEN` bytes on a character boundary.
pub fn truncate_error(s: String) -> String {
    let mut s = if s.contains('\0') {
        s.replace('\0', "\\0")
    } else {
        s
    };
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
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
    }

    #[test]
    fn bind_numbers_placeholders_by_position() {
        let t = Table::parse("x").unwrap();
        assert_eq!(
            bind("SELECT @a, @ab, @a::int FROM {t}", &t, &["a", "ab"]),
            "SELECT $1, $2, $1::int FROM \"x\""
        );
    }

    #[test]
    fn nul_bytes_are_escaped() {
        assert_eq!(truncate_error("a\0b".into()), "a\\0b");
    }

    #[test]
    fn errors_are_truncated_on_char_boundaries() {
        let s = truncate_error("é".repeat(MAX_ERROR_LEN));
        assert!(s.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(s.ends_with('…'));
        assert_eq!(truncate_error("short".into()), "short");
    }
}
