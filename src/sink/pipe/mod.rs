//! The `pipe:COMMAND ARGS...` target: a long-running process, started without a shell, that
//! receives event JSON lines on stdin and answers each on stdout (`ok ID`, `retry ID
//! [after=SECS] [REASON]`, `dead ID [REASON]`; see `answer.rs`), in any order.
//!
//! Streaming: `--pipe-processes` processes per route per worker (1 by default), each with up
//! to `--pipe-window` events written to it and not answered yet (outstanding); events go to
//! them in turn. The handler threads hand events over
//! ([`Handler::start`]): each writes its event's line once the window has room and returns at
//! once; the process's reader thread (`reader.rs`) matches answers to outstanding events and
//! sends each outcome to the DB thread. So a broker client can pipeline and batch inside one
//! connection, and no thread waits per event. With `--pipe-window 1` this is the one-at-a-time
//! protocol of earlier versions. The process is started on the first event, never at start-up
//! (the supervisor builds the routes too, and must not run the user's publisher).
//!
//! Failures (settled by the reader, see its header): a process that exits, closes its stdout,
//! leaves an answer unanswered past `--pipe-timeout` or breaks the protocol is killed (SIGKILL
//! to its group); the outstanding events it had read are retried (one attempt used), those it
//! never read are given back without using one. The next event starts a new process after a
//! growing pause. When [`STARTUP_TRIES`] processes in a row end without answering anything and
//! none ever answered, the command is broken: every event gets `Outcome::Abort` (no attempt
//! used; the worker exits 1, and the supervisor's crash-loop limit ends the run with the
//! message). Once one has answered, the command works: processes that then exit without
//! answering mean the destination is unavailable, and until the next start is due events get
//! `Outcome::Unavailable` (which pauses the route, see `worker/health.rs`).
//!
//! Graceful stop (the handler is dropped once the worker has finished its events): EOF on the
//! process's stdin, [`CLOSE_GRACE`] to answer what it has and exit, then SIGTERM, then SIGKILL.

mod answer;
mod book;
mod live;
mod reader;
mod stderr;

use crate::backoff::reconnect_delay;
use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome, Reply};
use crate::sink::process::{check_program, is_local_shortage, split_words};
use crate::{debug, warn};
use live::{lock, Live, Outgoing};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Processes in a row that end without answering anything before the command is broken.
const STARTUP_TRIES: u32 = 5;
/// The longest pause before a restart.
const RESTART_CAP: Duration = Duration::from_secs(5);
/// At a graceful stop: how long a process has to exit after EOF on stdin, then after SIGTERM.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long a replacement waits for the reader to finish with the process it replaces.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

pub struct Pipe {
    name: Arc<str>,
    program: String,
    args: Vec<String>,
    timeout: Duration,
    window: usize,
    /// Which process the next event goes to (in turn).
    next: AtomicUsize,
    route: Mutex<Route>,
}

/// The route's processes (a slot each, empty until its first event) and their restart
/// pacing, shared: a command that fails, fails in every slot.
struct Route {
    live: Vec<Option<Arc<Live>>>,
    /// Failed processes in a row (paces restarts).
    failures: u32,
    /// Processes in a row that ended without answering anything.
    silent: u32,
    /// A process of this route answered something once: the command works, so processes
    /// that exit without answering mean its destination is unavailable, not a broken command.
    worked: bool,
    /// How the last process ended.
    last_end: String,
    not_before: Option<Instant>,
    rng: fastrand::Rng,
    /// Set once the command proved broken: every later event gets the same `Abort`.
    broken: Option<String>,
}

impl Pipe {
    /// Parses the command line and checks the program (like `exec:`); starts nothing.
    /// `window`: events outstanding per process (`--pipe-window`); `processes`: processes
    /// per worker (`--pipe-processes`).
    pub fn new(command: &str, timeout: Duration, window: usize, processes: usize) -> Result<Pipe> {
        let mut words = split_words(command)?;
        if words.is_empty() {
            return Err(Error::Usage(
                "`pipe:` needs a command, e.g. `pipe:/usr/local/bin/publisher --flag`".into(),
            ));
        }
        let program = words.remove(0);
        check_program(&program, std::env::var_os("PATH").as_deref())?;
        Ok(Pipe {
            name: format!("pipe {program}").into(),
            program,
            args: words,
            timeout,
            window: window.max(1),
            next: AtomicUsize::new(0),
            route: Mutex::new(Route {
                live: vec![None; processes.max(1)],
                failures: 0,
                silent: 0,
                worked: false,
                last_end: String::new(),
                not_before: None,
                rng: fastrand::Rng::new(),
                broken: None,
            }),
        })
    }

