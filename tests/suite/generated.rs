//! What `dispatchbox generate` prints, checked where it is used: `docs/reference.md` is the
//! output of `generate reference` (a golden file) and names every flag `--help` lists; the
//! man page renders with `man` and `groff` without a warning; the bash completion, sourced
//! into a real bash, completes flags, commands and a choice flag's words; the zsh script
//! parses and the fish one completes the same in a real fish.
//!
//! `man`, `groff`, `zsh` and `fish` are test dependencies: `scripts/test-deps.sh` installs
//! them (`.ci/run` runs it); a test without them fails saying so, it never skips.

use super::choices::help_entries;
use crate::common::{dispatchbox, run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const REGENERATE: &str = "cargo run -q -- generate reference > docs/reference.md";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `dispatchbox generate what`'s output.
fn generate(what: &str) -> String {
    let out = run(dispatchbox().args(["generate", what]), T);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.is_empty(), "{out}");
    out.stdout
}

/// `program`, or a failure that names the script installing it.
fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` not found: the tests of the generated man page and completions need \
                 man, groff, zsh and fish; run scripts/test-deps.sh once (as root it installs them)"
            )
        })
}

/// `generate what` written to a file in a fresh temp dir (kept while the guard lives).
struct Written {
    dir: PathBuf,
    file: PathBuf,
}

impl Written {
    fn new(what: &str, name: &str) -> Written {
        let dir = std::env::temp_dir().join(format!(
            "dispatchbox-generated-{}-{what}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, generate(what)).unwrap();
        Written { dir, file }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_reference_is_what_generate_reference_prints() {
    let committed = std::fs::read_to_string(repo().join("docs/reference.md")).unwrap_or_default();
    assert!(
        committed == generate("reference"),
        "docs/reference.md differs from `dispatchbox generate reference`: regenerate it with \
         {REGENERATE}"
    );
}

#[test]
fn generate_names_what_it_can_print() {
    for (args, expect) in [
        (
            &["generate"][..],
            "`generate` needs one of: man, complete-bash, complete-zsh",
        ),
        (
            &["generate", "complete-tcsh"][..],
            "`generate` needs one of",
        ),
        (
            &["generate", "man", "--table", "x"][..],
            "`generate` takes no options",
        ),
    ] {
        let out = run(dispatchbox().args(args), T);
        assert_eq!(out.code, Some(2), "{args:?}\n{out}");
        assert!(out.stderr.contains(expect), "{args:?}\n{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
}

#[test]
fn every_flag_in_help_is_in_the_reference() {
    let help = run(dispatchbox().arg("--help"), T);
    let reference = std::fs::read_to_string(repo().join("docs/reference.md")).unwrap();
    let entries = help_entries(&help.stdout);
    assert!(entries.len() > 40, "{help}");
    for e in entries {
        // `--batch-size N` (or `-h, --help`): the reference spells it `` `--batch-size N` ``.
        let mut words = e.split_whitespace();
        let first = words.next().unwrap_or_default();
        let spelled = match first.strip_suffix(',') {
            Some(short) => format!("`{short}`, `{}`", words.next().unwrap_or_default()),
            None => match words
                .next()
                .filter(|v| v.chars().all(|c| !c.is_lowercase()))
            {
                Some(value) => format!("`{first} {value}`"),
                None => format!("`{first}`"),
            },
        };
        assert!(
            reference.contains(&spelled),
            "{spelled} is in --help, not in docs/reference.md (regenerate: {REGENERATE})"
        );
    }
}

#[test]
fn the_man_page_renders_without_warnings() {
    let man = require("man");
    let groff = require("groff");
    let page = Written::new("man", "dispatchbox.1");
    let out = Command::new(man)
        .args(["--warnings", "-l"])
        .arg(&page.file)
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "man: {stderr}");
    assert!(stderr.is_empty(), "man --warnings:\n{stderr}");
    assert!(stdout.contains("DISPATCHBOX(1)"), "{stdout}");
    assert!(stdout.contains("--ordered-dead"), "{stdout}");
    assert!(stdout.contains("EXIT STATUS"), "{stdout}");
    let out = Command::new(groff)
        .args(["-man", "-ww", "-z"])
        .arg(&page.file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "groff -ww:\n{stderr}"
    );
}

/// What the bash completion offers for `line` (the words typed; the last is completed).
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cmd = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_dispatchbox\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new(require("bash"))
        .args(["--norc", "--noprofile", "-c", &cmd])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{words:?}: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_flags_commands_and_choices() {
    let script = Written::new("complete-bash", "dispatchbox.bash");
    let c = |w: &[&str]| bash_complete(&script.file, w);
    assert_eq!(c(&["dispatchbox", "--bat"]), ["--batch-size"]);
    assert_eq!(c(&["dispatchbox", "--ordered-dead", ""]), ["block", "skip"]);
    assert_eq!(c(&["dispatchbox", "--on-done", "d"]), ["delete"]);
    // --flag=value: bash makes `=` a word.
    assert_eq!(c(&["dispatchbox", "--notify", "=", "o"]), ["on", "off"]);
    assert_eq!(c(&["dispatchbox", "mi"]), ["migrate"]);
    assert_eq!(
        c(&["dispatchbox", "dead", ""]),
        ["list", "show", "retry", "purge"]
    );
    // A command's own options after it, not before; values of flags are skipped.
    assert_eq!(
        c(&["dispatchbox", "--table", "x", "dead", "list", "--li"]),
        ["--limit"]
    );
    assert!(c(&["dispatchbox", "--li"]).is_empty());
    assert_eq!(
        c(&["dispatchbox", "status", "--max-d"]),
        ["--max-dead", "--max-due"]
    );
    assert_eq!(
        c(&[
            "dispatchbox",
            "--route",
            "a",
            "=",
            "stdout",
            "prune",
            "--old"
        ]),
        ["--older-than"]
    );
    assert!(c(&["dispatchbox", "--batch-size", ""]).is_empty());
    assert!(c(&["dispatchbox", "generate", ""]).contains(&"complete-bash".to_string()));
}

#[test]
fn the_zsh_completion_parses_and_the_fish_one_completes() {
    let zsh = Written::new("complete-zsh", "_dispatchbox");
    let out = Command::new(require("zsh"))
        .arg("-n")
        .arg(&zsh.file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "zsh -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fish = Written::new("complete-fish", "dispatchbox.fish");
    let complete = |line: &str| {
        let cmd = format!("source '{}'; complete -C '{line}'", fish.file.display());
        let out = Command::new(require("fish"))
            .args(["--no-config", "-c", &cmd])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{line}: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(complete("dispatchbox --ordered-dead "), ["block", "skip"]);
    assert_eq!(complete("dispatchbox --bat"), ["--batch-size"]);
    assert!(complete("dispatchbox ").contains(&"migrate".to_string()));
    assert_eq!(complete("dispatchbox dead list --li"), ["--limit"]);
}
