//! The command line as typed: the mode and the raw flag values (pico-args), read as the
//! flag table (`defs.rs`) describes them; `--help` is rendered from the same table.
//! Nothing is validated here beyond "is this a flag we know"; `config.rs` does the rest.

pub(crate) mod defs;
pub(crate) mod generate;
mod help;
mod options;

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
    /// An admin command (`migrate`, `status`, `dead list`, ...).
    Admin(Command),
    /// A worker child started by the supervisor; its configuration arrives on stdin.
    Worker(u32),
    Help,
    Version,
    /// `dispatchbox generate man|complete-bash|...`: print a reference made from the flag table.
    Generate(generate::What),
}

/// The admin commands (same binary, same connection options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Migrate,
    Stats,
    Status,
    DeadList,
    DeadShow,
    DeadRetry,
    DeadPurge,
    Prune,
}

impl Command {
    /// Every command, in `--help` order.
    pub const ALL: [Command; 8] = [
        Command::Migrate,
        Command::Stats,
        Command::Status,
        Command::DeadList,
        Command::DeadShow,
        Command::DeadRetry,
        Command::DeadPurge,
        Command::Prune,
    ];

    /// What it does, in one line (the man page, the completions, the reference).
    pub fn about(self) -> &'static str {
        match self {
            Command::Migrate => "create or upgrade the outbox table (idempotent)",
            Command::Stats => "print the number of events per status (exact, a full scan)",
            Command::Status => "counts, due backlog, lag, in flight, per type; a check",
            Command::DeadList => "list dead events, newest first",
            Command::DeadShow => "show one event, every column",
            Command::DeadRetry => "requeue dead events (attempts reset)",
            Command::DeadPurge => "delete dead events",
            Command::Prune => "delete (or --archive) done events, in batches",
        }
    }

    /// As typed: `dead retry`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Migrate => "migrate",
            Command::Stats => "stats",
            Command::Status => "status",
            Command::DeadList => "dead list",
            Command::DeadShow => "dead show",
            Command::DeadRetry => "dead retry",
            Command::DeadPurge => "dead purge",
            Command::Prune => "prune",
        }
    }

    /// The command options (`Scope::Command`) it takes.
    pub fn options(self) -> &'static [&'static Flag] {
        use defs::*;
        const SELECT: &[&Flag] = &[&TYPE, &AGGREGATE, &SINCE, &ALL, &DRY_RUN];
        match self {
            Command::Migrate => &[&CHECK, &PRINT_SQL],
            Command::Stats => &[],
            Command::Status => &[&JSON, &EXACT, &MAX_LAG, &MAX_DEAD, &MAX_DUE],
            Command::DeadList => &[&JSON, &TYPE, &AGGREGATE, &SINCE, &LIMIT],
            Command::DeadShow => &[&JSON],
            Command::DeadRetry => SELECT,
            Command::DeadPurge => &[&TYPE, &AGGREGATE, &SINCE, &ALL, &DRY_RUN, &YES],
            Command::Prune => &[&OLDER_THAN, &ARCHIVE, &DRY_RUN],
        }
    }

    /// Whether it takes positional arguments (event ids).
    pub fn takes_ids(self) -> bool {
        matches!(
            self,
            Command::DeadShow | Command::DeadRetry | Command::DeadPurge
        )
    }
}

/// Flag values exactly as given (None = not given).
#[derive(Clone, Debug, Default)]
pub struct RawArgs {
    /// `(name, value)` for the flags that take one value, e.g. `("batch-size", "20")`.
    pub values: Vec<(&'static str, String)>,
    pub routes: Vec<String>,
    pub drain: bool,
    /// The names of the other switches given (`fail-on-dead`, `json`, ...).
    pub switches: Vec<&'static str>,
    /// An admin command's event ids (`dead retry 17 18`), checked by [`event_id`].
    pub ids: Vec<i64>,
}

impl RawArgs {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the switch `name` (without dashes) was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    /// Records `flag` as given with `text` where `read_flags` puts it (a switch is given when
    /// `text` is `true`; `--route` adds one route): how a worker takes back the flags its
    /// supervisor resolved.
    pub fn give(&mut self, flag: &Flag, text: &str) {
        match flag.kind {
            Kind::Whole { .. } | Kind::Secs { .. } | Kind::Choice(_) | Kind::Text => {
                self.values.push((flag.name(), text.to_string()))
            }
            Kind::Routes => self.routes.push(text.to_string()),
            Kind::Switch if flag.key == DRAIN.key => self.drain = text == "true",
            Kind::Switch => {
                if text == "true" {
                    self.switches.push(flag.name());
                }
            }
            Kind::Info => {}
        }
    }

