//! What a handler is, and which handler an event type goes to.
//!
//! The words: a *route* maps an event-type pattern to a *target* (`stdout`, `exec:...`, or the
//! name of a compiled-in handler); a target is built as a *handler* (the built-in ones live
//! in `sink/`). A `Handler` receives one claimed `Event` and says how delivery went. A `Router`
//! holds the routes: exact names, prefix patterns (`order.*`) and a catch-all (`*`); the most
//! specific pattern wins (exact, then the longest prefix, then `*`). The router also tells
//! the claim query which types this worker takes, so events nobody here routes stay pending.

use crate::error::{Error, Result};
use std::sync::Arc;

pub use crate::event::Event;

/// How one delivery attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: the event becomes `done`.
    Delivered,
    /// Failed, worth retrying: `retry` with backoff, or `dead` after `--max-attempts`.
    Retry(String),
    /// Like `Retry`, but the receiver said when to try again (an HTTP `Retry-After`, a `pipe:`
    /// `retry ID after=SECS`): this delay instead of the backoff, capped at
    /// `--retry-backoff-max`.
    RetryAfter(String, std::time::Duration),
    /// Failed for good (the receiver rejected the event): straight to `dead`.
    Permanent(String),
    /// Not the event's fault, and nothing will be delivered from here (stdout was closed, say):
    /// the event is given back at once without using an attempt, and the worker stops and
    /// exits 1 (the supervisor restarts it with backoff, and gives up if it keeps failing).
    Abort(String),
    /// Not the event's fault, not delivered: a local shortage (out of file descriptors,
    /// processes or memory) kept the handler from trying, or the destination never received
    /// it (a `pipe:` process ended before reading it). The event is given back without
    /// using an attempt and is due again after a short pause; the worker pauses claiming,
    /// longer while deferrals go on, and logs one warning per episode.
    Defer(String),
    /// The destination, not this event, is unavailable (connection refused, 503, a broker
    /// that is down; `after`: when the destination suggests trying again). Counted against
    /// the route: after a few in a row the route pauses and is probed, and while it is paused
    /// its events wait without using attempts. Until the route pauses, it is a failed attempt
    /// like `Retry` (so one event that always fails this way still goes dead).
    Unavailable(String, Option<std::time::Duration>),
}

/// Delivers events: what a route's target is built as. Called from several handler threads
/// at once, hence `Sync`.
/// A panic inside `handle` is caught and counted as a failed (retryable) attempt.
///
/// Most handlers implement `handle` only: a handler thread runs it and waits. A *streaming*
/// handler (the `pipe:` target) keeps many events in flight at once without a thread for
/// each: it says how many with [`Handler::window`], and the handler threads call
/// [`Handler::start`] instead of `handle`, which hands the event over and returns; the
/// outcome arrives later through the [`Reply`], from any thread.
pub trait Handler: Send + Sync {
    fn handle(&self, event: &Event) -> Outcome;

    /// How many events this handler may hold in flight beyond those its handler threads
    /// run (a streaming handler's window; the worker claims that many more). 0, the
    /// default: `handle` is called, and the events in flight are the threads' own.
    fn window(&self) -> usize {
        0
    }

    /// Starts delivering `event`; `reply` receives the outcome, now or later, from any
    /// thread. Called instead of `handle` when `window()` is above 0. It should return once
    /// the event is handed over, blocking only while the handler's window is full.
    fn start(&self, event: Event, reply: Reply) {
        reply.send(self.handle(&event));
    }

    /// Starts several events (a claim's events for this route, in claim order): `start` for
    /// each by default; a streaming handler may hand them over together.
    fn start_batch(&self, events: Vec<(Event, Reply)>) {
        for (event, reply) in events {
            self.start(event, reply);
        }
    }

    /// Whether this handler takes a claimed batch's events in one call
    /// ([`Handler::handle_batch`]), because doing them together is cheaper than one by one
    /// (`stdout`: one write for the batch). false, the default: one event per call, the
    /// batch spread over the handler threads. Streaming handlers are handed batches anyway
    /// (one thread calls `start` for each event in turn).
    fn batched(&self) -> bool {
        false
    }

