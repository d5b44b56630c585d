//! Connecting and classifying database errors: a server that accepts and never answers, a
//! port where something that is not PostgreSQL answers, a read-only server, a role with a
//! tiny statement timeout.

use crate::common::{self, dispatchbox, spawn, wait_until, Run, TestDb};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Generous: these commands must end, not end fast.
const DEADLINE: Duration = Duration::from_secs(60);

/// A TCP server on 127.0.0.1 run by a test thread until dropped. `serve` gets each accepted
/// socket; sockets it returns are kept open until the server is dropped.
struct FakeServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(serve: fn(TcpStream) -> Option<TcpStream>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, halt) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            let kept = Mutex::new(Vec::new());
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        n.fetch_add(1, Ordering::SeqCst);
                        let _ = sock.set_nonblocking(false);
                        if let Some(sock) = serve(sock) {
                            kept.lock().unwrap().push(sock);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Accepts and never says a word (the sockets stay open).
    fn silent() -> FakeServer {
        FakeServer::start(Some)
    }

    fn dsn(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password=x dbname=x {extra}",
            self.port
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn http_400(mut sock: TcpStream) -> Option<TcpStream> {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 512];
    let _ = sock.read(&mut buf);
    let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    None
}

fn echo(sock: TcpStream) -> Option<TcpStream> {
    thread::spawn(move || {
        let mut sock = sock;
        // Close soon: an echo that never ends is just a silent server.
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 || sock.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    None
}

/// The one error line a failed run ends with (a logged ERROR, or a usage line).
fn last_error_line(out: &Run) -> &str {
    out.stderr
        .lines()
        .rfind(|l| l.contains(" ERROR ") || l.starts_with("dispatchbox:"))
        .unwrap_or("")
}

#[test]
fn a_silent_server_ends_migrate_stats_and_drain_with_exit_3() {
    let server = FakeServer::silent();
    // sslmode=prefer waits for the answer to the TLS request, disable for the start-up reply.
    for (args, dsn) in [
        (vec!["migrate"], server.dsn("")),
        (vec!["stats"], server.dsn("sslmode=disable")),
        (vec!["--drain"], server.dsn("sslmode=disable")),
    ] {
        let out = common::run(
            dispatchbox()
                .args(&args)
                .args(["--dsn", &dsn, "--connect-timeout", "2"]),
            DEADLINE,
        );
        assert_eq!(out.code, Some(3), "{out}");
        assert!(
            last_error_line(&out).contains("accepted the connection but did not answer"),
            "{out}"
        );
        assert!(!out.stderr.contains("password=x"), "{out}");
    }
    assert!(server.accepted() >= 3);
}

#[test]
fn sigterm_while_connecting_to_a_silent_server_stops_at_once() {
    let server = FakeServer::silent();
    let dsn = server.dsn("sslmode=disable");
    let worker = spawn(dispatchbox().args([
        "--dsn",
        &dsn,
        "--connect-timeout",
        "600",
        "--shutdown-timeout",
        "30",
    ]));
    wait_until(
        DEADLINE,
        "the worker connected to the silent server",
        || server.accepted() >= 1,
    );
    worker.signal("TERM");
    // The supervisor would SIGKILL a child that ignores the stop after 30 + 10 s.
    let out = worker.wait(DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("did not stop in time"), "{out}");
}

#[test]
fn a_server_that_is_not_postgres_is_refused_at_once() {
    for (name, serve) in [
        ("http", http_400 as fn(TcpStream) -> Option<TcpStream>),
        ("echo", echo),
    ] {
        let server = FakeServer::start(serve);
        for (args, extra) in [(vec!["migrate"], ""), (vec!["--drain"], "sslmode=disable")] {
            let dsn = server.dsn(extra);
            // With --connect-timeout 600 a retried error would run into the deadline.
            let out = common::run(
                dispatchbox()
                    .args(&args)
                    .args(["--dsn", &dsn, "--connect-timeout", "600"]),
                DEADLINE,
            );
            assert_eq!(out.code, Some(4), "{name}: {out}");
            assert!(
                last_error_line(&out).contains("did not answer like a PostgreSQL server"),
                "{name}: {out}"
            );
        }
    }
}

#[test]
fn a_server_that_closes_at_once_is_retried_like_a_restarting_one() {
    let server = FakeServer::start(|sock| {
        drop(sock);
        None
    });
    for (args, extra) in [(vec!["migrate"], ""), (vec!["--drain"], "sslmode=disable")] {
        let dsn = server.dsn(extra);
        let out = common::run(
            dispatchbox()
                .args(&args)
                .args(["--dsn", &dsn, "--connect-timeout", "2"]),
            DEADLINE,
        );
        assert_eq!(out.code, Some(3), "{out}");
        assert!(last_error_line(&out).contains("gave up after"), "{out}");
    }
    assert!(server.accepted() >= 4, "retried: {}", server.accepted());
}

/// A superuser role of its own on the local cluster (roles are cluster-wide), with `setting`
/// applied to its sessions; returns a DSN for `db` as that role.
fn role_with(db: &TestDb, suffix: &str, setting: &str) -> String {
    let role = format!("{}_{suffix}", db.name);
    let mut c = db.client();
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'pw'; ALTER ROLE {role} SET {setting}"
    ))
    .unwrap();
    format!(
        "host=127.0.0.1 port={} user={role} password=pw dbname={} sslmode=disable",
        common::local().port(),
        db.name
    )
}

#[test]
fn a_read_only_server_is_refused_with_exit_4() {
    let db = common::local_test_db();
    db.migrate();
    common::insert_events(&mut db.client(), "outbox_event", 50, "order.created");
    let ro = role_with(&db, "ro", "default_transaction_read_only = on");
    let rw_attr = format!("{ro} target_session_attrs=read-write");
    for (args, dsn) in [
        (vec!["--drain"], &ro),
        (vec!["migrate"], &ro),
        (vec!["--drain"], &rw_attr),
    ] {
        let out = common::run(
            dispatchbox()
                .args(&args)
                .args(["--dsn", dsn, "--poll-interval", "0.05"]),
            DEADLINE,
        );
        assert_eq!(out.code, Some(4), "{out}");
        assert!(last_error_line(&out).contains("read-only"), "{out}");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending' AND attempts = 0"),
        50
    );
}

#[test]
fn a_tiny_statement_timeout_on_the_role_does_not_livelock() {
    let db = common::local_test_db();
    let slow = role_with(&db, "st", "statement_timeout = '3ms'");
    // migrate runs without a statement timeout (it builds an index).
    let out = common::run(dispatchbox().args(["migrate", "--dsn", &slow]), DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    let n = 2000;
    common::insert_events(&mut db.client(), "outbox_event", n, "order.created");
    let out = common::run(
        dispatchbox().args([
            "--dsn",
            &slow,
            "--drain",
            "--poll-interval",
            "0.05",
            "--batch-size",
            "1000",
        ]),
        Duration::from_secs(90),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'done'"),
        n,
        "{out}"
    );
    super::assert_exactly_once(n, super::delivered_ids(&out.stdout));
}

/// A TCP proxy to the local cluster that can turn into a silent server: `go_silent` cuts
/// every proxied connection, and later connections are accepted and never answered.
struct Proxy {
    port: u16,
    silent: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let p = Proxy {
            port,
            silent: Arc::default(),
            accepted: Arc::default(),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (silent, accepted, conns, stop) = (
            Arc::clone(&p.silent),
            Arc::clone(&p.accepted),
            Arc::clone(&p.conns),
            Arc::clone(&p.stop),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let mut kept = conns.lock().unwrap();
                if silent.load(Ordering::SeqCst) {
                    kept.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                kept.push(client);
                kept.push(server);
            }
        });
        p
    }

    fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.go_silent();
    }
}

