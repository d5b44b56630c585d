//! `dispatchbox status`: the table at a glance, cheap on big tables, and a monitoring check
//! with thresholds (`--max-lag`, `--max-dead`, `--max-due`: exit 7 when one is exceeded).
//! `dispatchbox stats` (exact counts per status, one line each) is here too.
//!
//! Cost: waiting rows (pending, retry; due, leased, per type, lag) are read through the claim
//! index only, dead rows through the index of dead rows (`migrate` builds both); done is the
//! planner's estimate (no row read) unless `--exact` (a full scan of the table). On a table
//! without the index of dead rows, dead is an estimate too, counted exactly (a full scan)
//! only when `--max-dead` asks.
//! Gathering is one function, judging the thresholds and rendering are pure.

use super::{connect, human_secs};
use crate::cli::defs::{EXACT, JSON, MAX_DEAD, MAX_DUE, MAX_LAG};
use crate::cli::RawArgs;
use crate::config::{AdminConfig, Table};
use crate::error::{exit, Result};
use crate::store::{self, ops};
use serde_json::{json, Value};
use std::io::Write;

/// Prints `status count` per line: pending, retry, done, dead, then any other status.
pub fn stats(cfg: &AdminConfig) -> Result<u8> {
    let mut client = connect(cfg)?;
    store::check_table(&mut client, &cfg.table)?;
    let mut out = std::io::stdout().lock();
    for (status, n) in store::stats(&mut client, &cfg.table)? {
        writeln!(out, "{status} {n}")?;
    }
    Ok(exit::OK)
}

/// The thresholds given.
#[derive(Clone, Copy, Debug, Default)]
struct Thresholds {
    max_lag: Option<f64>,
    max_dead: Option<i64>,
    max_due: Option<i64>,
}

impl Thresholds {
    fn from_raw(raw: &RawArgs) -> Result<Thresholds> {
        Ok(Thresholds {
            max_lag: raw.secs(&MAX_LAG)?,
            max_dead: raw.whole(&MAX_DEAD)?,
            max_due: raw.whole(&MAX_DUE)?,
        })
    }
}

/// One status's count; `estimated` when it comes from the planner's statistics.
#[derive(Debug)]
struct Count {
    status: &'static str,
    n: Option<i64>,
    estimated: bool,
}

/// Waiting events of one type.
#[derive(Debug, Default)]
struct TypeLine {
    event_type: String,
    pending: i64,
    retry: i64,
    due: i64,
    in_flight: i64,
    lag: Option<f64>,
}

/// Everything `status` shows.
struct Report {
    table: String,
    counts: Vec<Count>,
    due: i64,
    lag: Option<f64>,
    in_flight: i64,
    holders: Vec<ops::Holder>,
    types: Vec<TypeLine>,
    /// `--ordered`: aggregates whose later events wait behind a dead one (None: the table has
    /// no ordered index, so it is not counted — that would read every dead row). Always 0
    /// under `--ordered-dead skip`.
    held_back: Option<i64>,
    /// `--ordered-dead block` (else `skip`): what `held_back` assumes of the workers.
    dead_blocks: bool,
    /// The table has an index of dead rows (else dead is an estimate: `migrate` adds it).
    dead_index: bool,
}

impl Report {
    fn count(&self, status: &str) -> Option<i64> {
        self.counts
            .iter()
            .find(|c| c.status == status)
            .and_then(|c| c.n)
    }
}

/// A threshold and how the table stands against it.
#[derive(Debug, PartialEq)]
struct Check {
    name: &'static str,
    limit: f64,
    value: Option<f64>,
    ok: bool,
}

pub fn run(cfg: &AdminConfig, raw: &RawArgs) -> Result<u8> {
    let limits = Thresholds::from_raw(raw)?;
    let mut client = connect(cfg)?;
    store::check_table(&mut client, &cfg.table)?;
    let report = gather(
        &mut client,
        cfg,
        raw.switch(&EXACT),
        limits.max_dead.is_some(),
    )?;
    let checks = judge(&report, &limits);
    let text = if raw.switch(&JSON) {
        format!("{:#}\n", to_json(&report, &checks))
    } else {
        render(&report, &checks)
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if checks.iter().all(|c| c.ok) {
        exit::OK
    } else {
        exit::THRESHOLD
    })
}

