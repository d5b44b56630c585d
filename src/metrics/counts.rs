//! What a worker counts, as one value: per route, how many events ended each way and how long
//! their handlers took (a histogram with fixed buckets); claims, database errors, and the
//! gauges of now: events in flight, whether its database connection is down (and for how
//! long), and its `process_*` figures. A worker sends it to the supervisor as its `counters` report (see
//! `protocol`); the supervisor sums the reports for `/metrics`.
//!
//! Invariant: everything but the gauges (`in_flight`, `db_down`, `db_down_us`, `process`,
//! each route's `paused`) is cumulative since the worker started, so a later
//! report never holds a smaller number than an earlier one of the same worker; `merge_max`
//! keeps that true even if reports were ever reordered.

use super::process::ProcessStats;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How an event's attempt ended, as the `outcome` label of the metrics says it (not the
/// handler's `Outcome`, which is its verdict, nor the `outcome` field of a log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    Delivered,
    /// Failed; due again after the backoff.
    Retried,
    /// Failed for good (permanent failure, or attempts used up).
    Dead,
    /// Given back unstarted (shutdown, a stale lease) or after an abort: the attempt is not
    /// counted.
    Released,
    /// Given back to be due again after a pause, no attempt used: the handler asked for it
    /// (a local reason, not the event's), or its route is paused for an outage. (The rule
    /// for every label is `worker::outcomes`.)
    Deferred,
}

impl Label {
    pub(crate) const ALL: [Label; 5] = [
        Label::Delivered,
        Label::Retried,
        Label::Dead,
        Label::Released,
        Label::Deferred,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Label::Delivered => "delivered",
            Label::Retried => "retried",
            Label::Dead => "dead",
            Label::Released => "released",
            Label::Deferred => "deferred",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the handler duration histogram's buckets; `+Inf` follows.
pub(crate) const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One route's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteCounts {
    /// By `Label as usize`.
    pub outcomes: [u64; 5],
    /// Handler runs per bucket, not cumulative; the last one is above every bound.
    pub buckets: [u64; BUCKETS.len() + 1],
    /// Total handler time, in microseconds (whole numbers keep the sum exact and monotonic).
    pub sum_us: u64,
    /// Time the route spent paused for an outage, in microseconds (cumulative).
    pub paused_us: u64,
    /// Whether the route is paused now (a gauge: summed over workers, the number of worker
    /// processes in which it is).
    pub paused: u64,
}

/// A worker's numbers (or a sum of several workers').
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// By route target name (as the routes name it: `stdout`, `exec:…`).
    pub routes: BTreeMap<String, RouteCounts>,
    /// Claim statements that ran.
    pub claims: u64,
    /// Events those claims returned.
    pub claimed: u64,
    /// Statements or connection attempts that failed.
    pub db_errors: u64,
    /// Events claimed and not finished now (a gauge, not cumulative).
    pub in_flight: u64,
    /// 1 while the worker has no database connection (a gauge: summed, the workers without
    /// one).
    pub db_down: u64,
    /// How long the connection has been down, in microseconds (a gauge: the longest when
    /// summed).
    pub db_down_us: u64,
    /// The worker process's own figures (a gauge, never summed: the board shows them per
    /// worker slot).
    pub process: Option<ProcessStats>,
}

impl RouteCounts {
    pub(crate) fn count(&self, o: Label) -> u64 {
        self.outcomes[o.index()]
    }

    /// Handler runs observed (the histogram's count).
    pub(crate) fn runs(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_us = self
            .sum_us
            .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    fn zip(&mut self, other: &RouteCounts, f: impl Fn(u64, u64) -> u64) {
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a = f(*a, b);
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = f(*a, b);
        }
        self.sum_us = f(self.sum_us, other.sum_us);
        self.paused_us = f(self.paused_us, other.paused_us);
    }
}

impl Counts {
    pub(crate) fn count(&mut self, route: &str, o: Label) {
        self.route(route).outcomes[o.index()] += 1;
    }

