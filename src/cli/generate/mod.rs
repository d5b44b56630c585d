//! `dispatchbox generate WHAT`: references made from the flag table (`defs`), the commands
//! (`cli::Command`) and the exit codes (`error::exit::CODES`), the way ripgrep generates its
//! man page and completions from its flag definitions: the man page `dispatchbox(1)`, shell
//! completions for bash, zsh and fish, and `docs/reference.md`.
//!
//! Invariant: nothing here knows a flag by name; everything it says about a flag comes from
//! its definition, so a new flag appears in every reference at once (a test checks the
//! committed `docs/reference.md` against `generate reference`).

mod bash;
mod fish;
mod man;
mod reference;
mod zsh;

use super::defs::{Flag, Kind, Scope, FLAGS};
use super::Command;

/// What `generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Man,
    Bash,
    Zsh,
    Fish,
    Reference,
}

impl What {
    /// As typed after `generate`, in the order `--help` lists them.
    pub const NAMES: [&'static str; 5] = [
        "man",
        "complete-bash",
        "complete-zsh",
        "complete-fish",
        "reference",
    ];

    pub fn parse(s: &str) -> Option<What> {
        Some(match s {
            "man" => What::Man,
            "complete-bash" => What::Bash,
            "complete-zsh" => What::Zsh,
            "complete-fish" => What::Fish,
            "reference" => What::Reference,
            _ => return None,
        })
    }
}

/// The text `generate what` prints.
pub fn render(what: What) -> String {
    match what {
        What::Man => man::render(),
        What::Bash => bash::render(),
        What::Zsh => zsh::render(),
        What::Fish => fish::render(),
        What::Reference => reference::render(),
    }
}

/// A word typed after `dispatchbox`: a command, or a group of them (`dead`, `generate`).
struct Word {
    name: &'static str,
    about: &'static str,
    /// The words after it (`dead list`), with what each does; empty for a command.
    subs: Vec<(&'static str, &'static str, Option<Command>)>,
    command: Option<Command>,
}

/// The words after `dispatchbox`, in `--help` order.
fn words() -> Vec<Word> {
    let mut out = Vec::new();
    let mut dead = Vec::new();
    for c in Command::ALL {
        match c.name().strip_prefix("dead ") {
            Some(sub) => dead.push((sub, c.about(), Some(c))),
            None => out.push(Word {
                name: c.name(),
                about: c.about(),
                subs: Vec::new(),
                command: Some(c),
            }),
        }
    }
    let at = out
        .iter()
        .position(|w| w.name == "prune")
        .unwrap_or(out.len());
    out.insert(
        at,
        Word {
            name: "dead",
            about: "look at dead events; requeue (attempts reset) or delete",
            subs: dead,
            command: None,
        },
    );
    out.push(Word {
        name: "help",
        about: "print the help (like --help)",
        subs: Vec::new(),
        command: None,
    });
    out.push(Word {
        name: "generate",
        about: "print the man page, a shell completion or the reference",
        subs: What::NAMES
            .iter()
            .map(|n| (*n, generate_about(n), None))
            .collect(),
        command: None,
    });
    out
}

fn generate_about(name: &str) -> &'static str {
    match name {
        "man" => "the man page dispatchbox(1), in roff",
        "complete-bash" => "bash completion (source it)",
        "complete-zsh" => "zsh completion (a _dispatchbox file in $fpath)",
        "complete-fish" => "fish completion",
        _ => "docs/reference.md: every flag, variable, default and exit code",
    }
}

/// The flags every mode accepts (the run flags, `--help`, `--version`), in table order.
fn run_flags() -> impl Iterator<Item = &'static Flag> {
    FLAGS.iter().filter(|f| f.scope == Scope::Run)
}

/// The commands that take the command option `f`.
fn commands_of(f: &Flag) -> Vec<Command> {
    Command::ALL
        .into_iter()
        .filter(|c| c.options().iter().any(|o| o.key == f.key))
        .collect()
}

/// What a shell may offer as `f`'s value.
#[derive(Debug, PartialEq)]
enum Value {
    /// Takes none.
    None,
    /// One of these words.
    Words(&'static [&'static str]),
    /// A file name.
    File,
    /// Anything: nothing to offer.
    Free,
}

fn value_of(f: &Flag) -> Value {
    match (f.kind, f.value) {
        (Kind::Choice(c), _) => Value::Words(c.words),
        (_, None) => Value::None,
        (_, Some("FILE")) => Value::File,
        (_, Some(_)) => Value::Free,
    }
}

/// `f`'s help line and its note, as one text.
fn full_help(f: &Flag) -> String {
    match f.note {
        Some(note) => format!("{}; {note}", f.help),
        None => f.help.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for n in What::NAMES {
            let w = What::parse(n).unwrap();
            assert!(!render(w).is_empty(), "{n}");
        }
        assert_eq!(What::parse("complete-tcsh"), None);
    }

    #[test]
    fn every_command_is_a_word_or_under_one() {
        let words = words();
        for c in Command::ALL {
            let found = words
                .iter()
                .any(|w| w.command == Some(c) || w.subs.iter().any(|(_, _, sc)| *sc == Some(c)));
            assert!(found, "{}", c.name());
        }
        assert_eq!(
            commands_of(&super::super::defs::JSON)
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>(),
            ["status", "dead list", "dead show"]
        );
        assert_eq!(value_of(&super::super::defs::DSN_FILE), Value::File);
        assert_eq!(value_of(&super::super::defs::DRAIN), Value::None);
    }
}
