//! The HTTP(S) webhook target: `--route 'order.*=https://billing.internal/hooks/orders'`.
//!
//! Each event is one POST whose body is the event's JSON line (what `stdout` prints), with
//! the Standard Webhooks headers: `webhook-id` (`evt_<event id>`, the same on every retry),
//! `webhook-timestamp` (unix seconds of this attempt) and, when the route has a secret,
//! `webhook-signature` (see `sign.rs`); plus `content-type: application/json`,
//! `user-agent: dispatchbox/<version>`, `dispatchbox-event-type`, `-aggregate-type`,
//! `-aggregate-id` and `-attempt`, and the route's extra headers from the settings file
//! (`settings.rs`). The answer maps to an [`Outcome`] as `response.rs` tabulates; a network
//! error or a timeout is retried.
//!
//! Invariants: one [`ureq::Agent`] per route, shared by the handler threads, keeps up to one
//! idle keep-alive connection per thread; redirects are never followed; certificates are
//! always verified (the system's roots, or only the route's `ca_file`); every route is
//! checked when it is built (URL, CA file), so a mistake is a usage error at start-up;
//! nothing here logs or stores a secret or an extra header's value.

mod response;
mod settings;
mod sign;

pub(crate) use settings::SettingsFile;
pub(crate) use sign::Secret;

use crate::config_file as file;
use crate::error::{Error, Result};
use crate::handler::{Event, Handler, Outcome};
use settings::RouteSettings;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};
use ureq::http::{HeaderName, HeaderValue, Uri};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

/// Read at most this much of an answer's body: all of it lets the connection be reused, a
/// longer one is cut and its connection closed.
const DRAIN_LIMIT: usize = 64 * 1024;

/// How long connecting (TLS handshake included) may take unless the route says otherwise,
/// at most the route's whole timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every webhook route starts from.
#[derive(Clone, Debug)]
pub struct WebhookDefaults {
    /// `DISPATCHBOX_WEBHOOK_SECRET`: for routes without a secret of their own.
    pub secrets: Vec<Secret>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Handler threads: how many idle connections per route are worth keeping.
    pub threads: usize,
}

