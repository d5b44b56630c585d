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

mod env;
mod lazy_tls;
mod syntax;
mod tls;

pub use lazy_tls::LazyTls;
pub use tls::SslMode;
pub(crate) use tls::{cert_env_warning, check_cert_env};

use crate::error::{Error, Result};
use postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslNegotiation, TargetSessionAttrs,
};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use syntax::{
    join_conninfo, parse_error, quote_value, take_tls_from_keyword_value, take_tls_from_uri,
};

/// The parameters the driver does not know; a pre-pass takes them out and this module
/// implements them (TLS). `sslmode` is always ours: the driver lacks `allow`, `verify-ca`
/// and `verify-full`.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

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
}

/// What the driver holds, as libpq parameters, read back from its getters. Values equal to
/// the driver's defaults and empty values are left out (libpq treats both as not set).
fn driver_params(c: &postgres::Config) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut put = |key: &'static str, value: Option<String>| {
        out.extend(value.filter(|v| !v.is_empty()).map(|v| (key, v)));
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.to_string_lossy().into_owned(),
        })
        .collect();
    let password = c.get_password().map(String::from_utf8_lossy);
    put("host", list(&hosts));
    put("hostaddr", list(c.get_hostaddrs()));
    put("port", list(c.get_ports()));
    put("user", c.get_user().map(String::from));
    put("password", password.map(String::from));
    put("dbname", c.get_dbname().map(String::from));
    put("options", c.get_options().map(String::from));
    put(
        "application_name",
        c.get_application_name().map(String::from),
    );
    put("connect_timeout", c.get_connect_timeout().map(secs));
    put("tcp_user_timeout", c.get_tcp_user_timeout().map(secs));
    put("keepalives", (!c.get_keepalives()).then(|| "0".into()));
    let idle = c.get_keepalives_idle();
    let default_idle = postgres::Config::new().get_keepalives_idle();
    put(
        "keepalives_idle",
        (idle != default_idle).then(|| secs(&idle)),
    );
    put(
        "keepalives_interval",
        c.get_keepalives_interval().as_ref().map(secs),
    );
    put(
        "keepalives_retries",
        c.get_keepalives_retries().map(|n| n.to_string()),
    );
    // Enumerations: the driver's default is left out ("").
    let attrs = match c.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => "read-write",
        TargetSessionAttrs::ReadOnly => "read-only",
        _ => "",
    };
    let binding = match c.get_channel_binding() {
        ChannelBinding::Disable => "disable",
        ChannelBinding::Require => "require",
        _ => "",
    };
    let random = c.get_load_balance_hosts() == LoadBalanceHosts::Random;
    let direct = c.get_ssl_negotiation() == SslNegotiation::Direct;
    put("target_session_attrs", Some(attrs.into()));
    put("channel_binding", Some(binding.into()));
    put("load_balance_hosts", random.then(|| "random".into()));
    put("sslnegotiation", direct.then(|| "direct".into()));
    out
}

/// libpq's list form: `a,b,c`.
fn list<T: ToString>(items: &[T]) -> Option<String> {
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    Some(items.join(","))
}

/// Whole seconds, as libpq's timeouts are written.
fn secs(d: &Duration) -> String {
    d.as_secs().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
