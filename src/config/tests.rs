//! Loading topologies, node configs and topics files: what passes, and
//! how each mistake is reported.

use super::validate::size_limit_problems;
use super::*;

const GOOD: &str = r#"
[[region]]
name = "us-east"
[[region.node]]
id = 1
quic = "127.0.0.1:7001"
kafka = "127.0.0.1:9001"
admin = "127.0.0.1:8001"
[[region.node]]
id = 2
quic = "127.0.0.1:7002"
kafka = "127.0.0.1:9002"
admin = "127.0.0.1:8002"

[[region]]
name = "eu-west"
[[region.node]]
id = 3
quic = "127.0.0.1:7003"
kafka = "127.0.0.1:9003"
admin = "127.0.0.1:8003"

[[rtt]]
a = "us-east"
b = "eu-west"
ms = 80
"#;

fn topo(text: &str) -> Result<Topology, ConfigError> {
    Topology::parse(Path::new("t.toml"), text)
}

#[test]
fn the_default_size_limits_nest_and_each_broken_rule_names_its_key() {
    let (k, r, t, l) = (
        KafkaConfig::default(),
        RaftConfig::default(),
        TransportConfig::default(),
        LinkConfig::default(),
    );
    assert!(size_limit_problems(&k, &r, &t, &l).is_empty());
    let keys = |k: &KafkaConfig, r: &RaftConfig, t: &TransportConfig, l: &LinkConfig| {
        size_limit_problems(k, r, t, l)
            .into_iter()
            .map(|(key, _)| key)
            .collect::<Vec<_>>()
    };
    let mut k2 = k.clone();
    k2.batch_uncompressed_bytes_max = k.batch_bytes_max - 1;
    assert_eq!(
        keys(&k2, &r, &t, &l),
        ["kafka.batch_uncompressed_bytes_max"]
    );
    let mut r2 = r.clone();
    r2.entry_bytes_max = k.batch_uncompressed_bytes_max as u64 - 1;
    assert_eq!(keys(&k, &r2, &t, &l), ["raft.entry_bytes_max"]);
    let mut l2 = l.clone();
    l2.batch_bytes_max = (r.append_bytes_max - r.entry_bytes_max + 1) as u32;
    assert_eq!(keys(&k, &r, &t, &l2), ["raft.append_bytes_max"]);
    let mut t2 = t.clone();
    t2.frame_bytes_max = r.append_bytes_max as u32;
    assert_eq!(keys(&k, &r, &t2, &l), ["transport.frame_bytes_max"]);
}

#[test]
fn good_topology_loads() {
    let t = topo(GOOD).unwrap();
    assert_eq!(t.regions.len(), 2);
    assert_eq!(t.node(3).unwrap().region, "eu-west");
    assert_eq!(t.rtt_ms("eu-west", "us-east"), Some(80));
}

#[test]
fn unknown_key_names_line_and_field() {
    let text = GOOD.replace("admin = \"127.0.0.1:8003\"", "admn = \"127.0.0.1:8003\"");
    let e = topo(&text).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("t.toml"), "{s}");
    assert!(s.contains("unknown field `admn`"), "{s}");
    assert!(s.contains("line 21"), "{s}");
}

#[test]
fn node_ids_must_fit_in_producer_ids() {
    let e = topo(&GOOD.replace("id = 3", "id = 70000")).unwrap_err();
    assert_eq!(e.problems[0].key, "region[1].node[0].id", "{e}");
    assert!(e.problems[0].reason.contains("from 1 to 65535"), "{e}");
}

#[test]
fn duplicate_id_and_address_clash_are_both_reported() {
    let text = GOOD
        .replace("id = 3", "id = 2")
        .replace("127.0.0.1:9003", "127.0.0.1:9001");
    let e = topo(&text).unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    assert_eq!(e.problems[0].key, "region[1].node[0].id");
    assert!(e.problems[0].reason.contains("duplicate node id 2"));
    assert_eq!(e.problems[1].key, "region[1].node[0].kafka");
    assert!(e.problems[1]
        .reason
        .contains("already used by region[0].node[0].kafka"));
}

