//! The standard `process_*` figures of one process (resident and virtual memory, CPU time,
//! open and allowed descriptors, start time), read from `/proc/self` the way Prometheus's
//! client libraries read them. The supervisor reads its own at each scrape; a worker reads
//! its own for every `counters` report (on its reporting thread, never the DB thread), so
//! the supervisor never looks into another process.
//!
//! Invariant: reading never fails loudly — on a system without `/proc` (or with it hidden)
//! the figures are simply absent, and a scrape leaves the family out.

use serde_json::{Map, Value};
use std::fs;

/// One process's figures, in whole units so that reports compare exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// User plus system CPU time, in microseconds.
    pub cpu_us: u64,
    pub open_fds: u64,
    /// The soft limit on open descriptors.
    pub max_fds: u64,
    /// When the process started, in milliseconds since the Unix epoch.
    pub start_time_ms: u64,
}

impl ProcessStats {
    /// This process's figures now; None where `/proc/self` cannot be read.
    pub(crate) fn of_self() -> Option<ProcessStats> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let boot = fs::read_to_string("/proc/stat").ok()?;
        let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: plain calls without pointers but to a local struct.
        let (ticks, page, max_fds) = unsafe {
            let mut lim: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur
            } else {
                0
            };
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
                max,
            )
        };
        let (ticks, page) = (u64::try_from(ticks).ok()?, u64::try_from(page).ok()?);
        parse(&stat, &boot, ticks, page, open_fds, max_fds)
    }

    pub(crate) fn to_json(self) -> Value {
        let mut m = Map::new();
        m.insert("rss".into(), self.resident_bytes.into());
        m.insert("vsize".into(), self.virtual_bytes.into());
        m.insert("cpu-us".into(), self.cpu_us.into());
        m.insert("open-fds".into(), self.open_fds.into());
        m.insert("max-fds".into(), self.max_fds.into());
        m.insert("start-ms".into(), self.start_time_ms.into());
        Value::Object(m)
    }

    /// The inverse of `to_json`; None when a field is missing or not a whole number.
    pub(crate) fn from_json(v: &Value) -> Option<ProcessStats> {
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        Some(ProcessStats {
            resident_bytes: num("rss")?,
            virtual_bytes: num("vsize")?,
            cpu_us: num("cpu-us")?,
            open_fds: num("open-fds")?,
            max_fds: num("max-fds")?,
            start_time_ms: num("start-ms")?,
        })
    }
}

/// The figures from the text of `/proc/self/stat` and `/proc/stat` (for `btime`).
fn parse(
    stat: &str,
    proc_stat: &str,
    ticks: u64,
    page: u64,
    open_fds: u64,
    max_fds: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // the fields that follow start after the last `)`, with field 3 (state) at index 0.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    if ticks == 0 {
        return None;
    }
    let cpu_ticks = field(14)?.saturating_add(field(15)?);
    let since_boot_ms = field(22)?.saturating_mul(1000) / ticks;
    Some(ProcessStats {
        resident_bytes: field(24)?.saturating_mul(page),
        virtual_bytes: field(23)?,
        cpu_us: cpu_ticks.saturating_mul(1_000_000) / ticks,
        open_fds,
        max_fds,
        start_time_ms: btime.saturating_mul(1000).saturating_add(since_boot_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_command_name() {
        // A command name with a space and a parenthesis, as `/proc/PID/stat` shows it.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 50 0 0 20 0 9 0 \
                    1000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let s = parse(stat, boot, 100, 4096, 7, 1024).unwrap();
        assert_eq!(s.cpu_us, 3_000_000, "(250 + 50) ticks at 100 per second");
        assert_eq!(s.start_time_ms, 1_700_000_010_000, "boot + 1000 ticks");
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.resident_bytes, 2048 * 4096);
        assert_eq!((s.open_fds, s.max_fds), (7, 1024));
        assert_eq!(ProcessStats::from_json(&s.to_json()), Some(s));
        assert_eq!(parse("4242 (x) S 1", boot, 100, 4096, 1, 1), None);
        assert_eq!(parse(stat, "cpu 1\n", 100, 4096, 1, 1), None);
    }

    #[test]
    fn this_process_has_memory_descriptors_and_a_start() {
        let s = ProcessStats::of_self().expect("/proc/self");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds > 0 && s.max_fds >= s.open_fds);
        assert!(s.start_time_ms > 1_600_000_000_000);
        assert_eq!(ProcessStats::from_json(&Value::Null), None);
    }
}