pub struct Webhook {
    url: String,
    /// The URL as `redact::route_target` shows it (no userinfo, no query values), for the
    /// stored errors.
    label: String,
    agent: ureq::Agent,
    secrets: Vec<Secret>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Webhook {
    /// Checks the URL and the CA file, and builds the route's agent.
    pub fn new(
        url: &str,
        defaults: &WebhookDefaults,
        own: Option<&RouteSettings>,
    ) -> Result<Webhook> {
        check_url(url)?;
        let label = crate::redact::route_target(url);
        let own = own.cloned().unwrap_or_default();
        let timeout = own.timeout.unwrap_or(defaults.timeout);
        let connect_timeout = own
            .connect_timeout
            .unwrap_or(defaults.connect_timeout.min(timeout));
        let roots = match &own.ca_file {
            Some(path) => RootCerts::new_with_certs(&read_ca_file(path)?),
            None => RootCerts::PlatformVerifier,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(roots)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("dispatchbox/", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(timeout))
            .timeout_connect(Some(connect_timeout))
            .max_idle_connections(defaults.threads)
            .max_idle_connections_per_host(defaults.threads)
            .tls_config(tls)
            .build()
            .new_agent();
        let secrets = if own.secrets.is_empty() {
            defaults.secrets.clone()
        } else {
            own.secrets
        };
        Ok(Webhook {
            url: url.to_string(),
            label,
            agent,
            secrets,
            headers: own.headers,
            timeout,
            connect_timeout,
        })
    }

    fn post(&self, event: &Event) -> std::result::Result<Outcome, ureq::Error> {
        let body = event.to_json_line();
        let id = format!("evt_{}", event.id);
        let now = SystemTime::now();
        let ts = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut req = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string());
        if !self.secrets.is_empty() {
            let sig = sign::signature(&self.secrets, &id, ts, body.as_bytes());
            req = req.header("webhook-signature", sig);
        }
        for (name, value) in [
            ("dispatchbox-event-type", &event.event_type),
            ("dispatchbox-aggregate-type", &event.aggregate_type),
            ("dispatchbox-aggregate-id", &event.aggregate_id),
        ] {
            if let Some(v) = value {
                req = req.header(name, header_text(v));
            }
        }
        req = req.header("dispatchbox-attempt", event.attempt.to_string());
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let mut resp = req.send(body.as_bytes())?;
        let text = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let (retry_after, location) = (text("retry-after"), text("location"));
        let status = resp.status().as_u16();
        let start = read_start(resp.body_mut().as_reader());
        Ok(response::outcome(
            &response::Answer {
                status,
                retry_after: retry_after.as_deref(),
                location: location.as_deref(),
                body: &start,
            },
            now,
        ))
    }

    /// The stored error for a request that got no answer.
    fn failure(&self, e: &ureq::Error) -> String {
        let what = match e {
            ureq::Error::Timeout(t @ (ureq::Timeout::Connect | ureq::Timeout::Resolve)) => {
                format!("timed out ({t}) after {:?}", self.connect_timeout)
            }
            ureq::Error::Timeout(t) => format!("timed out ({t}) after {:?}", self.timeout),
            e => e.to_string(),
        };
        format!("POST {}: {what}", self.label)
    }
}

impl Handler for Webhook {
    fn handle(&self, event: &Event) -> Outcome {
        match self.post(event) {
            Ok(o) => o,
            Err(ureq::Error::Io(e)) if is_local_shortage(&e) => {
                Outcome::Defer(format!("POST {}: {e}", self.label))
            }
            // No HTTP answer at all (refused, reset, timed out, TLS failed): the destination
            // is unavailable, whatever the event.
            Err(e) => Outcome::Unavailable(self.failure(&e), None),
        }
    }
}

/// `http://` or `https://` with a host; no credentials (argv is public: they belong in the
/// settings file's headers).
fn check_url(url: &str) -> Result<()> {
    // First: a password with a `/` in it would otherwise be "a port that is not a number".
    if crate::redact::has_userinfo(url) {
        return Err(Error::Usage(
            "credentials in the URL would be visible to every local user; put an \
             `authorization` header in the --webhook-config file"
                .into(),
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Usage(format!("not a valid URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(Error::Usage(
                "a webhook URL starts with http:// or https://".into(),
            ))
        }
    }
    let Some(auth) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(Error::Usage("the URL has no host".into()));
    };
    // `http` keeps a port that does not fit 16 bits in the text but gives no number for it.
    let text = auth.as_str();
    let after_host = &text[text.rfind(']').map_or(0, |i| i + 1)..];
    if after_host.contains(':') && auth.port_u16().is_none() {
        return Err(Error::Usage(
            "the URL's port is not a number up to 65535".into(),
        ));
    }
    Ok(())
}

/// The certificates of a PEM file; a file without one is a usage error.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let bad = |why: String| file::usage("ca_file", path, &why);
    let (pem, _) = file::read_config_file("ca_file", path, file::PEM_FILE)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| bad(format!("not PEM: {e}")))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

/// A field as a header value: printable ASCII as it is; other bytes, and `%`, as `%XX`
/// (UTF-8), so any value fits and decoding is unambiguous.
fn header_text(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The start of a body, reading on to its end (up to [`DRAIN_LIMIT`]) so that the
/// connection can be reused. A read error ends it: the answer's status is what counts.
fn read_start(mut body: impl Read) -> Vec<u8> {
    let mut start = Vec::new();
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < DRAIN_LIMIT {
        match body.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let keep = n.min(response::SNIPPET.saturating_sub(start.len()));
                start.extend_from_slice(&buf[..keep]);
                total += n;
            }
        }
    }
    start
}

/// Out of file descriptors or memory: this machine's problem, not the event's.
fn is_local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// Whether a route target is a webhook URL.
pub(crate) fn is_webhook(target: &str) -> bool {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://h.example:8443/a/b?token=x").is_ok());
        assert!(check_url("http://127.0.0.1").is_ok());
        for (bad, why) in [
            ("ftp://h/x", "http:// or https://"),
            ("https://user:pw@h/x", "credentials"),
            ("https:///x", "not a valid URL"),
            ("https://h/a b", "not a valid URL"),
            ("http://h:99999/", "port"),
            ("http://user:pa/pw@h/x", "credentials"),
            ("http://u:pw@/x", "credentials"),
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
        assert!(is_webhook("HTTPS://x") && is_webhook("http://x"));
        assert!(!is_webhook("stdout") && !is_webhook("exec:http://x") && !is_webhook("http"));
    }

    #[test]
    fn header_values_are_escaped_only_where_needed() {
        assert_eq!(header_text("order.created"), "order.created");
        assert_eq!(header_text("a%b\nc é"), "a%25b%0Ac %C3%A9");
    }

    #[test]
    fn bodies_are_read_to_the_end_and_cut_for_the_message() {
        let long = vec![b'x'; 10_000];
        assert_eq!(read_start(&long[..]).len(), response::SNIPPET);
        assert_eq!(read_start(&b"short"[..]), b"short");
    }
}
