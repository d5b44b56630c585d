//! The hot path: the claim (due rows, leased), and every write fenced by the claim's token
//! (complete, extend, release), as statements prepared once per connection on [`Conn`].
//!
//! Invariants: the claim is one statement in its own (autocommit) transaction; every write
//! after it is fenced by `locked_by = <this worker> AND attempts = <token>`; one statement
//! per batch (arrays + unnest), never one per event.

use super::{bind, session_settings, Status};
use crate::config::{OnDone, Order, Table};
use crate::handler::{Event, TypeFilter};
use postgres::{Client, Statement};
use std::time::Duration;

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
    pub status: Status,
    /// Seconds until a `retry` is due again (ignored otherwise).
    pub delay: f64,
    pub error: Option<String>,
}

// The statements are built from these fragments, so the standalone claim, the standalone
// completion and the combined "complete + claim" round trip are the same SQL. `{t}` is the
// quoted table; `@name` placeholders become `$n` bind parameters (see `bind`).

/// Due rows in due order, of the types the filter takes (the routed ones, less the types of
/// routes paused for an outage: see `TypeFilter`). Served by the partial index (next_run_at)
/// WHERE status IN ('pending','retry'): an index range scan however many done/dead rows exist. Rows leased by
/// another worker have next_run_at in the future and fall outside the range; SKIP LOCKED skips
/// rows another claim is taking at this instant.
const DUE: &str = "
    SELECT id FROM {t}
    WHERE status IN ('pending', 'retry') AND next_run_at <= now()
      AND (@all::bool OR event_type = ANY(@exact::text[]) OR event_type LIKE ANY(@like::text[]))
      AND NOT coalesce((event_type = ANY(@skip_exact::text[]) OR event_type LIKE ANY(@skip_like::text[]))
          AND NOT (event_type = ANY(@keep_exact::text[]) OR event_type LIKE ANY(@keep_like::text[])), false)
    ORDER BY next_run_at
    LIMIT @n
    FOR UPDATE SKIP LOCKED";

/// `DUE` for `--ordered`: a due row is a candidate only when no earlier event (lower id) of
/// its aggregate is waiting (pending or retry, which includes leased: a leased event keeps
/// its status) or, with `--ordered-dead block`, dead; see [`predecessor_guard`]. Within one
/// snapshot at most one event per aggregate passes that test (the lowest waiting one), so a
/// batch never holds two events of one aggregate without DISTINCT or a window (which
/// PostgreSQL refuses beside FOR UPDATE). The guard is an index probe per candidate on the
/// `(aggregate_type, aggregate_id, id)` index `migrate --ordered` builds.
const DUE_ORDERED: &str = "
    SELECT id FROM {t} AS e
    WHERE status IN ('pending', 'retry') AND next_run_at <= now()
      AND (@all::bool OR event_type = ANY(@exact::text[]) OR event_type LIKE ANY(@like::text[]))
      AND NOT coalesce((event_type = ANY(@skip_exact::text[]) OR event_type LIKE ANY(@skip_like::text[]))
          AND NOT (event_type = ANY(@keep_exact::text[]) OR event_type LIKE ANY(@keep_like::text[])), false)
      AND {guard}
    ORDER BY next_run_at
    LIMIT @n
    FOR UPDATE SKIP LOCKED";

/// "No earlier event of `{e}`'s aggregate holds it back", for rows of `{t}` aliased `e`.
/// Plain `=` (not IS NOT DISTINCT FROM, which no index serves): an event whose
/// aggregate_type or aggregate_id is NULL has no aggregate and is never held back, nor holds
/// any back.
pub(super) fn predecessor_guard(e: &str, dead_blocks: bool) -> String {
    let held = if dead_blocks {
        "'pending', 'retry', 'dead'"
    } else {
        "'pending', 'retry'"
    };
    format!(
        "NOT EXISTS (SELECT 1 FROM {{t}} AS p
                     WHERE p.aggregate_type = {e}.aggregate_type
                       AND p.aggregate_id = {e}.aggregate_id
                       AND p.id < {e}.id AND p.status IN ({held}))"
    )
}

