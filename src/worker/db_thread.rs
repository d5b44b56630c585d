//! The DB thread's loop: absorb what arrived on the inbox, keep the link, write what waits
//! (complete, release, extend), then either check the stop or claim the next batch (and, with
//! `--drain`, decide whether the worker is done); then sleep until the next wake-up or message
//! (a handler's result, a stop, or `Woken` from the LISTEN thread: one wait for all of them).
//! The books are the ledger's, the connection is the link's, the statements are in
//! `round_trips`: this file only sequences them, one short function per phase, and logs what
//! happened (and tells `counters` how each claim ended).
//!
//! Invariant: the loop only ends with every result and release written, except when it
//! abandons handlers still running at the shutdown deadline (or after a fatal error) — then it
//! says so and returns `Ended::Abandoned` for `worker::run` to act on.

use super::counters::{self, Counters};
use super::drain::DrainWatch;
use super::health::Health;
use super::lease_clock::LeaseClock;
use super::ledger::{Finished, Ledger};
use super::limits::Limits;
use super::link::Link;
use super::outcomes::{self, Ending};
use super::pool::{kill_exec_commands, Pool};
use super::tally::{self, DeadEvent, Tally};
use super::{Done, Ended, Msg};
use crate::config::Config;
use crate::error::{exit, Error, Result};
use crate::handler::{Router, TypeFilter};
use crate::metrics::counts::Label;
use crate::protocol::Report;
use crate::{debug, error, info, log, warn};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

/// The DB thread's state: the rooms it sequences. Its round trips are in `round_trips`.
pub(super) struct DbThread<'a> {
    pub(super) cfg: &'a Config,
    pub(super) router: &'a Router,
    /// The claims' filter: the routed types, less those of routes paused for an outage.
    pub(super) filter: TypeFilter,
    /// Every routed type (what `--drain` waits for).
    pub(super) routed: TypeFilter,
    pub(super) health: Health,
    pub(super) owner: String,
    inbox: Receiver<Msg>,
    pub(super) link: Link<'a>,
    pub(super) ledger: Ledger<'a>,
    pub(super) pool: Pool<'a>,
    pub(super) drain: DrainWatch,
    pub(super) counters: Counters<'a>,
    pub(super) tally: Tally,
    /// A handler aborted (its destination is gone): stop, then exit 1 with this message.
    failure: Option<String>,
}

