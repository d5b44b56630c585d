//! Hostile input from the operator's side: table names that try to run SQL, configuration
//! files that are not files (or never end), event ids that are not ids. Each is refused with
//! one line and exit 2, before anything touches the database.

use crate::common::{self, dispatchbox, run};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Tables in the database (schema.name), sorted.
fn tables(db: &common::TestDb) -> Vec<String> {
    db.client()
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_tables
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn sql_in_a_table_name_runs_nowhere() {
    let db = common::test_db();
    let evil = "zz\nCREATE TABLE injected_marker(x int);--";
    let archive = "a\nCREATE TABLE injected_marker(x int);--";
    for args in [
        &["migrate", "--table", evil][..],
        &["migrate", "--notify", "on", "--table", evil],
        &["migrate", "--print-sql", "--table", evil],
        &["status", "--table", evil],
        &["--drain", "--table", evil],
        &["prune", "--older-than", "1d", "--archive", archive],
    ] {
        let out = run(dispatchbox().args(["--dsn", &db.dsn]).args(args), T);
        assert_eq!(out.code, Some(2), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "not one line: {out}");
        assert!(
            out.stderr.contains("control characters are not allowed"),
            "{out}"
        );
        assert!(
            out.stderr.contains(r"\nCREATE TABLE injected_marker"),
            "{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");
    }
    // From the variable too.
    let out = run(
        dispatchbox()
            .args(["migrate", "--dsn", &db.dsn])
            .env("DISPATCHBOX_TABLE", evil),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .starts_with("dispatchbox: DISPATCHBOX_TABLE `zz\\n"),
        "{out}"
    );
    assert_eq!(tables(&db), Vec::<String>::new(), "something was created");
}

#[test]
fn table_names_that_need_quoting_migrate_and_drain() {
    let db = common::test_db();
    for name in [
        "Ünïcødé Events",
        "ops.Mixed \"Quoted\" Name",
        "with space--and dashes",
    ] {
        if let Some((schema, _)) = name.split_once('.') {
            db.client()
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .unwrap();
        }
        // `on` creates the trigger, `off` drops it, `on` again: every path that names it.
        for notify in ["on", "off", "on"] {
            let out = run(
                dispatchbox()
                    .args(["migrate", "--dsn", &db.dsn, "--notify", notify])
                    .args(["--table", name]),
                T,
            );
            assert_eq!(out.code, Some(0), "{name} --notify {notify}: {out}");
        }
        common::insert_events(&mut db.client(), name, 3, "x");
        let out = super::drain(&db, &["--table", name]);
        assert_eq!(out.code, Some(0), "{name}: {out}");
        assert_eq!(super::delivered_ids(&out.stdout).len(), 3, "{name}: {out}");
        let out = run(
            dispatchbox().args(["migrate", "--dsn", &db.dsn, "--check", "--table", name]),
            T,
        );
        assert_eq!(out.code, Some(0), "{name}: {out}");
    }
    // The index and trigger names are derived, quoted, from the names as given.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_trigger WHERE tgname IN
             ('Ünïcødé Events_notify', 'Mixed \"Quoted\" Name_notify', 'with space--and dashes_notify')"
        ),
        3
    );
}