    /// A handler ran for `took`.
    pub(crate) fn observe(&mut self, route: &str, took: Duration) {
        self.route(route).observe(took);
    }

    fn route(&mut self, route: &str) -> &mut RouteCounts {
        self.routes.entry(route.to_string()).or_default()
    }

    /// Route health now: whether `route` is paused, and its paused time so far.
    pub(crate) fn route_health(&mut self, route: &str, paused: bool, paused_for: Duration) {
        let r = self.route(route);
        r.paused = u64::from(paused);
        r.paused_us = r
            .paused_us
            .max(u64::try_from(paused_for.as_micros()).unwrap_or(u64::MAX));
    }

    /// Gauges only: a finished worker's routes are paused nowhere.
    pub(crate) fn clear_gauges(&mut self) {
        self.in_flight = 0;
        self.db_down = 0;
        self.db_down_us = 0;
        self.process = None;
        for r in self.routes.values_mut() {
            r.paused = 0;
        }
    }

    /// Adds `other` (another worker's numbers, or a finished incarnation's).
    pub(crate) fn add(&mut self, other: &Counts) {
        self.zip(other, u64::saturating_add);
        self.in_flight = self.in_flight.saturating_add(other.in_flight);
        self.db_down = self.db_down.saturating_add(other.db_down);
        self.db_down_us = self.db_down_us.max(other.db_down_us);
        for (name, r) in &other.routes {
            let mine = self.route(name);
            mine.paused = mine.paused.saturating_add(r.paused);
        }
    }

    /// Takes a newer report of the same worker: the larger of each cumulative number, the
    /// newer gauge.
    pub(crate) fn merge_max(&mut self, newer: &Counts) {
        self.zip(newer, u64::max);
        self.in_flight = newer.in_flight;
        self.db_down = newer.db_down;
        self.db_down_us = newer.db_down_us;
        self.process = newer.process;
        for (name, r) in &newer.routes {
            self.route(name).paused = r.paused;
        }
    }

    fn zip(&mut self, other: &Counts, f: fn(u64, u64) -> u64) {
        for (name, r) in &other.routes {
            self.route(name).zip(r, f);
        }
        self.claims = f(self.claims, other.claims);
        self.claimed = f(self.claimed, other.claimed);
        self.db_errors = f(self.db_errors, other.db_errors);
    }

