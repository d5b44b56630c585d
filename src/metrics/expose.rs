//! The Prometheus text exposition format (version 0.0.4) of a board snapshot and the outbox
//! backlog: every family once, `# HELP` and `# TYPE` before its samples, label values
//! escaped, histogram buckets cumulative and ending with `+Inf` equal to `_count`.
//!
//! Invariant: pure — the same input gives the same text; nothing here blocks.

use super::board::Snapshot;
use super::counts::{Outcome, BUCKETS};
use std::fmt::Write;

/// The outbox backlog, as the supervisor's own query saw it (see `backlog`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Backlog {
    /// Pending or retrying events due now (not leased).
    pub due: i64,
    /// Seconds since the oldest of them became due (0 when none is).
    pub oldest_due_age: f64,
}

/// What a scrape shows besides the board.
pub(crate) struct Process {
    pub version: &'static str,
    /// Seconds since the Unix epoch at which the supervisor started.
    pub start_time: f64,
}

/// `# HELP` and `# TYPE` of one family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, infinities as `+Inf`/`-Inf`.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A family with one unlabelled sample (`labels` is `{…}` or empty).
fn single(o: &mut String, (name, kind, help): (&str, &str, &str), labels: &str, v: String) {
    family(o, name, kind, help);
    let _ = writeln!(o, "{name}{labels} {v}");
}

pub(crate) fn render(snap: &Snapshot, backlog: Option<Backlog>, p: &Process) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;
    let version = format!("{{version=\"{}\"}}", escape(p.version));
    single(o, BUILD_INFO, &version, "1".into());
    single(o, START_TIME, "", value(p.start_time));
    events(o, snap);
    durations(o, snap);
    routes(o, snap);
    let t = &snap.total;
    single(o, IN_FLIGHT, "", t.in_flight.to_string());
    single(o, CLAIMS, "", t.claims.to_string());
    single(o, CLAIMED, "", t.claimed.to_string());
    single(o, DB_ERRORS, "", t.db_errors.to_string());
    single(o, STARTS, "", snap.starts.to_string());
    let (name, kind, help) = WORKERS;
    family(o, name, kind, help);
    let w = snap.workers;
    for (state, n) in [
        ("ready", w.ready),
        ("starting", w.starting),
        ("down", w.down),
    ] {
        let _ = writeln!(o, "{name}{{state=\"{state}\"}} {n}");
    }
    single(o, READY, "", u8::from(snap.ready()).to_string());
    if let Some(b) = backlog {
        single(o, DUE, "", b.due.to_string());
        single(o, OLDEST_DUE_AGE, "", value(b.oldest_due_age));
    }
    out
}

