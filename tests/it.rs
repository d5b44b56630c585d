//! The integration-test target: one binary, one `mod` per area, the harness in `common`.

mod common;

#[test]
fn harness_smoke() {
    let db = common::test_db();
    let mut client = db.client();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);

    // The schema as `migrate` will apply it, without depending on the binary.
    client
        .batch_execute(include_str!("../sql/schema.sql"))
        .unwrap();
    common::insert_events(&mut client, "outbox_event", 25, "order.created");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox_event WHERE status = 'pending'"),
        25
    );

    if let Some(cluster) = common::shared().cluster() {
        let ssl: String = client.query_one("SHOW ssl", &[]).unwrap().get(0);
        assert_eq!(ssl, "on");
        assert!(cluster.ca_cert_path().is_file());
    }
}

mod suite;