impl<'a> DbThread<'a> {
    pub fn new(
        cfg: &'a Config,
        router: &'a Router,
        owner: String,
        inbox: Receiver<Msg>,
        link: Link<'a>,
        pool: Pool<'a>,
        clock: &'a LeaseClock,
    ) -> DbThread<'a> {
        DbThread {
            cfg,
            router,
            filter: router.type_filter(),
            routed: router.type_filter(),
            health: Health::new(router.len()),
            owner,
            inbox,
            link,
            ledger: Ledger::new(Limits::of(cfg, router.window()), clock, Instant::now()),
            pool,
            drain: DrainWatch::default(),
            counters: Counters::new(Instant::now()),
            tally: Tally::new(Instant::now()),
            failure: None,
        }
    }

    /// Sends the `counters` reports through `send`.
    pub fn reporting(mut self, send: fn(Report)) -> DbThread<'a> {
        self.counters.send_to(send);
        self
    }

    /// Reports the counts when due (`force`: now, as at exit).
    pub fn report_counters(&mut self, force: bool) {
        let now = Instant::now();
        if force || now >= self.counters.report_at() {
            self.count_route_health(now);
            tally::publish(self.counters.totals());
        }
        let gauges = counters::Gauges {
            in_flight: self.ledger.in_flight(),
            db_errors: self.link.errors(),
            db_down: self
                .link
                .down_since()
                .map(|t| now.saturating_duration_since(t)),
        };
        self.counters.report(now, gauges, force);
    }

    /// Runs until drained, stopped, abandoned or failed. A failure first gives back what it
    /// can; with handlers still running it ends as `Abandoned` with the error's exit code.
    pub fn run(&mut self) -> Result<Ended> {
        match self.run_loop() {
            Err(e) => self.fail_stop(e),
            ended => ended,
        }
    }

    /// Handlers are still running: a scope would wait for them.
    pub fn handlers_running(&self) -> bool {
        self.ledger.in_flight() > 0
    }

    fn run_loop(&mut self) -> Result<Ended> {
        loop {
            while let Ok(msg) = self.inbox.try_recv() {
                self.absorb(msg);
            }
            if let Some(ended) = self.step()? {
                return Ok(ended);
            }
            self.report_counters(false);
            self.wait();
        }
    }

    /// Sleeps until the next wake-up, or until a message arrives (absorbed at once).
    fn wait(&mut self) {
        let now = Instant::now();
        let wake = self.ledger.next_wake(now, self.link.blocked_until(now));
        let wake = match (wake, self.next_probe()) {
            (Some(w), Some(p)) if !self.ledger.stopping() => Some(w.min(p)),
            (None, Some(p)) if !self.ledger.stopping() => Some(p),
            (w, _) => w,
        };
        let wake = wake.map(|t| t.min(self.counters.report_at()));
        match wake.map(|t| t.saturating_duration_since(Instant::now())) {
            Some(d) if d.is_zero() => {}
            Some(d) => match self.inbox.recv_timeout(d) {
                Ok(msg) => self.absorb(msg),
                Err(RecvTimeoutError::Timeout) => {}
                // Only reachable through the library with every sender dropped.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(d),
            },
            None => match self.inbox.recv() {
                Ok(msg) => self.absorb(msg),
                Err(_) => self.begin_stop(),
            },
        }
    }

    // ---- absorb ----

    fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Done(d) => self.finished(d, Instant::now()),
            Msg::Batch(dones) => {
                let now = Instant::now();
                for d in dones {
                    self.finished(d, now);
                }
            }
            Msg::Unstarted { id, token } => {
                self.give_back(id, token);
            }
            Msg::Stale {
                id,
                token,
                tag,
                why,
            } => {
                // Fenced: the release is a no-op when another worker holds it now.
                if self.give_back(id, token) {
                    let route = self.router.target(tag.event_type.as_deref());
                    let fields = tag.fields(id, token).route(route);
                    warn!(
                        event: fields.outcome(log::EventOutcome::NotStarted),
                        "event {id} (attempt {token}) not started: {why}; giving it back"
                    );
                }
            }
            Msg::Woken => self.ledger.woken(),
            Msg::Stop => self.begin_stop(),
            Msg::StopNow => {
                if !self.ledger.stopping() {
                    self.begin_stop();
                }
                info!("stopping now: not waiting for running handlers");
                self.ledger.stop(Instant::now());
            }
        }
    }

    /// The ledger's `give_back`, counted.
    pub(super) fn give_back(&mut self, id: i64, token: i32) -> bool {
        let ours = self.ledger.give_back(id, token);
        self.counters
            .ended(id, token, &Ending::Unstarted { ours }, None);
        ours
    }

    fn finished(&mut self, done: Done, now: Instant) {
        let Done {
            id,
            token,
            ref tag,
            outcome,
            took,
        } = done;
        let (event_type, router) = (tag.event_type.as_deref(), self.router);
        let route = router.index(event_type);
        let about = tag
            .fields(id, token)
            .route(route.map(|r| router.target_at(r)));
        tally::failure_logged(&outcome, id, event_type, token, about);
        let outcome = match route {
            Some(r) if self.ledger.holds(id, token) => {
                match self.route_outcome(id, token, r, outcome, now, about) {
                    Some(o) => o,
                    None => return,
                }
            }
            _ => outcome,
        };
        let attempt = outcomes::attempt(&outcome, token, self.cfg.max_attempts);
        let finished = self.ledger.finished(id, token, outcome, now);
        let ending = Ending::Finished {
            attempt,
            finished: &finished,
        };
        let label = self.counters.ended(id, token, &ending, Some(took));
        match finished {
            Finished::Void => {}
            Finished::Recorded if label == Some(Label::Dead) => {
                self.went_dead(id, token, event_type, about)
            }
            Finished::Recorded => {}
            Finished::LeaseLost => info!(
                event: about.outcome(log::EventOutcome::LeaseLost),
                "event {id} (attempt {token}) finished after another worker took its lease \
                 over; its result is not written (the other claim decides)"
            ),
            Finished::Aborted(why) => {
                self.failure.get_or_insert(why);
                self.begin_stop();
            }
            // Given back without using an attempt, due again after a pause during which this
            // worker claims nothing.
            Finished::Deferred { why, warn: true } => warn!(
                event: about.outcome(log::EventOutcome::Deferred),
                "event {id}: {why}; not the event's fault: giving it back without using an \
                 attempt and pausing claims until deliveries succeed again (further events \
                 deferred meanwhile are logged at debug level)"
            ),
            Finished::Deferred { why, warn: false } => debug!(
                event: about.outcome(log::EventOutcome::Deferred),
                "event {id}: {why}; given back without using an attempt"
            ),
        }
    }

    /// The verdict just queued for attempt `token` of event `id` (`about`) is dead: one WARN
    /// line.
    fn went_dead(
        &self,
        id: i64,
        token: i32,
        event_type: Option<&str>,
        about: log::EventFields<'_>,
    ) {
        let c = self.ledger.results().batch().last().filter(|c| c.id == id);
        warn!(
            event: about.outcome(log::EventOutcome::Dead),
            "{}",
            tally::dead_line(&DeadEvent {
                id,
                event_type,
                route: self.router.target(event_type),
                attempts: token,
                max_attempts: self.cfg.max_attempts,
                reason: c.and_then(|c| c.error.as_deref()).unwrap_or("-"),
            })
        );
    }

    fn begin_stop(&mut self) {
        if self.ledger.stopping() {
            return;
        }
        info!(
            "stopping: no new claims; waiting up to {}s for {} claimed event(s) in flight",
            self.cfg.shutdown_timeout.as_secs_f64(),
            self.ledger.in_flight()
        );
        self.ledger.stop(Instant::now() + self.cfg.shutdown_timeout);
        for (id, token) in self.pool.close() {
            self.give_back(id, token);
        }
    }

    // ---- one pass ----

    /// One pass: keep the link, write what waits, then check the stop or claim.
    fn step(&mut self) -> Result<Option<Ended>> {
        let now = Instant::now();
        if self.link.reconnect_due(now) && self.link.reconnect(self.ledger.unwritten())? {
            self.ledger.extend_now(Instant::now());
        }
        if self.link.usable(now) {
            // When a claim is due now, the results ride along with it instead.
            if self.ledger.must_flush(now) {
                self.flush()?;
            }
            if self.link.usable(now) && !self.ledger.to_release().is_empty() {
                self.release()?;
            }
            if self.link.usable(now) && self.ledger.extend_due(now) {
                self.extend()?;
            }
        }
        if let Some(line) = self.tally.periodic(now, self.counters.totals()) {
            info!("{line}");
            if self.link.usable(now) {
                self.warn_held_back()?;
            }
        }
        if self.ledger.stopping() {
            return self.stop_check(now);
        }
        if self.link.usable(now) {
            self.probe(now)?;
        }
        if self.every_route_paused() {
            // Nothing to claim but probes: no empty claims every poll meanwhile.
            if self.ledger.can_claim(now) {
                self.ledger.nothing_due(now);
            }
            return Ok(None);
        }
        if self.link.usable(now) && self.ledger.can_claim(now) && self.claim()? == Some(0) {
            if self.cfg.drain && self.ledger.holds_nothing() {
                if let Some(ended) = self.drain_check(now)? {
                    return Ok(Some(ended));
                }
                // Waiting for other workers: look again soon, not a poll interval later.
                if let Some(d) = self.drain.recheck_in(self.cfg.poll_interval) {
                    self.ledger.idle_for(now, d);
                    return Ok(None);
                }
            }
            self.ledger.nothing_due(now);
        }
        Ok(None)
    }

    /// Stopping: done once nothing runs and everything is written; past the deadline, running
    /// handlers (or results that cannot be written) are abandoned.
    fn stop_check(&mut self, now: Instant) -> Result<Option<Ended>> {
        let all_written = self.ledger.all_written();
        if self.ledger.in_flight() == 0 && all_written {
            if let Some(why) = self.failure.take() {
                return Err(Error::Other(format!("worker stopped: {why}")));
            }
            info!("stopped cleanly; all results written");
            info!("{}", self.tally.stopped(now, self.counters.totals()));
            return Ok(Some(Ended::Stopped));
        }
        if self.ledger.stop_overdue(now) && (all_written || !self.link.connected()) {
            return Ok(Some(self.abandon()));
        }
        Ok(None)
    }

    // ---- ending ----

    /// The worker is ending with an error (a database refusal mid-run): make the handler
    /// threads take nothing new, give back what is queued (best effort). With handlers still
    /// running, say so and end as `Abandoned` (their events stay leased); otherwise the error
    /// is returned.
    fn fail_stop(&mut self, e: Error) -> Result<Ended> {
        for (id, token) in self.pool.close() {
            self.give_back(id, token);
        }
        if !self.ledger.to_release().is_empty() {
            let delays = self.ledger.release_delays();
            let (owner, ledger) = (&self.owner, &self.ledger);
            if let Some(n) = self
                .link
                .last_try(|c| c.release(owner, ledger.to_release(), &delays))
            {
                self.released(n, &delays);
            }
        }
        if self.ledger.in_flight() == 0 {
            return Err(e);
        }
        error!("{e}");
        warn!(
            "exiting with {} handler(s) still running; their events stay leased until the lease expires",
            self.ledger.in_flight()
        );
        kill_exec_commands();
        Ok(Ended::Abandoned {
            code: e.exit_code(),
            why: Some(e.to_string()),
        })
    }

    /// The shutdown wait is over but handlers still run (or results cannot be written):
    /// running handlers' events stay leased and are taken over by another worker after the
    /// lease expires.
    fn abandon(&mut self) -> Ended {
        if self.ledger.in_flight() > 0 {
            warn!(
                "{} handler(s) still running at the shutdown deadline; their events stay leased \
                 and will be retried after the lease ({}s) expires",
                self.ledger.in_flight(),
                self.cfg.lease.as_secs_f64()
            );
            kill_exec_commands();
        }
        let (mut code, mut why) = (exit::OK, None);
        if !self.ledger.all_written() {
            let msg = format!(
                "database unreachable at shutdown: {} result(s) not written; those events \
                 will be delivered again after their lease expires",
                self.ledger.unwritten()
            );
            error!("{msg}");
            (code, why) = (exit::UNREACHABLE, Some(msg));
        }
        if let Some(failure) = self.failure.take() {
            let msg = format!("worker stopped: {failure}");
            error!("{msg}");
            (code, why) = (exit::FAILURE, Some(msg));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        Ended::Abandoned { code, why }
    }
}
