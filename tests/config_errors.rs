//! Bad configuration files get a message naming the file, the key and the
//! reason, and the node exits with status 2 instead of panicking.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run, EXE};

const TOPO: &str = r#"
[[region]]
name = "us-east"
[[region.node]]
id = 1
quic = "127.0.0.1:7001"
kafka = "127.0.0.1:9092"
admin = "127.0.0.1:8001"
[[region.node]]
id = 2
quic = "127.0.0.1:7002"
kafka = "127.0.0.1:9093"
admin = "127.0.0.1:8002"
"#;

fn node_with(dir: &Path, topo: &str, node: &str) -> (i32, String) {
    std::fs::write(dir.join("topo.toml"), topo).unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, node).unwrap();
    let mut cmd = Command::new(EXE);
    cmd.arg("node").arg("--config").arg(&cfg);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const NODE: &str = "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"data\"\n";

#[test]
fn each_bad_file_is_explained() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases: Vec<(String, String, Vec<&str>)> = vec![
        (
            TOPO.into(),
            format!("{NODE}[kafka]\nconections_max = 5\n"),
            vec!["node.toml", "unknown field `conections_max`", "line 5"],
        ),
        (
            TOPO.replace("id = 2", "id = 1"),
            NODE.into(),
            vec!["topo.toml", "region[0].node[1].id", "duplicate node id 1"],
        ),
        (
            TOPO.replace("127.0.0.1:9093", "127.0.0.1:9092"),
            NODE.into(),
            vec![
                "region[0].node[1].kafka",
                "already used by region[0].node[0].kafka",
            ],
        ),
        (
            TOPO.into(),
            NODE.replace("node_id = 1", "node_id = 7"),
            vec!["node.toml", "node_id", "node 7 is in no region"],
        ),
        (
            TOPO.into(),
            NODE.replace("topo.toml", "missing.toml"),
            vec!["topology", "missing.toml", "cannot read the file"],
        ),
        (
            TOPO.into(),
            format!("{NODE}[raft]\nheartbeat_ms = 400\n"),
            vec![
                "raft.election_timeout_ms_min",
                "more than twice raft.heartbeat_ms",
            ],
        ),
        (
            TOPO.into(),
            format!("{NODE}[groups]\npresence_renew_ms = 5000\npresence_ttl_ms = 6000\n"),
            vec![
                "groups.presence_ttl_ms",
                "at least twice groups.presence_renew_ms",
            ],
        ),
        (
            TOPO.replace("quic = \"127.0.0.1:7001\"", "quic = \"nowhere\""),
            NODE.into(),
            vec!["region[0].node[0].quic", "`nowhere` is not an IP:port"],
        ),
        (
            TOPO.into(),
            "node_id = [\n".into(),
            vec!["node.toml", "line"],
        ),
    ];
    for (topo, node, wants) in cases {
        let (code, err) = node_with(dir, &topo, &node);
        assert_eq!(code, 2, "exit status for:\n{node}\n{err}");
        for w in wants {
            assert!(err.contains(w), "expected `{w}` in:\n{err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn dev_reports_a_bad_topology() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("bad.toml");
    std::fs::write(&t, TOPO.replace("name = \"us-east\"", "name = \"us east\"")).unwrap();
    let (ok, _, err) = run(
        Command::new(EXE).arg("dev").arg("--topology").arg(&t),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(
        err.contains("region[0].name") && err.contains("not a valid region name"),
        "{err}"
    );
}

#[test]
fn dev_reports_a_bad_topics_file() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("topics.toml");
    std::fs::write(
        &t,
        "[[topic]]\nname = \"a\"\npartitions = 2\nwriters = \"home:mars\"\n\
         [[topic]]\nname = \"a\"\npartitions = 1\nreplication = \"fast\"\n\
         [[topic]]\nname = \"c\"\npartitions = 1\nreplicaton = \"sync\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(
        Command::new(EXE).arg("dev").arg("--topics").arg(&t),
        Duration::from_secs(30),
    );
    assert!(!ok);
    for want in ["topics.toml", "unknown field `replicaton`"] {
        assert!(err.contains(want), "expected `{want}` in:\n{err}");
    }
    // Without the typo, every remaining problem is listed, by topic and key.
    std::fs::write(
        &t,
        "[[topic]]\nname = \"a\"\npartitions = 2\nwriters = \"home:mars\"\n\
         [[topic]]\nname = \"a\"\npartitions = 1\nreplication = \"fast\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(
        Command::new(EXE).arg("dev").arg("--topics").arg(&t),
        Duration::from_secs(30),
    );
    assert!(!ok);
    for want in [
        "topic[0] (a): invalid config `meridian.writers`: unknown region `mars`",
        "topic[1] (a): declared twice",
        "`meridian.replication`: `fast`: allowed values are `async` and `sync`",
    ] {
        assert!(err.contains(want), "expected `{want}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}
