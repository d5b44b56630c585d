//! Connection strings: libpq `key=value` strings and `postgres://` URIs, read by the driver's
//! own parser (`postgres::Config`), with what libpq has and the driver lacks layered on top:
//! the libpq environment (PGHOST, PGPASSWORD, ...) and `~/.pgpass` as fallbacks, TLS with
//! libpq's `sslmode` meanings, `sslrootcert=system` and client certificates (native-tls), and
//! our defaults (application_name, connect and keepalive timeouts).
//!
//! Invariant: the password never leaves this module except inside the driver's `Config` and
//! `to_conninfo()` (used only for the pipe that hands configuration to worker children).
//! `redacted()` is the only form that may be logged, and every error names a parameter,
//! never a value.

use crate::connect::Connector;
use crate::error::{Error, Result};
use postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs,
};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The parameters the driver does not know; a pre-pass takes them out and this module
/// implements them (TLS). `sslmode` is always ours: the driver lacks `allow`, `verify-ca`
/// and `verify-full`.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq environment variables used when the DSN does not set the parameter.
const ENV_FALLBACKS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed set of connection parameters.
#[derive(Clone)]
pub struct Dsn {
    /// As the driver parsed it; its TLS mode is set from ours when connecting.
    config: postgres::Config,
    /// Every parameter set, in libpq form: the driver's (read back from its getters), then
    /// the TLS ones. What `get`, `redacted` and `to_conninfo` show.
    params: Vec<(&'static str, String)>,
}

impl PartialEq for Dsn {
    fn eq(&self, other: &Dsn) -> bool {
        self.params == other.params
    }
}

impl Eq for Dsn {}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({})", self.redacted())
    }
}

