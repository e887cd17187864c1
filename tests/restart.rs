//! Durability across a whole-region restart: kill -9 all three nodes,
//! start them again, and every acknowledged record is there; new writes
//! continue the offsets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Cluster;
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};

async fn values(client: &Client, topic: &str, partition: i32) -> Vec<String> {
    let (hw, _) = client.list_offset(topic, partition, -1).await.unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < hw {
        let (recs, _) = client
            .fetch(topic, partition, out.len() as i64, 500)
            .await
            .unwrap();
        out.extend(
            recs.into_iter()
                .map(|r| String::from_utf8(r.value.unwrap()).unwrap()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_restart_with_every_record() {
    let mut c = Cluster::start();
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("r", 3, &Default::default())
        .await
        .unwrap();
    let mut expected = vec![Vec::new(); 3];
    for i in 0..60 {
        let p = i % 3;
        let vals: Vec<String> = (0..10).map(|j| format!("{p}-{i}-{j}")).collect();
        let batch: Vec<_> = vals
            .iter()
            .map(|v| (None, Some(Bytes::from(v.clone()))))
            .collect();
        client
            .produce("r", p as i32, encode_batch(&batch, Compression::Lz4))
            .await
            .unwrap();
        expected[p].extend(vals);
    }
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_healthy(Duration::from_secs(60));
    let client = Client::new(&c.bootstrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .topic("r", false)
        .await
        .map(|t| t.leaders.iter().any(|l| *l < 0))
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "partitions without a leader after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (p, want) in expected.iter().enumerate() {
        assert_eq!(&values(&client, "r", p as i32).await, want, "partition {p}");
    }
    let base = client
        .produce(
            "r",
            0,
            encode_batch(&[(None, Some(Bytes::from("after")))], Compression::None),
        )
        .await
        .unwrap();
    assert_eq!(
        base,
        expected[0].len() as i64,
        "offsets continue after the restart"
    );
}