/// The `due` CTE's text for `order`.
fn due_for(order: Order) -> String {
    match order {
        Order::Unordered => DUE.to_string(),
        Order::ByAggregate { dead_blocks } => {
            DUE_ORDERED.replace("{guard}", &predecessor_guard("e", dead_blocks))
        }
    }
}

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

/// A batch of results as rows `r(id, token, status, delay, error)`.
const RESULTS: &str =
    "unnest(@ids::bigint[], @tokens::int[], @statuses::text[], @delays::float8[], @errors::text[])
         AS r(id, token, status, delay, error)";

/// Every write of a result is fenced by this: the row is still the one this worker leased.
const FENCE: &str = "e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text";

/// Writes a batch of results (`r`). Primary-key lookups, fenced by owner and token.
const COMPLETE: &str = "
    UPDATE {t} AS e SET
        status       = r.status,
        next_run_at  = CASE WHEN r.status = 'retry'
                            THEN now() + make_interval(secs => r.delay) ELSE e.next_run_at END,
        last_error   = CASE WHEN r.status = 'done' THEN e.last_error ELSE r.error END,
        delivered_at = CASE WHEN r.status = 'done' THEN now() ELSE e.delivered_at END,
        locked_by    = NULL,
        locked_at    = NULL
    FROM {results}
    WHERE {fence}";

/// `--on-done delete`: the delivered rows of a batch are deleted, with the same fence.
const DELETE_DONE: &str = "
    DELETE FROM {t} AS e USING {results}
    WHERE {fence} AND r.status = 'done'";

/// The completion as CTEs ending in `done`, one row per result written (the rows still ours).
/// `keep`: one UPDATE. `delete`: the delivered rows are deleted, the retries and dead ones
/// updated as with `keep` — two parts of one statement, so still one round trip.
fn complete_ctes(on_done: OnDone) -> String {
    let text = match on_done {
        OnDone::Keep => format!("done AS ({COMPLETE} RETURNING 1)"),
        OnDone::Delete => format!(
            "gone AS ({DELETE_DONE} RETURNING 1),
             kept AS ({COMPLETE} AND r.status <> 'done' RETURNING 1),
             done AS (SELECT 1 FROM gone UNION ALL SELECT 1 FROM kept)"
        ),
    };
    text.replace("{results}", RESULTS).replace("{fence}", FENCE)
}

/// Returns the ids still held: the others were taken over (their lease had expired).
const EXTEND: &str = "
    UPDATE {t} AS e SET next_run_at = now() + make_interval(secs => @lease::float8)
    FROM unnest(@ids::bigint[], @tokens::int[]) AS r(id, token)
    WHERE e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text
      AND e.status IN ('pending', 'retry')
    RETURNING e.id::bigint";

/// Of a batch of results sent again after a lost reply: how many rows already hold exactly
/// what the first send wrote (same token, no lease, the intended status), or, with
/// `@gone_is_done` (`--on-done delete`), are gone when the result was `done`. Primary-key
/// lookups.
const ALREADY_WRITTEN: &str = "
    SELECT count(*) FROM unnest(@ids::bigint[], @tokens::int[], @statuses::text[]) AS r(id, token, status)
    LEFT JOIN {t} AS e ON e.id = r.id
    WHERE (e.attempts = r.token AND e.locked_by IS NULL AND e.status = r.status)
       OR (e.id IS NULL AND r.status = 'done' AND @gone_is_done::bool)";

/// Given back with its attempt: unstarted at shutdown (delay 0, due again at once), or
/// deferred by its handler for a local reason (due again after `delay` seconds).
const RELEASE: &str = "
    UPDATE {t} AS e SET attempts = e.attempts - 1,
                        next_run_at = now() + make_interval(secs => r.delay),
                        locked_by = NULL, locked_at = NULL
    FROM unnest(@ids::bigint[], @tokens::int[], @delays::float8[]) AS r(id, token, delay)
    WHERE e.id = r.id AND e.attempts = r.token AND e.locked_by = @owner::text
      AND e.status IN ('pending', 'retry')";

const CLAIM_PARAMS: &[&str] = &[
    "n",
    "lease",
    "all",
    "exact",
    "like",
    "skip_exact",
    "skip_like",
    "keep_exact",
    "keep_like",
    "max",
    "owner",
];
const COMPLETE_PARAMS: &[&str] = &["ids", "tokens", "statuses", "delays", "errors", "owner"];
const HELD_PARAMS: &[&str] = &["ids", "tokens", "owner", "lease"];
const RELEASE_PARAMS: &[&str] = &["ids", "tokens", "owner", "delays"];

