//! Reads are served by the partition's leader only, once it applied an
//! entry of its own term (issue 16, item 6): a follower answers
//! NOT_LEADER_OR_FOLLOWER, and a consumer at the tip (confluent-kafka,
//! auto.offset.reset=latest) keeps its position when the leader is killed
//! and another takes over, instead of being told its offset is out of
//! range and skipping records.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{python_json, require, Cluster};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, fetch_on, produce_on, Client, ClientError, Connection};

/// Produces `value` to `tip`/0, retrying through a leader change.
async fn produce(client: &Client, value: String) {
    let started = Instant::now();
    loop {
        let batch = encode_batch(
            &[(None, Some(Bytes::from(value.clone())))],
            Compression::None,
        );
        let r = match client.leader("tip", 0).await {
            Ok(conn) => produce_on(&conn, "tip", 0, batch, -1).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "cannot produce {value}: {e}"
                );
                client.forget_leaders("tip").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_at_the_tip_keeps_its_position_across_a_leader_change() {
    require("python3");
    let mut c = Cluster::start();
    let mut client = Client::new(&c.bootstrap());
    client.timeout = Duration::from_secs(5);
    client
        .create_topic("tip", 1, &Default::default())
        .await
        .unwrap();
    produce(&client, "first".into()).await;

    // A follower does not answer from its own view.
    let leader = client.topic("tip", false).await.unwrap().leaders[0] as u64;
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap();
    let conn = Connection::connect(&follower.kafka, Duration::from_secs(5), 8)
        .await
        .unwrap();
    match fetch_on(&conn, "tip", 0, 0, 100).await {
        Err(ClientError::Kafka { code, .. }) => assert_eq!(code, 6, "NOT_LEADER_OR_FOLLOWER"),
        other => panic!("a follower answered a fetch: {other:?}"),
    }

    // A consumer reaches the tip...
    let ready = c.dir.path().join("tip-ready");
    let (bootstrap, ready_arg) = (c.bootstrap(), ready.display().to_string());
    let consumer = std::thread::spawn(move || {
        python_json(
            "tip.py",
            &[&bootstrap, "tip", "tip-group", &ready_arg, "40"],
            Duration::from_secs(90),
        )
    });
    let started = Instant::now();
    let mut n = 0;
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the consumer read nothing"
        );
        produce(&client, format!("warm-{n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... reads on while the leader is killed and another takes over.
    let mut expected = Vec::new();
    for i in 0..30 {
        let v = format!("before-{i}");
        produce(&client, v.clone()).await;
        expected.push(v);
    }
    let leader = client.topic("tip", false).await.unwrap().leaders[0] as u64;
    c.kill9(leader);
    for i in 0..100 {
        let v = format!("after-{i}");
        produce(&client, v.clone()).await;
        expected.push(v);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = consumer.join().unwrap();
    let values: Vec<String> = out["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|v| !values.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "the consumer skipped {} of {} records: {missing:?}; errors {}",
        missing.len(),
        expected.len(),
        out["errors"]
    );
}