impl Dsn {
    /// Parses a DSN without consulting the environment (for tests and for the child side of
    /// the configuration pipe, which receives a complete DSN).
    pub fn parse(text: &str) -> Result<Dsn> {
        let text = text.trim();
        let mut tls = Vec::new();
        let for_driver = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            take_tls_from_uri(text, &mut tls)?
        } else {
            take_tls_from_keyword_value(text, &mut tls)?
        };
        let config = postgres::Config::from_str(&for_driver).map_err(|e| parse_error(&e))?;
        if config
            .get_password()
            .is_some_and(|p| std::str::from_utf8(p).is_err())
        {
            return Err(Error::Usage("invalid DSN: password is not UTF-8".into()));
        }
        let mut params = driver_params(&config);
        params.extend(tls);
        let dsn = Dsn { config, params };
        dsn.ssl_mode()?;
        Ok(dsn)
    }

    /// Parses `text` (may be empty) and fills what it leaves out from the libpq environment,
    /// `~/.pgpass` and libpq's defaults, as `psql` would.
    pub fn resolve(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Dsn> {
        let mut dsn = Dsn::parse(text)?;
        for (key, var) in ENV_FALLBACKS {
            if dsn.get(key).is_none() {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    dsn = dsn.with(key, &v)?;
                }
            }
        }
        if dsn.get("user").is_none() {
            let user = env("USER")
                .or_else(|| env("LOGNAME"))
                .unwrap_or_else(|| "postgres".into());
            dsn = dsn.with("user", &user)?;
        }
        if dsn.get("dbname").is_none() {
            let user = dsn.get("user").unwrap_or_default().to_string();
            dsn = dsn.with("dbname", &user)?;
        }
        if dsn.get("host").is_none() && dsn.get("hostaddr").is_none() {
            let sock = ["/var/run/postgresql", "/tmp"]
                .into_iter()
                .find(|d| std::path::Path::new(d).join(".s.PGSQL.5432").exists());
            dsn = dsn.with("host", sock.unwrap_or("localhost"))?;
        }
        if dsn.get("application_name").is_none() {
            dsn = dsn.with("application_name", "dispatchbox")?;
        }
        if dsn.get("password").is_none() {
            if let Some(pw) = pgpass_lookup(&dsn, env) {
                dsn = dsn.with("password", &pw)?;
            }
        }
        Ok(dsn)
    }

    /// This DSN with `key` set, read by the same parser (so an environment variable is
    /// checked like the DSN). Only for a key that is not set yet, or one the driver keeps a
    /// single value of (`dbname`, `password`, ...): hosts and ports would add up.
    fn with(&self, key: &str, value: &str) -> Result<Dsn> {
        Dsn::parse(&format!(
            "{} {key}={}",
            self.to_conninfo(),
            quote_value(value)
        ))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn password(&self) -> Option<&str> {
        self.get("password")
    }

    /// For tests and diagnostics: a copy with another database name.
    pub fn with_dbname(&self, db: &str) -> Result<Dsn> {
        self.with("dbname", db)
    }

    pub fn ssl_mode(&self) -> Result<SslMode> {
        match self.get("sslmode").unwrap_or("prefer") {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" if self.get("sslrootcert").is_some() => Ok(SslMode::VerifyCa),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(Error::Usage(
                "invalid DSN: sslmode must be disable, allow, prefer, require, verify-ca or verify-full"
                    .into(),
            )),
        }
    }

    /// The DSN in libpq key=value form, password included: only for handing the DSN to a
    /// worker child over a pipe, never for logs or argv. `Dsn::parse` reads it back as is.
    pub fn to_conninfo(&self) -> String {
        join_conninfo(self.params.iter())
    }

    /// A loggable description: every parameter except the password.
    pub fn redacted(&self) -> String {
        join_conninfo(self.params.iter().filter(|(k, _)| *k != "password"))
    }

    /// The driver's configuration with our defaults for what the DSN leaves out.
    fn driver_config(&self) -> Result<postgres::Config> {
        let mut cfg = self.config.clone();
        // Only `hostaddr`: libpq connects to it (and TLS checks the certificate against the
        // address); the driver needs a host name for TLS, so give it the address.
        if cfg.get_hosts().is_empty() {
            for addr in self.config.get_hostaddrs() {
                cfg.host(&addr.to_string());
            }
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        // Notice a dead peer or a partition within about a minute instead of the kernel's
        // defaults (two hours of idle, then ~15 minutes of retransmissions), unless the DSN
        // says otherwise: idle 30 s + 3 probes 10 s apart; unacknowledged data 60 s.
        if self.get("keepalives_idle").is_none() {
            cfg.keepalives_idle(Duration::from_secs(30));
        }
        if self.get("keepalives_interval").is_none() {
            cfg.keepalives_interval(Duration::from_secs(10));
        }
        if self.get("keepalives_retries").is_none() {
            cfg.keepalives_retries(3);
        }
        if self.get("tcp_user_timeout").is_none() {
            cfg.tcp_user_timeout(Duration::from_secs(60));
        }
        cfg.ssl_mode(match self.ssl_mode()? {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        Ok(cfg)
    }

    /// Builds what `connect` needs; fails on unreadable certificate files.
    pub fn connector(&self) -> Result<Connector> {
        let config = self.driver_config()?;
        let mode = self.ssl_mode()?;
        let only_sockets = config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, postgres::config::Host::Tcp(_)))
            && config.get_hostaddrs().is_empty();
        // libpq ignores sslmode on unix sockets (there is no TLS there); so do we.
        if mode == SslMode::Disable || only_sockets {
            let mut config = config;
            config.ssl_mode(postgres::config::SslMode::Disable);
            return Ok(Connector::new(config, None));
        }
        let tls = self
            .tls_builder(mode)?
            .build()
            .map_err(|e| Error::Usage(format!("cannot set up TLS: {e}")))?;
        Ok(Connector::new(
            config,
            Some(postgres_native_tls::MakeTlsConnector::new(tls)),
        ))
    }

    /// Checks everything `connector` would, reading the certificate files, without building
    /// the TLS context (which loads the system's CA bundle): for the supervisor's start-up.
    pub fn check(&self) -> Result<()> {
        self.driver_config()?;
        self.tls_builder(self.ssl_mode()?).map(|_| ())
    }

    /// The TLS settings for `mode`, with the root and client certificates read from disk.
    fn tls_builder(&self, mode: SslMode) -> Result<native_tls::TlsConnectorBuilder> {
        let mut b = native_tls::TlsConnector::builder();
        match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                // libpq's prefer/require encrypt but do not check the certificate.
                b.danger_accept_invalid_certs(true);
                b.danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                if mode == SslMode::VerifyCa {
                    b.danger_accept_invalid_hostnames(true);
                }
                let root = match self.get("sslrootcert") {
                    Some(p) => Some(p.to_string()),
                    None => home_file(".postgresql/root.crt")
                        .filter(|p| p.exists())
                        .map(|p| p.to_string_lossy().into_owned()),
                };
                match root.as_deref() {
                    // PostgreSQL 16's spelling for "the system's trusted roots".
                    Some("system") => {}
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            Error::Usage(format!("cannot read sslrootcert file {path}: {e}"))
                        })?;
                        let certs = pem_blocks(&pem, "CERTIFICATE");
                        if certs.is_empty() {
                            return Err(Error::Usage(format!(
                                "sslrootcert file {path} holds no PEM certificate"
                            )));
                        }
                        b.disable_built_in_roots(true);
                        for c in certs {
                            let cert = native_tls::Certificate::from_pem(&c).map_err(|e| {
                                Error::Usage(format!("bad certificate in {path}: {e}"))
                            })?;
                            b.add_root_certificate(cert);
                        }
                    }
                    // No root file: the system's roots (where libpq would refuse to connect).
                    None => {}
                }
            }
        }
        if let (Some(cert), Some(key)) = (self.get("sslcert"), self.get("sslkey")) {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| Error::Usage(format!("cannot read sslcert file {cert}: {e}")))?;
            let key_pem = std::fs::read(key)
                .map_err(|e| Error::Usage(format!("cannot read sslkey file {key}: {e}")))?;
            let id = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem)
                .map_err(|e| Error::Usage(format!("bad client certificate or key: {e}")))?;
            b.identity(id);
        }
        Ok(b)
    }
}