#[test]
fn bad_address_and_unknown_rtt_region() {
    let text = GOOD
        .replace("127.0.0.1:8002", "localhost-8002")
        .replace("b = \"eu-west\"", "b = \"ap-south\"");
    let e = topo(&text).unwrap_err();
    let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["region[0].node[1].admin", "rtt[0].b"], "{e}");
}

#[test]
fn topics_file_maps_short_keys_to_topic_configs() {
    let regions = ["us-east".to_string(), "eu-west".to_string()];
    let text = r#"
[[topic]]
name = "orders"
partitions = 6
regions = ["us-east", "eu-west"]
writers = "home:eu-west"
replication = "sync"
sync_quorum = 2
rpo_max_ms = 500
configs = { "retention.ms" = "1000" }
"#;
    let t = TopicDecl::parse(Path::new("t.toml"), text, &regions).unwrap();
    let c = t[0].configs();
    assert_eq!(c["meridian.regions"], "us-east,eu-west");
    assert_eq!(c["meridian.writers"], "home:eu-west");
    assert_eq!(c["meridian.replication"], "sync");
    assert_eq!(c["meridian.sync.quorum"], "2");
    assert_eq!(c["meridian.rpo.max.ms"], "500");
    assert_eq!(c["retention.ms"], "1000");
    let quorum = text.replace("sync_quorum = 2", "sync_quorum = 3");
    let e = TopicDecl::parse(Path::new("t.toml"), &quorum, &regions).unwrap_err();
    assert!(e.to_string().contains("meridian.sync.quorum"), "{e}");
    let minimal = "[[topic]]\nname = \"a\"\npartitions = 1\n";
    let t = TopicDecl::parse(Path::new("t.toml"), minimal, &regions).unwrap();
    assert!(t[0].configs().is_empty(), "defaults come from the broker");
}

#[test]
fn node_config_reports_node_in_no_region() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let e = NodeConfig::parse(
        &path,
        "node_id = 9\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n",
    )
    .unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "node_id");
    assert!(e.problems[0].reason.contains("node 9 is in no region"));
}

#[test]
fn node_config_checks_raft_timing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let e = NodeConfig::parse(
        &path,
        "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n[raft]\nheartbeat_ms = 500\n",
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "raft.election_timeout_ms_min", "{e}");
    // A heartbeat the simulated round trips do not fit in.
    std::fs::write(
        dir.path().join("topo.toml"),
        GOOD.replace("ms = 80", "ms = 400"),
    )
    .unwrap();
    let e = NodeConfig::parse(
        &path,
        "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n",
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "control.meta_heartbeat_ms", "{e}");
    assert!(e.to_string().contains("use at least 450"), "{e}");
    // A lease shorter than a metadata leader election.
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let e = NodeConfig::parse(
        &path,
        "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n\
         [control]\nmeta_election_timeout_ms_max = 1600\n",
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "control.lease_ms", "{e}");
    assert!(e.to_string().contains("elects a new leader"), "{e}");
    // The metadata group's own timing is checked like the partitions'.
    let e = NodeConfig::parse(
        &path,
        "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n\
         [control]\nmeta_election_timeout_ms_min = 300\n",
    )
    .unwrap_err();
    assert_eq!(
        e.problems[0].key, "control.meta_election_timeout_ms_min",
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("more than twice control.meta_heartbeat_ms"),
        "{e}"
    );
}

#[test]
fn connection_and_cache_limits_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let base = "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n";
    let problems = |extra: &str| -> Vec<String> {
        NodeConfig::parse(&path, &format!("{base}{extra}"))
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.key)
            .collect()
    };
    assert_eq!(
        problems(
            "[kafka]\ntcp_keepalive_time_ms = 1500\ntcp_keepalive_interval_ms = 40000000\n\
             connection_queued_bytes_max = 0\nclient_log_lines_per_sec = 0\n"
        ),
        [
            "kafka.connection_queued_bytes_max",
            "kafka.client_log_lines_per_sec",
            "kafka.tcp_keepalive_time_ms",
            "kafka.tcp_keepalive_interval_ms"
        ]
    );
    assert_eq!(
        problems("[raft]\nlog_cache_entries_max = 0\nlog_cache_bytes_max = 0\n"),
        ["raft.log_cache_entries_max", "raft.log_cache_bytes_max"]
    );
}

