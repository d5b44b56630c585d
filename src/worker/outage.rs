//! The DB thread's side of route health (`health` keeps the books): what an `Unavailable`
//! outcome means for its event (a failed attempt while the route is up, a free wait while it
//! is paused), giving back the events of a paused route at dispatch, the probe claims, the
//! claim filter without the paused routes' types, and the log lines to alert on.
//!
//! Invariant: while a route is paused, none of its events uses an attempt except through
//! the failed attempts that paused it; its types are left out of the claims (no claim and
//! release churn), and one probe event at a time tests the destination.

use super::db_thread::DbThread;
use super::health::{Change, Verdict};
use super::outcomes::Ending;
use super::pool::Jobs;
use crate::handler::Outcome;
use crate::store::{self, ClaimArgs, Claimed};
use crate::{debug, info, log, warn};
use std::time::Instant;

impl<'a> DbThread<'a> {
    /// Route health's say on an outcome of event (id, token) of route `r` (`about`: its log
    /// fields): the outcome to record, or None when the event was given back to wait for its
    /// route.
    pub(super) fn route_outcome(
        &mut self,
        id: i64,
        token: i32,
        r: usize,
        outcome: Outcome,
        now: Instant,
        about: log::EventFields<'_>,
    ) -> Option<Outcome> {
        match outcome {
            Outcome::Unavailable(why, after) => {
                let (verdict, change) = self.health.unavailable(r, id, now);
                if change == Some(Change::Paused) {
                    self.route_paused(r, &why);
                }
                match verdict {
                    Verdict::Charge => Some(Outcome::Unavailable(why, after)),
                    Verdict::Hold(wait) => {
                        let wait = after
                            .map_or(wait, |a| a.max(wait))
                            .min(self.cfg.backoff.max);
                        let ours = self.ledger.hold(id, token, wait);
                        self.counters.ended(id, token, &Ending::Held { ours }, None);
                        debug!(
                            event: about.outcome(log::EventOutcome::Held),
                            "event {id}: {why}; waiting for its route ({:.1}s)",
                            wait.as_secs_f64()
                        );
                        None
                    }
                }
            }
            // The destination answered: it is reachable.
            Outcome::Delivered | Outcome::Permanent(_) => {
                if let Some(change) = self.health.answered(r, now) {
                    self.route_changed(r, change);
                }
                Some(outcome)
            }
            other => {
                self.health.probe_ended(r, id, now);
                Some(other)
            }
        }
    }

    /// At dispatch: an event of a paused route (not its probe) is given back to wait. True
    /// when it was.
    pub(super) fn held_at_dispatch(&mut self, c: &Claimed, route: &'a str, now: Instant) -> bool {
        let Some(r) = self.router.index(c.event.event_type.as_deref()) else {
            return false;
        };
        let Some(wait) = self.health.hold(r, c.event.id, now) else {
            return false;
        };
        let (id, token) = (c.event.id, c.token);
        // Given back at once: never waits for a thread.
        self.ledger.dispatched(id, token, now, false);
        self.counters.dispatched(id, token, route);
        let ours = self.ledger.hold(id, token, wait);
        self.counters.ended(id, token, &Ending::Held { ours }, None);
        true
    }

    /// A paused route whose probe is due gets one event claimed for it.
    pub(super) fn probe(&mut self, now: Instant) -> crate::error::Result<()> {
        let Some(r) = self.health.probe_due(now) else {
            return Ok(());
        };
        let filter = self.router.type_filter_of(r);
        let args = ClaimArgs {
            n: 1,
            lease: self.cfg.lease,
            owner: &self.owner,
            filter: &filter,
            max_attempts: self.cfg.max_attempts,
        };
        let sent = Instant::now();
        let Some(claimed) = self
            .link
            .with(self.ledger.unwritten(), |c| c.claim(&args))?
        else {
            return Ok(());
        };
        self.counters.claimed(claimed.len());
        self.ledger.claim_returned(Instant::now());
        if claimed.is_empty() {
            if let Some(change) = self.health.nothing_to_probe(r, Instant::now()) {
                self.route_changed(r, change);
            }
            return Ok(());
        }
        let mut jobs = Jobs::default();
        for c in claimed {
            if self.router.index(c.event.event_type.as_deref()) == Some(r) {
                let target = Some(self.router.target_at(r));
                debug!(
                    event: log::EventFields::of(&c.event)
                        .attempt(c.token)
                        .route(target)
                        .outcome(log::EventOutcome::Probe),
                    "probing route {} with event {}",
                    self.router.route_at(r),
                    c.event.id
                );
                self.health.probing(r, c.event.id);
            } else {
                self.health.probe_ended(r, -1, Instant::now());
            }
            self.dispatch(c, sent, Instant::now(), &mut jobs);
        }
        self.send_jobs(jobs);
        Ok(())
    }

    fn route_changed(&mut self, r: usize, change: Change) {
        match change {
            Change::Paused => self.route_paused(r, "-"),
            Change::Resumed { paused_for, held } => {
                info!(
                    "route {} resumed after {:.1}s paused: the destination answered again; {held} \
                     event(s) were held back meanwhile without using attempts",
                    self.router.route_at(r),
                    paused_for.as_secs_f64()
                );
                self.refilter();
            }
        }
    }

    fn route_paused(&mut self, r: usize, why: &str) {
        self.refilter();
        let (table, filter) = (&self.cfg.table, self.router.type_filter_of(r));
        let waiting = self
            .link
            .with(self.ledger.unwritten(), |c| {
                store::waiting(&mut c.client, table, &filter)
            })
            .ok()
            .flatten()
            .map_or_else(|| "its events".to_string(), |n| format!("{n} event(s)"));
        warn!(
            "route {} paused: {} deliveries in a row found the destination unavailable (last: \
             {why}); {waiting} wait without using attempts while one probe event is tried every \
             {}-{}s until the destination answers",
            self.router.route_at(r),
            super::health::TRIP,
            super::health::PROBE_FIRST.as_secs(),
            super::health::PROBE_MAX.as_secs()
        );
    }

    /// The claim filter without the paused routes' types.
    fn refilter(&mut self) {
        self.filter = self.router.type_filter_pausing(&self.health.paused());
    }

    /// Each route's health for the next counters report (routes ever paused).
    pub(super) fn count_route_health(&mut self, now: Instant) {
        for r in 0..self.router.len() {
            let (paused, secs) = (self.health.is_paused(r), self.health.paused_seconds(r, now));
            if paused || secs > 0.0 {
                let route = self.router.target_at(r);
                let paused_for = std::time::Duration::from_secs_f64(secs);
                self.counters.route_health(route, paused, paused_for);
            }
        }
    }

    /// When the next probe is due (for the DB thread's sleep).
    pub(super) fn next_probe(&self) -> Option<Instant> {
        self.health.next_probe()
    }

    /// Every route is paused: only probes claim.
    pub(super) fn every_route_paused(&self) -> bool {
        !self.router.is_empty() && self.health.paused().len() == self.router.len()
    }

    /// Whether a `--drain` must go on waiting: a paused route's events are not done.
    pub(super) fn routes_paused(&self) -> bool {
        !self.health.paused().is_empty()
    }
}
