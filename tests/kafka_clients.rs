//! Real Kafka clients that no one here wrote, unmodified: kcat and python
//! confluent-kafka (both librdkafka), against a three-node region.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::{require, run, Cluster};

#[test]
fn kcat_produces_and_consumes_through_auto_created_topic() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    let lines: Vec<String> = (0..200).map(|i| format!("line-{i}")).collect();
    let input = std::env::temp_dir().join(format!("kcat-in-{}", std::process::id()));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = run(
        Command::new("kcat")
            .args([
                "-b",
                &b,
                "-P",
                "-t",
                "t",
                "-X",
                "request.required.acks=all",
                "-l",
            ])
            .arg(&input),
        Duration::from_secs(60),
    );
    assert!(ok, "kcat -P failed: {err}");
    let (ok, out, err) = run(
        Command::new("kcat").args([
            "-b",
            &b,
            "-C",
            "-t",
            "t",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%s|%h\\n",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "kcat -C failed: {err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 200, "{out}");
    for (i, l) in got.iter().enumerate() {
        let (value, headers) = l.split_once('|').unwrap();
        assert_eq!(value, lines[i], "one partition: order is kept");
        assert!(headers.contains("meridian.origin=us-east"), "{headers}");
        assert!(headers.contains("meridian.hlc="), "{headers}");
    }
    let (ok, out, _) = run(
        Command::new("kcat").args(["-b", &b, "-L", "-t", "t"]),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert!(out.contains("3 brokers"), "{out}");
    assert!(out.contains("topic \"t\" with 1 partitions"), "{out}");
    std::fs::remove_file(input).ok();
}

#[test]
fn confluent_kafka_round_trips_every_codec() {
    require("python3");
    let c = Cluster::start();
    let script = common::repo().join("tests/clients/confluent_roundtrip.py");
    let (ok, out, err) = run(
        Command::new("python3")
            .arg(script)
            .args([c.bootstrap().as_str(), "py", "300"]),
        Duration::from_secs(180),
    );
    assert!(ok, "python client failed (is confluent-kafka installed? .ci/install-deps --test-clients)\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{}", v["errors"]);
    assert!(v["headers_ok"].as_bool().unwrap());
    let acked: BTreeSet<(i64, i64, String)> = triples(&v["acked"]).into_iter().collect();
    assert_eq!(acked.len(), 5 * 300);
    let read = triples(&v["read"]);
    // Every acknowledged record is read back, once, at the offset its ack named.
    assert_eq!(read.iter().cloned().collect::<BTreeSet<_>>(), acked);
    assert_eq!(read.len(), acked.len(), "no duplicates");
    // Offsets per partition are contiguous from 0.
    let mut per: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &read {
        per.entry(*p).or_default().push(*o);
    }
    for offsets in per.values() {
        assert_eq!(*offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
}

/// `[[partition, offset, value], ...]` from the python script's report.
fn triples(v: &serde_json::Value) -> Vec<(i64, i64, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a[0].as_i64().unwrap(),
                a[1].as_i64().unwrap(),
                a[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Kafka's standard topic configs, as frameworks set them, through
/// confluent-kafka's AdminClient: accepted when Kafka would accept them
/// (unless they ask for what Meridian does not do), described back, and
/// replaced by the older AlterConfigs API.
#[test]
fn confluent_kafka_admin_sets_kafka_topic_configs() {
    require("python3");
    let c = Cluster::start();
    let script = common::repo().join("tests/clients/configs.py");
    let (ok, out, err) = run(
        Command::new("python3")
            .arg(script)
            .arg(c.bootstrap().as_str()),
        Duration::from_secs(120),
    );
    assert!(ok, "python client failed\n{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["create_streams"].is_null(), "{}", v["create_streams"]);
    for (step, words) in [
        ("create_bad_segment", "minimum, 14"),
        ("create_unclean", "allowed value is `false`"),
        ("create_unknown", "unknown topic config"),
    ] {
        assert_eq!(v[step][0], "INVALID_CONFIG", "{step}: {}", v[step]);
        let msg = v[step][1].as_str().unwrap();
        assert!(msg.contains(words), "{step}: {msg}");
    }
    // [value, is_default] per config.
    let d = &v["described"];
    assert_eq!(d["segment.bytes"], serde_json::json!(["52428800", false]));
    assert_eq!(d["min.insync.replicas"], serde_json::json!(["2", false]));
    assert_eq!(d["retention.ms"], serde_json::json!(["-1", false]));
    assert_eq!(d["flush.ms"][1], true, "{}", d["flush.ms"]);
    assert_eq!(d["max.message.bytes"][1], true);

    assert!(v["alter"].is_null(), "{}", v["alter"]);
    let a = &v["after_alter"];
    assert_eq!(a["max.message.bytes"], serde_json::json!(["100000", false]));
    assert_eq!(a["flush.ms"], serde_json::json!(["1000", false]));
    // Every config not given went back to its default...
    assert_eq!(a["segment.bytes"], serde_json::json!(["1073741824", true]));
    assert_eq!(a["retention.ms"][1], true, "{}", a["retention.ms"]);
    assert_eq!(a["min.insync.replicas"][1], true);
    // ...but Meridian's own keys, which a Kafka tool does not know,
    // stayed as they were.
    assert_eq!(d["meridian.rpo.max.ms"], serde_json::json!(["5000", false]));
    assert_eq!(a["meridian.rpo.max.ms"], d["meridian.rpo.max.ms"]);
    assert_eq!(a["meridian.regions"], d["meridian.regions"]);

    assert_eq!(v["alter_bad"][0], "INVALID_CONFIG", "{}", v["alter_bad"]);
    assert!(v["alter_bad"][1].as_str().unwrap().contains("segment.ms"));
    assert_eq!(
        v["alter_missing"][0], "UNKNOWN_TOPIC_OR_PART",
        "{}",
        v["alter_missing"]
    );
    // A refused replacement changed nothing.
    assert_eq!(v["after_bad"], v["after_alter"]);
}