#[test]
fn names_that_look_like_placeholders_stay_names() {
    // A table named like a placeholder, columns named like bind parameters: each is put into
    // the statement once, quoted, and never replaced again.
    let db = common::test_db();
    let table = "ev{archive}@n";
    let admin = |args: &[&str]| {
        run(
            dispatchbox()
                .args(["--dsn", &db.dsn, "--table", table])
                .args(args),
            T,
        )
    };
    let out = admin(&["migrate"]);
    assert_eq!(out.code, Some(0), "{out}");
    db.client()
        .batch_execute(
            r#"ALTER TABLE "ev{archive}@n" ADD COLUMN "@id" text DEFAULT 'at-id',
                                           ADD COLUMN "{t}" text DEFAULT 'brace-t';
               CREATE TABLE "arch{cols}" (LIKE "ev{archive}@n");"#,
        )
        .unwrap();
    common::insert_events(&mut db.client(), table, 4, "x");
    db.client()
        .batch_execute(
            r#"UPDATE "ev{archive}@n" SET status = 'dead' WHERE id = 1;
               UPDATE "ev{archive}@n" SET status = 'done', delivered_at = now() - interval '2 days'
               WHERE id > 1;"#,
        )
        .unwrap();
    let out = admin(&["dead", "show", "1"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.contains("at-id") && out.stdout.contains("brace-t"),
        "{out}"
    );
    let out = admin(&["prune", "--older-than", "1d", "--archive", "arch{cols}"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("3 done event(s)"), "{out}");
    assert_eq!(
        db.count(r#"SELECT count(*) FROM "arch{cols}" WHERE "@id" = 'at-id'"#),
        3
    );
}

/// Files that are no configuration file: a FIFO nobody writes to (opening it for reading the
/// ordinary way blocks for ever), files just over a cap, and the messages they get.
struct Hostile {
    dir: common::TempDir,
    fifo: String,
}

const ZERO: &str = "/dev/zero";
const CHARDEV: &str = "not a regular file (a character device)";
const FIFO: &str = "not a regular file (a FIFO)";
/// A DSN that is never connected to: every refusal comes first.
const DSN: &str = "host=127.0.0.1 port=1 user=u password=hunter2";

impl Hostile {
    fn new(tag: &str) -> Hostile {
        let dir = common::TempDir::new(tag);
        let path = dir.join("fifo");
        let out = run(std::process::Command::new("mkfifo").arg(&path), T);
        assert!(out.status.success(), "{out}");
        let fifo = path.display().to_string();
        Hostile { dir, fifo }
    }

    /// A regular file of `n` bytes, mode 0600.
    fn sized(&self, name: &str, n: usize) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, vec![b'#'; n]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    }
}

fn too_large(what: &str) -> String {
    format!("too large: {what} holds at most")
}

/// `cmd` must exit 2 with one line naming `file` and `problem`. The run has a deadline (it
/// fails the test instead of hanging).
fn refused_cmd(cmd: &mut std::process::Command, file: &str, problem: &str) {
    let out = run(cmd, T);
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "not one line: {out}");
    assert!(
        out.stderr.contains(&format!("{file}: {problem}")),
        "expected `{file}: {problem}`: {out}"
    );
}

fn refused(args: &[&str], file: &str, problem: &str) {
    refused_cmd(dispatchbox().args(args), file, problem);
}

#[test]
fn a_dsn_file_must_be_a_small_regular_file() {
    let h = Hostile::new("dsn-files");
    let big = h.sized("dsn", 64 * 1024 + 1);
    let dir = h.dir.path().display().to_string();
    for (file, problem) in [
        (ZERO, CHARDEV.to_string()),
        (&h.fifo, FIFO.to_string()),
        (&dir, "not a regular file (a directory)".to_string()),
        (&big, too_large("a DSN file")),
    ] {
        refused(&["--dsn-file", file, "--drain"], file, &problem);
    }
    refused_cmd(
        dispatchbox()
            .arg("stats")
            .env("DISPATCHBOX_DSN_FILE", &h.fifo),
        &format!("DISPATCHBOX_DSN_FILE {}", h.fifo),
        FIFO,
    );
    // The password file: ignored when it is not a regular file (as libpq does), refused when
    // too large.
    let print_sql = [
        "migrate",
        "--print-sql",
        "--dsn",
        "host=127.0.0.1 port=1 user=u",
    ];
    let out = run(dispatchbox().args(print_sql).env("PGPASSFILE", &h.fifo), T);
    assert_eq!(out.code, Some(0), "{out}");
    let big = h.sized("pgpass", 1024 * 1024 + 1);
    refused_cmd(
        dispatchbox().args(print_sql).env("PGPASSFILE", &big),
        &format!("password file {big}"),
        &too_large("a password file"),
    );
}

#[test]
fn certificate_files_must_be_small_regular_files() {
    let h = Hostile::new("tls-files");
    let big = h.sized("pem", 4 * 1024 * 1024 + 1);
    let fifo = &h.fifo;
    for (params, file, problem) in [
        (
            format!("sslmode=verify-full sslrootcert={ZERO}"),
            ZERO,
            CHARDEV.to_string(),
        ),
        (
            format!("sslmode=verify-ca sslrootcert={fifo}"),
            fifo,
            FIFO.to_string(),
        ),
        (
            format!("sslmode=verify-ca sslrootcert={big}"),
            &big,
            too_large("a certificate or key file"),
        ),
        (
            format!("sslmode=require sslcert={fifo} sslkey={ZERO}"),
            fifo,
            FIFO.to_string(),
        ),
    ] {
        let full = format!("{DSN} {params}");
        refused(&["--dsn", &full, "--drain"], file, &problem);
        refused(&["stats", "--dsn", &full], file, &problem);
    }
    // OpenSSL's SSL_CERT_FILE, which it opens itself (and would wait on for ever).
    let full = format!("{DSN} sslmode=verify-full");
    for (file, problem) in [(ZERO, CHARDEV), (fifo, FIFO)] {
        refused_cmd(
            dispatchbox()
                .args(["stats", "--dsn", &full])
                .env("SSL_CERT_FILE", file),
            &format!("SSL_CERT_FILE {file}"),
            problem,
        );
    }
}

#[test]
fn webhook_settings_and_their_ca_files_must_be_small_regular_files() {
    let h = Hostile::new("webhook-files");
    let route = "*=https://hooks.example/x";
    let check = |settings: &str, file: &str, problem: &str| {
        let args = [
            "--dsn",
            DSN,
            "--route",
            route,
            "--webhook-config",
            settings,
            "--drain",
        ];
        refused(&args, file, problem);
    };
    check(&h.fifo, &h.fifo, FIFO);
    let big = h.sized("big.json", 1024 * 1024 + 1);
    check(&big, &big, &too_large("a webhook settings file"));
    let big_pem = h.sized("pem", 4 * 1024 * 1024 + 1);
    for (i, (ca, problem)) in [
        (ZERO, CHARDEV.to_string()),
        (&h.fifo, FIFO.to_string()),
        (&big_pem, too_large("a certificate or key file")),
    ]
    .into_iter()
    .enumerate()
    {
        let settings = h.sized(&format!("settings{i}.json"), 0);
        let json = format!(r#"{{"https://hooks.example/x": {{"ca_file": "{ca}"}}}}"#);
        std::fs::write(&settings, json).unwrap();
        check(&settings, &format!("ca_file {ca}"), &problem);
    }
}

#[test]
fn bad_event_ids_are_named_with_the_reason() {
    // Refused before connecting: no database needed, none is touched.
    let dsn = "host=127.0.0.1 port=1 user=u password=hunter2";
    for (args, expect) in [
        (
            &["dead", "retry", "abc"][..],
            "dead retry: `abc` is not an event id (a whole number)",
        ),
        (
            &["dead", "retry", "99999999999999999999"],
            "dead retry: `99999999999999999999` is out of range: event ids go up to 9223372036854775807",
        ),
        (
            &["dead", "show", "9223372036854775808"],
            "dead show: `9223372036854775808` is out of range",
        ),
        (
            &["dead", "retry", "1,2"],
            "dead retry: `1,2` is not an event id: give several ids as separate arguments",
        ),
        (
            &["dead", "retry", ""],
            "dead retry: `` is not an event id: the argument is empty",
        ),
        (
            &["dead", "purge", "--yes", "7", "0"],
            "dead purge: `0` is not an event id: ids are 1 or more",
        ),
    ] {
        let out = run(dispatchbox().args(args).args(["--dsn", dsn]), T);
        assert_eq!(out.code, Some(2), "{out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "not one line: {out}");
        assert!(out.stderr.contains(expect), "expected {expect:?}: {out}");
    }
}
