//! Retention and DeleteRecords across three regions, seen through a real
//! client (python confluent-kafka): the low watermark moves in every
//! region, consumers from earliest start there, records deleted with the
//! AdminClient are gone everywhere, and the records leave storage.

mod common;

use std::time::{Duration, Instant};

use common::{create, metric_sum, python_json, Cluster};

/// The three-region dev topology, applying retention every 300 ms.
fn three_regions() -> Cluster {
    Cluster::start_with_args(
        &common::repo().join("regions/dev.toml"),
        &[
            "--set".as_ref(),
            "storage.retention_check_interval_ms=300".as_ref(),
        ],
    )
}

#[test]
fn retention_and_delete_records_move_the_log_start_in_every_region() {
    let c = three_regions();
    let (a, b, cc) = (
        c.region_bootstrap("us-east"),
        c.region_bootstrap("eu-west"),
        c.region_bootstrap("ap-south"),
    );
    create(&a, "retained", 2, &[]);
    let v = python_json(
        "retention.py",
        &["retained", &a, &b, &cc],
        Duration::from_secs(400),
    );

    // Every region was emptied by retention.ms (the script waited for
    // low == high == the 40 records in each).
    assert_eq!(v["expired"].as_array().unwrap().len(), 3, "{v}");
    // A new group reading from earliest starts at the log start: only
    // the records written after retention was turned off.
    let after = v["after_retention"].as_array().unwrap();
    let values: Vec<&str> = after.iter().map(|r| r[2].as_str().unwrap()).collect();
    assert_eq!(values.len(), 10, "{v}");
    assert!(values.iter().all(|v| v.starts_with("b-")), "{values:?}");

    // DeleteRecords: partition 0 moved by 2; an offset past the high
    // watermark refused as Kafka refuses it.
    let (low0, high0) = (
        v["p0_before_delete"][0].as_i64().unwrap(),
        v["p0_before_delete"][1].as_i64().unwrap(),
    );
    assert!(high0 - low0 >= 2, "partition 0 got too few records: {v}");
    assert_eq!(
        v["delete_records"]["0"],
        serde_json::json!(["ok", low0 + 2]),
        "{v}"
    );
    assert_eq!(
        v["delete_records"]["1"],
        serde_json::json!(["error", "OFFSET_OUT_OF_RANGE"]),
        "{v}"
    );
    // The CLI shows the new start (ListOffsets earliest).
    let (ok, out, err) = common::meridian(&["topic", "describe", "-b", &a, "retained"]);
    assert!(ok, "{out}{err}");
    let p0 = out
        .lines()
        .find(|l| l.trim_start().starts_with("partition 0 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        p0.ends_with(&format!("log start {}  high watermark {high0}", low0 + 2)),
        "{out}"
    );
    // /status and /metrics show the log start, and the Raft log kept.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let starts: Vec<Option<u64>> = c
            .nodes
            .iter()
            .filter_map(|n| common::status(&n.admin))
            .flat_map(|s| s.partitions)
            .filter(|p| p.topic.as_deref() == Some("retained") && p.partition == Some(0))
            .map(|p| p.log_start)
            .collect();
        if starts.len() == 9 && starts.iter().all(|s| *s == Some((low0 + 2) as u64)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log starts in /status: {starts:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(metric_sum(&c.nodes, "meridian_raft_log_entries") > 0.0);
    assert!(metric_sum(&c.nodes, "meridian_log_start_offset") >= (3 * (low0 + 2)) as f64);
    let after = v["after_delete"].as_array().unwrap();
    assert_eq!(after.len(), 8, "{v}");
    assert!(
        after
            .iter()
            .all(|r| r[0] != 0 || r[1].as_i64().unwrap() >= low0 + 2),
        "{v}"
    );

    // The records left storage in every region: each region's leaders
    // removed the 40 first records. (The 2 deleted ones share their stored
    // batch with records still in the log: they stay on disk until the
    // rest of it goes, as in Kafka's segments.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let removed = metric_sum(&c.nodes, "meridian_removed_records");
        if removed >= 3.0 * 40.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {removed} records removed from storage"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        metric_sum(&c.nodes, "meridian_retention_pinned_records"),
        0.0
    );
}

/// A region cut off keeps the others from removing what it has not copied:
/// they keep it past its retention (and say so in
/// `meridian_retention_pinned_records`), and once the cut heals the region
/// receives every record, after which all regions remove them.
#[test]
fn records_a_cut_off_region_lacks_are_kept_until_it_has_them() {
    use bytes::Bytes;
    use kafka_protocol::records::Compression;
    use meridian::client::{encode_batch, Client};

    let c = three_regions();
    let east = c.region_bootstrap("us-east");
    create(&east, "kept", 1, &["meridian.writers=home:us-east"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<(&str, Client)> = ["us-east", "eu-west", "ap-south"]
        .into_iter()
        .map(|r| (r, Client::new(&c.region_bootstrap(r))))
        .collect();
    let produce = |n: usize, tag: &str| {
        for i in 0..n {
            let b = encode_batch(
                &[(None, Some(Bytes::from(format!("{tag}{i}"))))],
                Compression::None,
            );
            rt.block_on(clients[0].1.produce("kept", 0, b)).unwrap();
        }
    };
    // (log start, high watermark) as a region's leader answers.
    let extent = |client: &Client| {
        let start = rt.block_on(client.list_offset("kept", 0, -2)).ok()?.0;
        let end = rt.block_on(client.list_offset("kept", 0, -1)).ok()?.0;
        Some((start, end))
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}: not within 90 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    produce(5, "before-");
    wait("5 records everywhere", &|| {
        clients
            .iter()
            .all(|(_, cl)| extent(cl).is_some_and(|e| e.1 == 5))
    });

    // ap-south is cut off; 20 more records reach eu-west only.
    c.set_faults(r#"{"cut": [["ap-south", "us-east"], ["ap-south", "eu-west"]]}"#);
    produce(20, "during-");
    wait("25 records in eu-west", &|| {
        extent(&clients[1].1).is_some_and(|e| e.1 == 25)
    });
    let (ok, out, err) = common::meridian(&[
        "topic",
        "alter",
        "-b",
        &east,
        "kept",
        "--set",
        "retention.ms=1000",
    ]);
    assert!(ok, "{out}{err}");
    // The log start moves past all 25 in the regions that hold them, but
    // the 20 ap-south lacks stay stored there.
    wait("the log start at 25 in us-east and eu-west", &|| {
        clients[..2]
            .iter()
            .all(|(_, cl)| extent(cl).is_some_and(|e| e == (25, 25)))
    });
    wait("the 20 records pinned in us-east and eu-west", &|| {
        metric_sum(&c.nodes, "meridian_retention_pinned_records") >= 40.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let east_west: Vec<&common::NodeInfo> =
        c.nodes.iter().filter(|n| n.region != "ap-south").collect();
    assert!(
        metric_sum(
            east_west.iter().copied(),
            "meridian_retention_pinned_records"
        ) >= 40.0,
        "still pinned a few checks later"
    );
    assert!(
        metric_sum(east_west.iter().copied(), "meridian_removed_records") <= 10.0,
        "only the 5 records every region holds were removed"
    );

    // Healed: ap-south copies the 20 records (they were still there), then
    // every region removes them.
    c.set_faults("{}");
    wait("ap-south to receive all 25 records", &|| {
        extent(&clients[2].1).is_some_and(|e| e.1 == 25)
    });
    wait("nothing pinned, everything removed", &|| {
        metric_sum(&c.nodes, "meridian_retention_pinned_records") == 0.0
            && metric_sum(&c.nodes, "meridian_removed_records") >= 75.0
    });
}