type Family = (&'static str, &'static str, &'static str);

const BUILD_INFO: Family = (
    "dispatchbox_build_info",
    "gauge",
    "Always 1; the labels name the build.",
);
const START_TIME: Family = (
    "dispatchbox_start_time_seconds",
    "gauge",
    "When the supervisor started, in seconds since the Unix epoch.",
);
const IN_FLIGHT: Family = (
    "dispatchbox_in_flight",
    "gauge",
    "Events claimed by the workers and not finished.",
);
const CLAIMS: Family = (
    "dispatchbox_claims_total",
    "counter",
    "Claim statements run by the workers.",
);
const CLAIMED: Family = (
    "dispatchbox_claimed_events_total",
    "counter",
    "Events returned by those claims.",
);
const DB_ERRORS: Family = (
    "dispatchbox_db_errors_total",
    "counter",
    "Failed statements and connection attempts of the workers.",
);
const STARTS: Family = (
    "dispatchbox_worker_starts_total",
    "counter",
    "Worker processes started, restarts included.",
);
const WORKERS: Family = (
    "dispatchbox_workers",
    "gauge",
    "Worker slots by state: ready, starting (running, not ready yet) or down.",
);
const READY: Family = (
    "dispatchbox_ready",
    "gauge",
    "1 when /readyz answers 200: every worker ready and not stopping.",
);
const DUE: Family = (
    "dispatchbox_outbox_due",
    "gauge",
    "Pending or retrying events due now and not leased, in the whole table.",
);
const OLDEST_DUE_AGE: Family = (
    "dispatchbox_outbox_oldest_due_age_seconds",
    "gauge",
    "How long the oldest due event has been due (0 when none is).",
);

fn events(o: &mut String, snap: &Snapshot) {
    family(
        o,
        "dispatchbox_events_total",
        "counter",
        "Claimed events by route target and how the attempt ended.",
    );
    for (route, r) in &snap.total.routes {
        let route = escape(route);
        for k in Outcome::ALL {
            let _ = writeln!(
                o,
                "dispatchbox_events_total{{route=\"{route}\",outcome=\"{}\"}} {}",
                k.as_str(),
                r.count(k)
            );
        }
    }
}

/// Route health: paused now (in how many worker processes) and the time spent paused.
fn routes(o: &mut String, snap: &Snapshot) {
    family(
        o,
        "dispatchbox_route_paused",
        "gauge",
        "Worker processes in which the route is paused for a destination outage (0: up).",
    );
    for (route, r) in &snap.total.routes {
        let _ = writeln!(
            o,
            "dispatchbox_route_paused{{route=\"{}\"}} {}",
            escape(route),
            r.paused
        );
    }
    family(
        o,
        "dispatchbox_route_paused_seconds_total",
        "counter",
        "Time the route spent paused for destination outages, summed over worker processes.",
    );
    for (route, r) in &snap.total.routes {
        let _ = writeln!(
            o,
            "dispatchbox_route_paused_seconds_total{{route=\"{}\"}} {}",
            escape(route),
            value(r.paused_us as f64 / 1e6)
        );
    }
}

fn durations(o: &mut String, snap: &Snapshot) {
    let name = "dispatchbox_delivery_duration_seconds";
    family(
        o,
        name,
        "histogram",
        "How long handlers ran, by route target.",
    );
    for (route, r) in &snap.total.routes {
        let route = escape(route);
        let mut cumulative = 0;
        for (i, n) in r.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| value(*b));
            let _ = writeln!(
                o,
                "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = r.sum_us as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum{{route=\"{route}\"}} {}", value(sum));
        let _ = writeln!(o, "{name}_count{{route=\"{route}\"}} {}", r.runs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::counts::Counts;
    use std::time::Duration;

    #[test]
    fn families_come_once_with_help_and_type_and_buckets_are_cumulative() {
        let mut snap = Snapshot::default();
        let mut c = Counts::default();
        c.count("exec:say \"hi\"\\", Outcome::Delivered);
        c.observe("exec:say \"hi\"\\", Duration::from_millis(7));
        c.observe("exec:say \"hi\"\\", Duration::from_secs(100));
        snap.total = c;
        snap.workers.ready = 1;
        let p = Process {
            version: "1.2.3",
            start_time: 1.5e9,
        };
        let text = render(
            &snap,
            Some(Backlog {
                due: 3,
                oldest_due_age: f64::INFINITY,
            }),
            &p,
        );
        let route = r#"route="exec:say \"hi\"\\""#;
        assert!(text.contains(&format!(
            "dispatchbox_events_total{{{route},outcome=\"delivered\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "dispatchbox_delivery_duration_seconds_bucket{{{route},le=\"0.005\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "dispatchbox_delivery_duration_seconds_bucket{{{route},le=\"0.01\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "dispatchbox_delivery_duration_seconds_bucket{{{route},le=\"+Inf\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "dispatchbox_delivery_duration_seconds_sum{{{route}}} 100.007\n"
        )));
        assert!(text.contains("dispatchbox_outbox_oldest_due_age_seconds +Inf\n"));
        assert!(text.contains("dispatchbox_ready 1\n"));
        assert!(text.contains("dispatchbox_build_info{version=\"1.2.3\"} 1\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let unique: std::collections::HashSet<&&str> = types.iter().collect();
        assert_eq!(types.len(), unique.len());
        assert!(!render(&snap, None, &p).contains("dispatchbox_outbox_due"));
    }
}