    /// The command options given (by key), in table order.
    fn command_options(&self) -> impl Iterator<Item = &'static Flag> + '_ {
        FLAGS.iter().filter(|f| {
            f.is_command_option() && (self.get(f.name()).is_some() || self.has(f.name()))
        })
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
    let mut raw = read_flags(&mut p)?;
    if mode == Mode::Run {
        match command(&mut p)? {
            Some(Named::Admin(c)) => mode = Mode::Admin(c),
            Some(Named::Help) => mode = Mode::Help,
            Some(Named::Generate(what)) => mode = Mode::Generate(what),
            None => {}
        }
    }
    let rest = p.finish();
    match mode {
        Mode::Admin(c) if c.takes_ids() => {
            // Ids only: a flag we do not know is reported as a leftover, anything else as
            // what it is not.
            for a in rest {
                let a = a.to_string_lossy();
                let flag = a
                    .strip_prefix('-')
                    .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_digit()));
                if flag {
                    return Err(leftover(&a));
                }
                raw.ids.push(event_id(c, &a)?);
            }
        }
        _ => {
            if let Some(first) = rest.first() {
                return Err(leftover(&first.to_string_lossy()));
            }
        }
    }
    check_command_options(mode, &raw)?;
    check_choices(&raw)?;
    if matches!(mode, Mode::Generate(_)) && raw_given(&raw) {
        return Err(usage("`generate` takes no options".into()));
    }
    Ok((mode, raw))
}

/// A choice flag given on the command line takes one of its words, whichever the mode (an
/// admin command that does not read it refuses a wrong word too); its variable is checked
/// where it is read.
fn check_choices(raw: &RawArgs) -> Result<()> {
    for f in FLAGS.iter().filter(|f| f.choices().is_some()) {
        if let Some(v) = raw.get(f.name()) {
            f.choice(f.key, v)?;
        }
    }
    Ok(())
}

/// Whether any flag was given.
fn raw_given(raw: &RawArgs) -> bool {
    !raw.values.is_empty() || !raw.routes.is_empty() || raw.drain || !raw.switches.is_empty()
}

/// What the first positional arguments name: `help`, `generate WHAT`, or an admin command.
enum Named {
    Help,
    Generate(generate::What),
    Admin(Command),
}

/// The command named by the first positional arguments, if any.
fn command(p: &mut pico_args::Arguments) -> Result<Option<Named>> {
    let mut next = || p.subcommand().map_err(|e| usage(e.to_string()));
    let c = match next()?.as_deref() {
        None => return Ok(None),
        Some("help") => return Ok(Some(Named::Help)),
        Some("generate") => {
            let what = next()?;
            return match what.as_deref().and_then(generate::What::parse) {
                Some(w) => Ok(Some(Named::Generate(w))),
                None => Err(usage(format!(
                    "`generate` needs one of: {}",
                    generate::What::NAMES.join(", ")
                ))),
            };
        }
        Some("migrate") => Command::Migrate,
        Some("stats") => Command::Stats,
        Some("status") => Command::Status,
        Some("prune") => Command::Prune,
        Some("dead") => match next()?.as_deref() {
            Some("list") => Command::DeadList,
            Some("show") => Command::DeadShow,
            Some("retry") => Command::DeadRetry,
            Some("purge") => Command::DeadPurge,
            _ => {
                return Err(usage(
                    "`dead` needs one of: list, show, retry, purge".into(),
                ))
            }
        },
        // Not echoed: a misplaced DSN or password must not reach a terminal or a log.
        Some(_) => return Err(usage(
            "unexpected argument: commands are migrate, stats, status, dead, prune, help, generate; \
             the DSN goes in --dsn"
                .into(),
        )),
    };
    Ok(Some(Named::Admin(c)))
}

