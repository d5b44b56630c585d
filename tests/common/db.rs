//! The shared server (a [`Cluster`] with TLS, or `DISPATCHBOX_TEST_DSN`) and a database of its
//! own per test, dropped with the test; inserting events; driver errors with their detail.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use dispatchbox::internals::Dsn;
use postgres::{Client, NoTls};

use super::binary::{dispatchbox, run};
use super::cluster::{Cluster, PASSWORD};
use super::unique;

/// The server every [`test_db`] lives on: a [`Cluster`] started with ssl, or the server of
/// `DISPATCHBOX_TEST_DSN`.
pub struct Shared {
    base_dsn: String,
    cluster: Option<Cluster>,
    admin: Mutex<Option<Client>>,
}

impl Shared {
    /// DSN for `dbname` on this server.
    pub fn dsn(&self, dbname: &str) -> String {
        match &self.cluster {
            Some(cluster) => cluster.dsn(dbname),
            None => with_dbname(&self.base_dsn, dbname),
        }
    }

    /// The local cluster; `None` when the tests run against `DISPATCHBOX_TEST_DSN`.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Runs `sql` on the server's `postgres` database. Never panics: TestDb's Drop uses it.
    fn admin(&self, sql: &str) -> Result<(), String> {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let client = match admin.as_mut() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let dsn = self.dsn("postgres");
                let client = Client::connect(&dsn, NoTls)
                    .map_err(|e| format!("connect to {}: {}", redact(&dsn), pg_error(&e)))?;
                admin.insert(client)
            }
        };
        client.batch_execute(sql).map_err(|e| pg_error(&e))
    }
}

/// The shared server, set up by the first test that asks for it.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    let result = SHARED.get_or_init(|| {
        // A failed start is remembered, so the other tests fail fast with the same reason.
        panic::catch_unwind(AssertUnwindSafe(|| {
            let (base_dsn, cluster) = match std::env::var("DISPATCHBOX_TEST_DSN") {
                Ok(dsn) if !dsn.trim().is_empty() => (dsn, None),
                _ => {
                    let cluster = Cluster::start(true);
                    (cluster.dsn("postgres"), Some(cluster))
                }
            };
            Shared {
                base_dsn,
                cluster,
                admin: Mutex::new(None),
            }
        }))
        .map_err(|payload| panic_message(&*payload))
    });
    match result {
        Ok(shared) => shared,
        Err(msg) => panic!("the shared test server is not available: {msg}"),
    }
}

/// A database of its own for one test (`dbx_<pid>_<n>` on the shared server).
pub struct TestDb {
    pub dsn: String,
    pub name: String,
}

/// Creates a fresh, empty database on the shared server.
pub fn test_db() -> TestDb {
    let shared = shared();
    let name = format!("dbx_{}_{}", std::process::id(), unique());
    if let Err(e) = shared.admin(&format!("CREATE DATABASE {}", quote_ident(&name))) {
        panic!("CREATE DATABASE {name}: {e}");
    }
    TestDb {
        dsn: shared.dsn(&name),
        name,
    }
}

/// The local cluster (TLS on) that tests needing the server's files or ports use: the shared
/// one, or with `DISPATCHBOX_TEST_DSN` a private one started once (local binaries needed).
pub fn local() -> &'static Cluster {
    static LOCAL: OnceLock<Cluster> = OnceLock::new();
    match shared().cluster() {
        Some(c) => c,
        None => LOCAL.get_or_init(|| Cluster::start(true)),
    }
}

/// A fresh database on [`local`] (the same as [`test_db`] unless `DISPATCHBOX_TEST_DSN` is set).
pub fn local_test_db() -> TestDb {
    if shared().cluster().is_some() {
        return test_db();
    }
    let cluster = local();
    let name = format!("dbx_{}_{}", std::process::id(), unique());
    connect(&cluster.dsn("postgres"))
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", pg_error(&e)));
    TestDb {
        dsn: cluster.dsn(&name),
        name,
    }
}

impl TestDb {
    /// A new connection to this database.
    pub fn client(&self) -> Client {
        connect(&self.dsn)
    }