/// A connection with this worker's statements prepared on it.
pub struct Conn {
    pub client: Client,
    on_done: OnDone,
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
    /// [`Conn::prepare_with`] with `--on-done keep`.
    pub fn prepare(
        client: Client,
        table: &Table,
        lease: Duration,
        order: Order,
    ) -> Result<Conn, postgres::Error> {
        Conn::prepare_with(client, table, lease, order, OnDone::Keep)
    }

    /// Applies [`session_settings`] (again, if the caller already did before its own
    /// start-up queries: it is one cheap round trip) and prepares the statements.
    pub fn prepare_with(
        mut client: Client,
        table: &Table,
        lease: Duration,
        order: Order,
        on_done: OnDone,
    ) -> Result<Conn, postgres::Error> {
        session_settings(&mut client, lease)?;
        let due = due_for(order);
        let claim = client.prepare(&bind(
            &format!("WITH due AS ({due}) {LEASE}"),
            table,
            CLAIM_PARAMS,
        ))?;
        let done = complete_ctes(on_done);
        let complete = client.prepare(&bind(
            &format!("WITH {done} SELECT count(*) FROM done"),
            table,
            COMPLETE_PARAMS,
        ))?;
        // One round trip and one commit for "write the last results, claim the next batch".
        // The completed rows are leased by us (next_run_at in the future), so `due` does not
        // see them. Should a result arrive after its own lease expired, the row may match both
        // updates; PostgreSQL then applies only the first and the other skips the row — either
        // the result is written, or the event is claimed again: nothing is lost. Ordered: all
        // parts see one snapshot, so `due` still sees the events completed here as waiting
        // and holds their successors back until the next claim (never early); a deleted one
        // is simply not there at the next claim.
        let mut names: Vec<&str> = COMPLETE_PARAMS.to_vec();
        names.extend(CLAIM_PARAMS.iter().filter(|n| !COMPLETE_PARAMS.contains(n)));
        let complete_and_claim = client.prepare(&bind(
            &format!(
                "WITH {done}, due AS ({due}), claimed AS ({LEASE})
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
            on_done,
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
                &a.filter.skip_exact,
                &a.filter.skip_like,
                &a.filter.keep_exact,
                &a.filter.keep_like,
                &a.max_attempts,
                &a.owner,
            ],
        )?;
        Ok(rows.iter().map(|r| claimed_from(r, 0)).collect())
    }

    /// Writes a batch of results; returns how many still belonged to us.
    pub fn complete(&mut self, owner: &str, batch: &[Completion]) -> Result<u64, postgres::Error> {
        let c = CompletionColumns::new(batch);
        let written: i64 = self
            .client
            .query_one(
                &self.complete,
                &[&c.ids, &c.tokens, &c.statuses, &c.delays, &c.errors, &owner],
            )?
            .get(0);
        Ok(u64::try_from(written).unwrap_or(0))
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
                &claim.filter.skip_exact,
                &claim.filter.skip_like,
                &claim.filter.keep_exact,
                &claim.filter.keep_like,
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
        let names = ["ids", "tokens", "statuses", "gone_is_done"];
        let sql = bind(ALREADY_WRITTEN, table, &names);
        let gone_is_done = self.on_done == OnDone::Delete;
        Ok(self
            .client
            .query_one(&sql, &[&c.ids, &c.tokens, &c.statuses, &gone_is_done])?
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
            statuses: batch.iter().map(|c| c.status.as_str()).collect(),
            delays: batch.iter().map(|c| c.delay).collect(),
            errors: batch.iter().map(|c| c.error.as_deref()).collect(),
        }
    }
}

/// A `LEASE ... RETURNING` row whose columns start at `at`.
fn claimed_from(r: &postgres::Row, at: usize) -> Claimed {
    let token: i32 = r.get(at + 1);
    let status: Option<&str> = r.get(at + 2);
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
        exhausted: status == Some(Status::Dead.as_str()),
        dead_reason: r.get(at + 7),
    }
}
