//! `meridian drill` against a three-region `meridian dev` cluster, in both
//! modes (kill by its cluster.json, isolate by an admin address): it must report RPO 0 for the `sync` topic, nothing lost after
//! failback, no duplicates and identical views, and exit 0 (it exits
//! non-zero on any broken invariant; `drill::report` tests show each one
//! fails it).

mod common;

use std::time::Duration;

use common::{meridian, Cluster};

fn drill(mode: &str) -> serde_json::Value {
    let c = Cluster::start_three();
    let cluster = c.dir.path().join("cluster/cluster.json");
    let report = c.dir.path().join("drill.md");
    // Kill mode needs cluster.json (pids, configs); isolate mode also finds
    // a cluster by any node's admin address (the first one here is wrong,
    // so the drill must try the next).
    let admins = format!("127.0.0.1:1,{}", c.region_nodes("ap-south")[0].admin);
    let (how, at) = match mode {
        "kill" => ("--cluster", cluster.to_str().unwrap()),
        _ => ("--admin", admins.as_str()),
    };
    let (ok, out, err) = meridian(&[
        "drill",
        how,
        at,
        "--fail-region",
        "us-east",
        "--mode",
        mode,
        "--down-s",
        "6",
        "--json",
        "-",
        "--report",
        report.to_str().unwrap(),
        // Found by an admin address, the drill has no cluster.json to
        // read the token from.
        "--admin-token",
        &c.admin_token,
    ]);
    assert!(ok, "drill --mode {mode} failed:\n{out}\n{err}");
    let md = std::fs::read_to_string(&report).expect("markdown report");
    assert!(
        md.contains("```mermaid") && md.contains("| t (s) | event |"),
        "{md}"
    );
    // The JSON report follows the text one.
    let json = &out[out.find("\n{").expect("JSON report") + 1..];
    let r: serde_json::Value = serde_json::from_str(json).expect("JSON report");
    assert!(r["problems"].as_array().unwrap().is_empty(), "{r}");
    let topics = r["topics"].as_array().unwrap();
    assert_eq!(topics[0]["replication"], "sync");
    assert_eq!(topics[0]["rpo_records"], 0, "{r}");
    for t in topics {
        assert!(t["acknowledged"].as_u64().unwrap() > 100, "{t}");
        assert_eq!(t["lost_after_failback"], 0, "{t}");
        assert_eq!(t["duplicates"], 0, "{t}");
        assert_eq!(t["views_identical"], true, "{t}");
    }
    eprintln!("{out}");
    // Nodes the drill restarted stop with the cluster.
    let dir = c.dir.path().to_string_lossy().into_owned();
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !nodes_running(&dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes left running: {:?}",
            nodes_running(&dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    r
}

/// Pids of processes whose command line names `dir`.
fn nodes_running(dir: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
        })
        .collect()
}

#[test]
fn a_kill_drill_loses_nothing_and_recovers() {
    let r = drill("kill");
    // Every group of clients wrote and read again.
    for x in r["rto"].as_array().unwrap() {
        assert!(x["write_ms"].is_u64(), "{x}");
        assert!(x["read_ms"].is_u64(), "{x}");
    }
}

#[test]
fn an_isolate_drill_loses_nothing_and_reinjects_what_only_the_region_held() {
    let r = drill("isolate");
    for x in r["rto"].as_array().unwrap() {
        assert!(x["write_ms"].is_u64(), "{x}");
    }
    // Cut off, us-east acknowledged async writes until its lease ran out;
    // nobody else had them, and failback brought them back.
    let async_topic = &r["topics"][1];
    assert!(
        async_topic["reinjected"].as_u64().unwrap() > 0,
        "{async_topic}"
    );
}

#[test]
fn a_drill_by_admin_address_says_what_it_cannot_do() {
    let by_admin = |mode: &str| {
        meridian(&[
            "drill",
            "--admin",
            "127.0.0.1:1",
            "--fail-region",
            "us-east",
            "--mode",
            mode,
        ])
    };
    let (ok, _, err) = by_admin("kill");
    assert!(!ok);
    assert!(err.contains("--mode kill needs --cluster"), "{err}");
    let (ok, _, err) = by_admin("isolate");
    assert!(!ok);
    assert!(
        err.contains("no admin address answered GET /topology (127.0.0.1:1: "),
        "{err}"
    );
    let (ok, _, err) = meridian(&["drill", "--fail-region", "us-east"]);
    assert!(!ok);
    assert!(err.contains("--cluster"), "{err}");
}

#[test]
fn drill_settings_out_of_range_are_refused() {
    // A rate above 1000/s would make the writers' tick zero (a panic in
    // every writer and a drill without a workload).
    for (flag, value, want) in [
        ("--rate", "2000", "2000 is not in 1..=1000"),
        ("--rate", "0", "0 is not in 1..=1000"),
        ("--down-s", "0", "0 is not in 1..=3600"),
    ] {
        let (ok, _, err) = meridian(&[
            "drill",
            "--cluster",
            "cluster.json",
            "--fail-region",
            "us-east",
            flag,
            value,
        ]);
        assert!(!ok);
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
}
