//! The `stdout` target under stress: several processes, a full disk, a torn last line, a
//! closed stdout. The output is whole JSON lines, and an event is done only with its line.

use super::{assert_exactly_once, db_with_events, drain};
use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `sh -c 'exec dispatchbox --dsn <db> --drain <args> <redirect>'`, run to its end.
fn drain_sh(bin: &Path, db: &common::TestDb, args: &str, redirect: &str) -> common::Run {
    let script = format!(
        "exec '{}' --dsn '{}' --drain --poll-interval 0.05 {args} {redirect}",
        bin.display(),
        db.dsn
    );
    common::run(
        Command::new("sh").args(["-c", &script]),
        Duration::from_secs(180),
    )
}

/// Every line of `text` as an event id; panics on a line that is not a JSON event.
fn ids_of(text: &str) -> Vec<i64> {
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                let cut: String = l.chars().take(300).collect();
                panic!("line {} is not JSON ({e}): {cut}…", n + 1)
            });
            v["id"].as_i64().unwrap_or_else(|| panic!("no id in {l}"))
        })
        .collect()
}

#[test]
fn mixed_stdout_lines_from_two_processes_stay_whole() {
    let db = common::test_db();
    db.migrate();
    // 2 KiB lines (atomic on a pipe) between 10 KiB ones (written in pieces).
    db.client()
        .execute(
            "INSERT INTO outbox_event (event_type, payload)
             SELECT 'mixed', jsonb_build_object('n', g,
                    'blob', repeat('x', CASE WHEN g % 2 = 0 THEN 2000 ELSE 10000 END))
             FROM generate_series(1, 4000) g",
            &[],
        )
        .unwrap();
    let out = drain(&db, &["--processes", "2", "--batch-size", "20"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_exactly_once(4000, ids_of(&out.stdout));
}

/// A small tmpfs, unmounted (by path) however the test ends.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!(
            "dbx-tmpfs-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = format!("size={size}");
        sh_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(&dir),
        );
        Tmpfs { dir }
    }

    fn resize(&self, size: &str) {
        let opts = format!("remount,size={size}");
        sh_ok(Command::new("mount").args(["-o", &opts]).arg(&self.dir));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn sh_ok(cmd: &mut Command) {
    let status = cmd.status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "{cmd:?} failed: {status:?}"
    );
}

#[test]
fn a_full_disk_leaves_no_torn_line_and_no_event_done_without_its_line() {
    let db = common::test_db();
    db.migrate();
    // About 450 bytes a line: 1500 events need ~700 KB.
    db.client()
        .execute(
            "INSERT INTO outbox_event (event_type, payload)
             SELECT 'disk', jsonb_build_object('n', g, 'blob', repeat('y', 350))
             FROM generate_series(1, 1500) g",
            &[],
        )
        .unwrap();
    let fs = Tmpfs::mount("200k");
    let file = fs.dir.join("out.jsonl");
    let bin = common::bin_path();
    // `>` (a shared offset, not O_APPEND) for the run that fills the disk ...
    let first = drain_sh(&bin, &db, "", &format!("> '{}'", file.display()));
    assert_eq!(first.code, Some(1), "{first}");
    let done_first = db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'");
    assert!(done_first > 0 && done_first < 1500, "{done_first}\n{first}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts > 0"),
        0,
        "the failed events are given back without using an attempt"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
    assert_eq!(ids_of(&text).len() as i64, done_first, "{first}");

    // ... then `>>` once there is room again.
    fs.resize("4m");
    let second = drain_sh(&bin, &db, "", &format!(">> '{}'", file.display()));
    assert_eq!(second.code, Some(0), "{second}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_exactly_once(1500, ids_of(&text));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        1500
    );
}

#[test]
fn a_torn_last_line_from_an_earlier_run_is_ended_before_the_first_event() {
    let db = db_with_events(3, "x");
    let dir = common::TempDir::new("torn");
    let file = dir.join("out.jsonl");
    std::fs::write(&file, "{\"id\":0,\"torn").unwrap();
    let out = drain_sh(
        &common::bin_path(),
        &db,
        "",
        &format!(">> '{}'", file.display()),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert_eq!(first, "{\"id\":0,\"torn", "{text}");
    assert_exactly_once(3, ids_of(rest));
}

#[test]
fn a_closed_stdout_is_refused_at_start() {
    let db = db_with_events(5, "x");
    let out = drain_sh(&common::bin_path(), &db, "", ">&-");
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr
            .contains("stdout is closed but route `*=stdout` writes to it"),
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        5
    );
    // The same in a binary that links the library (the start-up probe is kept).
    let out = drain_sh(&super::example_bin(), &db, "--route '*=stdout'", ">&-");
    assert_eq!(out.code, Some(2), "{out}");
    // A closed stdout nobody writes to is fine.
    let out = drain_sh(&common::bin_path(), &db, "--route '*=exec:true'", ">&-");
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn stdout_on_dev_null_is_allowed_with_a_warning() {
    let db = db_with_events(5, "x");
    let out = drain_sh(&common::bin_path(), &db, "", "> /dev/null");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("WARNING") && l.contains("stdout is /dev/null")),
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        5
    );
}

#[test]
fn a_pretty_printed_json_payload_is_still_one_line() {
    // A `json` (not `jsonb`) column keeps the text as written, line breaks included.
    let db = common::test_db();
    db.client()
        .batch_execute(
            "CREATE TABLE outbox_event (id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
                aggregate_type text, aggregate_id text, event_type text, payload json,
                status varchar(10) DEFAULT 'pending', attempts smallint DEFAULT 0,
                next_run_at timestamptz DEFAULT now(), created_at timestamptz DEFAULT now());
             INSERT INTO outbox_event (event_type, payload) VALUES
                ('x', E'{\\n  \"a\": \"line\\\\nbreak\",\\r\\n  \"b\": [1,\\n2]\\n}'),
                ('x', E'\\n\"s\"\\n')",
        )
        .unwrap();
    db.migrate();
    let out = drain(&db, &[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_exactly_once(2, ids_of(&out.stdout));
    let first: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["payload"],
        serde_json::json!({"a": "line\nbreak", "b": [1, 2]})
    );
}
