//! The `meridian` CLI against a running region: topics, produce, consume,
//! status; and ListOffsets by timestamp through the HLC index.

mod common;

use common::{meridian, Cluster};
use meridian::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_produce_consume_and_status() {
    let c = Cluster::start();
    let b = c.bootstrap();
    let b = b.as_str();

    let (ok, out, err) = meridian(&[
        "topic",
        "create",
        "-b",
        b,
        "orders",
        "-p",
        "4",
        "-c",
        "retention.ms=60000",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("created topic orders with 4 partition(s)"),
        "{out}"
    );
    let (ok, _, err) = meridian(&["topic", "create", "-b", b, "orders"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = meridian(&[
        "topic",
        "create",
        "-b",
        b,
        "bad",
        "-c",
        "cleanup.policy=compact",
    ]);
    assert!(
        !ok && err.contains("cleanup.policy") && err.contains("allowed value is `delete`"),
        "{err}"
    );

    let (ok, out, err) = meridian(&["topic", "describe", "-b", b, "orders"]);
    assert!(ok, "{err}");
    assert!(out.contains("partitions 4"), "{out}");
    assert!(out.contains("log start 0  high watermark 0"), "{out}");
    assert!(out.contains("retention.ms = 60000\n"), "{out}");
    assert!(
        out.contains("max.message.bytes = 4194304  (default)"),
        "{out}"
    );
    // Leaders are spread over the three nodes.
    let leaders: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split("leader ").nth(1)?.split_whitespace().next())
        .collect();
    assert!(leaders.len() >= 2, "leaders not spread: {out}");

    let (ok, _, err) = meridian(&[
        "topic",
        "alter",
        "-b",
        b,
        "orders",
        "--set",
        "max.message.bytes=1000",
        "--delete",
        "retention.ms",
    ]);
    assert!(ok, "{err}");
    let (_, out, _) = meridian(&["topic", "describe", "-b", b, "orders"]);
    assert!(
        out.contains("max.message.bytes = 1000\n")
            && out.contains("retention.ms = 604800000  (default)"),
        "{out}"
    );
    let (ok, _, err) = meridian(&[
        "topic",
        "alter",
        "-b",
        b,
        "orders",
        "--set",
        "retention.bitez=1",
    ]);
    assert!(!ok && err.contains("known keys are"), "{err}");

    let (ok, _, err) = meridian(&[
        "produce", "-b", b, "-t", "orders", "-p", "2", "-k", "k", "one", "two", "three",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = meridian(&[
        "consume", "-b", b, "-t", "orders", "-p", "2", "-n", "3", "--format", "json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["value"], "two");
    assert_eq!(lines[1]["offset"], 1);
    assert_eq!(lines[1]["origin"], "us-east");
    let hlcs: Vec<u64> = lines.iter().map(|l| l["hlc"].as_u64().unwrap()).collect();
    assert!(
        hlcs.windows(2).all(|w| w[0] < w[1]),
        "HLCs strictly increase: {hlcs:?}"
    );

    // ListOffsets by timestamp finds the first record at or after it.
    let client = Client::new(b);
    let ts1 = lines[1]["timestamp"].as_i64().unwrap();
    let (off, ts) = client.list_offset("orders", 2, ts1).await.unwrap();
    assert!(off <= 1 && ts <= ts1, "offset {off} ts {ts}");
    assert_eq!(
        client
            .list_offset("orders", 2, ts1 + 60_000)
            .await
            .unwrap()
            .0,
        -1
    );
    assert_eq!(client.list_offset("orders", 2, -1).await.unwrap().0, 3);

    let (ok, out, _) = meridian(&["topic", "list", "-b", b]);
    assert!(ok && out.contains("orders\t4 partition(s)"), "{out}");
    let cluster = c.cluster_dir().join("cluster.json");
    let (ok, out, err) = meridian(&["status", "--cluster", cluster.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("us-east")).count(),
        3,
        "{out}"
    );

    let (ok, _, err) = meridian(&["topic", "delete", "-b", b, "orders"]);
    assert!(ok, "{err}");
    let (ok, _, err) = meridian(&["topic", "describe", "-b", b, "orders"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}
