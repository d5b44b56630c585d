//! The handler threads: a fixed pool inside the worker's `std::thread::scope`, fed claimed
//! events (jobs) through one channel and answering on the DB thread's inbox.
//!
//! Invariants: every job a thread takes is answered exactly once — `Done` with the handler's
//! outcome (a panic becomes a failed attempt with its message; a streaming handler's outcome
//! comes later through its `Reply`, which answers once even if dropped), `Unstarted` once the worker is
//! stopping, or `Stale` when the lease clock says its lease is lost or about to expire. Closing
//! the pool (`Pool::close`) takes back what is still queued; idle threads then end.

use super::lease_clock::LeaseClock;
use super::{Msg, Tag};
use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome, Reply};
use crate::{error, log, warn};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;
use std::time::Instant;

/// A claimed event on its way to a handler thread.
pub(super) struct Job {
    pub event: Event,
    pub token: i32,
    pub handler: Arc<dyn Handler>,
    /// When the claim that leased it was sent (its lease runs from a later instant).
    pub claim_sent: Instant,
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

    /// Queues a job; false when no thread will take it (the pool is closed or every thread
    /// is gone).
    pub fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Stops the threads taking new jobs, and returns the claims (id, token) still queued.
    pub fn close(&mut self) -> Vec<(i64, i32)> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut queued = Vec::new();
        // Take back what no thread has started. If an idle thread holds the lock inside
        // recv(), the queue is empty; threads check `stopping` themselves after recv().
        if let Ok(rx) = self.shared.queue.try_lock() {
            while let Ok(job) = rx.try_recv() {
                queued.push((job.event.id, job.token));
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
        let (id, token) = (job.event.id, job.token);
        if shared.stopping.load(Ordering::SeqCst) {
            let _ = tx.send(Msg::Unstarted { id, token });
            continue;
        }
        // A worker that was stopped (SIGSTOP, a paused VM) must not deliver what another
        // worker has taken over meanwhile.
        if let Some(why) = shared
            .clock
            .refuse_start(id, token, job.claim_sent, Instant::now())
        {
            let tag = Tag::of(&job.event);
            let _ = tx.send(Msg::Stale {
                id,
                token,
                tag,
                why,
            });
            continue;
        }
        let started = Instant::now();
        if job.handler.window() > 0 {
            start_streaming(job, &tx, started);
            continue;
        }
        let outcome = run_handler(&job);
        let tag = Tag {
            event_type: job.event.event_type,
            aggregate_type: job.event.aggregate_type,
            aggregate_id: job.event.aggregate_id,
        };
        let done = Msg::Done {
            id,
            token,
            tag,
            outcome,
            took: started.elapsed(),
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// Runs the handler, a panic caught as a failed attempt.
fn run_handler(job: &Job) -> Outcome {
    catch_unwind(AssertUnwindSafe(|| job.handler.handle(&job.event)))
        .unwrap_or_else(|panic| Outcome::Retry(format!("handler panicked: {}", message(&*panic))))
}

/// Hands the job to a streaming handler, which answers through the reply later (from its
/// own thread). A panic in `start` drops the reply, which answers it as a failed attempt.
fn start_streaming(job: Job, tx: &Sender<Msg>, started: Instant) {
    let (id, token) = (job.event.id, job.token);
    let tag = Tag::of(&job.event);
    let tx = tx.clone();
    let reply = Reply::new(move |outcome| {
        let _ = tx.send(Msg::Done {
            id,
            token,
            tag,
            outcome,
            took: started.elapsed(),
        });
    });
    let handler = job.handler;
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler.start(job.event, reply))) {
        let fields = log::EventFields::id(id)
            .attempt(token)
            .outcome(log::Outcome::Retry);
        error!(
            event: fields,
            "event {id}: handler panicked while starting it: {}",
            message(&*panic)
        );
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
