//! Partition leadership balance in a region (`raft::balance`): a node's
//! partitions spread evenly over the others while it is down, and come
//! back to it once it returns; `/status` shows the spread; clients keep
//! producing throughout.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{status, Cluster};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};

/// Partitions led per node, as `node`'s `/status` says.
fn leaders(c: &Cluster, node: u64) -> Option<BTreeMap<u64, usize>> {
    Some(status(&c.node(node).admin)?.leaders)
}

fn wait_spread(c: &Cluster, asked: u64, want: &BTreeMap<u64, usize>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = leaders(c, asked);
        if last.as_ref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: leadership {last:?}, want {want:?}");
}

async fn produce_everywhere(client: &Client, round: &str) {
    for p in 0..6 {
        let v = bytes::Bytes::from(format!("{round}-{p}"));
        let batch = encode_batch(&[(None, Some(v))], Compression::None);
        let mut tries = 0;
        loop {
            match client.produce("spread", p, batch.clone()).await {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("produce to {p}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("produce to partition {p}: {e}"),
            }
        }
    }
}

#[test]
fn leadership_spreads_while_a_node_is_away_and_returns_to_it() {
    let mut c = Cluster::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(&c.region_bootstrap("us-east"));
    rt.block_on(async {
        client
            .create_topic("spread", 6, &Default::default())
            .await
            .unwrap();
        produce_everywhere(&client, "before").await;
    });
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids.len(), 3);
    let even: BTreeMap<u64, usize> = ids.iter().map(|n| (*n, 2)).collect();
    wait_spread(&c, ids[0], &even, "at creation");

    // The middle node goes away: its two partitions spread, one each.
    let away = ids[1];
    c.kill9(away);
    let without: BTreeMap<u64, usize> = ids
        .iter()
        .map(|n| (*n, if *n == away { 0 } else { 3 }))
        .collect();
    wait_spread(&c, ids[0], &without, "while a node is away");
    let client = Client::new(&c.nodes[0].kafka);
    rt.block_on(produce_everywhere(&client, "away"));

    // It comes back: its partitions are handed back to it.
    c.restart(away);
    wait_spread(&c, ids[0], &even, "after the node returned");
    wait_spread(&c, away, &even, "as the returned node sees it");
    rt.block_on(async {
        produce_everywhere(&client, "after").await;
        for p in 0..6 {
            let (recs, _) = client.fetch("spread", p, 0, 1000).await.unwrap();
            let values: Vec<String> = recs
                .iter()
                .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).to_string())
                .collect();
            assert_eq!(
                values,
                [
                    format!("before-{p}"),
                    format!("away-{p}"),
                    format!("after-{p}")
                ],
                "partition {p}: each record once, in order"
            );
        }
    });
}