    /// The process running in `slot`, or a new one (after the restart pause, if one is due).
    fn live(&self, slot: usize) -> std::result::Result<Arc<Live>, Outcome> {
        let mut r = lock(&self.route);
        if let Some(why) = &r.broken {
            return Err(Outcome::Abort(why.clone()));
        }
        if let Some(live) = r.live[slot].take() {
            if !live.is_closed() {
                r.live[slot] = Some(Arc::clone(&live));
                return Ok(live);
            }
            self.ended(&mut r, &live)?;
        }
        if let Some(t) = r.not_before {
            let now = Instant::now();
            if r.worked && r.silent > 0 && t > now {
                // A command that worked keeps exiting without answering (its broker is down,
                // say): the destination is unavailable until the next start is due.
                return Err(Outcome::Unavailable(
                    format!(
                        "{}: its processes exit without answering (last: {})",
                        self.name, r.last_end
                    ),
                    None,
                ));
            }
            std::thread::sleep(t.saturating_duration_since(now));
        }
        match Live::start(
            Arc::clone(&self.name),
            &self.program,
            &self.args,
            self.window,
            self.timeout,
            r.worked,
        ) {
            Ok(live) => {
                debug!("{}: started process {}", self.name, live.pid);
                r.live[slot] = Some(Arc::clone(&live));
                Ok(live)
            }
            Err(e) if is_local_shortage(&e) => Err(Outcome::Defer(format!(
                "{}: cannot start it: {e}",
                self.name
            ))),
            Err(e) => {
                self.pace(&mut r, false);
                Err(Outcome::Retry(format!(
                    "{}: cannot start it: {e}",
                    self.name
                )))
            }
        }
    }

    /// Books the end of a process before it is replaced; `Err(Abort)` once the command
    /// proved broken.
    fn ended(&self, r: &mut Route, live: &Live) -> std::result::Result<(), Outcome> {
        let how = live.wait_ended(Instant::now() + SETTLE_WAIT);
        r.last_end = how.clone().unwrap_or_else(|| "still ending".into());
        let answered = live.answered() > 0;
        self.pace(r, answered);
        if answered {
            r.silent = 0;
            r.worked = true;
            return Ok(());
        }
        r.silent += 1;
        if r.silent < STARTUP_TRIES || r.worked {
            return Ok(());
        }
        let why = format!(
            "{}: the command exits without answering ({} processes in a row ended before \
             answering any event; last: {}); check the command, its arguments and its \
             environment",
            self.name,
            r.silent,
            how.as_deref().unwrap_or("still ending")
        );
        warn!("{why}");
        r.broken = Some(why.clone());
        Err(Outcome::Abort(why))
    }

    /// A process failed: the next start waits a growing pause (a short one after a process
    /// that had answered: it may have been the event, not the command).
    fn pace(&self, r: &mut Route, answered: bool) {
        r.failures = if answered {
            1
        } else {
            r.failures.saturating_add(1)
        };
        r.not_before = Some(Instant::now() + reconnect_delay(r.failures, RESTART_CAP, &mut r.rng));
    }

    /// Writes events to the route's processes, a share of them to each (in turn); each
    /// reply is answered by the process's reader (or here, when no process can be had).
    fn submit(&self, events: Vec<(Event, Reply)>) {
        let slots = lock(&self.route).live.len();
        let share = events.len().div_ceil(slots).max(1);
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let batch: VecDeque<Outgoing> = events
                .by_ref()
                .take(share)
                .map(|(event, reply)| {
                    let mut line = Vec::with_capacity(128 + event.payload.len());
                    event.write_json_line(&mut line);
                    line.push(b'\n');
                    Outgoing {
                        id: event.id,
                        line,
                        reply,
                    }
                })
                .collect();
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % slots;
            self.submit_to(slot, batch);
        }
    }

    fn submit_to(&self, slot: usize, mut batch: VecDeque<Outgoing>) {
        while !batch.is_empty() {
            match self.live(slot) {
                // What it did not take (it ended meanwhile): the next turn books that and
                // starts another.
                Ok(live) => batch = live.send(batch),
                Err(outcome) => {
                    for o in batch {
                        o.reply.send(outcome.clone());
                    }
                    return;
                }
            }
        }
    }
}

impl Handler for Pipe {
    /// One event, waiting for its answer (what the handler threads do is [`Pipe::start`]).
    fn handle(&self, event: &Event) -> Outcome {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let reply = Reply::new(move |o| {
            let _ = tx.send(o);
        });
        self.submit(vec![(event.clone(), reply)]);
        rx.recv()
            .unwrap_or_else(|_| Outcome::Retry(format!("{}: no answer", self.name)))
    }

    fn window(&self) -> usize {
        self.window * lock(&self.route).live.len()
    }

    fn start(&self, event: Event, reply: Reply) {
        self.submit(vec![(event, reply)]);
    }

    /// A claim's events for this route: a share to each process, each share written in as
    /// few writes as the window allows.
    fn start_batch(&self, events: Vec<(Event, Reply)>) {
        self.submit(events);
    }
}

impl Drop for Pipe {
    /// The worker stopped gracefully: EOF on every process's stdin at once, [`CLOSE_GRACE`]
    /// to exit, then SIGTERM, [`TERM_GRACE`], then SIGKILL.
    fn drop(&mut self) {
        let procs: Vec<Arc<Live>> = lock(&self.route)
            .live
            .iter_mut()
            .flat_map(Option::take)
            .collect();
        for live in &procs {
            live.close_stdin();
        }
        let grace = Instant::now() + CLOSE_GRACE;
        let left: Vec<&Arc<Live>> = procs
            .iter()
            .filter(|l| l.wait_ended(grace).is_none())
            .collect();
        for live in &left {
            live.signal(
                libc::SIGTERM,
                format!(
                    "did not exit within {}s of the end of its input; SIGTERM",
                    CLOSE_GRACE.as_secs_f64()
                ),
            );
        }
        let term = Instant::now() + TERM_GRACE;
        for live in left {
            if live.wait_ended(term).is_none() {
                live.kill("did not exit after SIGTERM".into());
                live.wait_ended(Instant::now() + SETTLE_WAIT);
            }
        }
    }
}