fn gather(
    client: &mut postgres::Client,
    cfg: &AdminConfig,
    exact: bool,
    exact_dead: bool,
) -> Result<Report> {
    let table = &cfg.table;
    let waiting = ops::waiting(client, table)?;
    let mut types: Vec<TypeLine> = Vec::new();
    for w in &waiting {
        if types.last().is_none_or(|t| t.event_type != w.event_type) {
            types.push(TypeLine {
                event_type: w.event_type.clone(),
                ..TypeLine::default()
            });
        }
        let Some(t) = types.last_mut() else { continue };
        match w.status.as_str() {
            "pending" => t.pending += w.count,
            _ => t.retry += w.count,
        }
        t.due += w.due;
        t.in_flight += w.in_flight;
        t.lag = max_opt(t.lag, w.lag);
    }
    let sum = |f: fn(&TypeLine) -> i64| types.iter().map(f).sum::<i64>();
    let dead_index = store::has_dead_index(client, table)?;
    let waiting = (sum(|t| t.pending), sum(|t| t.retry));
    let counts = counts(client, table, waiting, exact, exact_dead || dead_index)?;
    Ok(Report {
        table: table.to_string(),
        counts,
        due: sum(|t| t.due),
        lag: types.iter().fold(None, |m, t| max_opt(m, t.lag)),
        in_flight: sum(|t| t.in_flight),
        holders: ops::holders(client, table)?,
        types,
        held_back: match store::has_ordered_index(client, table)? {
            false => None,
            true if cfg.ordered_dead_blocks => Some(store::held_back(client, table, 1)?.0),
            true => Some(0),
        },
        dead_blocks: cfg.ordered_dead_blocks,
        dead_index,
    })
}

/// The counts per status: pending and retry (`waiting`) as counted through the claim index;
/// done, dead and total exact with `exact` (one full scan), else the planner's estimates but
/// for dead with `exact_dead` (read through the index of dead rows, when there is one).
fn counts(
    client: &mut postgres::Client,
    table: &Table,
    waiting: (i64, i64),
    exact: bool,
    exact_dead: bool,
) -> Result<Vec<Count>> {
    let exact_count = |status: &'static str, n: i64| Count {
        status,
        n: Some(n),
        estimated: false,
    };
    let mut counts = vec![
        exact_count("pending", waiting.0),
        exact_count("retry", waiting.1),
    ];
    if exact {
        let all = store::stats(client, table)?;
        for (status, n) in &all {
            if let Some(c) = ["done", "dead"].into_iter().find(|s| s == status) {
                counts.push(exact_count(c, *n));
            }
        }
        counts.push(exact_count("total", all.iter().map(|(_, n)| n).sum()));
        return Ok(counts);
    }
    let est = ops::estimates(client, table)?;
    let estimated = |status: &'static str, n: Option<i64>| Count {
        status,
        n,
        estimated: true,
    };
    counts.push(estimated("done", est.of("done")));
    if exact_dead {
        counts.push(exact_count("dead", ops::dead_count(client, table)?));
    } else {
        counts.push(estimated("dead", est.of("dead")));
    }
    counts.push(estimated("total", est.rows.map(|r| r.round() as i64)));
    Ok(counts)
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The thresholds against the report. A dead count that is unknown breaches nothing (it is
/// counted exactly whenever `--max-dead` is given); no due event means no lag.
fn judge(r: &Report, t: &Thresholds) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name, limit: f64, value: Option<f64>| {
        let ok = value.is_none_or(|v| v <= limit);
        checks.push(Check {
            name,
            limit,
            value,
            ok,
        });
    };
    if let Some(l) = t.max_lag {
        check("max-lag", l, Some(r.lag.unwrap_or(0.0)));
    }
    if let Some(l) = t.max_dead {
        check("max-dead", l as f64, r.count("dead").map(|n| n as f64));
    }
    if let Some(l) = t.max_due {
        check("max-due", l as f64, Some(r.due as f64));
    }
    checks
}

fn to_json(r: &Report, checks: &[Check]) -> Value {
    let counts: serde_json::Map<String, Value> = r
        .counts
        .iter()
        .map(|c| (c.status.to_string(), json!(c.n)))
        .collect();
    let estimated: Vec<&str> = r
        .counts
        .iter()
        .filter(|c| c.estimated)
        .map(|c| c.status)
        .collect();
    json!({
        "table": r.table,
        "counts": counts,
        "estimated": estimated,
        "due": r.due,
        "lag_seconds": r.lag,
        "in_flight": r.in_flight,
        "held_back_aggregates": r.held_back,
        "ordered_dead": if r.dead_blocks { "block" } else { "skip" },
        "holders": r.holders.iter().map(|h| json!({
            "locked_by": h.locked_by,
            "events": h.events,
            "oldest_claim_age_seconds": h.oldest_claim,
            "lease_ends_in_seconds": h.lease_left,
        })).collect::<Vec<_>>(),
        "types": r.types.iter().map(|t| json!({
            "event_type": t.event_type,
            "pending": t.pending,
            "retry": t.retry,
            "due": t.due,
            "in_flight": t.in_flight,
            "lag_seconds": t.lag,
        })).collect::<Vec<_>>(),
        "checks": checks.iter().map(|c| json!({
            "check": c.name, "limit": c.limit, "value": c.value, "ok": c.ok,
        })).collect::<Vec<_>>(),
        "ok": checks.iter().all(|c| c.ok),
    })
}

