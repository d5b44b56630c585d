//! The webhook settings file (`--webhook-config FILE`): per-route secrets, extra headers,
//! timeouts and CA file, which must not come from the command line (argv is visible to
//! every local user).
//!
//! ```json
//! {
//!   "https://billing.internal/hooks/orders": {
//!     "secret": "whsec_…",
//!     "headers": { "authorization": "Bearer …" },
//!     "timeout": 10,
//!     "connect_timeout": 3,
//!     "ca_file": "/etc/dispatchbox/internal-ca.pem"
//!   }
//! }
//! ```
//! Keys are route targets exactly as given in `--route`; every key must match a webhook
//! route, every field is optional, unknown fields are refused. `secret` may also be a list
//! (several signatures, for a rotation).
//!
//! Invariants: the file is refused when others may read it: no permission bits for others,
//! and group read only when root owns it (libpq's rule for `sslkey`); no error message
//! quotes a secret or a header value; the file is read once per process at start-up (the
//! supervisor checks it, each worker reads it again when it starts).

use super::sign::Secret;
use crate::config_file as file;
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::http::{HeaderName, HeaderValue};

/// The longest timeout the file may give (the flags' limit too).
const MAX_SECS: f64 = 86_400.0;
/// Headers Dispatchbox sets itself; the file may not replace them.
const RESERVED: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
];

/// One route's entry.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteSettings {
    /// Empty: the `DISPATCHBOX_WEBHOOK_SECRET` default applies, if any.
    pub secrets: Vec<Secret>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub ca_file: Option<PathBuf>,
}

/// The whole file: route target → its settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct SettingsFile {
    path: PathBuf,
    routes: Vec<(String, RouteSettings)>,
}

impl SettingsFile {
    /// Reads and checks the file (permissions, JSON, every field).
    pub(crate) fn load(path: &Path) -> Result<SettingsFile> {
        let bad = |why: String| file::usage("--webhook-config", path, &why);
        let (bytes, meta) = file::read_config_file("--webhook-config", path, file::SETTINGS_FILE)?;
        check_mode(meta.mode(), meta.uid()).map_err(bad)?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let routes = parse(&text).map_err(bad)?;
        Ok(SettingsFile {
            path: path.to_path_buf(),
            routes,
        })
    }

    /// The entry for this route target, if any.
    pub(crate) fn get(&self, target: &str) -> Option<&RouteSettings> {
        self.routes
            .iter()
            .find(|(k, _)| k == target)
            .map(|(_, s)| s)
    }

    /// Refuses entries for routes that do not exist (a typo would leave a route unsigned).
    pub(crate) fn check_used(&self, targets: &[&str]) -> Result<()> {
        match self
            .routes
            .iter()
            .find(|(k, _)| !targets.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(Error::Usage(format!(
                "--webhook-config {}: `{}` is not the target of any webhook --route",
                self.path.display(),
                crate::redact::route_target(k)
            ))),
        }
    }
}

/// libpq's rule for private keys: nothing for others; group read only for a root-owned file.
fn check_mode(mode: u32, uid: u32) -> std::result::Result<(), String> {
    let ok = mode & 0o077 == 0 || (uid == 0 && mode & 0o037 == 0);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "permissions {:04o} let others read it: it holds secrets; use chmod 0600 \
             (or 0640 owned by root)",
            mode & 0o7777
        ))
    }
}

fn parse(text: &str) -> std::result::Result<Vec<(String, RouteSettings)>, String> {
    // serde_json's syntax errors give a position, never the text.
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(top) = v else {
        return Err("expected a JSON object keyed by route target (URL)".into());
    };
    let mut routes = Vec::new();
    for (target, entry) in top {
        let shown = crate::redact::route_target(&target);
        let Value::Object(fields) = entry else {
            return Err(format!("`{shown}`: expected an object"));
        };
        let s = route(&fields).map_err(|e| format!("`{shown}`: {e}"))?;
        routes.push((target, s));
    }
    Ok(routes)
}

fn route(fields: &Map<String, Value>) -> std::result::Result<RouteSettings, String> {
    let mut s = RouteSettings::default();
    for (key, v) in fields {
        match key.as_str() {
            "secret" => s.secrets = secrets(v)?,
            "headers" => s.headers = headers(v)?,
            "timeout" => s.timeout = Some(secs(key, v)?),
            "connect_timeout" => s.connect_timeout = Some(secs(key, v)?),
            "ca_file" => match v {
                Value::String(p) if !p.is_empty() => s.ca_file = Some(PathBuf::from(p)),
                _ => return Err("`ca_file`: expected a file name".into()),
            },
            other => {
                return Err(format!(
                    "unknown field `{other}` (known: secret, headers, timeout, \
                     connect_timeout, ca_file)"
                ))
            }
        }
    }
    Ok(s)
}

