//! The `exec:` target under stress: a bad program at start-up, running out of file
//! descriptors, commands that leave processes behind, and commands still running when the
//! worker exits.

use super::{db_with_events, drain};
use crate::common;
use common::TempDir;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// True once `pid` is gone or a zombie waiting to be reaped.
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z"))
        .unwrap_or(true)
}

fn kill_pids_in(file: &Path) {
    for pid in std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
    {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// The child processes of `pid` (over all its threads).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(task) = task else { continue };
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// (open descriptors, threads) of a process, or None once it is gone.
fn fds_and_threads(pid: u32) -> Option<(usize, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())?;
    Some((fds, threads))
}

#[test]
fn a_bad_exec_program_is_a_usage_error_at_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let db = db_with_events(1, "x");
    let tmp = TempDir::new("exec-badprog");
    let dir = tmp.path();
    let plain = dir.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            "/nonexistent/notify --fast".to_string(),
            "program /nonexistent/notify not found".to_string(),
        ),
        (
            plain.display().to_string(),
            format!("program {} is not executable", plain.display()),
        ),
        (
            dir.display().to_string(),
            format!("program {} is a directory", dir.display()),
        ),
        (
            "dbx-no-such-program --x".to_string(),
            "program dbx-no-such-program not found on PATH".to_string(),
        ),
    ];
    for (command, problem) in cases {
        let route = format!("*=exec:{command}");
        let out = drain(&db, &["--route", &route]);
        assert_eq!(out.code, Some(2), "{out}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected\n{out}");
        assert!(
            lines[0].contains(&format!("--route {route}")) && lines[0].contains(&problem),
            "expected the route and `{problem}`\n{out}"
        );
    }
    // Nothing was started: the event was not touched.
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        1
    );
}

#[test]
fn running_out_of_file_descriptors_defers_events_without_using_attempts() {
    let db = db_with_events(300, "x");
    // Enough descriptors to start and connect, too few for 16 commands at once. With
    // --max-attempts 1 any attempt used up would make an event dead.
    let script = format!(
        "ulimit -n 28 && exec '{}' --dsn '{}' --drain --poll-interval 0.05 --threads 16 \
         --max-attempts 1 --route '*=exec:true'",
        common::bin_path().display(),
        db.dsn
    );
    let out = common::run(
        Command::new("sh").args(["-c", &script]),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'dead'"),
        0,
        "{out}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done' AND attempts = 1"),
        300,
        "{out}"
    );
    // The shortage did happen, and was reported once per episode, not once per event.
    let warnings = out
        .stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("not the event's fault"))
        .count();
    assert!(
        (1..=10).contains(&warnings),
        "{warnings} warnings\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("Too many open files"), "{out}");
}

#[test]
fn a_command_leaving_a_process_behind_costs_no_thread_or_descriptor() {
    let db = db_with_events(200, "x");
    let dir = TempDir::new("exec-leak");
    let pids = dir.join("pids");
    // `sleep 20 &` keeps the command's stderr open for 20 s after the command exited.
    let route = format!(
        "*=exec:sh -c 'sleep 20 & echo $! >> {}; exit 0'",
        pids.display()
    );
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", &route]).args([
        "--processes",
        "1",
        "--threads",
        "4",
        "--poll-interval",
        "0.05",
    ]);
    let supervisor = common::spawn(&mut cmd);
    let sup_pid = supervisor.pid();
    let mut worker = None;
    let mut worst = (0, 0);
    let mut sample = |worker: &mut Option<u32>| {
        if worker.is_none() {
            *worker = children(sup_pid).first().copied();
        }
        if let Some((fds, threads)) = worker.and_then(fds_and_threads) {
            worst = (worst.0.max(fds), worst.1.max(threads));
        }
    };
    common::wait_until(Duration::from_secs(90), "all 200 events are done", || {
        sample(&mut worker);
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'") == 200
    });
    // Most background processes are still alive and holding their pipes now.
    for _ in 0..20 {
        sample(&mut worker);
        std::thread::sleep(Duration::from_millis(25));
    }
    supervisor.signal("TERM");
    let out = supervisor.wait(Duration::from_secs(30));
    kill_pids_in(&pids);
    assert!(worker.is_some(), "the worker process was never seen\n{out}");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        worst.0 < 60 && worst.1 < 60,
        "the worker had up to {} descriptors and {} threads open\n{out}",
        worst.0,
        worst.1
    );
}

#[test]
fn commands_still_running_when_the_worker_gives_up_waiting_are_killed() {
    let db = db_with_events(1, "x");
    let dir = TempDir::new("exec-abandon");
    let pidfile = dir.join("pid");
    let route = format!("*=exec:sh -c 'echo $$ > {}; sleep 60'", pidfile.display());
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", &db.dsn, "--route", &route]).args([
        "--shutdown-timeout",
        "1",
        "--poll-interval",
        "0.05",
    ]);
    let supervisor = common::spawn(&mut cmd);
    common::wait_until(Duration::from_secs(30), "the command runs", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Should the test fail, the command does not outlive it.
    let _reaper = KillOnDrop(pid);
    supervisor.signal("TERM");
    let out = supervisor.wait(Duration::from_secs(30));
    common::wait_until(
        Duration::from_secs(5),
        &format!("the command (pid {pid}) is gone after the worker exited\n{out}"),
        || gone(pid),
    );
    assert!(out.stderr.contains("killed 1 `exec:` command"), "{out}");
}

/// SIGKILLs a process when dropped, unless it is gone already.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !gone(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[test]
fn a_large_event_reaches_a_reading_program_whole_and_does_not_block_one_that_ignores_it() {
    let db = common::test_db();
    db.migrate();
    // 300 KB: several times what a pipe holds, so the line is written in many rounds.
    db.client()
        .execute(
            "INSERT INTO outbox_event (event_type, payload)
             SELECT t, jsonb_build_object('blob', repeat('x', 300000))
             FROM unnest(ARRAY['read', 'ignore']) AS t",
            &[],
        )
        .unwrap();
    let dir = TempDir::new("exec-large");
    let read = format!(
        "read=exec:sh -c 'cat > {}/$DISPATCHBOX_EVENT_ID.json'",
        dir.path().display()
    );
    let out = drain(&db, &["--route", &read, "--route", "ignore=exec:sleep 0.3"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        2,
        "{out}"
    );
    let json = std::fs::read_to_string(dir.join("1.json")).unwrap();
    assert!(json.ends_with('\n'), "the line ends with a newline");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["payload"]["blob"].as_str().map(str::len), Some(300000));
}