    /// `dispatchbox migrate --dsn <dsn>`, which must exit 0.
    pub fn migrate(&self) {
        let out = run(
            dispatchbox().args(["migrate", "--dsn", &self.dsn]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "migrate failed:\n{out}");
    }

    /// The single integer (int2/int4/int8) `sql` returns, e.g. `SELECT count(*) FROM ...`.
    pub fn count(&self, sql: &str) -> i64 {
        let row = self
            .client()
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("count: {sql}: {}", pg_error(&e)));
        let value = row
            .try_get::<_, Option<i64>>(0)
            .or_else(|_| row.try_get::<_, Option<i32>>(0).map(|v| v.map(i64::from)))
            .or_else(|_| row.try_get::<_, Option<i16>>(0).map(|v| v.map(i64::from)));
        match value {
            Ok(Some(n)) => n,
            Ok(None) => panic!("count: {sql}: returned NULL"),
            Err(e) => panic!("count: {sql}: wants one integer column (cast with ::bigint): {e}"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A local cluster is thrown away whole; an external server is cleaned best-effort.
        let shared = shared();
        if shared.cluster.is_none() {
            let _ = shared.admin(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&self.name)
            ));
        }
    }
}

fn connect(dsn: &str) -> Client {
    Client::connect(dsn, NoTls)
        .unwrap_or_else(|e| panic!("connect to {}: {}", redact(dsn), pg_error(&e)))
}

/// `dsn` with its database replaced, in key=value form (read by dispatchbox's own parser).
fn with_dbname(dsn: &str, dbname: &str) -> String {
    Dsn::parse(dsn)
        .and_then(|d| d.with_dbname(dbname))
        .map(|d| d.to_conninfo())
        .unwrap_or_else(|e| panic!("DISPATCHBOX_TEST_DSN: {e}"))
}

/// The DSN for messages, without its password (the harness's own [`PASSWORD`] may show).
pub(super) fn redact(dsn: &str) -> String {
    match Dsn::parse(dsn) {
        Ok(d) if d.password().is_none_or(|p| p == PASSWORD) => dsn.to_string(),
        Ok(d) => d.redacted(),
        Err(_) => "(a DSN that does not parse)".to_string(),
    }
}

/// Inserts `n` events of `event_type` (aggregate `order`/`g`, payload `{"n": g}`, g = 1..n)
/// in one statement.
pub fn insert_events(client: &mut Client, table: &str, n: i64, event_type: &str) {
    let sql = format!(
        "INSERT INTO {} (aggregate_type, aggregate_id, event_type, payload) \
         SELECT 'order', g::text, $1, jsonb_build_object('n', g) \
         FROM generate_series(1, $2::bigint) AS g",
        table
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".")
    );
    if let Err(e) = client.execute(&sql, &[&event_type, &n]) {
        panic!("insert_events: {sql}: {}", pg_error(&e));
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A driver error with the server's DETAIL and HINT (its Display already has the cause).
pub(super) fn pg_error(e: &postgres::Error) -> String {
    let mut msg = e.to_string();
    if let Some(db) = e.as_db_error() {
        for (label, text) in [("detail", db.detail()), ("hint", db.hint())] {
            if let Some(text) = text {
                msg += &format!(" ({label}: {text})");
            }
        }
    }
    msg
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_dbname_rewrites_key_value_and_uri_dsns() {
        assert_eq!(
            with_dbname("host=h port=5 dbname=app password='a b\\'c' ", "dbx_1"),
            "host=h port=5 password='a b\\'c' dbname=dbx_1"
        );
        assert_eq!(with_dbname("host = h", "x"), "host=h dbname=x");
        assert_eq!(
            with_dbname("postgres://u:p@h:5/app?sslmode=disable", "x"),
            "host=h port=5 user=u password=p dbname=x sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgresql://h", "x"),
            "host=h port=5432 dbname=x"
        );
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("host=h password=s3 user=u"), "host=h user=u");
        assert_eq!(
            redact("postgres://u:s3@h/db"),
            "host=h port=5432 user=u dbname=db"
        );
        let local = format!("host=h password={PASSWORD}");
        assert_eq!(redact(&local), local);
        assert!(!redact("host=h password=s3 port=x").contains("s3"));
    }
}
