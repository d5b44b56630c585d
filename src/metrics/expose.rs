//! The Prometheus text exposition format (version 0.0.4) of a board snapshot and the outbox
//! backlog: every family once, `# HELP` and `# TYPE` before its samples, label values
//! escaped, histogram buckets cumulative and ending with `+Inf` equal to `_count`.
//!
//! Invariant: pure — the same input gives the same text; nothing here blocks.

use super::board::Snapshot;
use super::counts::{Label, BUCKETS};
use super::process::ProcessStats;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The outbox backlog, as the supervisor's own query saw it (see `backlog`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Backlog {
    /// Pending or retrying events due now (not leased).
    pub due: i64,
    /// Seconds since the oldest of them became due (0 when none is).
    pub oldest_due_age: f64,
    /// Dead events.
    pub dead: i64,
}

/// What a scrape may show of the backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct BacklogView {
    /// The backlog, when a recent query succeeded (none: its gauges are left out).
    pub fresh: Option<Backlog>,
    /// When a query last succeeded.
    pub last_success: Option<SystemTime>,
}

/// What a scrape shows besides the board.
pub(crate) struct Process {
    pub version: &'static str,
    /// Seconds since the Unix epoch at which the supervisor started.
    pub start_time: f64,
    /// The supervisor's own `process_*` figures now.
    pub stats: Option<ProcessStats>,
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

pub(crate) fn render(snap: &Snapshot, backlog: BacklogView, p: &Process) -> String {
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
    single(o, RETAINED, "", snap.retained.to_string());
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
    single(o, DISCONNECTED, "", w.disconnected.to_string());
    single(o, READY, "", u8::from(snap.ready()).to_string());
    if let Some(b) = backlog.fresh {
        single(o, DUE, "", b.due.to_string());
        single(o, OLDEST_DUE_AGE, "", value(b.oldest_due_age));
        single(o, DEAD, "", b.dead.to_string());
    }
    single(
        o,
        SCRAPE_OK,
        "",
        u8::from(backlog.fresh.is_some()).to_string(),
    );
    let last = backlog
        .last_success
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    single(o, LAST_SUCCESS, "", value(last));
    processes(o, p.stats, &snap.processes);
    out
}

/// The `process_*` families: the supervisor's samples unlabelled (as any exporter's own),
/// each running worker's labelled with its slot.
fn processes(o: &mut String, own: Option<ProcessStats>, workers: &[(usize, ProcessStats)]) {
    let all: Vec<(String, ProcessStats)> = own
        .map(|s| (String::new(), s))
        .into_iter()
        .chain(
            workers
                .iter()
                .map(|(i, s)| (format!("{{worker=\"{i}\"}}"), *s)),
        )
        .collect();
    if all.is_empty() {
        return;
    }
    let figures: [(Family, Figure); 6] = [
        (CPU, |s| value(s.cpu_us as f64 / 1e6)),
        (RSS, |s| s.resident_bytes.to_string()),
        (VSIZE, |s| s.virtual_bytes.to_string()),
        (OPEN_FDS, |s| s.open_fds.to_string()),
        (MAX_FDS, |s| s.max_fds.to_string()),
        (PROCESS_START, |s| value(s.start_time_ms as f64 / 1e3)),
    ];
    for ((name, kind, help), figure) in figures {
        family(o, name, kind, help);
        for (labels, s) in &all {
            let _ = writeln!(o, "{name}{labels} {}", figure(s));
        }
    }
}

type Family = (&'static str, &'static str, &'static str);
/// One `process_*` sample's value.
type Figure = fn(&ProcessStats) -> String;

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
const RETAINED: Family = (
    "dispatchbox_retention_removed_total",
    "counter",
    "Done events removed by --retain-done (deleted, or moved to --retain-archive).",
);
const WORKERS: Family = (
    "dispatchbox_workers",
    "gauge",
    "Worker slots by state: ready, starting (running, not ready yet) or down.",
);
const DISCONNECTED: Family = (
    "dispatchbox_workers_db_disconnected",
    "gauge",
    "Ready workers whose database connection is down now (reconnecting).",
);
const READY: Family = (
    "dispatchbox_ready",
    "gauge",
    "1 when /readyz answers 200: every worker ready and connected to the database, not stopping.",
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
const DEAD: Family = (
    "dispatchbox_outbox_dead",
    "gauge",
    "Dead events in the whole table.",
);
const SCRAPE_OK: Family = (
    "dispatchbox_outbox_scrape_success",
    "gauge",
    "1 when the outbox gauges come from a recent successful query; 0 when they are left out.",
);
const LAST_SUCCESS: Family = (
    "dispatchbox_outbox_last_success_timestamp_seconds",
    "gauge",
    "When the outbox query last succeeded, in seconds since the Unix epoch (0: never).",
);
const CPU: Family = (
    "process_cpu_seconds_total",
    "counter",
    "Total user and system CPU time spent in seconds.",
);
const RSS: Family = (
    "process_resident_memory_bytes",
    "gauge",
    "Resident memory size in bytes.",
);
const VSIZE: Family = (
    "process_virtual_memory_bytes",
    "gauge",
    "Virtual memory size in bytes.",
);
const OPEN_FDS: Family = (
    "process_open_fds",
    "gauge",
    "Number of open file descriptors.",
);
const MAX_FDS: Family = (
    "process_max_fds",
    "gauge",
    "Maximum number of open file descriptors.",
);
const PROCESS_START: Family = (
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since unix epoch in seconds.",
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
        for k in Label::ALL {
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
        c.count("exec:say \"hi\"\\", Label::Delivered);
        c.observe("exec:say \"hi\"\\", Duration::from_millis(7));
        c.observe("exec:say \"hi\"\\", Duration::from_secs(100));
        snap.total = c;
        snap.workers.ready = 1;
        let p = Process {
            version: "1.2.3",
            start_time: 1.5e9,
            stats: None,
        };
        let seen = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let view = BacklogView {
            fresh: Some(Backlog {
                due: 3,
                oldest_due_age: f64::INFINITY,
                dead: 7,
            }),
            last_success: Some(seen),
        };
        let text = render(&snap, view, &p);
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
        assert!(text.contains("dispatchbox_outbox_dead 7\n"));
        assert!(text.contains("dispatchbox_outbox_scrape_success 1\n"));
        assert!(text.contains("dispatchbox_outbox_last_success_timestamp_seconds 1700000000.5\n"));
        assert!(!text.contains("process_"), "no figures, no families");
        let stale = render(
            &snap,
            BacklogView {
                fresh: None,
                last_success: Some(seen),
            },
            &p,
        );
        for gone in ["_outbox_due", "_oldest_due_age", "_outbox_dead"] {
            assert!(!stale.contains(gone), "{stale}");
        }
        assert!(stale.contains("dispatchbox_outbox_scrape_success 0\n"));
        assert!(stale.contains("dispatchbox_outbox_last_success_timestamp_seconds 1700000000.5\n"));
        let never = render(&snap, BacklogView::default(), &p);
        assert!(never.contains("dispatchbox_outbox_last_success_timestamp_seconds 0\n"));
    }

    #[test]
    fn process_families_show_the_supervisor_unlabelled_and_workers_by_slot() {
        let s = ProcessStats {
            resident_bytes: 4096,
            virtual_bytes: 8192,
            cpu_us: 1_250_000,
            open_fds: 9,
            max_fds: 1024,
            start_time_ms: 1_700_000_000_250,
        };
        let snap = Snapshot {
            processes: vec![(1, s)],
            ..Snapshot::default()
        };
        let p = Process {
            version: "1",
            start_time: 0.0,
            stats: Some(s),
        };
        let text = render(&snap, BacklogView::default(), &p);
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n\
             process_cpu_seconds_total{worker=\"1\"} 1.25\n",
            "process_resident_memory_bytes 4096\n",
            "process_virtual_memory_bytes{worker=\"1\"} 8192\n",
            "process_open_fds 9\n",
            "process_max_fds{worker=\"1\"} 1024\n",
            "process_start_time_seconds 1700000000.25\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
