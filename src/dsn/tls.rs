//! TLS with libpq's meanings, built on native-tls: `sslmode` (`prefer` and `require`
//! encrypt without checking, `require` with a root certificate and `verify-ca` check the
//! chain, `verify-full` the host name too), `sslrootcert` (a file, `system`, or
//! `~/.postgresql/root.crt`), client certificates (`sslcert` + `sslkey`), and the
//! [`Connector`] a DSN makes.
//!
//! The system's roots (`sslrootcert=system`, `verify-*` without a root file, webhooks) are
//! found by native-tls (its `openssl-probe`): `SSL_CERT_FILE`, else the first bundle of
//! Debian/RHEL/SUSE/Alpine that exists, plus `SSL_CERT_DIR` and `/etc/ssl/certs`,
//! `/etc/pki/tls/certs`; and OpenSSL's own default paths. So a static binary with OpenSSL
//! built in (whose default paths point into its build's `/usr/local/ssl`) finds them too.
//! A variable naming a path that does not exist is skipped silently by both:
//! [`cert_env_warning`] says so at start-up.
//!
//! Invariant: certificate files are read, and a bad one reported, before any connection.

use super::Dsn;
use crate::config_file::{self as file, read_config_file, Refusal, PEM_FILE};
use crate::connect::Connector;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Dsn {
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
        // Built on first use (see `lazy_tls`): with `prefer` and a server without TLS, never.
        let tls = super::lazy_tls::LazyTls::new(self.tls_builder(mode)?);
        Ok(Connector::new(config, Some(tls)))
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
                        let (pem, _) = read_config_file("sslrootcert", Path::new(path), PEM_FILE)?;
                        let certs = pem_blocks(&pem, "CERTIFICATE");
                        if certs.is_empty() {
                            return Err(file::usage(
                                "sslrootcert",
                                Path::new(path),
                                &"holds no PEM certificate",
                            ));
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
            let (cert_pem, _) = read_config_file("sslcert", Path::new(cert), PEM_FILE)?;
            let (key_pem, _) = read_config_file("sslkey", Path::new(key), PEM_FILE)?;
            let id = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem)
                .map_err(|e| Error::Usage(format!("bad client certificate or key: {e}")))?;
            b.identity(id);
        }
        Ok(b)
    }
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

/// The start-up warning when `SSL_CERT_FILE` or `SSL_CERT_DIR` is set to a path that does not
/// exist (for `SSL_CERT_DIR`, OpenSSL's `:`-separated list: when none of its entries does);
/// None when both are unset, empty or fine. One line for both.
pub(crate) fn cert_env_warning(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let exists = |p: &str| std::path::Path::new(p).exists();
    let mut missing = Vec::new();
    if let Some(file) = env("SSL_CERT_FILE").filter(|f| !f.is_empty() && !exists(f)) {
        missing.push(format!("SSL_CERT_FILE={file}"));
    }
    if let Some(dir) = env("SSL_CERT_DIR").filter(|d| !d.is_empty()) {
        if !dir.split(':').any(|d| !d.is_empty() && exists(d)) {
            missing.push(format!("SSL_CERT_DIR={dir}"));
        }
    }
    if missing.is_empty() {
        return None;
    }
    let verb = if missing.len() == 1 { "does" } else { "do" };
    Some(format!(
        "{} {verb} not exist: ignored; the usual system CA bundle paths are tried instead \
         (README, \"CA certificates\")",
        missing.join(" and ")
    ))
}

/// `SSL_CERT_FILE` when it names something other than a certificate bundle: OpenSSL opens it
/// itself when a connector is built, and would wait for ever on a FIFO or read `/dev/zero`
/// without end. Checked by its path (not opened); a missing one is [`cert_env_warning`]'s.
pub(crate) fn check_cert_env(env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let Some(path) = env("SSL_CERT_FILE").filter(|f| !f.is_empty()) else {
        return Ok(());
    };
    let path = Path::new(&path);
    match file::check_path(path, PEM_FILE) {
        Ok(()) | Err(Refusal::Io(_)) => Ok(()),
        Err(r) => Err(file::usage("SSL_CERT_FILE", path, &r)),
    }
}

fn home_file(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn require_with_root_cert_verifies_like_libpq() {
        let d = Dsn::parse("host=h sslmode=require sslrootcert=/x").unwrap();
        assert_eq!(d.ssl_mode().unwrap(), SslMode::VerifyCa);
        let d = Dsn::parse("host=h").unwrap();
        assert_eq!(d.ssl_mode().unwrap(), SslMode::Prefer);
    }

    #[test]
    fn cert_env_warning_names_only_paths_that_do_not_exist() {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap().to_string();
        let vars = |file: &str, certs: &str| {
            let (file, certs) = (file.to_string(), certs.to_string());
            move |k: &str| match k {
                "SSL_CERT_FILE" => Some(file.clone()).filter(|v| v != "-"),
                "SSL_CERT_DIR" => Some(certs.clone()).filter(|v| v != "-"),
                _ => None,
            }
        };
        assert_eq!(cert_env_warning(&vars("-", "-")), None);
        assert_eq!(cert_env_warning(&vars("", "")), None);
        assert_eq!(cert_env_warning(&vars(&dir, &dir)), None);
        // A `:` list is fine when one entry exists.
        let list = format!("/nonexistent/a:{dir}");
        assert_eq!(cert_env_warning(&vars("-", &list)), None);
        let w = cert_env_warning(&vars("/nonexistent/ca.pem", "-")).unwrap();
        assert!(w.starts_with("SSL_CERT_FILE=/nonexistent/ca.pem does not exist: ignored"));
        let w = cert_env_warning(&vars("/nonexistent/ca.pem", "/no/a:/no/b")).unwrap();
        assert!(w.starts_with(
            "SSL_CERT_FILE=/nonexistent/ca.pem and SSL_CERT_DIR=/no/a:/no/b do not exist"
        ));
        assert!(!w.contains('\n'));
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
}