fn join_conninfo<'a>(params: impl Iterator<Item = &'a (&'static str, String)>) -> String {
    let mut out = String::new();
    for (k, v) in params {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&quote_value(v));
    }
    out
}

fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// libpq keyword/value syntax: `key = value` pairs separated by white space; values may be
/// single-quoted; a backslash escapes the next character.

/// What the driver holds, as libpq parameters, read back from its getters. Values equal to
/// the driver's defaults and empty values are left out (libpq treats both as not set).
fn driver_params(c: &postgres::Config) -> Vec<(&'static str, String)> {
    let list = |items: Vec<String>| (!items.is_empty()).then(|| items.join(","));
    let secs = |d: &Duration| d.as_secs().to_string();
    let hosts = c.get_hosts().iter().map(|h| match h {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) => dir.to_string_lossy().into_owned(),
    });
    let idle = c.get_keepalives_idle();
    let fields = [
        ("host", list(hosts.collect())),
        (
            "hostaddr",
            list(c.get_hostaddrs().iter().map(|a| a.to_string()).collect()),
        ),
        (
            "port",
            list(c.get_ports().iter().map(|p| p.to_string()).collect()),
        ),
        ("user", c.get_user().map(str::to_string)),
        (
            "password",
            c.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        ),
        ("dbname", c.get_dbname().map(str::to_string)),
        ("options", c.get_options().map(str::to_string)),
        (
            "application_name",
            c.get_application_name().map(str::to_string),
        ),
        ("connect_timeout", c.get_connect_timeout().map(secs)),
        ("tcp_user_timeout", c.get_tcp_user_timeout().map(secs)),
        ("keepalives", (!c.get_keepalives()).then(|| "0".to_string())),
        (
            "keepalives_idle",
            (idle != postgres::Config::new().get_keepalives_idle()).then(|| secs(&idle)),
        ),
        (
            "keepalives_interval",
            c.get_keepalives_interval().as_ref().map(secs),
        ),
        (
            "keepalives_retries",
            c.get_keepalives_retries().map(|n| n.to_string()),
        ),
        (
            "target_session_attrs",
            match c.get_target_session_attrs() {
                TargetSessionAttrs::ReadWrite => Some("read-write".to_string()),
                TargetSessionAttrs::ReadOnly => Some("read-only".to_string()),
                _ => None,
            },
        ),
        (
            "channel_binding",
            match c.get_channel_binding() {
                ChannelBinding::Disable => Some("disable".to_string()),
                ChannelBinding::Require => Some("require".to_string()),
                _ => None,
            },
        ),
        (
            "load_balance_hosts",
            match c.get_load_balance_hosts() {
                LoadBalanceHosts::Random => Some("random".to_string()),
                _ => None,
            },
        ),
        (
            "sslnegotiation",
            match c.get_ssl_negotiation() {
                SslNegotiation::Direct => Some("direct".to_string()),
                _ => None,
            },
        ),
    ];
    fields
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
}

