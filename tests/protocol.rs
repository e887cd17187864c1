//! Protocol behaviour beyond the happy path: fetch long-poll (max wait and
//! min bytes), acks=0, admin metrics, and `meridian dev` stopping its nodes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{http_get, Cluster};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, fetch_on, produce_on, Client};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_polls_and_acks_zero_is_stored() {
    let c = Cluster::start();
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("lp", 1, &Default::default())
        .await
        .unwrap();
    let leader = client.leader("lp", 0).await.unwrap();

    // Nothing to read: the fetch waits for max_wait_ms, then answers empty.
    let t0 = Instant::now();
    let (recs, hw) = fetch_on(&leader, "lp", 0, 0, 1500).await.unwrap();
    let waited = t0.elapsed();
    assert!(recs.is_empty() && hw == 0);
    assert!(
        waited >= Duration::from_millis(1400),
        "returned after {waited:?}, before max_wait_ms"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // A commit during the wait answers it at once (min_bytes = 1).
    let fetch = {
        let leader = leader.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = fetch_on(&leader, "lp", 0, 0, 10_000).await.unwrap();
            (r, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let producer = client.leader("lp", 0).await.unwrap();
    let batch = encode_batch(&[(None, Some(Bytes::from("wake")))], Compression::None);
    produce_on(&producer, "lp", 0, batch, -1).await.unwrap();
    let ((recs, _), took) = fetch.await.unwrap();
    assert_eq!(recs.len(), 1, "the waiting fetch sees the new record");
    assert!(
        took < Duration::from_secs(5),
        "the fetch waited {took:?} despite new data"
    );

    // acks = 0: no response, but the record is committed.
    let batch = encode_batch(
        &[(None, Some(Bytes::from("fire-and-forget")))],
        Compression::Snappy,
    );
    assert_eq!(produce_on(&producer, "lp", 0, batch, 0).await.unwrap(), -1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (recs, _) = client.fetch("lp", 0, 1, 500).await.unwrap();
        if let Some(r) = recs.first() {
            assert_eq!(r.value.as_deref(), Some(&b"fire-and-forget"[..]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acks=0 record never became readable"
        );
    }
    // The connection still works after an unanswered request.
    let batch = encode_batch(&[(None, Some(Bytes::from("after")))], Compression::None);
    assert_eq!(produce_on(&producer, "lp", 0, batch, -1).await.unwrap(), 2);

    // Metrics count what happened, and /status names the partition.
    let node = c.node_by_kafka(&producer_addr(&client).await);
    let (code, metrics) = http_get(&node.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "meridian_produce_records_total",
        "meridian_produce_latency_seconds_bucket",
        "meridian_fetch_requests_total",
        "meridian_fsync_latency_seconds_count",
        "meridian_raft_leader_groups",
        "meridian_raft_term{group=\"lp-0\"}",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    // Read as JSON on purpose: this checks the endpoint's field names on a
    // live node; every other reader parses `admin::status::Status`.
    let (_, status) = http_get(&node.admin, "/status").unwrap();
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["partitions"][0]["topic"], "lp");
    assert_eq!(s["partitions"][0]["high_watermark"], 3);
    assert!(s["partitions_led"].as_u64().unwrap() >= 1);
}

async fn producer_addr(client: &Client) -> String {
    let md = client.metadata(Some(&["lp"]), false).await.unwrap();
    let leader = md.topics[0].partitions[0].leader_id.0;
    let b = md.brokers.iter().find(|b| b.node_id.0 == leader).unwrap();
    format!("{}:{}", b.host.as_str(), b.port)
}

#[test]
fn dev_stops_every_node_on_sigterm() {
    let c = Cluster::start();
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid).collect();
    let dev = c.dev_pid();
    kill(Pid::from_raw(dev as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "nodes still running after SIGTERM to meridian dev"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Running, and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}
