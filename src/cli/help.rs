//! The `--help` text. Its OPTIONS section is rendered from the flag table (`defs.rs`); the
//! EXIT CODES from the table of them (`error::exit`); the rest (usage, the `exec:` and `pipe:`
//! contracts) is written here.

use super::defs::{Flag, BATCH_SIZE, FLAGS};
use crate::error::exit;

pub(super) const USAGE: &str = "\
dispatchbox — deliver transactional-outbox events from PostgreSQL, at least once

USAGE:
    dispatchbox [OPTIONS]              run the supervisor and its worker processes
    dispatchbox migrate [OPTIONS]      create or upgrade the outbox table (idempotent)
    dispatchbox stats [OPTIONS]        print the number of events per status (exact, a full scan)
    dispatchbox status [OPTIONS]       counts, due backlog, lag, in flight, per type; a check
    dispatchbox dead list|show ID|retry [ID...]|purge [ID...] [OPTIONS]
                                       look at dead events; requeue (attempts reset) or delete
    dispatchbox prune --older-than 7d  delete (or --archive) done events, in batches
    dispatchbox help                   print this help (like --help)
    dispatchbox generate man|complete-bash|complete-zsh|complete-fish|reference
                                       print the man page, a shell completion or docs/reference.md
";

pub(super) const EXEC_CONTRACT: &str = "
EXEC TARGETS (--route 'PATTERN=exec:COMMAND ARGS...', run without a shell, once per event):
    stdin: the event as one JSON line; environment: DISPATCHBOX_EVENT_ID, DISPATCHBOX_EVENT_TYPE,
    DISPATCHBOX_AGGREGATE_TYPE, DISPATCHBOX_AGGREGATE_ID, DISPATCHBOX_ATTEMPT. Exit 0: delivered;
    exit 65: permanent failure (dead at once); exit 75: the destination is unavailable (counts
    toward pausing the route); anything else, or --exec-timeout: retried later.
    The tail of its stderr is stored as the event's error; its stdout is discarded.

PIPE TARGETS (--route 'PATTERN=pipe:COMMAND ARGS...', long-running, --pipe-processes per worker):
    stdin: one event JSON line each, written without waiting, up to --pipe-window unanswered
    (outstanding) per process. stdout: one answer per event, in any order, naming an outstanding
    id: `ok ID`, `retry ID [after=SECS] [REASON]`, `dead ID [REASON]`, or `unavailable ID
    [after=SECS] [REASON]` (the destination is down: counts toward pausing the route); anything
    else is a protocol error. When the process ends, is killed at --pipe-timeout or breaks the
    protocol, outstanding events it had read are retried (one attempt), those it never read are
    given back (no attempt). At a stop: outstanding events answered (or timed out), then EOF.
";

pub(super) const DURATIONS: &str = "
DURATIONS (every SECS and DURATION above): a number with a unit, decimals allowed: 250ms, 1.5s,
    15m, 12h, 7d (units ms, s, m, h, d, w). SECS also takes a bare number, as seconds
    (--poll-interval 0.5 = 500ms); DURATION needs the unit (`prune --older-than 7` is refused).
";

/// Where the explanations start.
const INDENT: usize = 4;
/// A help line with a note is wrapped to this many columns (one without, never).
const WIDTH: usize = 100;

/// The whole `--help` text.
pub fn render() -> String {
    let mut out = String::from(USAGE);
    let example = BATCH_SIZE.env_var().unwrap_or_default();
    out.push_str(&format!(
        "\nOPTIONS (each also read from DISPATCHBOX_<NAME>, e.g. {example}; flags win):\n"
    ));
    let column = FLAGS.iter().map(|f| left(f).len()).max().unwrap_or(0) + 2;
    for f in FLAGS.iter().filter(|f| !f.is_command_option()) {
        render_flag(&mut out, f, column);
    }
    out.push_str("\nCOMMAND OPTIONS (command line only, no variable):\n");
    for f in FLAGS.iter().filter(|f| f.is_command_option()) {
        render_flag(&mut out, f, column);
    }
    out.push_str(DURATIONS);
    out.push_str(EXEC_CONTRACT);
    render_exit_codes(&mut out);
    out
}

