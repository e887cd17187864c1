//! A node's disk: the free-space reserve (`storage.free_bytes_reserve`)
//! refuses writes with a retriable error, keeps reads going, and lets
//! writes in again once space returns; real clients ride it out.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{create, metric_sum, status, Cluster};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client, ClientError};
use meridian::storage::reserve::free_bytes;

const KAFKA_STORAGE_ERROR: i16 = 56;

/// The tests of this file run one at a time: the reserve test moves the
/// free space of the disk they share.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
const MIB: u64 = 1024 * 1024;

/// A file that takes `bytes` of real disk space until dropped.
struct Ballast(PathBuf);

impl Ballast {
    fn new(path: PathBuf, bytes: u64) -> Ballast {
        let f = std::fs::File::create(&path).unwrap();
        let ballast = Ballast(path);
        // fallocate takes the blocks at once where the filesystem can;
        // otherwise write them.
        if nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, bytes as i64)
            .is_err()
        {
            let chunk = vec![0u8; 8 * MIB as usize];
            let mut w = std::io::BufWriter::new(&f);
            for _ in 0..bytes.div_ceil(chunk.len() as u64) {
                w.write_all(&chunk).unwrap();
            }
        }
        f.sync_all().unwrap();
        ballast
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// Waits until every node's `/status` says it refuses writes, or none does.
fn wait_refusing(c: &Cluster, want: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = c
            .nodes
            .iter()
            .all(|n| status(&n.admin).is_some_and(|s| s.disk.refusing_writes == want));
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_record(v: &str) -> Bytes {
    encode_batch(
        &[(None, Some(Bytes::from(v.to_string())))],
        Compression::None,
    )
}

#[test]
fn writes_are_refused_below_the_disk_reserve_and_resume_when_space_returns() {
    let _serial = one_at_a_time();
    // The reserve is set just below what is free now, and a ballast file
    // larger than the difference pushes free space under it.
    let tmp = std::env::temp_dir();
    let free0 = free_bytes(&tmp).unwrap();
    let margin = (free0 / 4).min(1024 * MIB);
    assert!(
        margin >= 256 * MIB,
        "{} MiB free in {}: too little for this test",
        free0 / MIB,
        tmp.display()
    );
    let reserve = free0 - margin;
    let c = Cluster::one_region_set(&[
        format!("storage.free_bytes_reserve={reserve}"),
        "storage.free_check_interval_ms=200".to_string(),
    ]);
    let b = c.bootstrap();
    create(&b, "disk", 1, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = Client::new(&b);
    client.retries_max = 0;
    rt.block_on(client.produce("disk", 0, one_record("before")))
        .expect("a write with room on the disk");
    wait_refusing(&c, false, "free space above the reserve at start");
    for n in &c.nodes {
        let s = status(&n.admin).unwrap().disk;
        assert!(s.used_bytes > 0 && s.free_bytes > reserve, "{s:?}");
        assert_eq!(s.reserve_bytes, reserve);
    }
    assert!(metric_sum(&c.nodes, "meridian_data_dir_bytes") > 0.0);

    let ballast = Ballast::new(c.cluster_dir().join("ballast"), 2 * margin);
    wait_refusing(&c, true, "the reserve refusing writes");
    // Refused, with the retriable error Kafka answers for a disk it
    // cannot write.
    match rt.block_on(client.produce("disk", 0, one_record("refused"))) {
        Err(e @ ClientError::Kafka { code, .. }) => {
            assert_eq!(code, KAFKA_STORAGE_ERROR, "{e}");
            assert!(e.is_retriable(), "{e}");
        }
        other => panic!("a write below the reserve: {other:?}"),
    }
    // Reads go on.
    let (records, hw) = rt.block_on(client.fetch("disk", 0, 0, 500)).unwrap();
    assert_eq!((records.len(), hw), (1, 1));
    assert!(metric_sum(&c.nodes, "meridian_disk_refused_writes_total") >= 1.0);
    assert_eq!(metric_sum(&c.nodes, "meridian_disk_reserve_refusing"), 3.0);
    let leader_log = (1..=3).map(|i| c.log(i)).collect::<String>();
    assert!(
        leader_log.contains("below storage.free_bytes_reserve: refusing new writes"),
        "the refusal is logged"
    );

    // A real client keeps retrying through the refusal and gets its
    // records in once space returns.
    let refused_before = metric_sum(&c.nodes, "meridian_disk_refused_writes_total");
    let mut producer = python(&[
        "produce",
        &b,
        "disk",
        "patient-",
        "5",
        r#"{"enable.idempotence": false}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_sum(&c.nodes, "meridian_disk_refused_writes_total") < refused_before + 1.0 {
        assert!(
            Instant::now() < deadline,
            "librdkafka's writes never reached the reserve"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(ballast);
    wait_refusing(&c, false, "writes taken again once space returned");
    let out = wait_output(&mut producer, Duration::from_secs(120));
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["failed"], serde_json::json!([]), "{v}");
    assert_eq!(v["delivered"].as_array().unwrap().len(), 5, "{v}");
    rt.block_on(client.produce("disk", 0, one_record("after")))
        .expect("a write once space returned");
    let (records, _) = rt.block_on(client.fetch("disk", 0, 0, 500)).unwrap();
    let values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(values.first().map(String::as_str), Some("before"));
    assert_eq!(values.last().map(String::as_str), Some("after"));
    assert_eq!(values.len(), 7, "{values:?}");
    assert!(!values.iter().any(|v| v == "refused"), "{values:?}");
}

/// Starts `tests/clients/idempotent.py` with `args`, its output piped.
fn python(args: &[&str]) -> std::process::Child {
    Command::new("python3")
        .arg(common::repo().join("tests/clients/idempotent.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3")
}

/// The child's output once it exits successfully within `limit`; kills it
/// and fails otherwise.
fn wait_output(child: &mut std::process::Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            assert!(st.success(), "the python producer failed: {out}");
            return out;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("the python producer did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A disk that fails every write (simulated through `/faults`): the node
/// stops at its first failed write, saying why (whichever part wrote: the
/// partition's Raft log, or the producer-id reservation an idempotent
/// producer's InitProducerId makes); the others take over, the producer's
/// records all land once, and the node, restarted, catches up.
#[test]
fn a_node_whose_disk_fails_stops_and_nothing_acknowledged_is_lost() {
    let _serial = one_at_a_time();
    let mut c = Cluster::start();
    let b = c.bootstrap();
    create(&b, "dying", 1, &[]);
    let limit = Duration::from_secs(240);
    let first = common::python_json(
        "idempotent.py",
        &["produce", &b, "dying", "a", "300"],
        limit,
    );
    assert_eq!(first["delivered"].as_array().unwrap().len(), 300, "{first}");

    let leader = common::topic_partitions(&c.nodes[0].admin, "dying")
        .and_then(|p| p.first()?.leader)
        .expect("the partition has a leader");
    let admin = c.node(leader).admin.clone();
    let (code, body) = c
        .admin_post(&admin, "/faults", r#"{"disk_error": true}"#)
        .expect("the leader answers");
    assert_eq!(code, 200, "{body}");

    // Its next write fails, its group stops, and so does the node; the
    // producer moves to the new leader.
    let second = common::python_json(
        "idempotent.py",
        &["produce", &b, "dying", "b", "300"],
        limit,
    );
    let tails = || {
        c.nodes
            .iter()
            .map(|n| {
                let log = c.log(n.id);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "node {}:\n{}",
                    n.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&c.node(leader).kafka).is_ok() {
        assert!(
            Instant::now() < deadline,
            "node {leader}, its disk failing, still serves:\n{}",
            tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = second["failed"].as_array().unwrap();
    assert!(
        failed.is_empty(),
        "{} records failed, the first {}:\n{}",
        failed.len(),
        failed[0],
        tails()
    );
    assert_eq!(second["delivered"].as_array().unwrap().len(), 300);
    let log = c.log(leader);
    assert!(
        log.contains("fix or free the disk") && log.contains("simulated disk error"),
        "the node says which group stopped and why:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    c.restart(leader);
    c.wait_healthy(Duration::from_secs(60));
    let read = common::python_json("idempotent.py", &["read", &b, "dying", "1", "600"], limit);
    let mut values: Vec<&str> = read["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    values.sort_unstable();
    let mut want: Vec<String> = (0..300)
        .map(|i| format!("a{i}"))
        .chain((0..300).map(|i| format!("b{i}")))
        .collect();
    want.sort_unstable();
    assert_eq!(values, want, "every acknowledged record, once");
    // The restarted node holds them all too.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hw = common::topic_partitions(&c.node(leader).admin, "dying")
            .and_then(|p| p.first()?.high_watermark);
        if hw == Some(600) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node at {hw:?} of 600"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