    /// Delivers `events` (called instead of `handle` when [`Handler::batched`]): one outcome
    /// per event, in the same order. A missing outcome counts as a failed attempt.
    fn handle_batch(&self, events: &[Event]) -> Vec<Outcome> {
        events.iter().map(|e| self.handle(e)).collect()
    }
}

/// Where a streaming handler sends the outcome of an event it started ([`Handler::start`]).
/// Exactly once: a `Reply` dropped without [`Reply::send`] reports a failed attempt.
pub struct Reply {
    to: Option<Box<dyn FnOnce(Outcome) + Send>>,
}

impl Reply {
    /// A reply that calls `f` with the outcome.
    pub fn new(f: impl FnOnce(Outcome) + Send + 'static) -> Reply {
        Reply {
            to: Some(Box::new(f)),
        }
    }

    pub fn send(mut self, outcome: Outcome) {
        if let Some(f) = self.to.take() {
            f(outcome);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(f) = self.to.take() {
            f(Outcome::Retry(
                "the handler dropped the event without an outcome".into(),
            ));
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl<F> Handler for F
where
    F: Fn(&Event) -> Outcome + Send + Sync,
{
    fn handle(&self, event: &Event) -> Outcome {
        self(event)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// `order.*` is stored as the prefix `order.`.
    Prefix(String),
    Any,
}

impl Pattern {
    /// `order.created`, `order.*` or `*`; anything else is a usage error.
    pub fn parse(s: &str) -> Result<Pattern> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::Usage("empty event-type pattern".into()));
        }
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(prefix) = s.strip_suffix('*') {
            if prefix.contains('*') {
                return Err(star_inside(s));
            }
            return Ok(Pattern::Prefix(prefix.to_string()));
        }
        if s.contains('*') {
            return Err(star_inside(s));
        }
        Ok(Pattern::Exact(s.to_string()))
    }

    pub fn matches(&self, event_type: Option<&str>) -> bool {
        match (self, event_type) {
            (Pattern::Any, _) => true,
            (Pattern::Exact(e), Some(t)) => e == t,
            (Pattern::Prefix(p), Some(t)) => t.starts_with(p.as_str()),
            _ => false,
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> usize {
        match self {
            Pattern::Exact(_) => usize::MAX,
            Pattern::Prefix(p) => 1 + p.len(),
            Pattern::Any => 0,
        }
    }
}

fn star_inside(pattern: &str) -> Error {
    Error::Usage(format!(
        "pattern `{pattern}`: `*` is only allowed at the end (e.g. `order.*`)"
    ))
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(e) => f.write_str(e),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

/// Which event types the claim query may take: those `all`, `exact` or `like` take, except
/// those the `skip` patterns take and the `keep` patterns do not (the routes paused, less
/// the more specific routes that are not; see [`Router::type_filter_pausing`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeFilter {
    pub all: bool,
    pub exact: Vec<String>,
    /// SQL LIKE patterns (`order.%`, with `%`, `_` and `\` escaped in the prefix).
    pub like: Vec<String>,
    pub skip_exact: Vec<String>,
    pub skip_like: Vec<String>,
    pub keep_exact: Vec<String>,
    pub keep_like: Vec<String>,
}

impl Pattern {
    /// Adds this pattern to a pair of (exact, LIKE) lists; `*` as `%`.
    fn add_to(&self, exact: &mut Vec<String>, like: &mut Vec<String>) {
        match self {
            Pattern::Any => like.push("%".into()),
            Pattern::Exact(e) => exact.push(e.clone()),
            Pattern::Prefix(p) => like.push(format!("{}%", escape_like(p))),
        }
    }

    /// Whether every type this pattern takes is one `other` takes too (and this one is
    /// more specific).
    fn within(&self, other: &Pattern) -> bool {
        match (other, self) {
            (_, Pattern::Any) => false,
            (Pattern::Any, _) => true,
            (Pattern::Prefix(o), Pattern::Prefix(s)) => {
                s.len() > o.len() && s.starts_with(o.as_str())
            }
            (Pattern::Prefix(o), Pattern::Exact(s)) => s.starts_with(o.as_str()),
            (Pattern::Exact(_), _) => false,
        }
    }
}

#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(Pattern, String, Arc<dyn Handler>)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Routes `pattern` to `handler`; `target` is a name for logs and metrics, kept as
    /// `redact::route_target` shows it (a URL without userinfo and query values). A pattern
    /// given twice keeps the first route (compiled-in routes are added before `--route` ones).
    pub fn add(
        &mut self,
        pattern: Pattern,
        target: impl Into<String>,
        handler: Arc<dyn Handler>,
    ) -> &mut Router {
        if !self.routes.iter().any(|(p, _, _)| *p == pattern) {
            let shown = crate::redact::route_target(&target.into());
            self.routes.push((pattern, shown, handler));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether a route for exactly this pattern exists.
    pub fn has(&self, pattern: &Pattern) -> bool {
        self.routes.iter().any(|(p, _, _)| p == pattern)
    }

    /// The most specific handler for this type, or None when this worker does not route it.
    pub fn route(&self, event_type: Option<&str>) -> Option<&Arc<dyn Handler>> {
        self.best(event_type).map(|(_, _, h)| h)
    }

    /// The index of the route this type takes (see [`Router::target_at`]).
    pub(crate) fn index(&self, event_type: Option<&str>) -> Option<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, (p, _, _))| p.matches(event_type))
            .max_by_key(|(_, (p, _, _))| p.rank())
            .map(|(i, _)| i)
    }

    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }

    /// `pattern=target` of route `i`, for logs.
    pub(crate) fn route_at(&self, i: usize) -> String {
        self.routes
            .get(i)
            .map(|(p, t, _)| format!("{p}={t}"))
            .unwrap_or_default()
    }

    /// The target of route `i` (the metrics' `route` label).
    pub(crate) fn target_at(&self, i: usize) -> &str {
        self.routes.get(i).map_or("-", |(_, t, _)| t.as_str())
    }

    /// The claim filter with the routes `paused` left out: their patterns are skipped, except
    /// where a more specific route that is not paused takes the type. (A paused route inside
    /// a running one inside a paused one is not expressed: its types are claimed and given
    /// back at once, which costs a claim but never an attempt.)
    pub(crate) fn type_filter_pausing(&self, paused: &[usize]) -> TypeFilter {
        let mut f = self.type_filter();
        for &i in paused {
            let Some((p, _, _)) = self.routes.get(i) else {
                continue;
            };
            p.add_to(&mut f.skip_exact, &mut f.skip_like);
            for (j, (q, _, _)) in self.routes.iter().enumerate() {
                if !paused.contains(&j) && q.within(p) {
                    q.add_to(&mut f.keep_exact, &mut f.keep_like);
                }
            }
        }
        f
    }

    /// The claim filter for a probe of route `i`: its own pattern only.
    pub(crate) fn type_filter_of(&self, i: usize) -> TypeFilter {
        let mut f = TypeFilter::default();
        if let Some((p, _, _)) = self.routes.get(i) {
            match p {
                Pattern::Any => f.all = true,
                p => p.add_to(&mut f.exact, &mut f.like),
            }
        }
        f
    }

    /// The target (`stdout`, `exec:...`, as shown) of the route `route` picks: for log lines
    /// and the `route` label of the metrics.
    pub(crate) fn target(&self, event_type: Option<&str>) -> Option<&str> {
        self.best(event_type).map(|(_, t, _)| t.as_str())
    }

    fn best(&self, event_type: Option<&str>) -> Option<&(Pattern, String, Arc<dyn Handler>)> {
        self.routes
            .iter()
            .filter(|(p, _, _)| p.matches(event_type))
            .max_by_key(|(p, _, _)| p.rank())
    }

    /// The routes (`pattern=target`) whose target is named `target`.
    pub(crate) fn routes_to(&self, target: &str) -> Vec<String> {
        self.routes
            .iter()
            .filter(|(_, t, _)| t == target)
            .map(|(p, t, _)| format!("{p}={t}"))
            .collect()
    }

    /// Events the routes' streaming handlers may hold in flight besides the handler
    /// threads' own (the sum of their windows).
    pub(crate) fn window(&self) -> usize {
        self.routes.iter().map(|(_, _, h)| h.window()).sum()
    }

    pub fn describe(&self) -> String {
        self.routes
            .iter()
            .map(|(p, t, _)| format!("{p}={t}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn type_filter(&self) -> TypeFilter {
        let mut f = TypeFilter::default();
        for (p, _, _) in &self.routes {
            match p {
                Pattern::Any => f.all = true,
                Pattern::Exact(e) => f.exact.push(e.clone()),
                Pattern::Prefix(prefix) => f.like.push(format!("{}%", escape_like(prefix))),
            }
        }
        f
    }
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &'static str) -> Arc<dyn Handler> {
        Arc::new(move |_: &Event| Outcome::Retry(name.to_string()))
    }

    fn which(r: &Router, t: Option<&str>) -> Option<String> {
        let ev = Event {
            id: 1,
            event_type: None,
            aggregate_type: None,
            aggregate_id: None,
            payload: "null".into(),
            attempt: 1,
        };
        r.route(t).map(|h| match h.handle(&ev) {
            Outcome::Retry(n) => n,
            o => panic!("{o:?}"),
        })
    }

    #[test]
    fn most_specific_pattern_wins() {
        let mut r = Router::new();
        r.add(Pattern::parse("*").unwrap(), "any", named("any"));
        r.add(Pattern::parse("order.*").unwrap(), "order", named("order"));
        r.add(
            Pattern::parse("order.paid.*").unwrap(),
            "paid",
            named("paid"),
        );
        r.add(
            Pattern::parse("order.created").unwrap(),
            "exact",
            named("exact"),
        );
        assert_eq!(which(&r, Some("order.created")).as_deref(), Some("exact"));
        assert_eq!(which(&r, Some("order.paid.eu")).as_deref(), Some("paid"));
        assert_eq!(which(&r, Some("order.shipped")).as_deref(), Some("order"));
        assert_eq!(which(&r, Some("user.created")).as_deref(), Some("any"));
        assert_eq!(which(&r, None).as_deref(), Some("any"));
    }

    #[test]
    fn unrouted_types_have_no_handler() {
        let mut r = Router::new();
        r.add(Pattern::parse("order.*").unwrap(), "o", named("o"));
        assert!(r.route(Some("user.created")).is_none());
        assert!(r.route(Some("order")).is_none(), "`order.*` needs the dot");
        assert!(r.route(None).is_none());
        assert_eq!(
            r.type_filter(),
            TypeFilter {
                all: false,
                exact: vec![],
                like: vec!["order.%".into()],
                ..TypeFilter::default()
            }
        );
    }

    #[test]
    fn like_patterns_are_escaped() {
        let mut r = Router::new();
        r.add(Pattern::parse("a_b%*").unwrap(), "x", named("x"));
        assert_eq!(r.type_filter().like, vec![r"a\_b\%%".to_string()]);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("**").is_err());
        assert_eq!(
            Pattern::parse("order.*").unwrap(),
            Pattern::Prefix("order.".into())
        );
        assert_eq!(
            Pattern::parse("a*b").unwrap_err().to_string(),
            "pattern `a*b`: `*` is only allowed at the end (e.g. `order.*`)"
        );
    }

    #[test]
    fn targets_are_kept_as_shown() {
        let mut r = Router::new();
        r.add(Pattern::Any, "https://h/x?token=SECRET", named("w"));
        assert_eq!(r.target(Some("a")), Some("https://h/x?token=REDACTED"));
        assert_eq!(r.describe(), "*=https://h/x?token=REDACTED");
    }

    #[test]
    fn first_route_for_a_pattern_is_kept() {
        let mut r = Router::new();
        r.add(Pattern::Any, "a", named("a"));
        r.add(Pattern::Any, "b", named("b"));
        assert_eq!(which(&r, Some("x")).as_deref(), Some("a"));
    }

    #[test]
    fn json_line_escapes_strings_and_keeps_payload() {
        let ev = Event {
            id: 7,
            event_type: Some("order.\"created\"".into()),
            aggregate_type: None,
            aggregate_id: Some("42".into()),
            payload: r#"{"a": 1}"#.into(),
            attempt: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["event_type"], "order.\"created\"");
        assert_eq!(v["aggregate_type"], serde_json::Value::Null);
        assert_eq!(v["aggregate_id"], "42");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["payload"]["a"], 1);
    }
}
