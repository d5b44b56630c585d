//! The webhook target against a real HTTP(S) server run by the test: a `TcpListener` thread
//! that records every request and answers as the test scripts it (status, headers, delay,
//! dropped connection). Covers the body and headers, the signature (checked with the
//! `openssl` command), keep-alive reuse, the status → outcome table, timeouts, a refused
//! connection, HTTPS against the harness's CA with and without it configured, and the
//! start-up checks.

use super::{db_with_events, drain, drain_cmd, local_db_with_events};
use crate::common::{self, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// 32 ASCII bytes, and the same as a Standard Webhooks secret.
const KEY: &str = "0123456789abcdef0123456789abcdef";
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// One request as the server read it.
#[derive(Clone, Debug)]
pub(super) struct Request {
    /// Which accepted connection (0, 1, ...) carried it.
    conn: usize,
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn event_id(&self) -> i64 {
        let v: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON: {e}: {:?}", self.body));
        v["id"].as_i64().expect("id")
    }
}

/// What the server does with a request.
pub(super) enum Reply {
    /// Status, extra headers, body.
    Answer(u16, Vec<(&'static str, String)>, String),
    /// Waits, then answers 200.
    After(Duration),
    /// Closes the connection without answering.
    Hang,
}

type Script = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub(super) struct Receiver {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Plain HTTP, or TLS with the harness cluster's server certificate (127.0.0.1 and
    /// localhost, signed by the harness CA).
    fn start(tls: bool, script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        Receiver::start_on(listener, tls, script)
    }

    /// The same on a listener the test opened.
    pub(super) fn start_on(
        listener: TcpListener,
        tls: bool,
        script: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tls.then(tls_acceptor);
        let r = Receiver {
            port,
            requests: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
        };
        let (requests, connections, stop) = (
            Arc::clone(&r.requests),
            Arc::clone(&r.connections),
            Arc::clone(&r.stop),
        );
        let script: Script = Arc::new(script);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let conn = connections.fetch_add(1, Ordering::SeqCst);
                let (requests, script, acceptor) =
                    (Arc::clone(&requests), Arc::clone(&script), acceptor.clone());
                std::thread::spawn(move || match acceptor {
                    None => serve(stream, conn, &requests, &*script),
                    // A failed handshake (the client refused our certificate) ends it.
                    Some(a) => {
                        if let Ok(s) = a.accept(stream) {
                            serve(s, conn, &requests, &*script);
                        }
                    }
                });
            }
        });
        r
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    pub(super) fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn tls_acceptor() -> Arc<native_tls::TlsAcceptor> {
    let data = common::local().data_dir();
    let cert = std::fs::read(data.join("server.crt")).expect("server.crt");
    let key = std::fs::read(data.join("server.key")).expect("server.key");
    let id = native_tls::Identity::from_pkcs8(&cert, &key).expect("identity");
    Arc::new(native_tls::TlsAcceptor::new(id).expect("acceptor"))
}

/// Reads requests off one connection and answers them until the client closes it.
fn serve<S: Read + Write>(
    stream: S,
    conn: usize,
    requests: &Mutex<Vec<Request>>,
    script: &(dyn Fn(&Request) -> Reply + Send + Sync),
) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader, conn) else {
            return;
        };
        requests.lock().unwrap().push(req.clone());
        let (status, headers, body) = match script(&req) {
            Reply::Answer(s, h, b) => (s, h, b),
            Reply::After(d) => {
                std::thread::sleep(d);
                (200, vec![], String::new())
            }
            Reply::Hang => return,
        };
        let mut out = format!(
            "HTTP/1.1 {status} Whatever\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        let w = reader.get_mut();
        if w.write_all(out.as_bytes()).and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

fn read_request(r: &mut impl BufRead, conn: usize) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        conn,
        line: line.trim_end().to_string(),
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn row(db: &common::TestDb, id: i64) -> (String, i32, String, f64) {
    let r = db
        .client()
        .query_one(
            "SELECT status, attempts, coalesce(last_error, ''),
                    extract(epoch FROM next_run_at - now())::float8
             FROM outbox_event WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// A settings file readable by its owner only.
fn settings(dir: &TempDir, json: &str) -> String {
    let path = dir.join("webhooks.json");
    std::fs::write(&path, json).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

/// `v1,<base64 HMAC-SHA256>` of `content` under [`KEY`], computed by the openssl command.
fn openssl_signature(content: &str) -> String {
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("openssl dgst -sha256 -hmac {KEY} -binary | openssl base64 -A"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(content.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("v1,{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn events_are_posted_signed_with_standard_headers_over_one_kept_alive_connection() {
    let rx = Receiver::start(false, |_| Reply::Answer(200, vec![], "ok".into()));
    let db = db_with_events(20, "order.created");
    let route = format!("order.*={}", rx.url("http", "/hooks/orders?src=test"));
    let mut cmd = common::dispatchbox();
    cmd.env("DISPATCHBOX_WEBHOOK_SECRET", SECRET);
    let out = drain_cmd(cmd, &db, &["--route", &route, "--threads", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains(SECRET), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        20
    );

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 20, "{reqs:?}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for r in &reqs {
        let id = r.event_id();
        assert_eq!(r.line, "POST /hooks/orders?src=test HTTP/1.1");
        // Exactly the line `stdout` prints (jsonb renders the payload with a space).
        assert_eq!(
            r.body,
            format!(
                r#"{{"id":{id},"event_type":"order.created","aggregate_type":"order","aggregate_id":"{id}","attempt":1,"payload":{{"n": {id}}}}}"#
            )
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("user-agent").unwrap().starts_with("dispatchbox/"),
            "{r:?}"
        );
        assert_eq!(r.header("webhook-id"), Some(format!("evt_{id}").as_str()));
        assert_eq!(r.header("dispatchbox-event-type"), Some("order.created"));
        assert_eq!(r.header("dispatchbox-aggregate-type"), Some("order"));
        assert_eq!(
            r.header("dispatchbox-aggregate-id"),
            Some(id.to_string().as_str())
        );
        assert_eq!(r.header("dispatchbox-attempt"), Some("1"));
        let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(ts.abs_diff(now) < 120, "{ts} vs {now}");
    }
    // The signature, checked by an independent implementation.
    let r = &reqs[0];
    let content = format!(
        "{}.{}.{}",
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.body
    );
    assert_eq!(
        r.header("webhook-signature"),
        Some(openssl_signature(&content).as_str())
    );
    // One handler thread, one connection, kept alive for all 20.
    assert_eq!(rx.connections.load(Ordering::SeqCst), 1, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.conn == 0));
}

#[test]
fn the_secret_and_headers_never_reach_argv_logs_or_exec_commands() {
    let rx = Receiver::start(false, |_| Reply::Answer(200, vec![], "".into()));
    let db = db_with_events(2, "order.created");
    common::insert_events(&mut db.client(), "outbox_event", 1, "env.dump");
    let dir = TempDir::new("webhook-env");
    let url = rx.url("http", "/own");
    let file = settings(
        &dir,
        &format!(
            r#"{{"{url}": {{"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                           "headers": {{"Authorization": "Bearer s3cr3t-t0ken"}}}}}}"#
        ),
    );
    let dump = dir.join("env.txt");
    let exec = format!("env.*=exec:sh -c 'env > {}'", dump.display());
    let mut cmd = common::dispatchbox();
    cmd.env("DISPATCHBOX_WEBHOOK_SECRET", SECRET);
    let route = format!("order.*={url}");
    let out = drain_cmd(
        cmd,
        &db,
        &[
            "--route",
            &route,
            "--route",
            &exec,
            "--webhook-config",
            &file,
            "--log-level",
            "DEBUG",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    for secret in [SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "s3cr3t-t0ken"] {
        assert!(!out.stderr.contains(secret), "{out}");
    }
    let env = std::fs::read_to_string(&dump).unwrap();
    assert!(env.contains("DISPATCHBOX_EVENT_ID="), "{env}");
    assert!(
        !env.contains("DISPATCHBOX_WEBHOOK_SECRET") && !env.contains(SECRET),
        "{env}"
    );
    // The route's own secret signs (not the default), and its header is sent.
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.header("authorization"), Some("Bearer s3cr3t-t0ken"));
    let content = format!(
        "{}.{}.{}",
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.body
    );
    assert_ne!(
        r.header("webhook-signature"),
        Some(openssl_signature(&content).as_str())
    );
    assert!(r.header("webhook-signature").unwrap().starts_with("v1,"));
}

#[test]
fn every_answer_maps_to_its_outcome() {
    let rx = Receiver::start(false, |r| {
        let later = "Sun, 06 Nov 2094 08:49:37 GMT".to_string();
        match r.event_id() {
            1 => Reply::Answer(200, vec![], "fine".into()),
            2 => Reply::Answer(204, vec![], "".into()),
            3 => Reply::Answer(500, vec![], "{\"error\":\n\"database is down\"}".into()),
            4 => Reply::Answer(503, vec![("retry-after", "120".into())], "busy".into()),
            5 => Reply::Answer(429, vec![("retry-after", later)], "".into()),
            6 => Reply::Answer(408, vec![], "".into()),
            7 => Reply::Answer(410, vec![("retry-after", "5".into())], "gone".into()),
            8 => Reply::Answer(404, vec![], "no such hook".into()),
            9 => Reply::Answer(
                301,
                vec![("location", "http://elsewhere/x".into())],
                "".into(),
            ),
            _ => Reply::Answer(502, vec![], "x".repeat(2000)),
        }
    });
    let db = db_with_events(10, "order.created");
    let route = format!("*={}", rx.url("http", "/"));
    let out = drain(
        &db,
        &[
            "--route",
            &route,
            "--retry-backoff",
            "1",
            "--retry-backoff-max",
            "86400",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let expect = [
        (1, "done", ""),
        (2, "done", ""),
        (
            3,
            "retry",
            "HTTP 500 Internal Server Error: {\"error\": \"database is down\"}",
        ),
        (4, "retry", "HTTP 503 Service Unavailable: busy"),
        (5, "retry", "HTTP 429 Too Many Requests"),
        (6, "retry", "HTTP 408 Request Timeout"),
        (7, "dead", "HTTP 410 Gone: gone"),
        (8, "dead", "HTTP 404 Not Found: no such hook"),
        (
            9,
            "dead",
            "HTTP 301 Moved Permanently: redirects are not followed; update the route's URL \
             (location: http://elsewhere/x)",
        ),
    ];
    for (id, status, error) in expect {
        let (s, attempts, e, _) = row(&db, id);
        assert_eq!(
            (s.as_str(), attempts, e.as_str()),
            (status, 1, error),
            "event {id}"
        );
    }
    // The body's first 300 bytes, not more.
    let (s, _, e, _) = row(&db, 10);
    assert_eq!(s, "retry");
    assert_eq!(e, format!("HTTP 502 Bad Gateway: {}", "x".repeat(300)));
    // Retry-After: seconds, and a date (far off: capped by --retry-backoff-max); without
    // it the backoff (about a second).
    let due = |id| row(&db, id).3;
    assert!((100.0..=125.0).contains(&due(4)), "{}", due(4));
    assert!((86_000.0..=86_401.0).contains(&due(5)), "{}", due(5));
    assert!(due(3) < 5.0 && due(6) < 5.0, "{} {}", due(3), due(6));
    assert_eq!(rx.requests().len(), 10, "a redirect is not followed");
}

#[test]
fn timeouts_dropped_connections_and_refusals_are_retried() {
    let rx = Receiver::start(false, |r| match r.event_id() {
        1 => Reply::After(Duration::from_secs(5)),
        _ => Reply::Hang,
    });
    let db = db_with_events(2, "slow");
    common::insert_events(&mut db.client(), "outbox_event", 1, "refused");
    // A port nobody listens on.
    let closed_port = common::refused_port();
    let closed = closed_port.port();
    let slow = format!("slow={}", rx.url("http", "/"));
    let refused = format!("refused=http://127.0.0.1:{closed}/");
    let out = drain(
        &db,
        &[
            "--route",
            &slow,
            "--route",
            &refused,
            "--webhook-timeout",
            "0.5",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let (s1, _, e1, _) = row(&db, 1);
    let (s2, _, e2, _) = row(&db, 2);
    let (s3, _, e3, _) = row(&db, 3);
    assert_eq!(
        (s1.as_str(), s2.as_str(), s3.as_str()),
        ("retry", "retry", "retry")
    );
    let base = rx.url("http", "/");
    assert!(e1.starts_with(&format!("POST {base}: timed out")), "{e1}");
    assert!(e2.starts_with(&format!("POST {base}: ")), "{e2}");
    assert!(e3.contains("refused"), "{e3}");
}

#[test]
fn https_verifies_the_receiver_against_the_configured_ca_only() {
    let rx = Receiver::start(true, |_| Reply::Answer(200, vec![], "".into()));
    let db = local_db_with_events(3, "order.created");
    let dir = TempDir::new("webhook-tls");
    let ca = common::local().ca_cert_path();
    let trusted = rx.url("https", "/trusted");
    let localhost = format!("https://localhost:{}/by-name", rx.port);
    let untrusted = rx.url("https", "/untrusted");
    let file = settings(
        &dir,
        &format!(
            r#"{{"{trusted}": {{"ca_file": "{ca}"}}, "{localhost}": {{"ca_file": "{ca}"}}}}"#,
            ca = ca.display()
        ),
    );
    db.client()
        .execute("UPDATE outbox_event SET event_type = 'e' || id", &[])
        .unwrap();
    let routes = [
        format!("e1={trusted}"),
        format!("e2={localhost}"),
        format!("e3={untrusted}"),
    ];
    let mut args = vec!["--webhook-config", file.as_str()];
    for r in &routes {
        args.extend(["--route", r.as_str()]);
    }
    let out = drain(&db, &args);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(row(&db, 1).0, "done");
    assert_eq!(row(&db, 2).0, "done");
    // The system's roots do not know the test CA: not delivered, retried.
    let (s, _, e, _) = row(&db, 3);
    assert_eq!(s, "retry", "{e}");
    assert!(e.contains("certificate"), "{e}");
    let paths: Vec<String> = rx.requests().iter().map(|r| r.line.clone()).collect();
    assert!(!paths.iter().any(|p| p.contains("/untrusted")), "{paths:?}");
}

/// Runs the binary with `args` and `secret`; it must exit 2 with one line naming `want`.
fn refused(args: &[&str], secret: Option<&str>, want: &str) {
    let mut cmd = common::dispatchbox();
    cmd.args(["--dsn", "host=/nonexistent dbname=x"]).args(args);
    if let Some(s) = secret {
        cmd.env("DISPATCHBOX_WEBHOOK_SECRET", s);
    }
    let out = common::run(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains(want), "want {want:?}: {out}");
    if let Some(s) = secret {
        assert!(
            !out.stderr.contains(s.trim_start_matches("whsec_")),
            "{out}"
        );
    }
}

#[test]
fn bad_webhook_configuration_is_one_line_and_exit_2() {
    let dir = TempDir::new("webhook-bad");
    let ok = "*=https://hooks.example/x";
    refused(&["--route", "*=https://"], None, "not a valid URL");
    refused(&["--route", "*=ftp://h/x"], None, "unknown route target");
    refused(
        &["--route", "*=https://u:pw@h/x"],
        None,
        "credentials in the URL",
    );
    refused(
        &["--route", ok],
        Some("hunter2hunter2"),
        "DISPATCHBOX_WEBHOOK_SECRET: a secret must start with `whsec_`",
    );
    refused(
        &["--route", ok],
        Some("whsec_aHVudGVyMg=="),
        "must hold 24 to 64 bytes",
    );
    let missing = dir.join("missing.json");
    refused(
        &[
            "--route",
            ok,
            "--webhook-config",
            &missing.to_string_lossy(),
        ],
        None,
        "cannot read it",
    );
    let open = settings(&dir, r#"{"https://hooks.example/x": {}}"#);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &["--route", ok, "--webhook-config", &open],
        None,
        "permissions 0644",
    );
    let cases = [
        (
            r#"{"https://hooks.example/x": {"secrett": "x"}}"#,
            "unknown field `secrett`",
        ),
        (
            r#"{"https://hooks.example/y": {}}"#,
            "is not the target of any webhook --route",
        ),
        (
            r#"{"https://hooks.example/x": {"ca_file": "/nonexistent/ca.pem"}}"#,
            "ca_file /nonexistent/ca.pem: cannot read it",
        ),
        (
            r#"{"https://hooks.example/x": {"secret": "whsec_bad!"}}"#,
            "`secret`: a secret must be",
        ),
    ];
    for (json, want) in cases {
        let f = settings(&dir, json);
        refused(&["--route", ok, "--webhook-config", &f], None, want);
    }
    assert!(Path::new(&open).exists());
}

#[test]
fn a_refused_url_never_shows_its_password_or_token() {
    let dir = TempDir::new("webhook-userinfo");
    let ok = "*=https://hooks.example/x";
    let secrets = ["SECRETPW", "SEC", "RETPW", "SECRET123"];
    let check = |args: &[&str], want: &str| {
        let mut cmd = common::dispatchbox();
        cmd.args(["--dsn", "host=/nonexistent dbname=x"]).args(args);
        let out = common::run(&mut cmd, Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains(want), "want {want:?}: {}", out.stderr);
        for s in secrets {
            assert!(!out.stderr.contains(s), "{s} shown: {}", out.stderr);
        }
    };
    let credentials = "credentials in the URL";
    check(
        &["--route", "*=https://user:SECRETPW@h/x?token=SECRET123"],
        credentials,
    );
    // A password with `/` in it, which makes `user:SEC` look like a host and a port.
    check(&["--route", "*=http://user:SEC/RETPW@h/x"], credentials);
    check(&["--route", "*=http://user:SECRETPW@/x"], credentials);
    check(
        &["--route", "*=ftp://user:SECRETPW@h/x"],
        "unknown route target",
    );
    check(
        &["--route", "https://user:SECRETPW@h/x?token=SECRET123"],
        "expected PATTERN=TARGET",
    );
    let unused = settings(&dir, r#"{"https://user:SECRETPW@h/y?token=SECRET123": {}}"#);
    check(
        &["--route", ok, "--webhook-config", &unused],
        "`https://h/y?token=REDACTED` is not the target of any webhook --route",
    );
    let bad = settings(&dir, r#"{"https://h/y?token=SECRET123": 5}"#);
    check(
        &["--route", ok, "--webhook-config", &bad],
        "`https://h/y?token=REDACTED`: expected an object",
    );
}