    /// The report's fields (without its type tag).
    pub(crate) fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("claims".into(), self.claims.into());
        m.insert("claimed".into(), self.claimed.into());
        m.insert("db-errors".into(), self.db_errors.into());
        m.insert("in-flight".into(), self.in_flight.into());
        m.insert("db-down".into(), self.db_down.into());
        m.insert("db-down-us".into(), self.db_down_us.into());
        if let Some(p) = self.process {
            m.insert("process".into(), p.to_json());
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(name, r)| {
                let mut o = Map::new();
                o.insert("route".into(), name.as_str().into());
                for k in Label::ALL {
                    o.insert(k.as_str().into(), r.count(k).into());
                }
                o.insert("duration-us".into(), r.sum_us.into());
                o.insert("paused-us".into(), r.paused_us.into());
                o.insert("paused".into(), r.paused.into());
                o.insert("buckets".into(), r.buckets.to_vec().into());
                Value::Object(o)
            })
            .collect();
        m.insert("routes".into(), routes.into());
        m
    }

    /// The inverse of `to_json`; None when a field has the wrong shape (a missing number is
    /// 0, so that a field added later does not make an older report unreadable).
    pub(crate) fn from_json(m: &Map<String, Value>) -> Option<Counts> {
        let num = |o: &Map<String, Value>, k: &str| match o.get(k) {
            None => Some(0),
            Some(v) => v.as_u64(),
        };
        let mut c = Counts {
            routes: BTreeMap::new(),
            claims: num(m, "claims")?,
            claimed: num(m, "claimed")?,
            db_errors: num(m, "db-errors")?,
            in_flight: num(m, "in-flight")?,
            db_down: num(m, "db-down")?,
            db_down_us: num(m, "db-down-us")?,
            process: match m.get("process") {
                None => None,
                Some(v) => Some(ProcessStats::from_json(v)?),
            },
        };
        let routes = match m.get("routes") {
            None => &Vec::new(),
            Some(v) => v.as_array()?,
        };
        for r in routes {
            let o = r.as_object()?;
            let name = o.get("route")?.as_str()?.to_string();
            let mut rc = RouteCounts::default();
            for k in Label::ALL {
                rc.outcomes[k.index()] = num(o, k.as_str())?;
            }
            rc.sum_us = num(o, "duration-us")?;
            rc.paused_us = num(o, "paused-us")?;
            rc.paused = num(o, "paused")?;
            let buckets = o.get("buckets")?.as_array()?;
            if buckets.len() != rc.buckets.len() {
                return None;
            }
            for (slot, v) in rc.buckets.iter_mut().zip(buckets) {
                *slot = v.as_u64()?;
            }
            c.routes.insert(name, rc);
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Counts {
        let mut c = Counts::default();
        c.count("stdout", Label::Delivered);
        c.count("stdout", Label::Delivered);
        c.count("exec:sh -c \"x\"", Label::Dead);
        c.observe("stdout", Duration::from_millis(3));
        c.observe("stdout", Duration::from_millis(70));
        c.observe("stdout", Duration::from_secs(90));
        c.claims = 4;
        c.claimed = 7;
        c.db_errors = 1;
        c.in_flight = 2;
        c.db_down = 1;
        c.db_down_us = 1_500_000;
        c.process = ProcessStats::of_self();
        c
    }

    #[test]
    fn durations_fall_in_their_bucket() {
        let c = sample();
        let r = &c.routes["stdout"];
        assert_eq!(r.buckets[0], 1, "3 ms ≤ 5 ms");
        assert_eq!(r.buckets[4], 1, "70 ms ≤ 100 ms");
        assert_eq!(r.buckets[BUCKETS.len()], 1, "90 s: +Inf only");
        assert_eq!(r.runs(), 3);
        assert_eq!(r.sum_us, 90_073_000);
        assert_eq!(r.count(Label::Delivered), 2);
    }

    #[test]
    fn json_round_trips_and_bad_shapes_are_refused() {
        let c = sample();
        assert_eq!(Counts::from_json(&c.to_json()), Some(c.clone()));
        assert_eq!(Counts::from_json(&Map::new()), Some(Counts::default()));
        let mut bad = c.to_json();
        bad.insert("claims".into(), "3".into());
        assert_eq!(Counts::from_json(&bad), None);
        let mut short = c.to_json();
        short["routes"][0]["buckets"] = vec![1, 2].into();
        assert_eq!(Counts::from_json(&short), None);
        let mut process = c.to_json();
        process.insert("process".into(), serde_json::json!({"rss": 1}));
        assert_eq!(Counts::from_json(&process), None);
    }

    #[test]
    fn add_sums_and_merge_max_never_goes_down() {
        let mut total = sample();
        total.add(&sample());
        assert_eq!(total.routes["stdout"].count(Label::Delivered), 4);
        assert_eq!(total.in_flight, 4);
        assert_eq!((total.db_down, total.db_down_us), (2, 1_500_000));
        let mut last = sample();
        let mut older = Counts::default();
        older.count("stdout", Label::Retried);
        older.in_flight = 0;
        last.merge_max(&older);
        assert_eq!(last.routes["stdout"].count(Label::Delivered), 2);
        assert_eq!(last.routes["stdout"].count(Label::Retried), 1);
        assert_eq!(last.claims, 4);
        assert_eq!(last.in_flight, 0);
        assert_eq!((last.db_down, last.db_down_us, last.process), (0, 0, None));
        last.clear_gauges();
        assert_eq!(last.claims, 4);
    }
}
