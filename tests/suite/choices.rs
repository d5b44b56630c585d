//! Choice flags and typed command options, as the flag table defines them: `--help` lists a
//! choice flag's words, a word not among them is refused (flag or variable, exit 2, one line
//! naming it, the value and every word), the listed words are taken; command options are
//! checked by their kind, with their default from the table, before anything connects.

use crate::common::{dispatchbox, run};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// A DSN nothing listens on: every case here ends before connecting.
const DSN: &str = "host=127.0.0.1 port=1 connect_timeout=1";

/// `(flag, its words)` for every flag `--help` lists with `[possible values: ...]`.
pub fn choice_flags_in_help() -> Vec<(String, Vec<String>)> {
    let out = run(dispatchbox().arg("--help"), T);
    assert_eq!(out.code, Some(0), "{out}");
    let mut flags = Vec::new();
    for entry in help_entries(&out.stdout) {
        let Some((_, rest)) = entry.split_once("[possible values: ") else {
            continue;
        };
        let words = rest.split(']').next().unwrap_or_default();
        let key = entry.split_whitespace().next().unwrap_or_default();
        let words = words.split(", ").map(String::from).collect();
        flags.push((key.to_string(), words));
    }
    flags
}

/// Each option of `--help` with its explanation on one line (continuation lines joined).
pub fn help_entries(help: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        let starts = line.starts_with("    -") && !line.starts_with("     ");
        match entries.last_mut() {
            Some(e) if !starts && line.starts_with("      ") => {
                e.push(' ');
                e.push_str(line.trim());
            }
            _ if starts => entries.push(line.trim().to_string()),
            _ => {}
        }
    }
    entries
}

fn env_name(flag: &str) -> String {
    format!(
        "DISPATCHBOX_{}",
        flag.trim_start_matches('-')
            .to_uppercase()
            .replace('-', "_")
    )
}

#[test]
fn help_lists_the_words_of_every_choice_flag() {
    let flags = choice_flags_in_help();
    let keys: Vec<&str> = flags.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "--notify",
        "--log-level",
        "--log-format",
        "--ordered-dead",
        "--on-done",
    ] {
        assert!(keys.contains(&want), "{want} lists no choices: {flags:?}");
    }
    let words = |k: &str| flags.iter().find(|(f, _)| f == k).map(|(_, w)| w.clone());
    assert_eq!(words("--ordered-dead").unwrap(), ["block", "skip"]);
    assert_eq!(words("--on-done").unwrap(), ["keep", "delete"]);
    assert_eq!(words("--notify").unwrap(), ["auto", "on", "off"]);
}

#[test]
fn a_word_not_listed_is_refused_naming_the_flag_the_value_and_every_word() {
    let flags = choice_flags_in_help();
    assert!(flags.len() >= 5, "{flags:?}");
    for (flag, words) in flags {
        let var = env_name(&flag);
        let by_flag = run(
            dispatchbox().args(["--dsn", DSN, "--drain", &flag, "sometimes"]),
            T,
        );
        let by_var = run(
            dispatchbox()
                .args(["--dsn", DSN, "--drain"])
                .env(&var, "sometimes"),
            T,
        );
        // An admin command that does not use the flag refuses a wrong word too.
        let admin = run(
            dispatchbox().args(["migrate", "--print-sql", "--dsn", DSN, &flag, "sometimes"]),
            T,
        );
        for (who, out) in [(&flag, by_flag), (&var, by_var), (&flag, admin)] {
            assert_eq!(out.code, Some(2), "{who}\n{out}");
            let err = out.stderr.trim();
            assert_eq!(err.lines().count(), 1, "{who}: not one line\n{out}");
            assert!(err.contains(&format!("{who}: `sometimes` is not")), "{out}");
            for w in &words {
                assert!(err.contains(w.as_str()), "{who}: {w} not named\n{out}");
            }
        }
    }
}

#[test]
fn every_listed_word_is_taken() {
    for (flag, words) in choice_flags_in_help() {
        for w in words {
            // `migrate --print-sql` reads the configuration and prints without connecting.
            let out = run(
                dispatchbox().args(["migrate", "--print-sql", "--dsn", DSN, &flag, &w]),
                T,
            );
            assert_eq!(out.code, Some(0), "{flag} {w}\n{out}");
        }
    }
}

#[test]
fn command_options_are_checked_by_their_kind_before_connecting() {
    for (args, expect) in [
        (
            &["dead", "list", "--limit", "0"][..],
            "--limit: 0 is out of range (at least 1)",
        ),
        (
            &["dead", "list", "--limit", "many"][..],
            "--limit: `many` is not a whole number",
        ),
        (
            &["status", "--max-dead", "-1"][..],
            "--max-dead: -1 is out of range (at least 0)",
        ),
        (
            &["status", "--max-due", "1.5"][..],
            "--max-due: `1.5` is not a whole number",
        ),
        (
            &["status", "--max-lag", "soon"][..],
            "--max-lag: `soon` is not",
        ),
        (
            &["prune", "--older-than", "7"][..],
            "--older-than 7: give a unit",
        ),
        (
            &["dead", "retry", "--since", "2"][..],
            "--since 2: give a unit",
        ),
    ] {
        let out = run(dispatchbox().args(args).args(["--dsn", DSN]), T);
        assert_eq!(out.code, Some(2), "{args:?}\n{out}");
        assert!(out.stderr.contains(expect), "{args:?}: {expect}\n{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(
            !out.stderr.contains("connect"),
            "{args:?}: connected\n{out}"
        );
    }
}