/// The EXIT CODES section, from the one table of them (`error::exit::CODES`).
fn render_exit_codes(out: &mut String) {
    out.push_str("\nEXIT CODES:\n");
    for c in exit::CODES {
        let words: Vec<String> = c.meaning.split_whitespace().map(String::from).collect();
        for (i, line) in wrap(&words, WIDTH - INDENT - 3).iter().enumerate() {
            let code = if i == 0 {
                c.code.to_string()
            } else {
                String::new()
            };
            out.push_str(&format!("{:INDENT$}{code:3}{line}\n", ""));
        }
    }
}

/// `--batch-size N`, `-h, --help`.
fn left(f: &Flag) -> String {
    let mut s = match f.short {
        Some(short) => format!("{short}, {}", f.key),
        None => f.key.to_string(),
    };
    if let Some(v) = f.value {
        s.push(' ');
        s.push_str(v);
    }
    s
}

/// The help line (with the note after a `;`, wrapped), a choice's words and the default at
/// the end.
fn render_flag(out: &mut String, f: &Flag, column: usize) {
    let mut words: Vec<String> = f.help.split_whitespace().map(String::from).collect();
    if let (Some(note), Some(last)) = (f.note, words.last_mut()) {
        last.push(';');
        words.extend(note.split_whitespace().map(String::from));
    }
    if let Some(choices) = f.choices() {
        words.push(format!("[possible values: {}]", choices.join(", ")));
    }
    if let Some(d) = f.default {
        words.push(format!("[default: {d}]"));
    }
    // A flag without a note or choices stays on one line, however long.
    let width = match f.note.is_some() || f.choices().is_some() {
        true => WIDTH.saturating_sub(INDENT + column),
        false => usize::MAX,
    };
    for (i, line) in wrap(&words, width).iter().enumerate() {
        let head = if i == 0 { left(f) } else { String::new() };
        out.push_str(&format!("{:INDENT$}{head:column$}{line}\n", ""));
    }
}

/// `words` in lines of at most `width` characters (a longer word gets its own line).
fn wrap(words: &[String], width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in words {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_with_its_default_is_listed() {
        let help = render();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for f in FLAGS {
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(&left(f))),
                "{} missing:\n{help}",
                f.key
            );
            assert!(flat.contains(f.help), "{}: {}", f.key, f.help);
        }
        assert!(help.contains(
            "    --batch-size N            events claimed per round trip [default: 10]\n"
        ));
        assert!(help.contains("e.g. DISPATCHBOX_BATCH_SIZE; flags win"));
        assert!(help.contains("[default: *=stdout]\n"));
        assert!(help
            .contains("    --limit N                 dead list: at most N events [default: 50]\n"));
        let flat_choices = "[possible values: block, skip] [default: block]";
        assert!(flat.contains(flat_choices), "{help}");
        assert!(flat.contains("[possible values: DEBUG, INFO, WARNING, ERROR, CRITICAL]"));
        assert!(help
            .contains("    -h, --help                print this help (also `dispatchbox help`)\n"));
        assert!(help.lines().all(|l| l.chars().count() <= 110), "{help}");
        assert!(help.contains("Exit 0: delivered"), "{help}");
        assert!(help.contains("exit 65: permanent failure"), "{help}");
        assert!(help.contains("--older-than DURATION"), "{help}");
        assert!(help.contains("--poll-interval SECS"), "{help}");
        assert!(help.contains("DURATION needs the unit"), "{help}");
        assert!(
            help.contains("\nEXIT CODES:\n    0  drained (`--drain`), or stopped"),
            "{help}"
        );
        for c in exit::CODES {
            let line = format!(
                "\n    {:<3}{}",
                c.code,
                c.meaning.split(' ').next().unwrap()
            );
            assert!(help.contains(&line), "{line}\n{help}");
        }
    }

    #[test]
    fn notes_wrap_at_word_boundaries() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            wrap(&words("a bb ccc dddd"), 6),
            vec!["a bb", "ccc", "dddd"]
        );
        assert_eq!(wrap(&[], 6), Vec::<String>::new());
    }
}
