//! Invariant 1 across a leader crash: kill -9 a partition's leader while a
//! producer with acks=all runs; after the new leader takes over, every
//! acknowledged record is present exactly once, at its acknowledged offset,
//! in order. Writes that failed are "unknown": present at most once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Cluster;
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, produce_on, Client};

async fn read_all(client: &Client, topic: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let (hw, _) = client.list_offset(topic, 0, -1).await.unwrap();
    let mut next = 0;
    while next < hw {
        let (recs, _) = client.fetch(topic, 0, next, 500).await.unwrap();
        for r in recs {
            next = r.offset + 1;
            out.push((r.offset, String::from_utf8(r.value.unwrap()).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_record() {
    let mut c = Cluster::start();
    let mut client = Client::new(&c.bootstrap());
    client.timeout = Duration::from_secs(5);
    client
        .create_topic("f", 1, &Default::default())
        .await
        .unwrap();

    let mut acked: BTreeMap<u64, i64> = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut killed = None;
    let mut acked_after_kill = 0;
    let started = Instant::now();
    let mut seq = 0u64;
    while acked_after_kill < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress after the kill"
        );
        let batch = encode_batch(
            &[(None, Some(Bytes::from(format!("v-{seq}"))))],
            Compression::None,
        );
        let r = match client.leader("f", 0).await {
            Ok(conn) => produce_on(&conn, "f", 0, batch, -1).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(offset) => {
                acked.insert(seq, offset);
                if killed.is_some() {
                    acked_after_kill += 1;
                }
            }
            Err(_) => {
                unknown.push(seq);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        seq += 1;
        if acked.len() == 300 && killed.is_none() {
            let leader = client.topic("f", false).await.unwrap().leaders[0] as u64;
            c.kill9(leader);
            killed = Some(leader);
        }
    }

    let log = read_all(&client, "f").await;
    let mut position: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for (offset, value) in &log {
        let s: u64 = value.strip_prefix("v-").unwrap().parse().unwrap();
        position.entry(s).or_default().push(*offset);
    }
    for (s, offset) in &acked {
        assert_eq!(
            position.get(s),
            Some(&vec![*offset]),
            "acknowledged record {s} must be present exactly once at offset {offset}"
        );
    }
    for s in &unknown {
        assert!(
            position.get(s).is_none_or(|v| v.len() == 1),
            "record {s} stored twice"
        );
    }
    assert!(
        position
            .keys()
            .all(|s| acked.contains_key(s) || unknown.contains(s)),
        "a record nobody wrote"
    );
    let seqs: Vec<u64> = log
        .iter()
        .map(|(_, v)| v.strip_prefix("v-").unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "records keep the producer's order"
    );
    assert_eq!(
        log.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (0..log.len() as i64).collect::<Vec<_>>()
    );

    // The killed node comes back and catches up.
    let killed = killed.unwrap();
    c.restart(killed);
    c.wait_healthy(Duration::from_secs(60));
    let hw = log.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = common::status(&c.node(killed).admin);
        let caught_up = status
            .as_ref()
            .and_then(|s| s.partitions.first()?.high_watermark)
            .is_some_and(|h| h >= hw);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node {killed} did not catch up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
