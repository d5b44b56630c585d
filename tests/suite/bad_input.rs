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

/// A FIFO nobody writes to: opening it for reading the ordinary way blocks for ever.
fn fifo(dir: &common::TempDir) -> String {
    let path = dir.join("fifo");
    let out = run(std::process::Command::new("mkfifo").arg(&path), T);
    assert!(out.status.success(), "{out}");
    path.display().to_string()
}

/// A regular file of `n` bytes.
fn sized(dir: &common::TempDir, name: &str, n: usize) -> String {
    let path = dir.join(name);
    std::fs::write(&path, vec![b'#'; n]).unwrap();
    path.display().to_string()
}

/// `args` must exit 2 at once with one line naming `file` and `problem`. The run has a
/// deadline (it fails the test instead of hanging).
fn refused(args: &[&str], file: &str, problem: &str) {
    let out = run(dispatchbox().args(args), T);
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "not one line: {out}");
    assert!(
        out.stderr.contains(&format!("{file}: {problem}")),
        "expected `{file}: {problem}`: {out}"
    );
}

#[test]
fn files_named_in_the_configuration_must_be_small_regular_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("conf-files");
    let fifo = fifo(&dir);
    let dsn_big = sized(&dir, "dsn", 64 * 1024 + 1);
    let pem_big = sized(&dir, "pem", 4 * 1024 * 1024 + 1);
    let (zero, tmp) = ("/dev/zero", dir.path().display().to_string());
    let (chardev, fifo_kind) = (
        "not a regular file (a character device)",
        "not a regular file (a FIFO)",
    );
    let too_large = |what| format!("too large: {what} holds at most");

    // --dsn-file (and its variable).
    for (file, problem) in [
        (zero, chardev.to_string()),
        (&fifo, fifo_kind.to_string()),
        (&tmp, "not a regular file (a directory)".to_string()),
        (&dsn_big, too_large("a DSN file")),
    ] {
        refused(&["--dsn-file", file, "--drain"], file, &problem);
    }
    let out = run(
        dispatchbox()
            .args(["stats"])
            .env("DISPATCHBOX_DSN_FILE", &fifo),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains(&format!("DISPATCHBOX_DSN_FILE {fifo}: {fifo_kind}")),
        "{out}"
    );

    // The DSN's certificate and key files.
    let dsn = "host=127.0.0.1 port=1 user=u password=hunter2";
    for (params, file, problem) in [
        (
            "sslmode=verify-full sslrootcert=/dev/zero",
            zero,
            chardev.to_string(),
        ),
        (
            &format!("sslmode=verify-ca sslrootcert={fifo}"),
            &fifo,
            fifo_kind.to_string(),
        ),
        (
            &format!("sslmode=verify-ca sslrootcert={pem_big}"),
            &pem_big,
            too_large("a certificate or key file"),
        ),
        (
            &format!("sslmode=require sslcert={fifo} sslkey={zero}"),
            &fifo,
            fifo_kind.to_string(),
        ),
    ] {
        let full = format!("{dsn} {params}");
        refused(&["--dsn", &full, "--drain"], file, &problem);
        refused(&["stats", "--dsn", &full], file, &problem);
    }

    // OpenSSL's SSL_CERT_FILE, which it opens itself (and would wait on for ever).
    for (file, problem) in [(zero, chardev), (&fifo, fifo_kind)] {
        let full = format!("{dsn} sslmode=verify-full");
        let out = run(
            dispatchbox()
                .args(["stats", "--dsn", &full])
                .env("SSL_CERT_FILE", file),
            T,
        );
        assert_eq!(out.code, Some(2), "{out}");
        assert!(
            out.stderr
                .contains(&format!("SSL_CERT_FILE {file}: {problem}")),
            "{out}"
        );
    }

    // --webhook-config and its ca_file.
    let route = "*=https://hooks.example/x";
    refused(
        &["--dsn", dsn, "--route", route, "--webhook-config", &fifo],
        &fifo,
        fifo_kind,
    );
    let settings = dir.join("settings.json");
    for (ca, problem) in [
        (zero, chardev.to_string()),
        (&fifo, fifo_kind.to_string()),
        (&pem_big, too_large("a certificate or key file")),
    ] {
        std::fs::write(
            &settings,
            format!(r#"{{"https://hooks.example/x": {{"ca_file": "{ca}"}}}}"#),
        )
        .unwrap();
        std::fs::set_permissions(&settings, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings = settings.display().to_string();
        refused(
            &[
                "--dsn",
                dsn,
                "--route",
                route,
                "--webhook-config",
                &settings,
                "--drain",
            ],
            &format!("ca_file {ca}"),
            &problem,
        );
    }
    // The password file: ignored when it is not a regular file (as libpq does), refused when
    // too large.
    let no_password = "host=127.0.0.1 port=1 user=u";
    let print_sql = ["migrate", "--print-sql", "--dsn", no_password];
    let out = run(dispatchbox().args(print_sql).env("PGPASSFILE", &fifo), T);
    assert_eq!(out.code, Some(0), "{out}");
    let pgpass_big = sized(&dir, "pgpass", 1024 * 1024 + 1);
    std::fs::set_permissions(&pgpass_big, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(
        dispatchbox().args(print_sql).env("PGPASSFILE", &pgpass_big),
        T,
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "password file {pgpass_big}: {}",
            too_large("a password file")
        )),
        "{out}"
    );

    let settings_big = sized(&dir, "big.json", 1024 * 1024 + 1);
    std::fs::set_permissions(&settings_big, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(
        &[
            "--dsn",
            dsn,
            "--route",
            route,
            "--webhook-config",
            &settings_big,
        ],
        &settings_big,
        &too_large("a webhook settings file"),
    );
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
