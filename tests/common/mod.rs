//! Test harness: a real `meridian dev` cluster on loopback, on ports chosen
//! for this test, stopped (with every node it started) when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian::admin::status::{GroupStatus, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const EXE: &str = env!("CARGO_BIN_EXE_meridian");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A base port with `n` free TCP and UDP ports above it, below Linux's
/// ephemeral range (32768-60999), so outgoing connections cannot take a port
/// between this check and the node binding it.
pub fn free_port_base(n: u16) -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 10_000 + ((seed + attempt * 104_729) % 22_000) as u16;
        let free = (0..n).all(|i| {
            let p = base + i;
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free port range found");
}

pub struct NodeInfo {
    pub id: u64,
    pub region: String,
    pub kafka: String,
    pub admin: String,
    pub pid: u32,
    pub config: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    dev: Child,
    pub nodes: Vec<NodeInfo>,
    /// The nodes' `admin.token`, from cluster.json.
    pub admin_token: String,
    /// Nodes restarted by the test, outside `meridian dev`.
    restarted: Vec<Child>,
}

impl Cluster {
    /// Starts the three-region dev topology (simulated round trips) and
    /// waits until it is up.
    pub fn start_three() -> Cluster {
        Self::start_with(&repo().join("regions/dev.toml"))
    }

    /// Bootstrap brokers of one region.
    pub fn region_bootstrap(&self, region: &str) -> String {
        self.region_nodes(region)
            .iter()
            .map(|n| n.kafka.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The region of the metadata group's leader, and the two others. Delays
    /// are put between the two others only: their lease renewals go to the
    /// leader unhindered, so no region is failed over for the delay.
    pub fn regions_around_meta_leader(&self) -> (String, String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader_seen_by = |n: &NodeInfo| -> Option<u64> { status(&n.admin)?.meta.leader };
        let mut previous = None;
        loop {
            // Every node names the same leader, twice a second apart: a
            // settled leader, not one of a start-up election.
            let seen: Vec<Option<u64>> = self.nodes.iter().map(leader_seen_by).collect();
            let agreed = seen.iter().all(|l| l.is_some() && *l == seen[0]);
            let leader = if agreed { seen[0] } else { None };
            let stable = leader.is_some() && leader == previous;
            previous = leader;
            if let (true, Some(l)) = (stable, leader) {
                let m = self.node(l).region.clone();
                let others: Vec<String> = ["us-east", "eu-west", "ap-south"]
                    .into_iter()
                    .filter(|r| *r != m)
                    .map(String::from)
                    .collect();
                return (m, others[0].clone(), others[1].clone());
            }
            assert!(Instant::now() < deadline, "no settled metadata leader");
            std::thread::sleep(Duration::from_millis(1000));
        }
    }

    /// Adds `ms` to the round trip between regions `a` and `b`.
    pub fn delay(&self, a: &str, b: &str, ms: u64) {
        self.set_faults(&format!(
            r#"{{"delay": [{{"a": "{a}", "b": "{b}", "ms": {ms}}}]}}"#
        ));
    }

    pub fn region_nodes(&self, region: &str) -> Vec<&NodeInfo> {
        self.nodes.iter().filter(|n| n.region == region).collect()
    }

    /// Sets the fault layer of every node (JSON as admin `/faults` takes).
    pub fn set_faults(&self, json: &str) {
        for n in &self.nodes {
            if let Some((code, body)) = self.admin_post(&n.admin, "/faults", json) {
                assert_eq!(code, 200, "node {}: {body}", n.id);
            }
        }
    }

    /// POSTs to a node's admin endpoint with the cluster's admin token.
    pub fn admin_post(&self, addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
        http_post(addr, path, body, Some(&self.admin_token))
    }

    /// Starts the one-region topology and waits until it is up.
    pub fn start() -> Cluster {
        Self::start_with(&repo().join("regions/one-region.toml"))
    }

    pub fn start_with(topology: &Path) -> Cluster {
        Self::start_with_args(topology, &[])
    }

    /// Starts the one-region topology with node config `settings`
    /// (`key=value`, as `meridian dev --set` takes them).
    pub fn one_region_set(settings: &[String]) -> Cluster {
        let args: Vec<std::ffi::OsString> = settings
            .iter()
            .flat_map(|s| ["--set".into(), s.into()])
            .collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        Self::start_with_args(&repo().join("regions/one-region.toml"), &args)
    }

    /// Starts `meridian dev` on `topology` with more arguments.
    pub fn start_with_args(topology: &Path, args: &[&std::ffi::OsStr]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("meridian-test-")
            .tempdir()
            .unwrap();
        let base = free_port_base(3 * 9);
        let out = std::fs::File::create(dir.path().join("dev.out")).unwrap();
        let dev = Command::new(EXE)
            .arg("dev")
            .arg("--topology")
            .arg(topology)
            .arg("--data-dir")
            .arg(dir.path().join("cluster"))
            .arg("--port-base")
            .arg(base.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start meridian dev");
        let mut c = Cluster {
            dir,
            dev,
            nodes: Vec::new(),
            admin_token: String::new(),
            restarted: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = std::fs::read_to_string(c.dir.path().join("dev.out")).unwrap_or_default();
            if out.contains("cluster is up") {
                break;
            }
            if let Ok(Some(status)) = c.dev.try_wait() {
                panic!(
                    "meridian dev exited ({status}):\n{out}{}",
                    named_log_tail(&out, 40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "cluster not up after 120 s:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(c.cluster_dir().join("cluster.json")).unwrap(),
        )
        .unwrap();
        c.admin_token = json["admin_token"]
            .as_str()
            .expect("cluster.json names the admin token")
            .to_string();
        for (r, n) in json["regions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["nodes"].as_array().unwrap().iter().map(move |n| (r, n)))
        {
            c.nodes.push(NodeInfo {
                id: n["id"].as_u64().unwrap(),
                region: r["name"].as_str().unwrap().to_string(),
                kafka: n["kafka"].as_str().unwrap().to_string(),
                admin: n["admin"].as_str().unwrap().to_string(),
                pid: n["pid"].as_u64().unwrap() as u32,
                config: PathBuf::from(n["config"].as_str().unwrap()),
            });
        }
        c
    }

    pub fn dev_pid(&self) -> u32 {
        self.dev.id()
    }

    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.kafka.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, id: u64) -> &NodeInfo {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn node_by_kafka(&self, addr: &str) -> &NodeInfo {
        self.nodes.iter().find(|n| n.kafka == addr).unwrap()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.cluster_dir().join(format!("node-{id}.log")))
            .unwrap_or_default()
    }

    /// SIGKILL a node and wait until it is gone.
    pub fn kill9(&mut self, id: u64) {
        let pid = self.node(id).pid;
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while kill(Pid::from_raw(pid as i32), None).is_ok() && Instant::now() < deadline {
            // A zombie until `meridian dev` reaps it; probe the Kafka port instead.
            if std::net::TcpStream::connect(&self.node(id).kafka).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a node again from its config, as an operator would.
    pub fn restart(&mut self, id: u64) {
        let n = self.node(id);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.cluster_dir().join(format!("node-{id}.log")))
            .unwrap();
        let child = Command::new(EXE)
            .arg("node")
            .arg("--config")
            .arg(&n.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.restarted.push(child);
        self.nodes.iter_mut().find(|n| n.id == id).unwrap().pid = pid;
    }

    /// Waits until every node's /healthz answers 200.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for n in &self.nodes {
            loop {
                if http_get(&n.admin, "/healthz").is_some_and(|(c, _)| c == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not healthy in time:\n{}",
                    n.id,
                    self.log(n.id)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.dev.id() as i32), Signal::SIGTERM);
        for c in &self.restarted {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !matches!(self.dev.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}

impl Cluster {
    /// Copies the nodes' logs of a failed test out of its temporary
    /// directory, which is deleted, and says where.
    fn keep_logs(&self) {
        // Named after the test's own temporary directory: unique.
        let name = self.dir.path().file_name().unwrap_or_default();
        let keep = std::env::temp_dir().join(name.to_string_lossy().replacen(
            "meridian-test-",
            "meridian-failed-",
            1,
        ));
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "log" || x == "out") {
                    let rel = path.strip_prefix(self.dir.path()).unwrap_or(&path);
                    let to = keep.join(rel);
                    let _ = std::fs::create_dir_all(to.parent().unwrap_or(&keep));
                    let _ = std::fs::copy(&path, &to);
                }
            }
        }
        eprintln!("node logs of the failed test kept in {}", keep.display());
    }
}

/// The last `lines` lines of the node log that `meridian dev`'s error
/// names ("see its log PATH"), so that CI output shows why a node failed.
fn named_log_tail(out: &str, lines: usize) -> String {
    let Some(path) = out
        .split("see its log ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return String::new();
    };
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last {lines} lines of {path}:\n{tail}\n")
}

/// A process's resident memory in bytes (0 once it is gone).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The sum of every series (all labels) of metrics whose names start
/// with `name`, over `nodes`' `/metrics`; nodes that do not answer count 0.
pub fn metric_sum<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>, name: &str) -> f64 {
    nodes
        .into_iter()
        .filter_map(|n| http_get(&n.admin, "/metrics"))
        .flat_map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A node's `/status`, if it answers.
pub fn status(admin: &str) -> Option<Status> {
    let (_, body) = http_get(admin, "/status")?;
    meridian::admin::status::parse(&body)
}

/// The `/status` entries of `topic`'s partitions on the node at `admin`,
/// if it answers.
pub fn topic_partitions(admin: &str, topic: &str) -> Option<Vec<GroupStatus>> {
    let s = status(admin)?;
    Some(
        s.partitions
            .into_iter()
            .filter(|p| p.topic.as_deref() == Some(topic))
            .collect(),
    )
}

/// Blocking HTTP/1.0 GET: status code and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n").map_or("", |x| x.1).to_string(),
    ))
}

/// Blocking HTTP/1.0 POST of a JSON body: status code and body.
pub fn http_post(addr: &str, path: &str, body: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n").map_or("", |x| x.1).to_string(),
    ))
}

/// Runs a command with a time limit; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `tests/clients/<script>` (python confluent-kafka) with a time
/// limit and parses the JSON it prints.
pub fn python_json(script: &str, args: &[&str], timeout: Duration) -> serde_json::Value {
    let (ok, out, err) = run(
        Command::new("python3")
            .arg(repo().join("tests/clients").join(script))
            .args(args),
        timeout,
    );
    assert!(
        ok,
        "{script} {args:?} failed (is confluent-kafka installed? .ci/install-deps --test-clients)\n{out}\n{err}"
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{script}: bad output {out:?}: {e}"))
}

/// The meridian CLI with a time limit.
pub fn meridian(args: &[&str]) -> (bool, String, String) {
    run(Command::new(EXE).args(args), Duration::from_secs(60))
}

/// Creates a topic with the CLI (`-c KEY=VALUE` for each of `configs`).
pub fn create(bootstrap: &str, topic: &str, partitions: u32, configs: &[&str]) {
    let p = partitions.to_string();
    let mut args = vec!["topic", "create", "-b", bootstrap, "-p", &p];
    for kv in configs {
        args.extend(["-c", kv]);
    }
    args.push(topic);
    let (ok, out, err) = meridian(&args);
    assert!(ok, "create {topic}: {out}{err}");
}

pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` is not installed; run `.ci/install-deps --test-clients` first"
    );
}