#[test]
fn node_config_resolves_paths_relative_to_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let c = NodeConfig::parse(
        &path,
        "node_id = 2\ntopology = \"topo.toml\"\ndata_dir = \"d2\"\n",
    )
    .unwrap();
    assert_eq!(c.data_dir, dir.path().join("d2"));
    assert_eq!(c.me().kafka.port(), 9002);
    assert_eq!(c.region().nodes.len(), 2);
}

#[test]
fn the_example_config_loads_and_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.example.toml");
    let c = NodeConfig::load(&path).unwrap();
    assert_eq!(c.kafka, KafkaConfig::default());
    assert_eq!(c.raft, RaftConfig::default());
    assert_eq!(c.transport, TransportConfig::default());
    assert_eq!(c.link, LinkConfig::default());
    assert_eq!(c.admin, AdminConfig::default());
}

#[test]
fn fault_injection_is_off_by_default_and_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let base = "node_id = 2\ntopology = \"topo.toml\"\ndata_dir = \"d2\"\n";
    let c = NodeConfig::parse(&path, base).unwrap();
    assert_eq!(c.admin, AdminConfig::default());
    assert!(!c.admin.faults);
    let e = NodeConfig::parse(&path, &format!("{base}[admin]\nfaults = true\n")).unwrap_err();
    assert_eq!(e.problems[0].key, "admin.faults", "{e}");
    let e = NodeConfig::parse(
        &path,
        &format!("{base}[admin]\nfaults = true\ntoken = \"short\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "admin.token", "{e}");
    let c = NodeConfig::parse(
        &path,
        &format!("{base}[admin]\nfaults = true\ntoken = \"0123456789abcdef\"\n"),
    )
    .unwrap();
    assert!(c.admin.faults);
}

#[test]
fn written_config_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = dir.path().join("topo.toml");
    std::fs::write(&topo_path, GOOD).unwrap();
    let path = dir.path().join("n1.toml");
    NodeConfig::write_file(
        &path,
        1,
        &topo_path,
        &dir.path().join("d1"),
        RuntimeConfig { worker_threads: 1 },
        None,
        AdminConfig {
            faults: true,
            token: Some("0123456789abcdef".into()),
        },
    )
    .unwrap();
    let c = NodeConfig::load(&path).unwrap();
    assert_eq!(c.node_id, 1);
    assert!(c.admin.faults);
    assert_eq!(c.kafka, KafkaConfig::default());
    assert_eq!(c.runtime.worker_threads, 1);
}

#[test]
fn storage_settings_default_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
    let path = dir.path().join("node.toml");
    let base = "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n";
    let c = NodeConfig::parse(&path, base).unwrap();
    assert_eq!(c.storage.free_bytes_reserve, 1 << 30);
    let c =
        NodeConfig::parse(&path, &format!("{base}[storage]\nfree_bytes_reserve = 0\n")).unwrap();
    assert_eq!(c.storage.free_bytes_reserve, 0, "0 turns the reserve off");
    let e = NodeConfig::parse(
        &path,
        &format!("{base}[storage]\nfree_check_interval_ms = 10\n"),
    )
    .unwrap_err();
    assert_eq!(e.problems[0].key, "storage.free_check_interval_ms", "{e}");
    assert!(e.to_string().contains("use 100 to 60000"), "{e}");
    assert_eq!(c.storage.retention_ms, 604_800_000, "Kafka's 7 days");
    assert_eq!(c.storage.retention_bytes, -1);
    let e = NodeConfig::parse(
        &path,
        &format!("{base}[storage]\nretention_ms = -2\nretention_check_interval_ms = 0\n"),
    )
    .unwrap_err();
    let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "storage.retention_check_interval_ms",
            "storage.retention_ms"
        ],
        "{e}"
    );
}