/// Sets one of our TLS parameters (`key` is one of `TLS_KEYS`); the last one wins.
fn set_tls(tls: &mut Vec<(&'static str, String)>, key: &str, value: String) {
    if let Some(key) = TLS_KEYS.iter().find(|k| **k == key) {
        tls.retain(|(k, _)| k != key);
        tls.push((key, value));
    }
}

/// The pre-pass for `key=value` strings: takes our TLS parameters out into `tls` and returns
/// the others as written, for the driver. It reads the driver's grammar (white space around
/// `=`, values bare or single-quoted, `\` escaping the next character) and reports syntax
/// errors itself, naming only known parameters: a stray word may be a password.
fn take_tls_from_keyword_value(
    text: &str,
    tls: &mut Vec<(&'static str, String)>,
) -> Result<String> {
    let mut rest = String::new();
    let mut it = text.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Ok(rest);
        };
        while it
            .next_if(|&(_, c)| c != '=' && !c.is_whitespace())
            .is_some()
        {}
        let key = &text[start..it.peek().map_or(text.len(), |&(i, _)| i)];
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            let after = if is_parameter(key) {
                format!(" after `{key}`")
            } else {
                String::new()
            };
            return Err(Error::Usage(format!(
                "invalid DSN: expected `=`{after} (use key=value pairs or a postgres:// URI)"
            )));
        }
        if key.is_empty() {
            return Err(Error::Usage("invalid DSN: empty parameter name".into()));
        }
        skip_ws(&mut it);
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let mut closed = !quoted;
        let mut value = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| quoted || !c.is_whitespace()) {
            match c {
                '\\' => value.extend(it.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(Error::Usage(format!(
                "invalid DSN: unterminated quoted value for `{key}`"
            )));
        }
        let end = it.peek().map_or(text.len(), |&(i, _)| i);
        if TLS_KEYS.contains(&key) {
            set_tls(tls, key, value);
            continue;
        }
        // The driver refuses a bare empty value at the end; libpq takes it.
        if value.is_empty() {
            rest.push_str(&format!("{key}='' "));
        } else {
            rest.push_str(&text[start..end]);
            rest.push(' ');
        }
    }
}

/// The pre-pass for URIs: takes our TLS parameters out of the query string into `tls`.
/// The driver ends the user name and password at the first `@` anywhere in the URI; libpq and
/// we at the last `@` before the host, so the others are percent-encoded for the driver, as
/// is any `@` in the query. An `@` in the path is refused: an unencoded `/` in a password
/// would make the rest of it the database name, which is logged.
fn take_tls_from_uri(text: &str, tls: &mut Vec<(&'static str, String)>) -> Result<String> {
    let (head, query) = match text.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (text, None),
    };
    let body = head.find("://").map_or(0, |i| i + 3);
    let (authority, path) = match head[body..].find('/') {
        Some(i) => (&head[body..body + i], &head[body + i..]),
        None => (&head[body..], ""),
    };
    if path.contains('@') {
        return Err(Error::Usage(
            "invalid DSN: `@` after the host part; percent-encode `/`, `@` and `:` in the user name and password (%2F, %40, %3A)".into(),
        ));
    }
    let mut out = head[..body].to_string();
    match authority.rfind('@') {
        Some(i) => {
            out.push_str(&authority[..i].replace('@', "%40"));
            out.push_str(&authority[i..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    let mut kept = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::Usage("invalid DSN: URI query parameters must be key=value".into())
        })?;
        let key = decode(k, "a parameter name")?;
        if !TLS_KEYS.contains(&key.as_str()) {
            kept.push(pair.replace('@', "%40"));
            continue;
        }
        set_tls(tls, &key, decode(v, &key)?);
    }
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

/// The key of a driver error for an unknown option (its message names the key).
fn unknown_option(e: &postgres::Error) -> Option<String> {
    let cause = std::error::Error::source(e)?.to_string();
    let key = cause.strip_prefix("unknown option `")?.strip_suffix('`')?;
    Some(key.to_string())
}

/// Only names like these are echoed in errors: anything else may be a stray value.
fn name_like(key: &str) -> bool {
    !key.is_empty() && key.len() <= 40 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name the driver or this module knows, and so safe to echo.
fn is_parameter(key: &str) -> bool {
    name_like(key)
        && (TLS_KEYS.contains(&key)
            || postgres::Config::from_str(&format!("{key}=''"))
                .err()
                .and_then(|e| unknown_option(&e))
                .is_none())
}

/// A driver parse error as ours. The driver's messages name the option, never its value;
/// an unknown one is echoed only when it looks like a parameter name.
fn parse_error(e: &postgres::Error) -> Error {
    match unknown_option(e) {
        Some(key) if name_like(&key) => {
            Error::Usage(format!("invalid DSN: unknown parameter `{key}`"))
        }
        Some(_) => Error::Usage("invalid DSN: unknown parameter".into()),
        None => Error::Usage(format!("invalid DSN: {}", crate::error::describe_pg(e))),
    }
}

fn decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Usage(format!("invalid DSN: bad percent-encoding in {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Usage(format!("invalid DSN: {what} is not UTF-8")))
}

fn home_file(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rel))
}

/// The password for this DSN from PGPASSFILE or ~/.pgpass, as libpq finds it: the first line
/// `host:port:database:user:password` whose fields match (`*` matches anything). Like libpq,
/// a file readable by group or others is ignored.
fn pgpass_lookup(dsn: &Dsn, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = dsn.get("host").unwrap_or("localhost");
    let host = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    let port = dsn.get("port").unwrap_or("5432");
    let db = dsn.get("dbname").unwrap_or_default();
    let user = dsn.get("user").unwrap_or_default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if ok(&fields[0], host)
            && ok(&fields[1], port)
            && ok(&fields[2], db)
            && ok(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(f) = fields.last_mut() {
                        f.push(n);
                    }
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c)
                }
            }
        }
    }
    fields
}

