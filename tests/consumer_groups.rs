//! Consumer groups with real clients that no one here wrote, unmodified:
//! `kcat -G` and python confluent-kafka (both librdkafka). Members share a
//! topic's partitions, a member leaving hands its partitions over, every
//! record is consumed once; committed offsets travel with the data to every
//! region (invariant 8), and a group whose region fails resumes in another
//! region where it committed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{create, python_json, repo, require, run, Cluster};

fn groups_py(args: &[&str], timeout: Duration) -> serde_json::Value {
    python_json("groups.py", args, timeout)
}

fn produce_kcat(bootstrap: &str, topic: &str, values: &[String]) {
    let input = tempfile::NamedTempFile::new().unwrap();
    let lines: Vec<String> = values.iter().map(|v| format!("{v}:{v}")).collect();
    std::fs::write(input.path(), lines.join("\n") + "\n").unwrap();
    let (ok, _, err) = run(
        Command::new("kcat")
            .args(["-b", bootstrap, "-P", "-t", topic, "-K:", "-X"])
            .arg("request.required.acks=all")
            .arg("-l")
            .arg(input.path()),
        Duration::from_secs(60),
    );
    assert!(ok, "kcat -P failed: {err}");
}

/// A `kcat -G` member writing `partition value` lines, unbuffered, to a file.
struct KcatMember {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl KcatMember {
    fn start(dir: &Path, name: &str, bootstrap: &str, group: &str, topic: &str) -> KcatMember {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new("kcat")
            .args(["-b", bootstrap, "-G", group, topic, "-u", "-q"])
            .args(["-X", "auto.offset.reset=earliest"])
            .args(["-X", "session.timeout.ms=6000"])
            .args(["-f", "%p %s\\n"])
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .expect("start kcat");
        KcatMember { child, out, err }
    }

    fn values(&self) -> Vec<(i32, String)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (p, v) = l.split_once(' ')?;
                Some((p.parse().ok()?, v.to_string()))
            })
            .collect()
    }

    /// Stops the member as Ctrl-C does: it commits and leaves the group.
    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "kcat did not stop on SIGINT within 15 s:\n{}",
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
    }
}

