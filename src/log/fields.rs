//! What a log line about an event names, as fields of their own in `--log-format json`:
//! `event_id`, `event_type`, `aggregate_type`, `aggregate_id`, `route`, `attempt`, `outcome`
//! (docs/operations.md, "Logs", lists them). A call site hands them to the macros
//! (`warn!(event: f, "...")`); text lines do not show them (their message says it all, as
//! before), JSON lines add them after `msg`, so a log pipeline can select on them without
//! parsing the message.
//!
//! Invariant: a key is written only when the line knows its value; a known NULL column is
//! written as `null`. The route is the target as the router keeps it (secrets already
//! removed by `redact::route_target`), never the text as configured.

use crate::handler::Event;

/// What became of the event, as the line reports it (the `outcome` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// The handler answered retry (or failed: an error, a panic, a timeout).
    Retry,
    /// The handler answered a permanent failure.
    Permanent,
    /// The handler found the destination unavailable.
    Unavailable,
    /// The handler asked the worker to stop.
    Abort,
    /// The event is dead.
    Dead,
    /// Given back without using an attempt, for a local reason.
    Deferred,
    /// Given back to wait for its paused route, without using an attempt.
    Held,
    /// Sent to a paused route to test the destination.
    Probe,
    /// Not started: its lease was lost or about to run out; given back.
    NotStarted,
    /// Finished after another worker took its lease over: its result is not written.
    LeaseLost,
    /// Still running long after it started (its lease is kept).
    InFlight,
    /// A `pipe:` process did not answer it within `--pipe-timeout`.
    TimedOut,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Retry => "retry",
            EventOutcome::Permanent => "permanent",
            EventOutcome::Unavailable => "unavailable",
            EventOutcome::Abort => "abort",
            EventOutcome::Dead => "dead",
            EventOutcome::Deferred => "deferred",
            EventOutcome::Held => "held",
            EventOutcome::Probe => "probe",
            EventOutcome::NotStarted => "not_started",
            EventOutcome::LeaseLost => "lease_lost",
            EventOutcome::InFlight => "in_flight",
            EventOutcome::TimedOut => "timed_out",
        }
    }
}

/// The fields of a line about event `id`; built with the setters, each optional.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventFields<'a> {
    id: i64,
    /// `Some(None)`: the event's type is NULL.
    event_type: Option<Option<&'a str>>,
    aggregate: Option<(Option<&'a str>, Option<&'a str>)>,
    /// `Some(None)`: no route takes the event.
    route: Option<Option<&'a str>>,
    attempt: Option<i32>,
    outcome: Option<EventOutcome>,
}

impl<'a> EventFields<'a> {
    /// A line about event `id` (nothing else known yet).
    pub fn id(id: i64) -> Self {
        EventFields {
            id,
            event_type: None,
            aggregate: None,
            route: None,
            attempt: None,
            outcome: None,
        }
    }

    /// Its id, type, aggregate and attempt.
    pub fn of(e: &'a Event) -> Self {
        Self::id(e.id)
            .event_type(e.event_type.as_deref())
            .aggregate(e.aggregate_type.as_deref(), e.aggregate_id.as_deref())
            .attempt(e.attempt)
    }

    pub fn event_type(mut self, t: Option<&'a str>) -> Self {
        self.event_type = Some(t);
        self
    }

    pub fn aggregate(mut self, aggregate_type: Option<&'a str>, id: Option<&'a str>) -> Self {
        self.aggregate = Some((aggregate_type, id));
        self
    }

    /// The route's target as the router shows it (`Router::target`), None when no route
    /// takes the event.
    pub fn route(mut self, target: Option<&'a str>) -> Self {
        self.route = Some(target);
        self
    }

    pub fn attempt(mut self, n: i32) -> Self {
        self.attempt = Some(n);
        self
    }

    pub fn outcome(mut self, o: EventOutcome) -> Self {
        self.outcome = Some(o);
        self
    }

    /// `,"event_id":7,...` (the keys that are known, in the documented order).
    pub(super) fn write_json(&self, out: &mut String) {
        let s = |v: Option<&str>| serde_json::Value::from(v).to_string();
        out.push_str(&format!(",\"event_id\":{}", self.id));
        if let Some(t) = self.event_type {
            out.push_str(&format!(",\"event_type\":{}", s(t)));
        }
        if let Some((t, id)) = self.aggregate {
            out.push_str(&format!(
                ",\"aggregate_type\":{},\"aggregate_id\":{}",
                s(t),
                s(id)
            ));
        }
        if let Some(r) = self.route {
            out.push_str(&format!(",\"route\":{}", s(r)));
        }
        if let Some(n) = self.attempt {
            out.push_str(&format!(",\"attempt\":{n}"));
        }
        if let Some(o) = self.outcome {
            out.push_str(&format!(",\"outcome\":{}", s(Some(o.as_str()))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(f: EventFields<'_>) -> serde_json::Value {
        let mut out = String::from("{\"msg\":\"x\"");
        f.write_json(&mut out);
        out.push('}');
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn only_known_fields_are_written_and_nulls_stay_null() {
        let v = json(EventFields::id(7));
        assert_eq!(v, serde_json::json!({"msg": "x", "event_id": 7}));
        let v = json(
            EventFields::id(7)
                .event_type(None)
                .aggregate(Some("order\n"), None)
                .route(Some("stdout"))
                .attempt(3)
                .outcome(EventOutcome::Dead),
        );
        assert_eq!(
            v,
            serde_json::json!({"msg": "x", "event_id": 7, "event_type": null,
                "aggregate_type": "order\n", "aggregate_id": null, "route": "stdout",
                "attempt": 3, "outcome": "dead"})
        );
    }

    #[test]
    fn an_event_gives_its_own_fields() {
        let e = Event {
            id: 9,
            event_type: Some("order.created".into()),
            aggregate_type: Some("order".into()),
            aggregate_id: Some("42".into()),
            payload: "{}".into(),
            attempt: 2,
        };
        let v = json(EventFields::of(&e).outcome(EventOutcome::NotStarted));
        assert_eq!(v["event_id"], 9);
        assert_eq!(v["event_type"], "order.created");
        assert_eq!(v["aggregate_type"], "order");
        assert_eq!(v["aggregate_id"], "42");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["outcome"], "not_started");
        assert!(v.get("route").is_none());
    }
}
