//! A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir (as the `postgres` OS user
//! when running as root), TCP with a password and a unix socket, TLS when asked. Invariant: no
//! cluster outlives the test process (Drop, and a watchdog process for the shared one, which
//! as a static is never dropped).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::binary::{detached_shell, remove_env, show};
use super::ports::free_port;
use super::{sh_quote, unique};

/// Password of the `postgres` role in every cluster the harness starts (scram over TCP).
pub const PASSWORD: &str = "s3cret-pw";

const NOT_FOUND: &str = "PostgreSQL server binaries (initdb, pg_ctl) not found: run \
     scripts/quickstart.sh once as root, which installs what is missing (or install them \
     yourself: apt-get install -y postgresql, dnf install -y postgresql-server, apk add \
     postgresql); DISPATCHBOX_TEST_DSN can point the tests at a server where this user may \
     CREATE DATABASE, but some tests still need local server binaries";

/// How long pg_ctl may take to start or stop a server.
const PG_CTL_WAIT: &str = "60";

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
        detached_shell(&script, "the cluster watchdog")
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

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
