//! The integration-test harness: a real PostgreSQL, a fresh database per test, and the
//! `dispatchbox` binary run the way a user runs it.
//!
//! The server is a throwaway cluster (initdb + pg_ctl in a temp dir, as the `postgres` OS
//! user when running as root), shared by every test in the process, unless
//! `DISPATCHBOX_TEST_DSN` names a server where this user may `CREATE DATABASE`. Tests that
//! stop or restart the server take a [`private_cluster`]. Invariants: no cluster outlives
//! the test process (Drop, and a watchdog for the shared one, which as a static is never
//! dropped); every wait has a deadline; every failure shows the command, its output and
//! the server log tail.
#![allow(dead_code)] // each test area uses its own part of the harness

pub mod brokers;

use std::fmt;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dispatchbox::internals::Dsn;
use postgres::{Client, NoTls};

/// Password of the `postgres` role in every cluster the harness starts (scram over TCP).
pub const PASSWORD: &str = "s3cret-pw";

const NOT_FOUND: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found: run \
     scripts/quickstart.sh once as root, which installs what is missing (or install them \
     yourself: apt-get install -y postgresql, dnf install -y postgresql-server, apk add \
     postgresql); DISPATCHBOX_TEST_DSN can point the tests at a server where this user may \
     CREATE DATABASE, but some tests still need local server binaries";

/// How long pg_ctl may take to start or stop a server.
const PG_CTL_WAIT: &str = "60";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// The binary under test

/// Path of the `dispatchbox` binary cargo built for this test run.
pub fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dispatchbox"))
}

/// A `Command` for the binary, without any `DISPATCHBOX_*` or libpq `PG*` variable from the
/// developer's environment, so a test sees only the configuration it passes.
pub fn dispatchbox() -> Command {
    let mut cmd = Command::new(bin_path());
    remove_env(&mut cmd, &["DISPATCHBOX_", "PG"]);
    cmd
}