/// The PEM blocks of one kind in a file, each re-wrapped as its own PEM document.
fn pem_blocks(pem: &[u8], label: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let block = &rest[start..start + stop + end.len()];
        out.push(format!("{block}\n").into_bytes());
        rest = &rest[start + stop + end.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn keyword_value_with_quotes_and_escapes() {
        let d = Dsn::parse(r"host=db port = 6432 dbname='my db' user=app password='it\'s secret'")
            .unwrap();
        assert_eq!(d.get("host"), Some("db"));
        assert_eq!(d.get("port"), Some("6432"));
        assert_eq!(d.get("dbname"), Some("my db"));
        assert_eq!(d.password(), Some("it's secret"));
        assert!(!d.redacted().contains("secret"));
        assert_eq!(Dsn::parse(&d.to_conninfo()).unwrap(), d);
    }

    #[test]
    fn uri_with_everything() {
        let d = Dsn::parse(
            "postgresql://app:p%40ss@db.example:6432,[::1]:7000/orders?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(d.get("user"), Some("app"));
        assert_eq!(d.password(), Some("p@ss"));
        assert_eq!(d.get("host"), Some("db.example,::1"));
        assert_eq!(d.get("port"), Some("6432,7000"));
        assert_eq!(d.get("dbname"), Some("orders"));
        assert_eq!(d.ssl_mode().unwrap(), SslMode::Require);
        assert!(!d.redacted().contains("p@ss"));
    }

    #[test]
    fn uri_with_socket_directory() {
        let d = Dsn::parse("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(d.get("host"), Some("/var/run/postgresql"));
    }

    #[test]
    fn errors_name_the_parameter_not_the_value() {
        let e = Dsn::parse("host=x password=hunter2 bogus=1").unwrap_err();
        assert_eq!(e.to_string(), "invalid DSN: unknown parameter `bogus`");
        let e = Dsn::parse("host=x password=hunter2 port=notaport").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("port"), "{e}");
        let e = Dsn::parse("host=x sslmode=sometimes").unwrap_err();
        assert!(e.to_string().contains("sslmode"), "{e}");
        let e = Dsn::parse("hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Dsn::parse("password='hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn environment_fills_gaps_but_dsn_wins() {
        let env = |k: &str| match k {
            "PGHOST" => Some("envhost".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            _ => None,
        };
        let d = Dsn::resolve("host=dsnhost", &env).unwrap();
        assert_eq!(d.get("host"), Some("dsnhost"));
        assert_eq!(d.password(), Some("envpw"));
        assert_eq!(d.get("user"), Some("envuser"));
        assert_eq!(d.get("dbname"), Some("envuser"));
        let d = Dsn::resolve("", &env).unwrap();
        assert_eq!(d.get("host"), Some("envhost"));
        let d = Dsn::resolve("host=h user=u", &no_env).unwrap();
        assert_eq!(d.get("dbname"), Some("u"));
        assert_eq!(d.password(), None);
    }

    #[test]
    fn require_with_root_cert_verifies_like_libpq() {
        let d = Dsn::parse("host=h sslmode=require sslrootcert=/x").unwrap();
        assert_eq!(d.ssl_mode().unwrap(), SslMode::VerifyCa);
        let d = Dsn::parse("host=h").unwrap();
        assert_eq!(d.ssl_mode().unwrap(), SslMode::Prefer);
    }

    #[test]
    fn an_attempt_is_bounded_per_host_plus_a_second() {
        let d = Dsn::parse("host=a,b port=1,2 connect_timeout=3 sslmode=disable").unwrap();
        let mut c = d.connector().unwrap();
        assert_eq!(c.attempt_limit(), Duration::from_secs(7));
        c.cap_attempt_timeout(Duration::from_millis(200));
        assert_eq!(c.attempt_limit(), Duration::from_secs(3));
        let d = Dsn::parse("host=a sslmode=disable").unwrap();
        assert_eq!(
            d.connector().unwrap().attempt_limit(),
            Duration::from_secs(11)
        );
    }

    #[test]
    fn options_the_driver_knows_pass_through() {
        let d = Dsn::parse("host=h sslnegotiation=direct sslmode=require target_session_attrs=read-write keepalives_idle=5").unwrap();
        assert_eq!(d.get("sslnegotiation"), Some("direct"));
        assert_eq!(d.get("target_session_attrs"), Some("read-write"));
        assert_eq!(d.get("keepalives_idle"), Some("5"));
        assert_eq!(Dsn::parse(&d.to_conninfo()).unwrap(), d);
    }

    #[test]
    fn the_pre_pass_takes_only_real_tls_parameters() {
        let d = Dsn::parse(
            r"application_name='x sslmode=verify-full' sslrootcert='/a b' host=h dbname=",
        )
        .unwrap();
        assert_eq!(d.get("application_name"), Some("x sslmode=verify-full"));
        assert_eq!(d.get("sslmode"), None);
        assert_eq!(d.get("sslrootcert"), Some("/a b"));
        assert_eq!(d.get("dbname"), None);
        assert_eq!(d.ssl_mode().unwrap(), SslMode::Prefer);
    }

    #[test]
    fn uri_at_signs_end_the_password_at_the_host() {
        let d = Dsn::parse("postgres://u:p@ss@h/db?application_name=a@b&sslrootcert=%2Fca.pem")
            .unwrap();
        assert_eq!(d.password(), Some("p@ss"));
        assert_eq!(d.get("host"), Some("h"));
        assert_eq!(d.get("application_name"), Some("a@b"));
        assert_eq!(d.get("sslrootcert"), Some("/ca.pem"));
        assert!(!d.redacted().contains("p@ss"), "{}", d.redacted());
        let e = Dsn::parse("postgres://app:pa/ss@host/db").unwrap_err();
        assert!(e.to_string().contains("percent-encode"), "{e}");
        assert!(!e.to_string().contains("ss@"), "{e}");
    }

    #[test]
    fn resolved_dsns_round_trip_through_conninfo() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGPASSWORD" => Some("it's a secret".to_string()),
            _ => None,
        };
        let d = Dsn::resolve("postgresql://app@db:6432/orders?sslrootcert=system", &env).unwrap();
        assert_eq!(d.ssl_mode().unwrap(), SslMode::VerifyFull);
        assert_eq!(d.password(), Some("it's a secret"));
        assert_eq!(d.get("application_name"), Some("dispatchbox"));
        assert!(!d.redacted().contains("secret"));
        assert_eq!(Dsn::parse(&d.to_conninfo()).unwrap(), d);
        let bad_port = |k: &str| (k == "PGPORT").then(|| "notaport".to_string());
        let e = Dsn::resolve("host=h", &bad_port).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass(r"h:5432:db:u:pa\:ss:word"),
            vec!["h", "5432", "db", "u", "pa:ss:word"]
        );
    }
}
