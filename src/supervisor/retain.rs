//! `--retain-done`: the supervisor deletes the done events delivered longer ago than the
//! retention (or moves them into `--retain-archive`), on a thread and a connection of its own,
//! like `prune` run by the daemon itself.
//!
//! Why the supervisor and not a worker: there is one per daemon however many `--processes`
//! run (no two processes of a daemon ever delete, nothing to elect), it goes on while a worker
//! is killed or restarted, and the workers' DB threads stay on the claim path only: no
//! retention work is ever done per event or between claims. The cost is one more connection.
//! Two daemons on one table both retain; their batches take rows `FOR UPDATE SKIP LOCKED`, so
//! they share the work rather than wait on each other.
//!
//! A pass every [`PASS_EVERY`] (the first at start-up) goes on with a sweep of the primary
//! key, or starts one: each statement reads a span of ids and removes the old done rows among
//! them (`store::retain`), in its own transaction under a statement timeout of
//! [`STATEMENT_LIMIT`] and a lock timeout of [`LOCK_LIMIT`]. Retention yields to delivery
//! (`pace`): while the workers' claims come back full (a backlog: they deliver as fast as
//! they can), a span is 500 ids at most and statements start at least a second and twenty
//! times their own duration apart, a floor that trims a table under permanent load and
//! costs delivery next to nothing; while they are idle or trickling, spans of 5,000 ids each
//! followed by a pause twice its duration (a third of the database time it could take).
//! The load is what the workers report anyway (their claim counts on the board): no
//! statement or message of its own. A pass starts no statement after [`PASS_BUDGET`] (a
//! backlog is worked off over several passes) and the next pass resumes the sweep where it
//! stopped. A quick sweep stops at the first row created within the retention
//! (`store::retain::quick_bound`): it reads the old rows only. A full sweep, once per
//! retention (at least [`FULL_EVERY_MIN`] apart), reads the whole table, for rows whose
//! `created_at` is out of id order; while the workers are busy none starts, and one under way
//! is set aside until they are idle (`sweep`): the floor's few statements go to old rows.
//!
//! Invariants: at most one statement of retention runs at any time, and none earlier than
//! `pace` allows after the last (while the workers' claims come back full, none reads more
//! than 500 ids); a failure (a read-only role, a standby, a timeout, a lost connection) costs
//! one warning per streak of failures and the rest of that pass, never a worker's progress;
//! only `done` rows are ever removed (the statement checks the status again under the row
//! lock).

use super::pace::{self, Load, Ran, Step, Watch};
use super::sweep::{Pick, Sweep, Sweeps};
use crate::admin::human_secs;
use crate::admin::prune::archive_columns;
use crate::cli::defs;
use crate::config::{Config, Table};
use crate::connect::{Attempt, Connector};
use crate::error::{describe_pg, Error, Result};
use crate::metrics::board::Board;
use crate::store::retain::{self, Span};
use crate::{info, warn};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between the starts of two passes.
const PASS_EVERY: Duration = Duration::from_secs(10);
/// A pass starts no new statement after this long.
const PASS_BUDGET: Duration = Duration::from_secs(5);
/// While waiting for the next statement, the load is looked at again this often.
const RECHECK: Duration = Duration::from_millis(100);
/// A statement running longer is cancelled by the server.
const STATEMENT_LIMIT: Duration = Duration::from_secs(5);
const LOCK_LIMIT: Duration = Duration::from_secs(1);
/// Full sweeps are at least this far apart (and at least the retention).
const FULL_EVERY_MIN: Duration = Duration::from_secs(600);
/// At most one INFO line about removed rows per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Starts the retention thread when `--retain-done` is given.
pub(super) fn start(cfg: &Config, board: &Arc<Board>) -> Result<()> {
    let Some(older) = cfg.supervision.retain_done else {
        return Ok(());
    };
    let mut connector = cfg.dsn.connector()?;
    connector.cap_attempt_timeout(STATEMENT_LIMIT);
    let mut r = Retainer {
        sweeps: Sweeps::new(older.max(FULL_EVERY_MIN)),
        connector,
        table: cfg.table.clone(),
        archive: cfg.supervision.retain_archive.clone(),
        older: older.as_secs_f64(),
        client: None,
        columns: Vec::new(),
        board: Arc::clone(board),
        book: Book::default(),
        watch: Watch::new(cfg.batch_size, Instant::now()),
        last: None,
    };
    let verb = match &cfg.supervision.retain_archive {
        Some(to) => format!("moved to {to}"),
        None => "deleted".into(),
    };
    info!(
        "retention: done events delivered more than {} ago are {verb} (a pass every {} s)",
        human_secs(r.older),
        PASS_EVERY.as_secs()
    );
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || r.run())?;
    Ok(())
}

struct Retainer {
    /// Which sweep the next pass goes on with.
    sweeps: Sweeps,
    connector: Connector,
    table: Table,
    archive: Option<Table>,
    /// The retention, in seconds.
    older: f64,
    client: Option<postgres::Client>,
    /// The outbox table's columns, for the archive's insert (checked on each connection).
    columns: Vec<String>,
    board: Arc<Board>,
    book: Book,
    /// The workers' load, from their claims.
    watch: Watch,
    /// The last statement, for the pause after it.
    last: Option<Ran>,
}