fn secrets(v: &Value) -> std::result::Result<Vec<Secret>, String> {
    let texts: Vec<&str> = match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or("`secret`: expected a string or a list of strings")
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err("`secret`: expected a string or a list of strings".into()),
    };
    let mut out = Vec::new();
    for t in texts {
        out.extend(Secret::parse_list(t).map_err(|e| format!("`secret`: {e}"))?);
    }
    if out.is_empty() {
        return Err("`secret`: the list is empty".into());
    }
    Ok(out)
}

fn headers(v: &Value) -> std::result::Result<Vec<(HeaderName, HeaderValue)>, String> {
    let Value::Object(m) = v else {
        return Err("`headers`: expected an object of name: value".into());
    };
    let mut out = Vec::new();
    for (name, value) in m {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`headers`: `{name}` is not a valid header name"))?;
        if RESERVED.contains(&n.as_str()) || n.as_str().starts_with("dispatchbox-") {
            return Err(format!("`headers`: `{n}` is set by Dispatchbox"));
        }
        let text = value
            .as_str()
            .ok_or_else(|| format!("`headers`: the value of `{n}` must be a string"))?;
        let mut hv = HeaderValue::from_str(text).map_err(|_| {
            format!("`headers`: the value of `{n}` has characters a header cannot carry")
        })?;
        hv.set_sensitive(true);
        out.push((n, hv));
    }
    Ok(out)
}

fn secs(key: &str, v: &Value) -> std::result::Result<Duration, String> {
    match v.as_f64() {
        Some(n) if n > 0.0 && n <= MAX_SECS => Ok(Duration::from_secs_f64(n)),
        _ => Err(format!(
            "`{key}`: expected seconds, more than 0 and at most {MAX_SECS}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn a_full_entry_parses() {
        let text = format!(
            r#"{{"https://h/x": {{"secret": ["{SECRET}", "{SECRET}"], "timeout": 2.5,
                "connect_timeout": 1, "ca_file": "/ca.pem",
                "headers": {{"Authorization": "Bearer t0ken"}}}},
               "http://other/": {{}}}}"#
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.len(), 2);
        let s = &r.iter().find(|(k, _)| k == "https://h/x").unwrap().1;
        assert_eq!(s.secrets.len(), 2);
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(s.headers[0].0.as_str(), "authorization");
        assert!(!format!("{s:?}").contains("t0ken"), "{s:?}");
        assert!(!format!("{s:?}").contains("MfKQ"), "{s:?}");
    }

    #[test]
    fn mistakes_are_named_without_quoting_secrets() {
        for (text, want) in [
            ("[]", "expected a JSON object"),
            ("{\"u\": 1}", "`u`: expected an object"),
            ("{\"u\": {\"secrets\": \"x\"}}", "unknown field `secrets`"),
            (
                "{\"u\": {\"secret\": \"hunter2\"}}",
                "must start with `whsec_`",
            ),
            ("{\"u\": {\"secret\": []}}", "the list is empty"),
            ("{\"u\": {\"timeout\": 0}}", "`timeout`: expected seconds"),
            (
                "{\"u\": {\"headers\": {\"a b\": \"x\"}}}",
                "not a valid header name",
            ),
            (
                "{\"u\": {\"headers\": {\"x\": \"hunter2\\n\"}}}",
                "cannot carry",
            ),
            (
                "{\"u\": {\"headers\": {\"Webhook-Id\": \"x\"}}}",
                "set by Dispatchbox",
            ),
            (
                "{\"u\": {\"headers\": {\"dispatchbox-x\": \"x\"}}}",
                "set by Dispatchbox",
            ),
            ("{\"u\": {\"ca_file\": 3}}", "`ca_file`"),
            ("{\"u\": {", "not valid JSON"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn permissions_follow_the_libpq_key_rule() {
        assert!(check_mode(0o100600, 1000).is_ok());
        assert!(check_mode(0o100400, 1000).is_ok());
        assert!(check_mode(0o100640, 0).is_ok());
        assert!(check_mode(0o100640, 1000).is_err());
        assert!(check_mode(0o100660, 0).is_err());
        assert!(check_mode(0o100604, 0).is_err());
        assert!(check_mode(0o100644, 1000)
            .unwrap_err()
            .starts_with("permissions 0644"));
    }
}