#[test]
fn sigterm_while_reconnecting_to_a_silent_server_stops_at_once() {
    let db = common::local_test_db();
    db.migrate();
    let proxy = Proxy::start(common::local().port());
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={} sslmode=disable",
        proxy.port,
        common::PASSWORD,
        db.name
    );
    let worker = spawn(dispatchbox().args([
        "--dsn",
        &dsn,
        "--poll-interval",
        "0.05",
        "--shutdown-timeout",
        "5",
    ]));
    let activity = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND application_name = 'dispatchbox' AND state = 'idle'",
        db.name
    );
    wait_until(DEADLINE, "the worker is connected and polling", || {
        worker.stderr_so_far().contains("worker ready") && db.count(&activity) >= 1
    });
    proxy.go_silent();
    wait_until(DEADLINE, "the worker tried to reconnect", || {
        proxy.accepted.load(Ordering::SeqCst) >= 2
    });
    worker.signal("TERM");
    // The supervisor would SIGKILL a child that ignores the stop after 5 + 10 s.
    let out = worker.wait(DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("did not stop in time"), "{out}");
    assert!(out.stderr.contains("lost the database connection"), "{out}");
}

#[test]
fn a_server_that_turns_read_only_mid_run_is_a_refusal_not_an_outage() {
    let cluster = common::private_cluster(false);
    let admin = cluster.dsn("postgres");
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    c.batch_execute("CREATE DATABASE ro_mid").unwrap();
    let dsn = cluster.dsn("ro_mid");
    let out = common::run(dispatchbox().args(["migrate", "--dsn", &dsn]), DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    let worker = spawn(dispatchbox().args(["--dsn", &dsn, "--poll-interval", "0.05"]));
    let activity = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'ro_mid' \
                    AND application_name = 'dispatchbox' AND state = 'idle'";
    wait_until(DEADLINE, "the worker is connected and polling", || {
        c.query_one(activity, &[]).unwrap().get::<_, i64>(0) >= 1
    });
    // Existing sessions take the new default at their next statement.
    c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let out = worker.wait(DEADLINE);
    assert_eq!(out.code, Some(4), "{out}");
    assert!(last_error_line(&out).contains("read-only"), "{out}");
}
