//! The handler threads: a fixed pool inside the worker's `std::thread::scope`, fed claimed
//! events (jobs) through one channel and answering on the DB thread's inbox.
//!
//! A job is one event, or, for a handler that takes batches (`stdout`: one write for a claim's
//! lines) or streams (`pipe:`: the lines written together), all of one claim's events for that
//! route: one hand-off and one answer per claim instead of per event (each hand-off is a wake-up
//! of a thread). Slow routes (webhook, `exec:`, compiled-in handlers) still get a job per
//! event, spread over the threads.
//!
//! Invariants: every event a thread takes is answered exactly once — `Done` (or, for a batch,
//! one `Batch` holding every event's `Done`) with the handler's outcome (a panic becomes a
//! failed attempt with its message; a streaming handler's outcome comes later through its
//! `Reply`, which answers once even if dropped), `Unstarted` once the worker is stopping, or
//! `Stale` when the lease clock says its lease is lost or about to expire. Closing the pool
//! (`Pool::close`) takes back what is still queued; idle threads then end.

use super::lease_clock::LeaseClock;
use super::{Done, Msg, Tag};
use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome, Reply};
use crate::{error, log, warn};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;
use std::time::Instant;

/// Claimed events on their way to a handler thread: one event, or for a handler that takes
/// batches (`Handler::batched`, or a streaming one) all of a claim's events for its route.
pub(super) struct Job {
    pub items: Vec<Item>,
    pub handler: Arc<dyn Handler>,
    /// When the claim that leased them was sent (their lease runs from a later instant).
    pub claim_sent: Instant,
}

/// One claimed event of a job, with its claim token.
pub(super) struct Item {
    pub event: Event,
    pub token: i32,
}

/// A claim's jobs, put together while its events are dispatched: one job per event, except
/// for handlers that take batches (`Handler::batched`) or stream (`Handler::window`), which
/// get one job per claim with all their events in claim order.
#[derive(Default)]
pub(super) struct Jobs {
    ready: Vec<Job>,
}

impl Jobs {
    pub fn add(
        &mut self,
        event: Event,
        token: i32,
        handler: &Arc<dyn Handler>,
        claim_sent: Instant,
    ) {
        let item = Item { event, token };
        if takes_claims(&**handler) {
            let same =
                |j: &&mut Job| std::ptr::addr_eq(Arc::as_ptr(&j.handler), Arc::as_ptr(handler));
            if let Some(job) = self.ready.iter_mut().find(same) {
                job.items.push(item);
                return;
            }
        }
        self.ready.push(Job {
            items: vec![item],
            handler: handler.clone(),
            claim_sent,
        });
    }
}

/// Whether `handler` gets a claim's events as one job (it takes batches or streams) rather
/// than a job, and a thread, per event.
pub(super) fn takes_claims(handler: &dyn Handler) -> bool {
    handler.batched() || handler.window() > 0
}

/// What the handler threads share with the DB thread.
pub(super) struct Shared {
    queue: Mutex<Receiver<Job>>,
    /// Set when the worker stops: queued jobs are answered `Unstarted`, not started.
    stopping: AtomicBool,
    pub clock: LeaseClock,
}

/// The DB thread's end of the pool.
pub(super) struct Pool<'a> {
    jobs: Option<Sender<Job>>,
    shared: &'a Shared,
}

/// The job channel: the sending end for [`Pool::new`], the rest for the threads.
pub(super) fn channel(clock: LeaseClock) -> (Sender<Job>, Shared) {
    let (tx, rx) = mpsc::channel::<Job>();
    let shared = Shared {
        queue: Mutex::new(rx),
        stopping: AtomicBool::new(false),
        clock,
    };
    (tx, shared)
}

/// Starts `threads` handler threads in the scope; each answers on `inbox`.
pub(super) fn spawn<'scope>(
    s: &'scope Scope<'scope, '_>,
    shared: &'scope Shared,
    threads: usize,
    inbox: &Sender<Msg>,
) -> Result<()> {
    for t in 0..threads {
        let tx = inbox.clone();
        std::thread::Builder::new()
            .name(format!("handler-{t}"))
            .spawn_scoped(s, move || handler_loop(shared, tx))
            .map_err(Error::Io)?;
    }
    Ok(())
}

impl<'a> Pool<'a> {
    pub fn new(jobs: Sender<Job>, shared: &'a Shared) -> Pool<'a> {
        Pool {
            jobs: Some(jobs),
            shared,
        }
    }

    /// Queues the jobs; returns the claims (id, token) no thread will take (the pool is
    /// closed or every thread is gone).
    pub fn send(&self, jobs: Jobs) -> Vec<(i64, i32)> {
        let mut refused = Vec::new();
        for job in jobs.ready {
            let Some(tx) = self.jobs.as_ref() else {
                refused.extend(job.items.iter().map(|i| (i.event.id, i.token)));
                continue;
            };
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                refused.extend(job.items.iter().map(|i| (i.event.id, i.token)));
            }
        }
        refused
    }

    /// Stops the threads taking new jobs, and returns the claims (id, token) still queued.
    pub fn close(&mut self) -> Vec<(i64, i32)> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut queued = Vec::new();
        // Take back what no thread has started. If an idle thread holds the lock inside
        // recv(), the queue is empty; threads check `stopping` themselves after recv().
        if let Ok(rx) = self.shared.queue.try_lock() {
            while let Ok(job) = rx.try_recv() {
                queued.extend(job.items.iter().map(|i| (i.event.id, i.token)));
            }
        }
        // Idle threads exit once the queue is closed and empty.
        self.jobs = None;
        queued
    }
}

