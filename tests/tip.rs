//! Reads are served by the partition's leader only, once it applied an
//! entry of its own term (issue 16, item 6): a follower answers
//! NOT_LEADER_OR_FOLLOWER, and a consumer at the tip (confluent-kafka,
//! auto.offset.reset=latest) keeps its position when the leader is killed
//! and another takes over, instead of being told its offset is out of
//! range and skipping records. And an offset that another region's view
//! already shows is waited for, not called out of range, in a region that
//! holds the records but has not merged them yet.

mod common;

use std::collections::BTreeMap;
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

/// Region `y` takes `x`'s records into its view as soon as they arrive;
/// `x` takes its own in only once `y` is known to hold them, a round trip
/// later (4 s added to it here). Meanwhile `y`'s high watermark is ahead
/// of `x`'s, and a consumer moving from `y` to `x` at `y`'s position (a
/// group's commit made in `y`) asks `x` for an offset past its high
/// watermark. `x` holds those records: it answers no records and no
/// error, and serves the records once its view reached the offset. (The
/// topic is held by `x` and `y` only, so no third region relays between
/// them; the metadata leader's region is the third, so no lease is
/// hindered by the delay.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_another_regions_view_shows_is_waited_for_not_out_of_range() {
    let c = Cluster::start_three();
    let (_meta, x, y) = c.regions_around_meta_leader();
    let mut cx = Client::new(&c.region_bootstrap(&x));
    let mut cy = Client::new(&c.region_bootstrap(&y));
    cx.timeout = Duration::from_secs(10);
    cy.timeout = Duration::from_secs(10);
    let configs: BTreeMap<String, String> =
        [("meridian.regions".to_string(), format!("{x},{y}"))].into();
    cx.create_topic("ahead", 1, &configs).await.unwrap();
    produce_to(&cx, "ahead", "warm".into()).await;
    c.delay(&x, &y, 4000);
    let started = Instant::now();
    let mut round = 0;
    let mut written = 1;
    let (conn, ahead) = loop {
        // The window is about 2 s long; a round that misses it (a loaded
        // machine) tries again with new records.
        assert!(round < 5, "{y}'s view was never ahead of {x}'s");
        for i in 0..5 {
            produce_to(&cx, "ahead", format!("r{round}-{i}")).await;
        }
        written += 5;
        let y_hw = loop {
            // (Right after the topic was created, `y` may not know it yet.)
            let hw = cy
                .list_offset("ahead", 0, -1)
                .await
                .map_or(-1, |(hw, _)| hw);
            if hw == written {
                break hw;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{y} took in {hw} of {written} records"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let conn = cx.leader("ahead", 0).await.unwrap();
        match fetch_on(&conn, "ahead", 0, y_hw, 0).await {
            Ok((recs, hw)) if hw < y_hw => {
                assert!(recs.is_empty(), "records past the high watermark: {recs:?}");
                break (conn, y_hw);
            }
            Ok(_) => round += 1,
            Err(e) => panic!("{x} answered {e} for offset {y_hw}, which {y}'s view shows"),
        }
    };
    // The position holds: the next record written is read from it.
    produce_to(&cx, "ahead", "next".into()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (recs, _) = fetch_on(&conn, "ahead", 0, ahead, 2000).await.unwrap();
        if let Some(r) = recs.first() {
            assert_eq!(r.offset, ahead);
            assert_eq!(r.value.as_deref(), Some(&b"next"[..]), "{recs:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{x} never served offset {ahead}");
    }
}

/// Produces one record to partition 0 of `topic`.
async fn produce_to(client: &Client, topic: &str, value: String) {
    let batch = encode_batch(&[(None, Some(Bytes::from(value)))], Compression::None);
    client.produce(topic, 0, batch).await.unwrap();
}
