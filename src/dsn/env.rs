//! What a DSN leaves out, filled in as libpq would: the PG* environment variables, then
//! libpq's defaults (user, database, host), our application_name, and the password from
//! `~/.pgpass` (or PGPASSFILE).
//!
//! Invariant: what the DSN says always wins; environment values are read by the same parser
//! as the DSN, so a bad PGPORT fails like a bad `port=`.

use super::Dsn;
use crate::config_file::{self as file, Refusal};
use crate::error::Result;
use std::path::PathBuf;

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

impl Dsn {
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
            if let Some(pw) = pgpass_lookup(&dsn, env)? {
                dsn = dsn.with("password", &pw)?;
            }
        }
        Ok(dsn)
    }
}

/// The password for this DSN from PGPASSFILE or ~/.pgpass, as libpq finds it: the first line
/// `host:port:database:user:password` whose fields match (`*` matches anything). Like libpq,
/// a file that is missing, unreadable, not a regular file, or readable by group or others is
/// ignored; one larger than a password file may be is an error.
fn pgpass_lookup(dsn: &Dsn, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))
    else {
        return Ok(None);
    };
    let (bytes, meta) = match file::read_bounded(&path, file::PASSWORD_FILE) {
        Ok(read) => read,
        Err(r @ Refusal::TooLarge(_)) => return Err(file::usage("password file", &path, &r)),
        Err(_) => return Ok(None),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&bytes);
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
            return Ok(Some(fields[4].clone()));
        }
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsn::SslMode;

    fn no_env(_: &str) -> Option<String> {
        None
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
