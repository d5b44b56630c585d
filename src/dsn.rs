//! Connection strings: libpq `key=value` strings and `postgres://` URIs, the libpq environment
//! (PGHOST, PGPASSWORD, ...) and `~/.pgpass` as fallbacks, and TLS with libpq's `sslmode`
//! meanings, built on native-tls.
//!
//! Invariant: the password never leaves this module except inside the driver's `Config` and
//! `to_conninfo()` (used only for the pipe that hands configuration to worker children).
//! `redacted()` is the only form that may be logged, and every error names a parameter,
//! never a value.

use crate::connect::Connector;
use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Parameters we pass to the driver as they are.
const DRIVER_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "options",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "tcp_user_timeout",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];
/// Parameters this module implements itself (TLS).
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

/// A parsed, complete set of connection parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    params: Vec<(String, String)>,
}

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
        let params = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            parse_uri(text)?
        } else {
            parse_keyword_value(text)?
        };
        let dsn = Dsn { params };
        dsn.validate()?;
        Ok(dsn)
    }

    /// Parses `text` (may be empty) and fills what it leaves out from the libpq environment,
    /// `~/.pgpass` and libpq's defaults, as `psql` would.
    pub fn resolve(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Dsn> {
        let mut dsn = if text.trim().is_empty() {
            Dsn { params: Vec::new() }
        } else {
            Dsn::parse(text)?
        };
        for (key, var) in ENV_FALLBACKS {
            if dsn.get(key).is_none() {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    dsn.set(key, v);
                }
            }
        }
        if dsn.get("user").is_none() {
            let user = env("USER")
                .or_else(|| env("LOGNAME"))
                .unwrap_or_else(|| "postgres".into());
            dsn.set("user", user);
        }
        if dsn.get("dbname").is_none() {
            let user = dsn.get("user").unwrap_or_default().to_string();
            dsn.set("dbname", user);
        }
        if dsn.get("host").is_none() && dsn.get("hostaddr").is_none() {
            let sock = ["/var/run/postgresql", "/tmp"]
                .into_iter()
                .find(|d| std::path::Path::new(d).join(".s.PGSQL.5432").exists());
            dsn.set("host", sock.unwrap_or("localhost").to_string());
        }
        if dsn.get("application_name").is_none() {
            dsn.set("application_name", "dispatchbox".into());
        }
        if dsn.get("password").is_none() {
            if let Some(pw) = pgpass_lookup(&dsn, env) {
                dsn.set("password", pw);
            }
        }
        dsn.validate()?;
        Ok(dsn)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        self.params.retain(|(k, _)| k != key);
        self.params.push((key.to_string(), value));
    }

    pub fn password(&self) -> Option<&str> {
        self.get("password")
    }

    /// For tests and diagnostics: a copy with another database name.
    pub fn with_dbname(&self, db: &str) -> Dsn {
        let mut d = self.clone();
        d.set("dbname", db.to_string());
        d
    }

    fn validate(&self) -> Result<()> {
        for (k, _) in &self.params {
            if !DRIVER_KEYS.contains(&k.as_str()) && !TLS_KEYS.contains(&k.as_str()) {
                // Echo only names that look like parameter names, never a stray value.
                let shown =
                    if k.len() <= 40 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        format!(" `{k}`")
                    } else {
                        String::new()
                    };
                return Err(Error::Usage(format!(
                    "invalid DSN: unknown parameter{shown}"
                )));
            }
        }
        self.ssl_mode()?;
        // Let the driver check the rest (ports, timeouts, ...) now, at start-up.
        self.driver_config()?;
        Ok(())
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
    /// worker child over a pipe, never for logs or argv.
    pub fn to_conninfo(&self) -> String {
        join_conninfo(self.params.iter())
    }

    /// A loggable description: every parameter except the password.
    pub fn redacted(&self) -> String {
        join_conninfo(self.params.iter().filter(|(k, _)| k != "password"))
    }

    fn driver_config(&self) -> Result<postgres::Config> {
        let mut params: Vec<(String, String)> = self
            .params
            .iter()
            .filter(|(k, _)| DRIVER_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        // Only `hostaddr`: libpq connects to it (and TLS checks the certificate against the
        // address); the driver needs a host name for TLS, so give it the address.
        if self.get("host").is_none() {
            if let Some(addr) = self.get("hostaddr") {
                params.push(("host".into(), addr.to_string()));
            }
        }
        let conninfo = join_conninfo(params.iter());
        let mut cfg = postgres::Config::from_str(&conninfo).map_err(|e| {
            // The driver's parse errors name the option, never its value.
            Error::Usage(format!("invalid DSN: {}", crate::error::describe_pg(&e)))
        })?;
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

fn join_conninfo<'a>(params: impl Iterator<Item = &'a (String, String)>) -> String {
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
fn parse_keyword_value(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // The stray word is not echoed: it may be a password.
            let after = if DRIVER_KEYS.contains(&key.as_str()) || TLS_KEYS.contains(&key.as_str()) {
                format!(" after `{key}`")
            } else {
                String::new()
            };
            return Err(Error::Usage(format!(
                "invalid DSN: expected `=`{after} (use key=value pairs or a postgres:// URI)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
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
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(Error::Usage("invalid DSN: empty parameter name".into()));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `postgres[ql]://[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`
fn parse_uri(text: &str) -> Result<Vec<(String, String)>> {
    let rest = text.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostlist = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    push_nonempty(&mut out, "user", decode(u, "user")?);
                    out.push(("password".into(), decode(p, "password")?));
                }
                None => push_nonempty(&mut out, "user", decode(userinfo, "user")?),
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for item in hostlist.split(',') {
            let (h, p) = if let Some(stripped) = item.strip_prefix('[') {
                let end = stripped
                    .find(']')
                    .ok_or_else(|| Error::Usage("invalid DSN: unclosed `[` in host".into()))?;
                let after = &stripped[end + 1..];
                (&stripped[..end], after.strip_prefix(':'))
            } else {
                match item.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (item, None),
                }
            };
            hosts.push(decode(h, "host")?);
            ports.push(p.unwrap_or("").to_string());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            let ports: Vec<_> = ports
                .into_iter()
                .map(|p| if p.is_empty() { "5432".into() } else { p })
                .collect();
            out.push(("port".into(), ports.join(",")));
        }
    }
    // `postgres://app:pa/ss@host/db`: an unencoded `/` in the password would turn the rest
    // into the database name, and that is logged. Refuse it.
    if path.is_some_and(|p| p.contains('@')) {
        return Err(Error::Usage(
            "invalid DSN: `@` after the host part; percent-encode `/`, `@` and `:` in the user name and password (%2F, %40, %3A)".into(),
        ));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), decode(db, "dbname")?));
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::Usage("invalid DSN: URI query parameters must be key=value".into())
            })?;
            let k = decode(k, "a parameter name")?;
            let v = decode(v, &k)?;
            out.retain(|(key, _)| *key != k);
            out.push((k, v));
        }
    }
    Ok(out)
}

fn push_nonempty(out: &mut Vec<(String, String)>, key: &str, value: String) {
    if !value.is_empty() {
        out.push((key.into(), value));
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
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass(r"h:5432:db:u:pa\:ss:word"),
            vec!["h", "5432", "db", "u", "pa:ss:word"]
        );
    }
}
