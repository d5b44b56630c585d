//! The command line as typed: the mode and the raw flag values (pico-args), read as the
//! flag table (`defs.rs`) describes them; `--help` is rendered from the same table.
//! Nothing is validated here beyond "is this a flag we know"; `config.rs` does the rest.

pub(crate) mod defs;
mod help;

pub use defs::VALUE_FLAGS;
use defs::{Flag, Kind, DRAIN, FLAGS};

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::sync::LazyLock;

/// The `--help` text (rendered once, from the flag table).
pub static HELP: LazyLock<String> = LazyLock::new(help::render);

/// The supervisor's way of starting a worker child (not for users: not in `--help`).
const WORKER_INDEX: &str = "--worker-index";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Run,
    Migrate,
    Stats,
    /// A worker child started by the supervisor; its configuration arrives on stdin.
    Worker(u32),
    Help,
    Version,
}

/// Flag values exactly as given (None = not given).
#[derive(Clone, Debug, Default)]
pub struct RawArgs {
    /// `(name, value)` for the flags in [`VALUE_FLAGS`], e.g. `("batch-size", "20")`.
    pub values: Vec<(&'static str, String)>,
    pub routes: Vec<String>,
    pub drain: bool,
}

impl RawArgs {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn usage(msg: String) -> Error {
    Error::Usage(format!("{msg} (see --help)"))
}

pub fn parse(args: Vec<OsString>) -> Result<(Mode, RawArgs)> {
    let mut p = pico_args::Arguments::from_vec(args);
    if p.contains(keys(&defs::HELP)) {
        return Ok((Mode::Help, RawArgs::default()));
    }
    if p.contains(keys(&defs::VERSION)) {
        return Ok((Mode::Version, RawArgs::default()));
    }
    let worker: Option<u32> = p
        .opt_value_from_str(WORKER_INDEX)
        .map_err(|e| usage(format!("{WORKER_INDEX}: {e}")))?;
    let mut mode = match worker {
        Some(i) => Mode::Worker(i),
        None => Mode::Run,
    };
    let raw = read_flags(&mut p)?;
    if mode == Mode::Run {
        match p.subcommand().map_err(|e| usage(e.to_string()))?.as_deref() {
            None => {}
            Some("migrate") => mode = Mode::Migrate,
            Some("stats") => mode = Mode::Stats,
            Some("help") => mode = Mode::Help,
            // Not echoed: a misplaced DSN or password must not reach a terminal or a log.
            Some(_) => return Err(usage(
                "unexpected argument: commands are `migrate` and `stats`; the DSN goes in --dsn"
                    .into(),
            )),
        }
    }
    match p.finish().first() {
        Some(first) => Err(leftover(&first.to_string_lossy())),
        None => Ok((mode, raw)),
    }
}

/// pico-args keys for a flag: `--help` or `["-h", "--help"]`.
fn keys(f: &Flag) -> pico_args::Keys {
    match f.short {
        Some(short) => [short, f.key].into(),
        None => f.key.into(),
    }
}

/// Takes every flag of the table out of `p`: the value flags first, then the repeatable
/// ones, then the switches (so `--route --dsn x` reads as before: `--dsn` takes its value).
fn read_flags(p: &mut pico_args::Arguments) -> Result<RawArgs> {
    let mut raw = RawArgs::default();
    for f in FLAGS.iter().filter(|f| f.takes_one_value()) {
        let v: Option<String> = p
            .opt_value_from_str(f.key)
            .map_err(|e| usage(describe(e, f.key)))?;
        if let Some(v) = v {
            raw.values.push((f.name(), v));
        }
    }
    for f in FLAGS.iter().filter(|f| f.kind == Kind::Routes) {
        raw.routes = p
            .values_from_str(f.key)
            .map_err(|e| usage(describe(e, f.key)))?;
    }
    // `--drain` is the only switch; `RawArgs` has a field for it.
    raw.drain = p.contains(DRAIN.key);
    Ok(raw)
}

/// The error for the first argument nobody took.
fn leftover(s: &str) -> Error {
    // Never echo what could be a DSN or a password given to a flag we do not know.
    let shown = if s.starts_with('-') {
        s.split('=').next().unwrap_or_default().to_string()
    } else {
        "a positional argument".to_string()
    };
    let flag = FLAGS
        .iter()
        .find(|f| f.key == shown || f.short == Some(shown.as_str()));
    // A flag we know is left over only when it was given again (pico-args takes the first
    // occurrence), or, for a switch, given a value.
    if let Some(f) = flag.filter(|f| f.kind == Kind::Switch && s.contains('=')) {
        return usage(format!("{} takes no value", f.key));
    }
    if flag.is_some() || shown == WORKER_INDEX {
        return usage(format!("{shown} is given more than once"));
    }
    usage(format!("unexpected argument: {shown}"))
}

fn describe(e: pico_args::Error, key: &str) -> String {
    match e {
        pico_args::Error::OptionWithoutAValue(_) => format!("{key} needs a value"),
        pico_args::Error::NonUtf8Argument => format!("{key}: value is not valid UTF-8"),
        _ => format!("{key}: invalid value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_flags_routes_and_modes() {
        let (m, r) = parse(args(&[
            "--dsn=host=x",
            "--batch-size",
            "20",
            "--route",
            "a=stdout",
            "--route",
            "b.*=exec:true",
            "--drain",
        ]))
        .unwrap();
        assert_eq!(m, Mode::Run);
        assert_eq!(r.get("dsn"), Some("host=x"));
        assert_eq!(r.get("batch-size"), Some("20"));
        assert_eq!(r.routes, vec!["a=stdout", "b.*=exec:true"]);
        assert!(r.drain);
        assert_eq!(
            parse(args(&["migrate", "--dsn", "x"])).unwrap().0,
            Mode::Migrate
        );
        assert_eq!(
            parse(args(&["--worker-index", "3"])).unwrap().0,
            Mode::Worker(3)
        );
    }

    #[test]
    fn unknown_flags_are_errors_that_do_not_echo_values() {
        let e = parse(args(&["--passwd=hunter2"])).unwrap_err().to_string();
        assert!(e.contains("--passwd"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(args(&["hunter2"])).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse(args(&["--batch-size"])).unwrap_err().to_string();
        assert!(e.contains("--batch-size needs a value"), "{e}");
    }

    #[test]
    fn a_flag_given_twice_is_named() {
        for a in [
            &["--drain", "--drain"][..],
            &["--batch-size", "1", "--batch-size", "2"][..],
            &["--dsn=a", "--dsn=hunter2"][..],
        ] {
            let e = parse(args(a)).unwrap_err().to_string();
            assert!(e.contains("is given more than once"), "{a:?}: {e}");
            assert!(e.starts_with(a[0].split('=').next().unwrap()), "{a:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = parse(args(&["--drain=yes"])).unwrap_err().to_string();
        assert!(e.contains("--drain takes no value"), "{e}");
        // Repeatable: no error.
        assert!(parse(args(&["--route", "a=stdout", "--route", "b=stdout"])).is_ok());
    }
}