/// A command option given to the wrong command (or to none) is an error, not ignored.
fn check_command_options(mode: Mode, raw: &RawArgs) -> Result<()> {
    let allowed: &[&Flag] = match mode {
        Mode::Admin(c) => c.options(),
        _ => &[],
    };
    match raw
        .command_options()
        .find(|f| !allowed.iter().any(|a| a.key == f.key))
    {
        None => Ok(()),
        Some(f) => Err(usage(match mode {
            Mode::Admin(c) => format!("{} is not an option of `{}`", f.key, c.name()),
            _ => format!("{} is an option of an admin command ({})", f.key, f.help),
        })),
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
    // `--drain` has a field of its own; the other switches are listed by name.
    raw.drain = p.contains(DRAIN.key);
    for f in FLAGS
        .iter()
        .filter(|f| f.kind == Kind::Switch && f.key != DRAIN.key)
    {
        if p.contains(f.key) {
            raw.switches.push(f.name());
        }
    }
    Ok(raw)
}

/// A positional argument of `cmd` as an event id: a whole number from 1 up. A refusal shows
/// the argument (escaped), unless it could be a DSN or a password put in the wrong place.
fn event_id(cmd: Command, s: &str) -> Result<i64> {
    let why = match s.parse::<i64>() {
        Ok(id) if id >= 1 => return Ok(id),
        Ok(_) => "is not an event id: ids are 1 or more",
        Err(_) if s.is_empty() => "is not an event id: the argument is empty",
        Err(_) if s.bytes().all(|b| b.is_ascii_digit()) => {
            "is out of range: event ids go up to 9223372036854775807"
        }
        Err(_) if s.split(',').all(|p| p.trim().parse::<i64>().is_ok()) => {
            "is not an event id: give several ids as separate arguments (`17 18`)"
        }
        Err(_) => "is not an event id (a whole number)",
    };
    let shown = if s.len() > 40 || s.contains(['=', '@', ':', '/']) {
        "an argument (not shown: it may be a DSN)".to_string()
    } else {
        format!("`{}`", crate::log::escape_controls(s))
    };
    Err(usage(format!("{}: {shown} {why}", cmd.name())))
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
            Mode::Admin(Command::Migrate)
        );
        assert_eq!(
            parse(args(&["--worker-index", "3"])).unwrap().0,
            Mode::Worker(3)
        );
    }

    #[test]
    fn admin_commands_take_their_options_and_ids() {
        let (m, r) = parse(args(&["dead", "retry", "17", "18", "--dry-run", "--dsn=x"])).unwrap();
        assert_eq!(m, Mode::Admin(Command::DeadRetry));
        assert_eq!(r.ids, vec![17, 18]);
        assert!(r.has("dry-run") && !r.has("yes"));
        let (m, r) = parse(args(&["status", "--json", "--max-lag", "60"])).unwrap();
        assert_eq!(m, Mode::Admin(Command::Status));
        assert!(r.has("json"));
        assert_eq!(r.get("max-lag"), Some("60"));
        let (m, r) = parse(args(&["--fail-on-dead", "--drain"])).unwrap();
        assert_eq!(m, Mode::Run);
        assert!(r.has("fail-on-dead") && r.drain);
        for (a, expect) in [
            (&["--json"][..], "--json is an option of an admin command"),
            (
                &["status", "--yes"][..],
                "--yes is not an option of `status`",
            ),
            (&["dead"][..], "`dead` needs one of"),
            (
                &["dead", "list", "17"][..],
                "unexpected argument: a positional",
            ),
            (
                &["dead", "retry", "x"][..],
                "dead retry: `x` is not an event id (a whole number)",
            ),
            (&["prune", "--bogus"][..], "unexpected argument: --bogus"),
        ] {
            let e = parse(args(a)).unwrap_err().to_string();
            assert!(e.starts_with(expect), "{a:?}: {e}");
        }
    }

    #[test]
    fn bad_event_ids_are_named_with_the_reason() {
        for (id, expect) in [
            (
                "abc",
                "dead retry: `abc` is not an event id (a whole number)",
            ),
            (
                "99999999999999999999",
                "dead retry: `99999999999999999999` is out of range: event ids go up to \
                 9223372036854775807",
            ),
            (
                "1,2",
                "dead retry: `1,2` is not an event id: give several ids as separate arguments",
            ),
            (
                "",
                "dead retry: `` is not an event id: the argument is empty",
            ),
            ("0", "dead retry: `0` is not an event id: ids are 1 or more"),
            (
                "-5",
                "dead retry: `-5` is not an event id: ids are 1 or more",
            ),
            (
                "1\n2",
                "dead retry: `1\\n2` is not an event id (a whole number)",
            ),
            ("é", "dead retry: `é` is not an event id (a whole number)"),
            ("-x", "unexpected argument: -x"),
            (
                "postgres://u:hunter2@h/db",
                "dead retry: an argument (not shown: it may be a DSN) is not an event id",
            ),
        ] {
            let e = parse(args(&["dead", "retry", "1", id]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(expect), "{id:?}: {e}");
        }
        let e = parse(args(&["dead", "show", "9223372036854775808"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dead show: `9223372036854775808` is out of range"),
            "{e}"
        );
        let (_, r) = parse(args(&["dead", "show", "9223372036854775807"])).unwrap();
        assert_eq!(r.ids, vec![i64::MAX]);
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
