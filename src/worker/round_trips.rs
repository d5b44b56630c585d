//! The DB thread's round trips, one function each: complete (flush the results), release,
//! extend, claim (the results riding along) and the drain check. Each runs its statement
//! through the link, which says whether it ran, and then tells the ledger what the database
//! answered; the loop in `db_thread` decides when each is due.
//!
//! Invariant: the ledger learns of a write only once the database answered it; a statement
//! that did not run (disconnected, pausing, failed in a way worth retrying) leaves the books
//! as they were, to be sent again.

use super::db_thread::DbThread;
use super::drain::DrainLimits;
use super::pool::{self, Jobs};
use super::tally::{self, DeadEvent};
use super::Ended;
use crate::config::Order;
use crate::error::Result;
use crate::store::{self, ClaimArgs, Claimed};
use crate::{debug, info, log, warn};
use std::time::Instant;

impl DbThread<'_> {
    // ---- complete ----

    pub(super) fn flush(&mut self) -> Result<()> {
        let n = self.ledger.results().len();
        self.ledger.sending_results();
        let (owner, ledger) = (&self.owner, &self.ledger);
        let written = self.link.with(ledger.unwritten(), |c| {
            c.complete(owner, ledger.results().batch())
        })?;
        match written {
            Some(written) => self.written(written, n),
            None => Ok(()),
        }
    }

    /// The database accepted a batch of `n` results, `written` of which were still ours.
    /// After a lost reply, the rest may simply have been written by the first send: those are
    /// counted and not reported as lost.
    fn written(&mut self, written: u64, n: usize) -> Result<()> {
        let mut missing = n.saturating_sub(written as usize);
        if missing > 0 && self.ledger.results().sent_before() {
            let (table, ledger) = (&self.cfg.table, &self.ledger);
            let Some(already) = self.link.with(ledger.unwritten(), |c| {
                c.already_written(table, ledger.results().batch())
            })?
            else {
                // Kept, and sent again: fenced, it changes nothing that was written.
                return Ok(());
            };
            let already = usize::try_from(already).unwrap_or(0).min(missing);
            if already > 0 {
                info!(
                    "{already} result(s) had already been written before the connection was \
                     lost (the reply was lost, not the write)"
                );
            }
            missing -= already;
        }
        if missing > 0 {
            warn!(
                "{missing} of {n} result(s) were not applied: the event's lease had passed to \
                 another claim"
            );
        }
        debug!("wrote {written} result(s)");
        self.ledger.results_written();
        Ok(())
    }

    // ---- release ----

    pub(super) fn release(&mut self) -> Result<()> {
        let delays = self.ledger.release_delays();
        let (owner, ledger) = (&self.owner, &self.ledger);
        let n = self.link.with(ledger.unwritten(), |c| {
            c.release(owner, ledger.to_release(), &delays)
        })?;
        if let Some(n) = n {
            self.released(n, &delays);
        }
        Ok(())
    }

    pub(super) fn released(&mut self, n: u64, delays: &[f64]) {
        // Counted when given back (see `outcomes`); this only logs the write.
        let deferred = delays.iter().filter(|d| **d > 0.0).count();
        if deferred == 0 {
            info!("released {n} unstarted event(s): claimable again at once");
        } else {
            debug!("gave back {n} event(s), {deferred} of them deferred");
        }
        self.ledger.released();
    }

    // ---- extend ----

    pub(super) fn extend(&mut self) -> Result<()> {
        let held = self.ledger.to_extend();
        for (id, token, running) in self.ledger.overdue(Instant::now()) {
            let about = log::EventFields::id(id).attempt(token);
            warn!(
                event: about.outcome(log::EventOutcome::InFlight),
                "event {id} (attempt {token}) has been in flight for {:.0}s; its lease is kept \
                 while its handler runs — is the handler stuck?",
                running.as_secs_f64()
            );
        }
        let (owner, lease) = (&self.owner, self.cfg.lease);
        let sent = Instant::now();
        let kept = if held.is_empty() {
            Vec::new()
        } else {
            match self
                .link
                .with(self.ledger.unwritten(), |c| c.extend(owner, &held, lease))?
            {
                Some(kept) => kept,
                None => return Ok(()),
            }
        };
        debug!("extended the lease of {} in-flight event(s)", kept.len());
        let lost = self.ledger.extended(held, kept, sent, Instant::now());
        if !lost.is_empty() {
            warn!(
                "{} in-flight event(s) were taken over by another worker before their lease \
                 could be extended (this worker was cut off longer than --lease); queued ones \
                 will not be started, running ones' results will not be written",
                lost.len()
            );
        }
        Ok(())
    }

    // ---- claim ----

    /// Claims the next batch; pending results ride along in the same statement. `None`: the
    /// statement did not run or failed in a way worth retrying (or, ordered, claimed nothing
    /// but wrote results: claim again at once).
    pub(super) fn claim(&mut self) -> Result<Option<usize>> {
        let args = ClaimArgs {
            n: self.cfg.batch_size,
            lease: self.cfg.lease,
            owner: &self.owner,
            filter: &self.filter,
            max_attempts: self.cfg.max_attempts,
        };
        let sent = Instant::now();
        let unwritten = self.ledger.unwritten();
        let claimed = if self.ledger.results().is_empty() {
            self.link.with(unwritten, |c| c.claim(&args))?
        } else {
            let n = self.ledger.results().len();
            self.ledger.sending_results();
            let ledger = &self.ledger;
            let both = self.link.with(unwritten, |c| {
                c.complete_and_claim(ledger.results().batch(), &args)
            })?;
            let Some((written, claimed)) = both else {
                return Ok(None);
            };
            self.written(written, n)?;
            // Ordered: results just written may have freed later events of their aggregates,
            // which this statement's snapshot could not see: claim again at once, not idle.
            if claimed.is_empty() && written > 0 && self.cfg.order != Order::Unordered {
                return Ok(None);
            }
            Some(claimed)
        };
        let Some(claimed) = claimed else {
            return Ok(None);
        };
        let count = claimed.len();
        self.counters.claimed(count);
        if count > 0 {
            self.drain.work_found();
        }
        let now = Instant::now();
        self.ledger.claim_returned(now);
        let mut jobs = Jobs::default();
        for c in claimed {
            self.dispatch(c, sent, now, &mut jobs);
        }
        self.send_jobs(jobs);
        if count > 0 {
            debug!("claimed {count} event(s)");
        }
        Ok(Some(count))
    }

    /// Hands a claim's jobs to the handler threads; what none will take is given back.
    pub(super) fn send_jobs(&mut self, jobs: Jobs) {
        for (id, token) in self.pool.send(jobs) {
            self.give_back(id, token);
        }
    }

    /// Books a claimed event as dispatched and adds it to `jobs` (or ends it here: dead at
    /// claim, held back for a paused route).
    pub(super) fn dispatch(
        &mut self,
        c: Claimed,
        claim_sent: Instant,
        now: Instant,
        jobs: &mut Jobs,
    ) {
        let route = self.router.target(c.event.event_type.as_deref());
        if c.exhausted {
            self.counters.dead_at_claim(route.unwrap_or("-"));
            let event_type = c.event.event_type.as_deref();
            let about = log::EventFields::of(&c.event).attempt(c.token).route(route);
            warn!(
                event: about.outcome(log::EventOutcome::Dead),
                "{}",
                tally::dead_line(&DeadEvent {
                    id: c.event.id,
                    event_type,
                    route: self.router.target(event_type),
                    attempts: c.token,
                    max_attempts: self.cfg.max_attempts,
                    reason: c.dead_reason.as_deref().unwrap_or("attempts exhausted"),
                })
            );
            return;
        }
        if self.held_at_dispatch(&c, route.unwrap_or("-"), now) {
            return;
        }
        let (id, token) = (c.event.id, c.token);
        let Some(handler) = self.router.route(c.event.event_type.as_deref()).cloned() else {
            // The claim filter only takes routed types; this cannot normally happen.
            self.ledger.unroutable(id, token);
            return;
        };
        let alone = !pool::takes_claims(&*handler);
        self.ledger.dispatched(id, token, now, alone);
        self.counters.dispatched(id, token, route.unwrap_or("-"));
        jobs.add(c.event, token, &handler, claim_sent);
    }

    /// `--ordered-dead block`: one WARN line naming the aggregates a dead event holds back
    /// (called at start-up, with the periodic summary and at the end of a drain).
    pub(super) fn warn_held_back(&mut self) -> Result<()> {
        if self.cfg.order != (Order::ByAggregate { dead_blocks: true }) {
            return Ok(());
        }
        let table = &self.cfg.table;
        let found = self.link.with(self.ledger.unwritten(), |c| {
            store::held_back(&mut c.client, table, 3)
        })?;
        if let Some(line) = found.and_then(|(n, first)| held_back_line(n, &first)) {
            warn!("{line}");
        }
        Ok(())
    }

    /// `--drain` claimed nothing and holds nothing: asks what is left (see `drain`).
    pub(super) fn drain_check(&mut self, now: Instant) -> Result<Option<Ended>> {
        if self.ledger.drain_must_wait(now) || self.routes_paused() {
            return Ok(None);
        }
        let (table, filter, order) = (&self.cfg.table, &self.routed, self.cfg.order);
        let sent = Instant::now();
        let Some(work) = self.link.with(self.ledger.unwritten(), |c| {
            store::remaining_work(&mut c.client, table, filter, order)
        })?
        else {
            return Ok(None);
        };
        let limits = DrainLimits {
            lease: self.cfg.lease,
            poll_interval: self.cfg.poll_interval,
        };
        let took = sent.elapsed();
        let done = self
            .drain
            .finished_after(&work, took, now, limits, self.ledger.claimed_total());
        if done {
            self.warn_held_back()?;
            info!(
                "{}",
                self.tally.drained(Instant::now(), self.counters.totals())
            );
        }
        Ok(done.then_some(Ended::Drained))
    }
}

/// `2 aggregate(s) held back by a dead event: order:17 (3 waiting behind dead event 40), ...`
pub(super) fn held_back_line(n: i64, first: &[store::HeldBack]) -> Option<String> {
    if n == 0 {
        return None;
    }
    let shown: Vec<String> = first
        .iter()
        .map(|(t, id, dead, waiting)| {
            format!("{t}:{id} ({waiting} waiting behind dead event {dead})")
        })
        .collect();
    Some(format!(
        "--ordered: {n} aggregate(s) held back by a dead event: {}{}; `dispatchbox dead retry` \
         or `dead purge` the dead event to let them go",
        shown.join(", "),
        if n > first.len() as i64 { ", ..." } else { "" }
    ))
}