impl Retainer {
    fn run(&mut self) {
        loop {
            let started = Instant::now();
            let result = self.pass();
            let now = Instant::now();
            match result {
                Ok(n) => {
                    if self.book.succeeded() {
                        info!("retention works again");
                    }
                    if let Some((rows, over)) = self.book.removed(n, now) {
                        info!(
                            "retention: {rows} done event(s) delivered more than {} ago {} in \
                             the last {}",
                            human_secs(self.older),
                            self.verb(),
                            human_secs(over.as_secs_f64())
                        );
                    }
                }
                Err(e) => {
                    self.client = None;
                    if self.book.failed() {
                        warn!(
                            "retention: cannot remove old done events ({e}); delivery goes on, \
                             retrying every {} s",
                            PASS_EVERY.as_secs()
                        );
                    }
                }
            }
            std::thread::sleep(PASS_EVERY.saturating_sub(started.elapsed()));
        }
    }

    fn verb(&self) -> &'static str {
        match self.archive {
            Some(_) => "archived",
            None => "deleted",
        }
    }

    /// One pass: rows removed, or the first error.
    fn pass(&mut self) -> Result<u64> {
        let started = Instant::now();
        self.connect()?;
        let Some(client) = self.client.as_mut() else {
            return Err(Error::Database("not connected".into()));
        };
        let busy = load(&self.board, &mut self.watch, started) == Load::Busy;
        let mut sweep = match self.sweeps.pick(started, busy) {
            Pick::Go(s) => s,
            Pick::Quick => Sweep::quick(retain::quick_bound(client, &self.table, self.older)?),
        };
        let archive = self.archive.as_ref().map(|t| (t, self.columns.as_slice()));
        let mut total = 0u64;
        while started.elapsed() < PASS_BUDGET {
            let now = Instant::now();
            let load = load(&self.board, &mut self.watch, now);
            let n = match pace::next(load, self.last, now) {
                Step::Run(n) => n,
                Step::Wait(d) => {
                    std::thread::sleep(d.min(RECHECK));
                    continue;
                }
            };
            let span = Span {
                older: self.older,
                after: sweep.after,
                below: sweep.below,
                n,
            };
            let batch = retain::span(client, &self.table, span, archive);
            self.last = Some(Ran {
                at: now,
                took: now.elapsed(),
            });
            let batch = batch.inspect_err(|_| self.sweeps.stopped(sweep))?;
            let rows = u64::try_from(batch.rows).unwrap_or(0);
            total += rows;
            self.board.retained(rows);
            match batch.last_id {
                Some(last) => sweep.after = last,
                None => return Ok(total),
            }
        }
        self.sweeps.stopped(sweep);
        Ok(total)
    }

    fn connect(&mut self) -> Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        let mut client = match self.connector.poll(self.connector.attempt_limit()) {
            Attempt::Done(Ok(c)) => c,
            Attempt::Done(Err(e)) => return Err(Error::Database(describe_pg(&e))),
            Attempt::Pending => return Err(Error::Database("no answer from the server".into())),
        };
        retain::settings(&mut client, LOCK_LIMIT, STATEMENT_LIMIT)?;
        if let Some(to) = &self.archive {
            self.columns = archive_columns(&mut client, defs::RETAIN_ARCHIVE.key, &self.table, to)?;
        }
        self.client = Some(client);
        Ok(())
    }
}

/// The workers' load at `now`, from what they reported to `board`.
fn load(board: &Board, watch: &mut Watch, now: Instant) -> Load {
    let (claims, claimed) = board.claims();
    watch.observe(now, claims, claimed)
}

/// What the logs say and when: one INFO line about removed rows per [`LOG_EVERY`] at most
/// (with the rows since the last one), one warning per streak of failed passes and a line when
/// it works again. Pure bookkeeping.
#[derive(Default)]
struct Book {
    /// Rows removed since the last INFO line, and when that line was written.
    unreported: u64,
    reported_at: Option<Instant>,
    failing: bool,
}

impl Book {
    /// A pass removed `n` rows at `now`: the rows to report and over how long, if a line is
    /// due (something was removed, and the last line is old enough).
    fn removed(&mut self, n: u64, now: Instant) -> Option<(u64, Duration)> {
        self.unreported += n;
        let since = self.reported_at.map(|t| now.saturating_duration_since(t));
        if n == 0 || since.is_some_and(|s| s < LOG_EVERY) {
            return None;
        }
        self.reported_at = Some(now);
        let rows = std::mem::take(&mut self.unreported);
        Some((rows, since.unwrap_or(PASS_EVERY)))
    }

    /// A pass failed: whether to warn (the first of a streak).
    fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    /// A pass worked: whether a streak of failures just ended.
    fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_rows_are_reported_at_most_once_a_minute_and_none_are_lost() {
        let t0 = Instant::now();
        let mut b = Book::default();
        assert_eq!(b.removed(0, t0), None, "nothing removed, nothing said");
        assert_eq!(b.removed(5, t0), Some((5, PASS_EVERY)));
        assert_eq!(b.removed(7, t0 + Duration::from_secs(10)), None);
        assert_eq!(
            b.removed(0, t0 + LOG_EVERY),
            None,
            "only a pass that removed"
        );
        assert_eq!(
            b.removed(1, t0 + LOG_EVERY + Duration::from_secs(1)),
            Some((8, LOG_EVERY + Duration::from_secs(1)))
        );
    }

    #[test]
    fn a_streak_of_failures_warns_once_and_says_when_it_ends() {
        let mut b = Book::default();
        assert!(!b.succeeded());
        assert!(b.failed());
        assert!(!b.failed());
        assert!(b.succeeded());
        assert!(!b.succeeded());
        assert!(b.failed());
    }
}