impl Drop for KcatMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the members together consumed `want` records.
fn wait_consumed(members: &[&KcatMember], want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: usize = members.iter().map(|m| m.values().len()).sum();
        if got >= want {
            return;
        }
        if Instant::now() > deadline {
            let errs: Vec<String> = members
                .iter()
                .map(|m| std::fs::read_to_string(&m.err).unwrap_or_default())
                .collect();
            panic!("{what}: consumed {got} of {want} records in 60 s\n{errs:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kcat_members_share_partitions_and_a_leaving_member_hands_them_over() {
    require("kcat");
    let c = Cluster::start();
    let b = c.bootstrap();
    create(&b, "shared", 4, &[]);
    let first: Vec<String> = (0..80).map(|i| format!("a{i}")).collect();
    produce_kcat(&b, "shared", &first);
    let dir = c.cluster_dir();
    let mut m1 = KcatMember::start(&dir, "m1", &b, "kg", "shared");
    let m2 = KcatMember::start(&dir, "m2", &b, "kg", "shared");
    wait_consumed(&[&m1, &m2], first.len(), "two members");
    let p1: BTreeSet<i32> = m1.values().iter().map(|(p, _)| *p).collect();
    let p2: BTreeSet<i32> = m2.values().iter().map(|(p, _)| *p).collect();
    assert!(
        !p1.is_empty() && !p2.is_empty(),
        "both members consume: {p1:?} {p2:?}"
    );
    assert!(
        p1.is_disjoint(&p2),
        "no partition is read by both: {p1:?} {p2:?}"
    );
    // m1 leaves: m2 takes its partitions over at m1's committed offsets.
    m1.stop();
    let second: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
    produce_kcat(&b, "shared", &second);
    wait_consumed(&[&m1, &m2], first.len() + second.len(), "after m1 left");
    std::thread::sleep(Duration::from_secs(1)); // a duplicate would arrive now
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, v) in m1.values().into_iter().chain(m2.values()) {
        *seen.entry(v).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "consumed twice: {dups:?}");
    let all: BTreeSet<&String> = first.iter().chain(&second).collect();
    assert_eq!(
        seen.keys().collect::<BTreeSet<_>>(),
        all,
        "every record once"
    );
    let after: BTreeSet<i32> = m2
        .values()
        .iter()
        .filter(|(_, v)| v.starts_with('b'))
        .map(|(p, _)| *p)
        .collect();
    assert!(
        after.len() > p2.len(),
        "m2 took over m1's partitions: {after:?}"
    );
}

/// Every value of `members` (groups.py output) with how often it was read.
fn tally(members: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for m in members {
        for v in m["values"].as_array().unwrap() {
            *seen.entry(v.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    seen
}

/// Three python members of one group with `strategy` share a six-partition
/// topic; the first leaves, the other two take its partitions over at its
/// commits. Returns groups.py's report.
fn share(b: &str, topic: &str, group: &str, strategy: &str) -> Vec<serde_json::Value> {
    create(b, topic, 6, &[]);
    let v = groups_py(
        &["share", b, topic, group, strategy, "3", "150", "90"],
        Duration::from_secs(150),
    );
    let members = v.as_array().unwrap().clone();
    let seen = tally(&members);
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{strategy}: consumed twice: {dups:?}");
    assert_eq!(seen.len(), 240, "{strategy}: every record consumed");
    let held = |m: &serde_json::Value| -> Vec<Vec<i64>> {
        m["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                a.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    for m in &members {
        assert!(
            held(m).iter().any(|a| !a.is_empty()),
            "{strategy}: a member never held a partition: {m}"
        );
    }
    // After the first left, the other two held all six between them.
    let mut rest: Vec<i64> = members[1..]
        .iter()
        .flat_map(|m| m["settled"].as_array().unwrap().clone())
        .map(|p| p.as_i64().unwrap())
        .collect();
    rest.sort();
    assert_eq!(
        rest,
        vec![0, 1, 2, 3, 4, 5],
        "{strategy}: the two left share every partition"
    );
    let late = members[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.as_str().unwrap().starts_with("second-"))
        .count();
    assert_eq!(
        late, 0,
        "{strategy}: the member that left read nothing more"
    );
    members
}

#[test]
fn three_python_members_share_a_topic_and_rebalance_when_one_leaves() {
    require("python3");
    let c = Cluster::start();
    let b = c.bootstrap();
    share(&b, "orders", "pg", "range");

    // The group, now without members, as the AdminClient sees it; deleting
    // it drops its commits.
    let a = groups_py(&["admin", &b, "orders", "pg", "6"], Duration::from_secs(90));
    let listed = a["listed"].as_array().unwrap();
    assert!(
        listed.iter().any(|g| g[0] == "pg" && g[1] == "EMPTY"),
        "ListGroups shows the group, empty: {a}"
    );
    assert_eq!(a["described"]["state"], "EMPTY", "{a}");
    assert_eq!(a["described"]["members"], 0, "{a}");
    assert!(a["deleted"].is_null(), "DeleteGroups: {a}");
    for p in 0..6 {
        assert_eq!(
            a["committed_after"][p.to_string()],
            -1,
            "commits deleted: {a}"
        );
    }

    // A commit's metadata may be groups.offset_metadata_bytes_max long
    // (4096 by default, as Kafka's offset.metadata.max.bytes), no longer.
    for (bytes, want) in [
        // (Clear of the edge: a client may count a terminator.)
        ("4000", serde_json::Value::Null),
        ("5000", "OFFSET_METADATA_TOO_LARGE".into()),
    ] {
        let m = groups_py(
            &["metadata", &b, "orders", "pm", bytes],
            Duration::from_secs(60),
        );
        assert_eq!(m["error"], want, "{bytes} bytes of metadata: {m}");
    }
}

/// The clients' other assignors work unchanged: the broker never reads
/// assignments, and cooperative-sticky's incremental rounds are ordinary
/// JoinGroup/SyncGroup rounds.
#[test]
fn roundrobin_and_cooperative_sticky_members_share_a_topic_too() {
    require("python3");
    let c = Cluster::start();
    let b = c.bootstrap();
    share(&b, "rr", "rr-group", "roundrobin");
    share(&b, "coop", "coop-group", "cooperative-sticky");
}

/// The coordinator (leader of the group's `__consumer_offsets` partition)
/// is killed while two members consume: they find the new one, join again,
/// and go on from their commits. Nothing is lost; a record is read twice
/// only if its commit failed when the coordinator died.
#[test]
fn members_move_to_a_new_coordinator_when_it_dies_and_lose_nothing() {
    require("python3");
    require("kcat");
    let mut c = Cluster::start();
    let b = c.bootstrap();
    create(&b, "jobs", 4, &[]);
    let child = Command::new("python3")
        .arg(repo().join("tests/clients/groups.py"))
        .args(["steady", &b, "jobs", "steady-group", "2", "200", "150000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start groups.py");
    let first: Vec<String> = (0..100).map(|i| format!("j{i}")).collect();
    produce_kcat(&b, "jobs", &first);
    // The group forms (initial delay 3 s) and reads the first batch.
    std::thread::sleep(Duration::from_secs(6));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let coordinator = rt.block_on(async {
        let client = meridian::client::Client::new(&b);
        let t = client
            .topic(meridian::group::offsets::TOPIC, false)
            .await
            .expect("the offsets topic exists once a group formed");
        let p = meridian::group::offsets::partition_for("steady-group", t.leaders.len() as u32);
        t.leaders[p as usize] as u64
    });
    c.kill9(coordinator);
    let second: Vec<String> = (100..200).map(|i| format!("j{i}")).collect();
    produce_kcat(&b, "jobs", &second);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "groups.py steady failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let members = v.as_array().unwrap();
    for m in members {
        eprintln!(
            "member: assignments {} uncommitted {}",
            m["assignments"], m["uncommitted"]
        );
    }
    let seen = tally(members);
    assert_eq!(seen.len(), 200, "every record consumed: {seen:?}");
    let uncommitted: BTreeSet<String> = members
        .iter()
        .flat_map(|m| m["uncommitted"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let dups: Vec<_> = seen
        .iter()
        .filter(|(v, n)| **n > 1 && !uncommitted.contains(*v))
        .collect();
    assert!(
        dups.is_empty(),
        "read twice although its commit was acknowledged: {dups:?} (uncommitted: {uncommitted:?})"
    );
}

/// Waits until the region of `bootstrap` holds `want` as the group's commits.
fn wait_committed(bootstrap: &str, topic: &str, group: &str, want: &serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = groups_py(
            &["committed", bootstrap, topic, group, "2"],
            Duration::from_secs(60),
        );
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{bootstrap} holds commits {got}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Invariant 8: commits of a `sync` topic are held by another region before
/// they are acknowledged; a group whose region is lost resumes in another
/// region exactly after its last commit.
#[test]
fn a_group_resumes_in_another_region_where_it_committed_after_its_region_fails() {
    require("python3");
    let mut c = Cluster::start_three();
    let east = c.region_bootstrap("us-east");
    create(&east, "payments", 2, &["meridian.replication=sync"]);
    let values: Vec<String> = (0..60).map(|i| format!("pay{i}")).collect();
    require("kcat");
    produce_kcat(&east, "payments", &values);
    let first = groups_py(
        &["consume", &east, "payments", "billing", "25", "10000"],
        Duration::from_secs(90),
    );
    let first: Vec<(i64, i64, String)> = first["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].as_i64().unwrap(),
                r[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(first.len(), 25);
    // What us-east committed: the next offset of each partition read.
    let mut want = serde_json::Map::new();
    for p in 0..2 {
        let next = first
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| r.1 + 1)
            .max()
            .unwrap_or(-1);
        want.insert(p.to_string(), next.into());
    }
    let want = serde_json::Value::Object(want);
    // us-east is lost right after its last commit was acknowledged; the
    // survivors hold every acknowledged commit, and the group moves to
    // eu-west.
    let ids: Vec<u64> = c.region_nodes("us-east").iter().map(|n| n.id).collect();
    for id in ids {
        c.kill9(id);
    }
    for r in ["eu-west", "ap-south"] {
        wait_committed(&c.region_bootstrap(r), "payments", "billing", &want);
    }
    let west = c.region_bootstrap("eu-west");
    let rest = groups_py(
        &["consume", &west, "payments", "billing", "35", "20000"],
        Duration::from_secs(120),
    );
    let rest: Vec<String> = rest["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_str().unwrap().to_string())
        .collect();
    let mut seen: BTreeMap<&String, usize> = BTreeMap::new();
    for v in first.iter().map(|r| &r.2).chain(&rest) {
        *seen.entry(v).or_default() += 1;
    }
    let again: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(again.is_empty(), "re-read after moving region: {again:?}");
    assert_eq!(seen.len(), 60, "every record consumed once: {rest:?}");
}

/// Issue 16, item 10, second finding: a member that joins a group through
/// another region's brokers while the group has members in its region
/// joins that group (its region's coordinator sends it there), instead of
/// forming a second group that assigns every partition again and re-reads
/// what the first committed. Records are written throughout, so two groups
/// would both read them.
#[test]
fn a_member_joining_through_another_region_joins_the_same_group() {
    require("python3");
    let c = Cluster::start_three();
    let south = c.region_bootstrap("ap-south");
    let east = c.region_bootstrap("us-east");
    create(&south, "spans", 4, &["meridian.replication=sync"]);
    let v = groups_py(
        &["span", &south, &east, "spans", "spanning", "100", "4", "8"],
        Duration::from_secs(180),
    );
    let members = v["members"].as_array().unwrap().clone();
    let written = v["written"].as_u64().unwrap() as usize;
    let seen = tally(&members);
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records read twice, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    assert_eq!(seen.len(), written, "every record read");
    let settled: Vec<Vec<i64>> = members
        .iter()
        .map(|m| {
            m["settled"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_i64().unwrap())
                .collect()
        })
        .collect();
    let mut all: Vec<i64> = settled.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(
        all,
        vec![0, 1, 2, 3],
        "one group: its three members share the four partitions: {settled:?}"
    );
    assert!(
        !settled[2].is_empty(),
        "the member that came through us-east holds partitions: {settled:?}"
    );
}