fn render(r: &Report, checks: &[Check]) -> String {
    let mut out = format!("table {}\n", r.table);
    for c in &r.counts {
        // Dead is an estimate only on a table without the index of dead rows: say so.
        let why = match c.status {
            "dead" if !r.dead_index => "no index of dead rows: `dispatchbox migrate` adds it; ",
            _ => "",
        };
        let n = match (c.n, c.estimated) {
            (Some(n), false) => n.to_string(),
            (Some(n), true) => format!("~{n} (estimate; {why}--exact counts)"),
            (None, _) => format!("unknown (no statistics yet; {why}ANALYZE the table, or --exact)"),
        };
        out.push_str(&format!("{:<10}{n}\n", c.status));
    }
    let lag = r.lag.map_or_else(
        || "-".into(),
        |l| format!("oldest due for {}", human_secs(l)),
    );
    out.push_str(&format!("{:<10}{} ({lag})\n", "due", r.due));
    out.push_str(&format!("{:<10}{}\n", "in flight", r.in_flight));
    match r.held_back {
        Some(n) if r.dead_blocks => out.push_str(&format!(
            "{:<10}{n} aggregate(s) behind a dead event (--ordered, --ordered-dead block)\n",
            "held back"
        )),
        Some(_) => out.push_str(&format!(
            "{:<10}0 (--ordered-dead skip: a dead event holds nothing back)\n",
            "held back"
        )),
        None => {}
    }
    for h in &r.holders {
        out.push_str(&format!(
            "  {}: {} event(s), oldest claimed {} ago, last lease ends in {}\n",
            crate::log::escape_controls(&h.locked_by),
            h.events,
            h.oldest_claim.map_or_else(|| "-".into(), human_secs),
            h.lease_left.map_or_else(|| "-".into(), human_secs),
        ));
    }
    if !r.types.is_empty() {
        out.push_str("waiting by type (pending, retry, due, in flight, lag):\n");
    }
    for t in &r.types {
        out.push_str(&format!(
            "  {} {} {} {} {} {}\n",
            crate::log::escape_controls(&t.event_type),
            t.pending,
            t.retry,
            t.due,
            t.in_flight,
            t.lag.map_or_else(|| "-".into(), human_secs)
        ));
    }
    for c in checks {
        let value = c.value.map_or_else(|| "unknown".into(), |v| v.to_string());
        let verdict = if c.ok { "ok" } else { "EXCEEDED" };
        out.push_str(&format!(
            "check --{} {}: {value} {verdict}\n",
            c.name, c.limit
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(dead: Option<i64>, due: i64, lag: Option<f64>) -> Report {
        Report {
            table: "t".into(),
            counts: vec![Count {
                status: "dead",
                n: dead,
                estimated: false,
            }],
            due,
            lag,
            in_flight: 0,
            holders: Vec::new(),
            types: Vec::new(),
            held_back: None,
            dead_blocks: true,
            dead_index: true,
        }
    }

    #[test]
    fn thresholds_are_judged() {
        let t = Thresholds {
            max_lag: Some(60.0),
            max_dead: Some(0),
            max_due: Some(100),
        };
        let ok = judge(&report(Some(0), 100, Some(60.0)), &t);
        assert!(ok.iter().all(|c| c.ok), "{ok:?}");
        let bad = judge(&report(Some(1), 101, Some(60.5)), &t);
        assert!(bad.iter().all(|c| !c.ok), "{bad:?}");
        // Nothing due: no lag.
        assert!(judge(&report(Some(0), 0, None), &t).iter().all(|c| c.ok));
        assert!(judge(&report(None, 0, None), &Thresholds::default()).is_empty());
    }

    #[test]
    fn json_has_the_counts_and_the_verdict() {
        let t = Thresholds {
            max_due: Some(1),
            ..Thresholds::default()
        };
        let r = report(Some(2), 5, Some(1.5));
        let v = to_json(&r, &judge(&r, &t));
        assert_eq!(v["counts"]["dead"], 2);
        assert_eq!(v["due"], 5);
        assert_eq!(v["lag_seconds"], 1.5);
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][0]["check"], "max-due");
    }
}