/// Removes from `cmd`'s environment every variable of ours whose name starts with one of
/// `prefixes` (e.g. `["DISPATCHBOX_", "PG"]`).
pub fn remove_env(cmd: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// A fresh directory under the system temp dir, removed with what is in it when dropped,
/// also when the test fails.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `dbx-<tag>-<pid>-<n>`, empty.
    pub fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("dbx-{tag}-{}-{}", std::process::id(), unique()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Throwaway clusters

/// A throwaway PostgreSQL cluster in its own temp dir, listening on 127.0.0.1:`port()`
/// (scram, password [`PASSWORD`]) and on a unix socket in `socket_dir()` (trust).
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    bindir: PathBuf,
    port: u16,
    ssl: bool,
    as_postgres: bool,
    watchdog: Option<Child>,
}

impl Cluster {
    /// initdb + start. With `ssl`, the server also speaks TLS with a certificate for
    /// `localhost` / `127.0.0.1` signed by the CA at [`Cluster::ca_cert_path`].
    pub fn start(ssl: bool) -> Cluster {
        let bindir = find_bindir().unwrap_or_else(|| panic!("{NOT_FOUND}"));
        let root = std::env::temp_dir().join(format!(
            "dispatchbox-pg-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = fs::remove_dir_all(&root); // left over by an earlier process with this pid
        let sock = root.join("sock");
        fs::create_dir_all(&sock).unwrap_or_else(|e| panic!("create {}: {e}", sock.display()));
        let mut cluster = Cluster {
            data: root.join("data"),
            log: root.join("server.log"),
            sock,
            root,
            bindir,
            port: 0,
            ssl,
            as_postgres: running_as_root(),
            watchdog: None,
        };
        // From here on Drop (or, if this process dies first, the watchdog) cleans up.
        cluster.watchdog = Some(cluster.spawn_watchdog());

        let pwfile = cluster.root.join("pwfile");
        write_file(&pwfile, &format!("{PASSWORD}\n"));
        cluster.chown();
        let mut initdb = cluster.pg("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-U",
                "postgres",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        cluster.exec(initdb);

        if ssl {
            cluster.make_certs();
        }
        cluster.port = free_port();
        let mut conf = format!(
            "\n# dispatchbox test harness\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = {}\n\
             max_connections = 200\n\
             shared_buffers = 128MB\n\
             synchronous_commit = on\n\
             logging_collector = off\n\
             log_min_messages = warning\n",
            cluster.port,
            quote_literal(&cluster.sock.to_string_lossy()),
        );
        if ssl {
            conf += &format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                quote_literal(&cluster.data.join("server.crt").to_string_lossy()),
                quote_literal(&cluster.data.join("server.key").to_string_lossy()),
            );
        }
        cluster.append_conf(&conf);
        cluster.chown();

        // The port was free a moment ago; if another process took it since, pick again.
        for attempt in 1.. {
            let log_start = fs::metadata(&cluster.log).map_or(0, |m| m.len());
            let mut cmd = cluster.pg_ctl("start");
            let out = cmd.output();
            if matches!(&out, Ok(o) if o.status.success()) {
                break;
            }
            let log = cluster.log_since(log_start);
            if attempt < 5 && log.contains("already in use") {
                cluster.port = free_port();
                cluster.append_conf(&format!("port = {}\n", cluster.port));
                continue;
            }
            cluster.fail(&cmd, out);
        }
        cluster
    }

    /// The TCP port on 127.0.0.1 (the unix socket uses the same number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// DSN for `dbname` over TCP with the password and without TLS.
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname={dbname} sslmode=disable",
            self.port
        )
    }

    /// DSN for `dbname` over the unix socket (trust: no password).
    pub fn socket_dsn(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.sock.display(),
            self.port
        )
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.sock.clone()
    }

    /// The CA that signed the server certificate (only with `ssl`).
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(
            self.ssl,
            "ca_cert_path: this cluster was started without ssl"
        );
        self.root.join("ca.crt")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// `pg_ctl restart -m fast`: sessions are terminated, the port stays the same.
    pub fn restart(&self) {
        let mut cmd = self.pg_ctl("restart");
        cmd.args(["-m", "fast"]);
        self.exec(cmd);
    }

    /// `pg_ctl stop -m fast`; bring it back with [`Cluster::start_again`].
    pub fn stop(&self) {
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", "fast"]);
        self.exec(cmd);
    }

    /// `pg_ctl start` after [`Cluster::stop`].
    pub fn start_again(&self) {
        self.exec(self.pg_ctl("start"));
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_since(0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// A server program, run as `postgres` when we are root (the server refuses root).
    fn pg(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        remove_env(&mut cmd, &["PG"]);
        // Somewhere the postgres user may enter, whatever the test's cwd is.
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.pg("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", PG_CTL_WAIT, action]);
        cmd
    }

    fn exec(&self, mut cmd: Command) -> String {
        let out = cmd.output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            other => self.fail(&cmd, other),
        }
    }

    fn fail(&self, cmd: &Command, out: std::io::Result<std::process::Output>) -> ! {
        let what = match out {
            Err(e) => format!("could not run: {e}"),
            Ok(o) => format!(
                "{}\n--- stdout:\n{}\n--- stderr:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        };
        panic!(
            "test cluster command failed: {}\n{what}\n--- server log ({}):\n{}",
            show(cmd),
            self.log.display(),
            self.log_tail()
        );
    }

    fn append_conf(&self, text: &str) {
        let path = self.data.join("postgresql.conf");
        let mut conf =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        conf.push_str(text);
        write_file(&path, &conf);
    }

    /// Hand the whole dir to `postgres` (when root): files written by this process included.
    fn chown(&self) {
        if self.as_postgres {
            let mut cmd = Command::new("chown");
            cmd.args(["-R", "postgres:"]).arg(&self.root);
            self.exec(cmd);
        }
    }

    /// A CA and a server certificate signed by it, made with the `openssl` command.
    fn make_certs(&self) {
        let r = &self.root;
        write_file(
            &r.join("ca.cnf"),
            "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n\
             [dn]\nCN = dispatchbox test CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
        );
        write_file(
            &r.join("server.cnf"),
            "[req]\nprompt = no\ndistinguished_name = dn\n\
             [dn]\nCN = localhost\n\
             [v3_server]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost,IP:127.0.0.1\n\
             authorityKeyIdentifier = keyid,issuer\n",
        );
        // Relative paths: openssl runs in the cluster dir, next to `data/`.
        let steps = [
            "req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 -config ca.cnf \
             -keyout ca.key -out ca.crt",
            "req -new -nodes -newkey rsa:2048 -sha256 -config server.cnf \
             -keyout data/server.key -out server.csr",
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
             -sha256 -extfile server.cnf -extensions v3_server -out data/server.crt",
        ];
        for args in steps {
            let mut cmd = Command::new("openssl");
            cmd.args(args.split_whitespace())
                .current_dir(r)
                .stdin(Stdio::null());
            self.exec(cmd);
        }
        let key = self.data.join("server.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", key.display()));
    }

    /// A detached shell that stops the server and removes the dir once this process is
    /// gone, however it ends. Drop kills it after doing the same itself.
    fn spawn_watchdog(&self) -> Child {
        let pg_ctl = sh_quote(&self.bindir.join("pg_ctl").to_string_lossy());
        let stop = format!(
            "{}{pg_ctl} -D {} stop -m immediate -w -t 30",
            if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            sh_quote(&self.data.to_string_lossy()),
        );
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {}",
            std::process::id(),
            sh_quote(&self.root.to_string_lossy()),
        );
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0) // a Ctrl-C of the test run must not kill the cleanup
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the cluster watchdog (sh): {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = self.pg("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A cluster of its own, for tests that stop or restart the server. Needs the local server
/// binaries even when `DISPATCHBOX_TEST_DSN` is set.
pub fn private_cluster(ssl: bool) -> Cluster {
    Cluster::start(ssl)
}

/// The Debian layout (highest version first), then `pg_config --bindir`, then `PATH`.
fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut debian: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&bin) {
            return Some(bin);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| usable(dir))
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid; `id -u` where there is no /proc.
    match fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
    }
}