fn handler_loop(shared: &Shared, tx: Sender<Msg>) {
    loop {
        // Only one idle thread waits inside recv() at a time; the rest wait for the lock.
        let job = match shared.queue.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        let Job {
            items,
            handler,
            claim_sent,
        } = job;
        let items = startable(shared, items, claim_sent, &tx);
        if items.is_empty() {
            continue;
        }
        let started = Instant::now();
        if handler.window() > 0 {
            start_streaming(items, &*handler, &tx, started);
            continue;
        }
        let sent = match items.len() {
            1 => {
                let item = items.into_iter().next().map(|i| (i.event, i.token));
                item.is_some_and(|(event, token)| {
                    let outcome = run_handler(&*handler, &event);
                    tx.send(Msg::Done(done(event, token, outcome, started)))
                        .is_ok()
                })
            }
            _ => {
                let (events, tokens): (Vec<Event>, Vec<i32>) =
                    items.into_iter().map(|i| (i.event, i.token)).unzip();
                let outcomes = run_batch(&*handler, &events);
                let dones = events
                    .into_iter()
                    .zip(tokens)
                    .zip(outcomes)
                    .map(|((event, token), outcome)| done(event, token, outcome, started))
                    .collect();
                tx.send(Msg::Batch(dones)).is_ok()
            }
        };
        if !sent {
            return;
        }
    }
}

/// The items that may start: once the worker is stopping, none (answered `Unstarted`); a
/// worker that was stopped (SIGSTOP, a paused VM) must not deliver what another worker has
/// taken over meanwhile (answered `Stale`).
fn startable(
    shared: &Shared,
    items: Vec<Item>,
    claim_sent: Instant,
    tx: &Sender<Msg>,
) -> Vec<Item> {
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let now = Instant::now();
    let mut fresh = Vec::with_capacity(items.len());
    for item in items {
        let (id, token) = (item.event.id, item.token);
        if stopping {
            let _ = tx.send(Msg::Unstarted { id, token });
        } else if let Some(why) = shared.clock.refuse_start(id, token, claim_sent, now) {
            let tag = Tag::of(&item.event);
            let _ = tx.send(Msg::Stale {
                id,
                token,
                tag,
                why,
            });
        } else {
            fresh.push(item);
        }
    }
    fresh
}

/// A handler's answer for `event`, its type and aggregate moved into the tag.
fn done(event: Event, token: i32, outcome: Outcome, started: Instant) -> Done {
    Done {
        id: event.id,
        token,
        tag: Tag {
            event_type: event.event_type,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
        },
        outcome,
        took: started.elapsed(),
    }
}

/// Runs the handler, a panic caught as a failed attempt.
fn run_handler(handler: &dyn Handler, event: &Event) -> Outcome {
    catch_unwind(AssertUnwindSafe(|| handler.handle(event))).unwrap_or_else(panicked)
}

/// Runs a batch handler: one outcome per event, whatever it returns (a panic fails them all,
/// a missing outcome fails its event).
fn run_batch(handler: &dyn Handler, events: &[Event]) -> Vec<Outcome> {
    let mut outcomes = match catch_unwind(AssertUnwindSafe(|| handler.handle_batch(events))) {
        Ok(o) => o,
        Err(panic) => vec![panicked(panic); events.len()],
    };
    let got = outcomes.len();
    if got != events.len() {
        let why = format!(
            "the handler returned {got} outcome(s) for a batch of {}",
            events.len()
        );
        outcomes.resize(events.len(), Outcome::Retry(why));
    }
    outcomes
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> Outcome {
    Outcome::Retry(format!("handler panicked: {}", message(&*panic)))
}

/// Hands the events to a streaming handler, which answers each through its reply later (from
/// its own thread). A panic in `start_batch` drops the replies it still held, which answer
/// those events as failed attempts.
fn start_streaming(items: Vec<Item>, handler: &dyn Handler, tx: &Sender<Msg>, started: Instant) {
    let ids: Vec<(i64, i32)> = items.iter().map(|i| (i.event.id, i.token)).collect();
    let events = items
        .into_iter()
        .map(|item| {
            let (id, token) = (item.event.id, item.token);
            let tag = Tag::of(&item.event);
            let tx = tx.clone();
            let reply = Reply::new(move |outcome| {
                let _ = tx.send(Msg::Done(Done {
                    id,
                    token,
                    tag,
                    outcome,
                    took: started.elapsed(),
                }));
            });
            (item.event, reply)
        })
        .collect();
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler.start_batch(events))) {
        let msg = message(&*panic);
        match ids[..] {
            [(id, token)] => {
                let fields = log::EventFields::id(id)
                    .attempt(token)
                    .outcome(log::EventOutcome::Retry);
                error!(event: fields, "event {id}: handler panicked while starting it: {msg}");
            }
            _ => {
                let list: Vec<String> = ids.iter().map(|(id, _)| id.to_string()).collect();
                error!(
                    "events {}: handler panicked while starting them: {msg}; those it had not \
                     started yet count as failed attempts",
                    list.join(", ")
                );
            }
        }
    }
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// The worker exits with handlers still running: the `exec:` commands they wait for must not
/// run on (their events will be delivered again once the lease expires).
pub(super) fn kill_exec_commands() {
    let n = crate::sink::process::kill_running();
    if n > 0 {
        warn!("killed {n} `exec:` command(s) and `pipe:` process(es) still running (with their process groups)");
    }
}
