//! Retries with backoff and dead-letter topics: `meridian.delay.ms` holds
//! records back from any Kafka client (kcat) until they are due;
//! `meridian topic create --retry-chain` builds a chain and
//! `meridian consume --group --exec` moves rejected records along it, each
//! once, with headers saying why, which attempt and from where; a member
//! that crashed in the middle of a move leaves it neither lost nor doubled.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{create, meridian, require, run, Cluster, EXE};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every record of `topic` (all partitions) as kcat's JSON envelopes.
fn kcat_all(bootstrap: &str, topic: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = run(
        Command::new("kcat").args([
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-J",
            "-q",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "kcat -C {topic}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// A kcat envelope's headers as a map (kcat -J lists them flat: k, v, k, v).
fn headers(env: &serde_json::Value) -> BTreeMap<String, String> {
    let flat: Vec<String> = env["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    flat.chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Writes `lines` to `topic` with kcat (acks=all) and `args` (keys,
/// headers, a partition).
fn kcat_produce(bootstrap: &str, topic: &str, lines: &[String], args: &[&str]) {
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = run(
        Command::new("kcat")
            .args(["-b", bootstrap, "-P", "-t", topic])
            .args(["-X", "request.required.acks=all"])
            .args(args)
            .arg("-l")
            .arg(input.path()),
        Duration::from_secs(60),
    );
    assert!(ok, "kcat -P {topic}: {err}");
}

/// Creates the retry chain of `orders` with `args`; returns what it printed.
fn create_chain(b: &str, args: &[&str]) -> String {
    let mut all = vec!["topic", "create", "-b", b, "--retry-chain", "orders"];
    all.extend_from_slice(args);
    let (ok, out, err) = meridian(&all);
    assert!(ok, "{out}{err}");
    out
}

/// Waits up to 90 s for `done`, showing the members' logs if it never is.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, logs: &[&Member]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|m| m.stderr()).collect();
            panic!("{what}: not within 90 s\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records whose keys are their values, spread by kcat's key hash.
fn produce_keyed(bootstrap: &str, topic: &str, values: &[String], args: &[&str]) {
    let lines: Vec<String> = values.iter().map(|v| format!("{v}:{v}")).collect();
    let mut all = vec!["-K:"];
    all.extend_from_slice(args);
    kcat_produce(bootstrap, topic, &lines, &all);
}

#[test]
fn a_delayed_topic_holds_records_back_from_kcat_until_due() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    create(&b, "slow", 1, &["meridian.delay.ms=3000"]);
    let (ok, out, err) = meridian(&["produce", "-b", &b, "-t", "slow", "late"]);
    assert!(ok, "{out}{err}");
    // A plain read right away finds the record held back...
    let (ok, out, err) = meridian(&[
        "consume",
        "-b",
        &b,
        "-t",
        "slow",
        "--idle-ms",
        "500",
        "--format",
        "json",
    ]);
    let read_by = now_ms();
    assert!(ok, "{err}");
    let early: Vec<&str> = out.lines().collect();
    // ... kcat, waiting, gets it once due: not before its time plus the delay.
    let (ok, out, err) = run(
        Command::new("kcat").args([
            "-b",
            &b,
            "-C",
            "-t",
            "slow",
            "-o",
            "beginning",
            "-c",
            "1",
            "-f",
            "%T %s\\n",
        ]),
        Duration::from_secs(60),
    );
    let got_at = now_ms();
    assert!(ok, "kcat: {err}");
    let (ts, value) = out.trim().split_once(' ').expect("timestamp and value");
    assert_eq!(value, "late");
    let ts: i64 = ts.parse().unwrap();
    // Only a read that ended after the record fell due may have seen it.
    assert!(
        early.is_empty() || read_by >= ts + 3000,
        "read {} ms after its timestamp, before the 3000 ms delay: {early:?}",
        read_by - ts
    );
    assert!(
        got_at >= ts + 3000,
        "kcat got the record {} ms after its timestamp, before the 3000 ms delay",
        got_at - ts
    );
    let (ok, out, _) = meridian(&["topic", "describe", "-b", &b, "slow"]);
    assert!(ok && out.contains("meridian.delay.ms = 3000"), "{out}");

    // A topic without a chain has nowhere to move a rejected record: the
    // member stops, says what to do, and commits nothing past the record.
    let (ok, _, err) = meridian(&[
        "consume",
        "-b",
        &b,
        "-t",
        "slow",
        "--group",
        "g",
        "--exec",
        "echo nope >&2; false",
    ]);
    assert!(!ok, "{err}");
    assert!(err.contains("no retry chain"), "{err}");
    assert!(err.contains("slow/0/0 was rejected"), "{err}");
    let (ok, out, err) = meridian(&[
        "consume", "-b", &b, "-t", "slow", "--group", "g", "-n", "1", "--format", "json",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(r#""value":"late""#),
        "the record was skipped: {out}"
    );

    // A chain that loops is refused before anything is read.
    let (ok, _, err) = meridian(&[
        "topic",
        "alter",
        "-b",
        &b,
        "slow",
        "--set",
        "meridian.retry.next=slow",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = meridian(&["consume", "-b", &b, "-t", "slow", "--group", "g2"]);
    assert!(!ok && err.contains("loops back on itself"), "{err}");
}

/// `meridian consume --group` as a child process, writing JSON lines.
struct Member {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Member {
    fn start(
        dir: &std::path::Path,
        name: &str,
        bootstrap: &str,
        group: &str,
        exec: &str,
    ) -> Member {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(EXE)
            .args(["consume", "-b", bootstrap, "-t", "orders", "--group", group])
            .args(["--format", "json", "--exec", exec])
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .expect("start meridian consume --group");
        Member { child, out, err }
    }

    fn accepted(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Stops the member as Ctrl-C does; returns its standard error.
    fn stop(&mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "member failed: {}", self.stderr());
                return self.stderr();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("member did not stop on SIGINT:\n{}", self.stderr());
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rejects every `poison` record, and a `flaky` one on its first attempt.
const HANDLER: &str = r#"v=$(cat); case "$v" in
  poison*) echo "cannot parse $v" >&2; exit 1;;
  flaky*) [ "$MERIDIAN_ATTEMPT" -ge 2 ] || { echo "inventory busy" >&2; exit 3; };;
esac"#;

#[test]
fn a_record_rejected_three_times_ends_in_the_dead_letter_topic() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    let out = create_chain(&b, &["--attempts", "3", "--backoff-ms", "700", "-p", "2"]);
    for t in ["orders", "orders.retry.1", "orders.retry.2", "orders.dlq"] {
        assert!(out.contains(&format!("{t}: created")), "{out}");
    }
    // Bad chains are refused with what to change.
    let (ok, _, err) = meridian(&[
        "topic",
        "create",
        "-b",
        &b,
        "--retry-chain",
        "x",
        "--attempts",
        "0",
    ]);
    assert!(!ok && err.contains("--attempts 0"), "{err}");
    let (ok, _, err) = meridian(&["topic", "create", "-b", &b, "--attempts", "4", "plain"]);
    assert!(!ok && err.contains("give --retry-chain BASE"), "{err}");

    // 24 records over both partitions (kcat hashes the keys).
    let mut values: Vec<String> = (0..22).map(|i| format!("order-{i}")).collect();
    values.insert(5, "poison-1".into());
    values.insert(15, "flaky-1".into());
    produce_keyed(&b, "orders", &values, &["-H", "trace=t-1"]);

    let mut m = Member::start(c.dir.path(), "m1", &b, "billing", HANDLER);
    wait_until(
        "all but the poison record accepted, the poison one in the DLQ",
        || m.accepted().len() >= values.len() - 1 && !kcat_all(&b, "orders.dlq").is_empty(),
        &[&m],
    );
    // Let any stray duplicate show before stopping.
    std::thread::sleep(Duration::from_secs(2));
    let log = m.stop();
    assert!(
        log.contains("23 accepted, 3 moved to retry topics, 1 to dead-letter topics"),
        "{log}"
    );

    // Every record but the poison one consumed once; the flaky one on its
    // second attempt, from the first retry topic, after its backoff.
    let accepted = m.accepted();
    let mut got: Vec<String> = accepted
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = values
        .iter()
        .filter(|v| !v.starts_with("poison"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(got, want, "each record but the poison one, once");
    let flaky = accepted.iter().find(|r| r["value"] == "flaky-1").unwrap();
    assert_eq!(flaky["topic"], "orders.retry.1");
    assert_eq!(flaky["attempt"], 2);
    assert_eq!(flaky["headers"]["meridian.retry.reason"], "inventory busy");
    assert_eq!(flaky["headers"]["trace"], "t-1");

    // The poison record: in the dead-letter topic once, with its story.
    let dlq = kcat_all(&b, "orders.dlq");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["payload"], "poison-1");
    assert_eq!(dlq[0]["key"], "poison-1");
    let h = headers(&dlq[0]);
    assert_eq!(h["meridian.retry.reason"], "cannot parse poison-1");
    assert_eq!(h["meridian.retry.attempt"], "3");
    let p = dlq[0]["partition"].as_i64().unwrap();
    assert_eq!(h["meridian.retry.from"], format!("orders.retry.2/{p}/0"));
    assert!(
        h["meridian.retry.first"].starts_with(&format!("orders/{p}/")),
        "{h:?}"
    );
    assert_eq!(h["trace"], "t-1");
    // Each retry topic holds what moved through it, once.
    let r1: Vec<_> = kcat_all(&b, "orders.retry.1")
        .iter()
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(r1.len(), 2, "{r1:?}");
    let r2: Vec<_> = kcat_all(&b, "orders.retry.2")
        .iter()
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(r2, ["poison-1"]);

    // The group committed as it went: a new member finds nothing to redo.
    let mut again = Member::start(c.dir.path(), "m2", &b, "billing", HANDLER);
    std::thread::sleep(Duration::from_secs(4));
    let log = again.stop();
    assert!(
        again.accepted().is_empty(),
        "re-consumed: {:?}",
        again.accepted()
    );
    assert!(log.contains("0 accepted, 0 moved"), "{log}");
}

/// Commits `offset` of `topic`/0 for `group` with `metadata`, outside any
/// generation, as a member that crashed mid-move left it.
fn commit_marker(bootstrap: &str, group: &str, topic: &str, offset: i64, metadata: &str) {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let text = |s: &str| StrBytes::from_string(s.to_string());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = meridian::client::Client::new(bootstrap);
        let found: FindCoordinatorResponse = client
            .any()
            .await
            .unwrap()
            .call(
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default().with_key(text(group)),
            )
            .await
            .unwrap();
        assert_eq!(found.error_code, 0, "{found:?}");
        let conn = client
            .connection(&format!("{}:{}", found.host.as_str(), found.port))
            .await
            .unwrap();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(text(""))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(text(metadata)))])]);
        let resp: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 5, &req).await.unwrap();
        let code = resp.topics[0].partitions[0].error_code;
        assert_eq!(code, 0, "commit refused: {resp:?}");
    });
}

/// Waits until `m` accepted `n` records, then stops it and returns them as
/// (topic, value) pairs, sorted.
fn accepted_after(mut m: Member, n: usize) -> Vec<(String, String)> {
    wait_until(
        &format!("{n} records accepted"),
        || m.accepted().len() >= n,
        &[&m],
    );
    std::thread::sleep(Duration::from_secs(2)); // room for a stray duplicate
    m.stop();
    let mut v: Vec<(String, String)> = m
        .accepted()
        .iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap().into(),
                r["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_move_a_crashed_member_left_half_done_is_neither_lost_nor_doubled() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    create_chain(&b, &["--attempts", "2", "--backoff-ms", "300"]);
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    kcat_produce(&b, "orders", &lines(&["a0", "a1"]), &["-p", "0"]);

    // Crashed after the write: the record is in the retry topic already.
    kcat_produce(
        &b,
        "orders.retry.1",
        &lines(&["a0"]),
        &[
            "-p",
            "0",
            "-H",
            "meridian.retry.attempt=1",
            "-H",
            "meridian.retry.from=orders/0/0",
        ],
    );
    commit_marker(
        &b,
        "done",
        "orders",
        0,
        "meridian.move.v1:0:0:0:orders.retry.1",
    );
    let m = Member::start(c.dir.path(), "done", &b, "done", "true");
    let pair = |t: &str, v: &str| (t.to_string(), v.to_string());
    // a0 is delivered once, from the retry topic, not again from `orders`.
    assert_eq!(
        accepted_after(m, 2),
        [pair("orders", "a1"), pair("orders.retry.1", "a0")]
    );

    // Crashed before the write: the retry topic's end was 1 when the marker
    // was committed and nothing came after it, so a0 is delivered again
    // from `orders` (the record below the end is another group's move).
    commit_marker(
        &b,
        "redo",
        "orders",
        0,
        "meridian.move.v1:0:0:1:orders.retry.1",
    );
    let m = Member::start(c.dir.path(), "redo", &b, "redo", "true");
    assert_eq!(
        accepted_after(m, 3),
        [
            pair("orders", "a0"),
            pair("orders", "a1"),
            pair("orders.retry.1", "a0")
        ]
    );
}

fn values_of(m: &Member) -> Vec<String> {
    m.accepted()
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn two_members_share_a_chain_and_one_leaving_hands_its_partitions_over() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    create_chain(&b, &["--attempts", "2", "--backoff-ms", "300", "-p", "4"]);
    let mut m1 = Member::start(c.dir.path(), "m1", &b, "pair", HANDLER);
    let m2 = Member::start(c.dir.path(), "m2", &b, "pair", HANDLER);
    // Both hold partitions of one generation before records arrive.
    let holds = |m: &Member| {
        m.stderr()
            .lines()
            .rev()
            .find(|l| l.contains("joined"))
            .is_some_and(|l| l.contains("(\"orders\""))
    };
    wait_until(
        "both members joined with partitions",
        || holds(&m1) && holds(&m2),
        &[&m1, &m2],
    );

    // A wave: 40 records and a poison one, written and then consumed by
    // the members still in the group, which by then have read `total`.
    let wave = |tag: &str, total: usize, dead: usize, m1: &Member, m2: &Member| {
        let mut values: Vec<String> = (0..40).map(|i| format!("{tag}-{i}")).collect();
        values.push(format!("poison-{tag}"));
        produce_keyed(&b, "orders", &values, &[]);
        wait_until(
            &format!("wave {tag} consumed"),
            || {
                values_of(m1).len() + values_of(m2).len() >= total
                    && kcat_all(&b, "orders.dlq").len() == dead
            },
            &[m1, m2],
        );
        values
    };
    let first = wave("a", 40, 1, &m1, &m2);
    assert!(
        !values_of(&m1).is_empty() && !values_of(&m2).is_empty(),
        "one member read everything"
    );

    // m1 leaves; m2 takes its partitions and reads the second wave alone.
    m1.stop();
    let second = wave("b", 80, 2, &m1, &m2);
    std::thread::sleep(Duration::from_secs(2)); // room for a stray duplicate
    let mut got: Vec<String> = values_of(&m1).into_iter().chain(values_of(&m2)).collect();
    got.sort();
    let mut want: Vec<String> = first
        .iter()
        .chain(second.iter())
        .filter(|v| !v.starts_with("poison"))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(got, want, "every record but the poison ones, once");
    let dead: Vec<_> = kcat_all(&b, "orders.dlq")
        .iter()
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
}

#[test]
fn a_delayed_record_falls_due_at_the_same_time_in_every_region() {
    require("kcat");
    let c = Cluster::start_three();
    let east = c.region_bootstrap("us-east");
    create(&east, "later", 1, &["meridian.delay.ms=2500"]);
    // Every node knows the topic before the readers ask for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &c.nodes {
        loop {
            let (ok, out, _) = meridian(&["topic", "describe", "later", "-b", &n.kafka]);
            if ok && out.contains("meridian.delay.ms = 2500") {
                break;
            }
            assert!(Instant::now() < deadline, "node {}: {out}", n.id);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (ok, out, err) = meridian(&["produce", "-b", &east, "-t", "later", "x"]);
    assert!(ok, "{out}{err}");
    // The record's HLC travels with it: every region holds it back until
    // the same moment, its time plus the delay.
    let readers: Vec<_> = ["eu-west", "ap-south", "us-east"]
        .iter()
        .map(|r| {
            let b = c.region_bootstrap(r);
            std::thread::spawn(move || {
                let (ok, out, err) = run(
                    Command::new("kcat").args([
                        "-b",
                        &b,
                        "-C",
                        "-t",
                        "later",
                        "-o",
                        "beginning",
                        "-c",
                        "1",
                        "-f",
                        "%T %s\\n",
                    ]),
                    Duration::from_secs(60),
                );
                (ok, out, err, now_ms())
            })
        })
        .collect();
    for (r, h) in ["eu-west", "ap-south", "us-east"].iter().zip(readers) {
        let (ok, out, err, got_at) = h.join().unwrap();
        assert!(ok, "{r}: {err}");
        let (ts, v) = out.trim().split_once(' ').expect("timestamp and value");
        assert_eq!(v, "x");
        let ts: i64 = ts.parse().unwrap();
        assert!(
            got_at >= ts + 2500,
            "{r} served it {} ms after its time",
            got_at - ts
        );
    }
}