/// A port for a test server to listen on: free now, and outside the kernel's ephemeral
/// range (`ip_local_port_range`), so that no outgoing connection of any process can take it
/// before the server binds it (or while it restarts). Another test process may still pick
/// the same one: callers retry on "already in use". Never the same port twice in this process.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (lo, hi) = ephemeral_range();
    // Below the ephemeral range if there is room there, else above it.
    let (from, to) = if lo >= 11_024 {
        (lo - 10_000, lo)
    } else {
        (hi.saturating_add(1).max(1024), 65_535)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(from..to);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// The kernel's ephemeral port range (Linux's default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().filter_map(|p| p.parse().ok());
    match (parts.next(), parts.next()) {
        (Some(lo), Some(hi)) => (lo, hi),
        _ => (32_768, 60_999),
    }
}

/// A port on 127.0.0.1 where connections are refused, for as long as this lives: a socket
/// bound there but not listening (and without `SO_REUSEADDR`, so nothing else can bind it
/// meanwhile). Race-free, unlike a port that was free a moment ago.
pub struct RefusedPort {
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

impl RefusedPort {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the port: connections are accepted from now on.
    pub fn listen(self) -> TcpListener {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        // SAFETY: listen on the socket we own, then hand its ownership to the listener.
        unsafe {
            let rc = libc::listen(self._socket.as_raw_fd(), 128);
            assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
            TcpListener::from_raw_fd(self._socket.into_raw_fd())
        }
    }
}

pub fn refused_port() -> RefusedPort {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor this function owns from its creation.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut len = len;
        let rc = libc::getsockname(socket.as_raw_fd(), (&raw mut bound).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        RefusedPort {
            _socket: socket,
            port: u16::from_be(bound.sin_port),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shared server and per-test databases

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
fn redact(dsn: &str) -> String {
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

// ---------------------------------------------------------------------------------------
// Running commands with deadlines

/// Polls `f` every 20 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How a command ended and what it printed. `Display` shows all of it, for assertions.
pub struct Run {
    pub cmd: String,
    pub status: ExitStatus,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` to its end (stdin closed, output captured); after `timeout` it is killed and
/// the test panics with everything it printed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Run {
    spawn(cmd).wait(timeout)
}

/// A running command whose output is being collected; for tests that signal it or watch
/// its output while it runs. Dropping it kills the process if it is still running.
pub struct Spawned {
    child: Child,
    cmd: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Starts `cmd` with stdin closed and stdout/stderr captured.
pub fn spawn(cmd: &mut Command) -> Spawned {
    let shown = show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        collect(child.stdout.take().expect("piped"), Arc::clone(&stdout)),
        collect(child.stderr.take().expect("piped"), Arc::clone(&stderr)),
    ];
    Spawned {
        child,
        cmd: shown,
        stdout,
        stderr,
        readers,
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, `KILL`, ...) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "kill -s {name} {} failed: {status:?}",
            self.pid()
        );
    }

    /// What it has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        text(&self.stdout)
    }

    /// What it has printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        text(&self.stderr)
    }

    /// Waits for the exit and for both pipes to close; after `timeout` kills it and panics
    /// with its output.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let status = self.child.wait().expect("wait after kill");
                    self.join_readers(Instant::now() + Duration::from_secs(2));
                    panic!(
                        "timed out after {timeout:?}; killed it\n{}",
                        self.result(status)
                    );
                }
                Err(e) => panic!("wait for {}: {e}", self.cmd),
            }
        };
        // A child process that inherited the pipes would keep them open past the exit.
        if !self.join_readers(deadline.max(Instant::now() + Duration::from_secs(2))) {
            panic!(
                "exited, but its stdout/stderr stayed open (a child process still holds them)\n{}",
                self.result(status)
            );
        }
        self.result(status)
    }

    fn join_readers(&mut self, deadline: Instant) -> bool {
        while !self.readers.iter().all(JoinHandle::is_finished) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        true
    }

    fn result(&self, status: ExitStatus) -> Run {
        Run {
            cmd: self.cmd.clone(),
            status,
            code: status.code(),
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// A command line for messages.
fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            let arg = if arg.contains("password=") || (arg.contains("://") && arg.contains('@')) {
                redact(&arg).into()
            } else {
                arg
            };
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+*".contains(c))
            {
                arg.into_owned()
            } else {
                sh_quote(&arg)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A driver error with the server's DETAIL and HINT (its Display already has the cause).
fn pg_error(e: &postgres::Error) -> String {
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
