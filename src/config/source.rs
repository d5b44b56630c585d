//! Where each setting comes from: the flag, else its `DISPATCHBOX_*` variable (else the
//! default), parsed and range-checked with an error that names the flag or variable to blame
//! and never echoes a DSN.

use super::Table;
use crate::cli::defs::{self, Flag, Kind};
use crate::cli::RawArgs;
use crate::config_file as file;
use crate::dsn::Dsn;
use crate::error::{Error, Result};
use crate::log::{Format, Level};
use std::time::Duration;

pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) struct Source<'a> {
    pub(super) raw: &'a RawArgs,
    pub(super) env: Env<'a>,
}

impl Source<'_> {
    /// The flag's value, else its environment variable's; with the name to blame.
    pub(super) fn get(&self, flag: &Flag) -> Option<(String, String)> {
        if let Some(v) = self.raw.get(flag.name()) {
            return Some((flag.key.to_string(), v.to_string()));
        }
        let var = flag.env_var()?;
        (self.env)(var).map(|v| (var.to_string(), v))
    }

    /// The flag's value, else its variable's, else its default (blamed on the flag).
    pub(super) fn get_or_default(&self, flag: &Flag) -> Option<(String, String)> {
        self.get(flag)
            .or_else(|| flag.default.map(|d| (flag.key.to_string(), d.to_string())))
    }

    /// A whole number in the flag's range, as `T` (which holds the whole range).
    pub(super) fn whole<T: TryFrom<i64>>(&self, flag: &Flag) -> Result<T> {
        let Some((who, v)) = self.get_or_default(flag) else {
            return Err(Error::Other(format!("{} has no default", flag.key)));
        };
        let n = flag.whole(&who, &v)?;
        T::try_from(n).map_err(|_| Error::Other(format!("{}: {n} does not fit", flag.key)))
    }

    /// One of the choice flag's words (as listed in the table), its default when not given.
    pub(super) fn choice(&self, flag: &Flag) -> Result<&'static str> {
        let Some((who, v)) = self.get_or_default(flag) else {
            return Err(Error::Other(format!("{} has no default", flag.key)));
        };
        flag.choice(&who, &v)
    }

    /// A duration in the flag's range (`0.5`, `500ms`, `2m`: see `defs::duration`); None when
    /// not given and without a default.
    pub(super) fn secs(&self, flag: &Flag) -> Result<Option<Duration>> {
        let Some((who, v)) = self.get_or_default(flag) else {
            return Ok(None);
        };
        // Range-checked (finite, at most the flag's maximum): the conversion cannot panic.
        Ok(Some(Duration::from_secs_f64(flag.duration(&who, &v)?)))
    }

    /// The `(pattern, target)` pairs of `--route` (or else the variable), and which of the
    /// two they came from.
    pub(super) fn routes(&self) -> Result<(Vec<(String, String)>, &'static str)> {
        let mut texts = self.raw.routes.clone();
        let mut source = defs::ROUTE.key;
        if let Some(var) = defs::ROUTE.env_var().filter(|_| texts.is_empty()) {
            if let Some(v) = (self.env)(var) {
                source = var;
                texts = v
                    .split([';', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
        }
        let mut routes: Vec<(String, String)> = Vec::new();
        let mut patterns: Vec<crate::handler::Pattern> = Vec::new();
        for r in &texts {
            // A URL without its pattern would split at its query: `https://h/x?token` `=` ...
            let split = r.split_once('=').filter(|(p, _)| !p.contains("://"));
            let (pattern, target) = split.ok_or_else(|| {
                Error::Usage(format!(
                    "{source} `{}`: expected PATTERN=TARGET, e.g. `order.*=stdout`",
                    crate::redact::route_target(r)
                ))
            })?;
            let p = crate::handler::Pattern::parse(pattern)
                .map_err(|e| Error::Usage(format!("{source}: {e}")))?;
            // The router keeps one route per pattern: a second one would be dropped silently.
            if patterns.contains(&p) {
                return Err(Error::Usage(format!(
                    "{source}: pattern `{p}` is given twice; give each pattern one target"
                )));
            }
            patterns.push(p);
            routes.push((pattern.trim().to_string(), target.trim().to_string()));
        }
        Ok((routes, source))
    }

    pub(super) fn drain(&self) -> Result<bool> {
        self.switch(&defs::DRAIN, self.raw.drain)
    }

    /// What every run flag resolved to, as `Config::flag_texts` keeps it: walks the flag
    /// table, so that no flag can be left out of a worker's configuration.
    pub(super) fn flag_texts(&self) -> Result<Vec<(&'static str, String)>> {
        let mut texts = Vec::new();
        for f in defs::FLAGS.iter().filter(|f| f.is_run_flag()) {
            // The DSN goes to workers resolved (libpq's variables applied, `--dsn-file` read).
            if f.key == defs::DSN.key || f.key == defs::DSN_FILE.key {
                continue;
            }
            let text = match f.kind {
                Kind::Whole { .. } | Kind::Secs { .. } | Kind::Choice(_) | Kind::Text => {
                    self.get_or_default(f).map(|(_, v)| v)
                }
                Kind::Switch => {
                    let given =
                        self.raw.has(f.name()) || (f.key == defs::DRAIN.key && self.raw.drain);
                    self.switch(f, given)?.then(|| "true".to_string())
                }
                // The routes go as their list; `--help` and `--version` are not run flags.
                Kind::Routes | Kind::Info => None,
            };
            texts.extend(text.map(|t| (f.name(), t)));
        }
        Ok(texts)
    }

    /// A switch: given, or else its variable as a boolean.
    pub(super) fn switch(&self, flag: &Flag, given: bool) -> Result<bool> {
        if given {
            return Ok(true);
        }
        let Some(var) = flag.env_var() else {
            return Ok(false);
        };
        match (self.env)(var) {
            None => Ok(false),
            Some(v) => parse_bool(&v).ok_or_else(|| {
                Error::Usage(format!(
                    "{var}: `{v}` is not a boolean (1/0, true/false, yes/no)"
                ))
            }),
        }
    }

    /// The DSN's text: `--dsn`, or the contents of `--dsn-file`, or their variables (a flag
    /// wins over a variable; the two flags, or the two variables, together are an error).
    pub(super) fn dsn_text(&self) -> Result<String> {
        let is_flag = |who: &(String, String)| who.0.starts_with("--");
        let (dsn, file) = (self.get(&defs::DSN), self.get(&defs::DSN_FILE));
        let file = match (&dsn, file) {
            (Some(d), Some(f)) if is_flag(d) == is_flag(&f) => {
                return Err(Error::Usage(format!(
                    "{} and {} are both given; give one",
                    d.0, f.0
                )))
            }
            // `--dsn` wins over DISPATCHBOX_DSN_FILE (and `--dsn-file` over DISPATCHBOX_DSN).
            (Some(d), Some(_)) if is_flag(d) => None,
            (_, f) => f,
        };
        let Some((who, path)) = file else {
            return Ok(dsn.map(|(_, v)| v).unwrap_or_default());
        };
        // The path may be shown; the contents never are.
        let path = std::path::Path::new(&path);
        let (bytes, _) = file::read_config_file(&who, path, file::DSN_FILE)?;
        let text = String::from_utf8(bytes).map_err(|_| file::usage(&who, path, &"not UTF-8"))?;
        let text = text.trim_end();
        if text.trim().is_empty() {
            return Err(file::usage(&who, path, &"empty"));
        }
        Ok(text.to_string())
    }

    pub(super) fn dsn(&self) -> Result<Dsn> {
        let text = self.dsn_text()?;
        if text.trim().is_empty()
            && !["PGHOST", "PGHOSTADDR", "PGDATABASE", "PGUSER"]
                .iter()
                .any(|v| (self.env)(v).is_some())
        {
            return Err(Error::Usage(
                "no database given: use --dsn, --dsn-file, DISPATCHBOX_DSN or the libpq variables (PGHOST, PGDATABASE, ...)"
                    .into(),
            ));
        }
        // OpenSSL opens SSL_CERT_FILE when a connection (database or webhook) is set up.
        crate::dsn::check_cert_env(self.env)?;
        Dsn::resolve(&text, self.env)
    }

    pub(super) fn table(&self) -> Result<Table> {
        match self.get_or_default(&defs::TABLE) {
            Some((who, v)) => Table::parse_for(&who, v.trim()),
            None => Table::parse(""),
        }
    }

    pub(super) fn notify(&self) -> Result<super::Notify> {
        let word = self.choice(&defs::NOTIFY)?;
        super::Notify::parse(word).ok_or_else(|| unlisted(&defs::NOTIFY, word))
    }

    pub(super) fn log_format(&self) -> Result<Format> {
        let word = self.choice(&defs::LOG_FORMAT)?;
        Format::parse(word).ok_or_else(|| unlisted(&defs::LOG_FORMAT, word))
    }

    /// `--ordered` (given: the switch was on the command line) and `--ordered-dead`.
    pub(super) fn order(&self, given: bool) -> Result<super::Order> {
        let dead_blocks = self.ordered_dead_blocks()?;
        Ok(if self.switch(&defs::ORDERED, given)? {
            super::Order::ByAggregate { dead_blocks }
        } else {
            super::Order::Unordered
        })
    }

    /// `--ordered-dead`: true for `block` (the default), false for `skip`.
    pub(super) fn ordered_dead_blocks(&self) -> Result<bool> {
        match self.choice(&defs::ORDERED_DEAD)? {
            "block" => Ok(true),
            "skip" => Ok(false),
            word => Err(unlisted(&defs::ORDERED_DEAD, word)),
        }
    }

    /// `--on-done`: keep (the default) or delete.
    pub(super) fn on_done(&self) -> Result<super::OnDone> {
        let word = self.choice(&defs::ON_DONE)?;
        super::OnDone::parse(word).ok_or_else(|| unlisted(&defs::ON_DONE, word))
    }

    /// `HOST:PORT`, checked for its shape here; the host is resolved when it is bound.
    pub(super) fn metrics_addr(&self) -> Result<Option<String>> {
        let Some((who, v)) = self.get(&defs::METRICS_ADDR) else {
            return Ok(None);
        };
        let v = v.trim();
        match v.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Some(v.to_string()))
            }
            _ => Err(Error::Usage(format!(
                "{who}: `{v}` is not HOST:PORT (e.g. 127.0.0.1:9187 or [::1]:9187)"
            ))),
        }
    }

    pub(super) fn log_level(&self) -> Result<Level> {
        let word = self.choice(&defs::LOG_LEVEL)?;
        Level::parse(word).ok_or_else(|| unlisted(&defs::LOG_LEVEL, word))
    }
}

/// A word the flag table lists and its parser does not know: the two disagree (a bug).
fn unlisted(flag: &Flag, word: &str) -> Error {
    Error::Other(format!(
        "{}: `{word}` is listed but not understood",
        flag.key
    ))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}
