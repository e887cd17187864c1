//! `meridian dev`: a cluster on loopback from a topology file, one child
//! process per node, with its data in one directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{AdminConfig, NodeConfig, RuntimeConfig, Topology};
use crate::transport::tls;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("--port-base {0} leaves no room for {1} nodes (three ports each, below 65536)")]
    PortBase(u16, usize),
    #[error("--set {0}: {1}")]
    Set(String, String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("node {id} did not become healthy within {secs} s; see its log {log}")]
    NotReady { id: u64, secs: u64, log: PathBuf },
    #[error("node {id} exited during start-up ({status}); see its log {log}")]
    Exited {
        id: u64,
        status: String,
        log: PathBuf,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DevError + 'a {
    move |cause| DevError::Io {
        what,
        path: path.to_path_buf(),
        cause,
    }
}

pub use crate::admin::cluster_file::{ClusterFile, ClusterNode, ClusterRegion};

/// Gives node `i` (in topology order) the ports `base + 3i` (Kafka),
/// `base + 3i + 1` (QUIC) and `base + 3i + 2` (admin).
pub fn with_port_base(t: &Topology, base: u16) -> Result<Topology, DevError> {
    let n = t.regions.iter().map(|r| r.nodes.len()).sum::<usize>();
    if base as usize + 3 * n > 65_535 || base < 1024 {
        return Err(DevError::PortBase(base, n));
    }
    let mut t = t.clone();
    let mut i = 0u16;
    for r in &mut t.regions {
        for node in &mut r.nodes {
            node.kafka.set_port(base + 3 * i);
            node.quic.set_port(base + 3 * i + 1);
            node.admin.set_port(base + 3 * i + 2);
            i += 1;
        }
    }
    Ok(t)
}

/// Sets `section.key = value` pairs (values parsed as TOML, else taken as
/// strings) in a node config file, then checks the file as the node will.
fn apply_settings(path: &Path, settings: &[(String, String)]) -> Result<(), DevError> {
    let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| DevError::Set(path.display().to_string(), e.to_string()))?;
    for (key, value) in settings {
        let bad = |why: &str| DevError::Set(format!("{key}={value}"), why.to_string());
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("use SECTION.KEY=VALUE, e.g. raft.heartbeat_ms=300"));
        }
        let v: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut table = &mut doc;
        for p in &parts[..parts.len() - 1] {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| bad(&format!("`{p}` is not a section")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), v);
    }
    let text = toml::to_string_pretty(&doc)
        .map_err(|e| DevError::Set(path.display().to_string(), e.to_string()))?;
    std::fs::write(path, text).map_err(io("cannot write", path))?;
    // Unknown keys and bad values are named here, before any node starts.
    crate::config::NodeConfig::load(path)?;
    Ok(())
}

/// A running dev cluster. Dropping it stops every node.
pub struct DevCluster {
    pub dir: PathBuf,
    pub topology: Topology,
    children: Vec<(u64, Child)>,
    /// The nodes' `admin.token`.
    pub admin_token: String,
    _temp: Option<tempfile::TempDir>,
}

impl DevCluster {
    /// Writes the configs, starts one `meridian node` per topology node, and
    /// waits until every node reports healthy.
    pub async fn start(
        exe: &Path,
        topology: Topology,
        data_dir: Option<PathBuf>,
        topics: Option<&Path>,
        settings: &[(String, String)],
        ready_timeout: Duration,
    ) -> Result<DevCluster, DevError> {
        let (dir, temp) = match data_dir {
            Some(d) => (crate::config::absolute(&d), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("meridian-dev-")
                    .tempdir()
                    .map_err(io(
                        "cannot create a temporary directory in",
                        &std::env::temp_dir(),
                    ))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let topo_path = dir.join("topology.toml");
        std::fs::write(&topo_path, topology.to_toml()).map_err(io("cannot write", &topo_path))?;
        // Create the development CA once, before the nodes race to.
        tls::ensure_dev_ca(&dir.join("dev-ca"))?;
        let mut cluster = DevCluster {
            dir: dir.clone(),
            topology: topology.clone(),
            children: Vec::new(),
            admin_token: String::new(),
            _temp: temp,
        };
        // The nodes share this machine: give each its share of the cores.
        let nodes = topology
            .regions
            .iter()
            .map(|r| r.nodes.len())
            .sum::<usize>()
            .max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = RuntimeConfig {
            worker_threads: (cores / nodes).max(1),
        };
        // Fault injection is on for the clusters `meridian dev` starts,
        // behind a token made for this start (in cluster.json).
        let admin = AdminConfig {
            faults: true,
            token: Some(uuid::Uuid::new_v4().simple().to_string()),
        };
        cluster.admin_token = admin.token.clone().expect("token set");
        let mut file = ClusterFile {
            regions: Vec::new(),
            admin_token: admin.token.clone(),
        };
        for r in &topology.regions {
            let mut nodes = Vec::new();
            for n in &r.nodes {
                let config = dir.join(format!("node-{}.toml", n.id));
                NodeConfig::write_file(
                    &config,
                    n.id,
                    &topo_path,
                    &dir.join(format!("node-{}", n.id)),
                    runtime.clone(),
                    topics,
                    admin.clone(),
                )
                .map_err(io("cannot write", &config))?;
                if !settings.is_empty() {
                    apply_settings(&config, settings)?;
                }
                let child = cluster.spawn(exe, n.id, &config)?;
                nodes.push(ClusterNode {
                    id: n.id,
                    kafka: n.kafka.to_string(),
                    admin: n.admin.to_string(),
                    pid: child,
                    config: config.display().to_string(),
                });
            }
            file.regions.push(ClusterRegion {
                name: r.name.clone(),
                nodes,
            });
        }
        let json_path = dir.join("cluster.json");
        let json = serde_json::to_string_pretty(&file).expect("serialize cluster file");
        std::fs::write(&json_path, json).map_err(io("cannot write", &json_path))?;
        cluster.wait_ready(ready_timeout).await?;
        Ok(cluster)
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn spawn(&mut self, exe: &Path, id: u64, config: &Path) -> Result<u32, DevError> {
        self.spawn_logging(exe, id, config, false)
    }

    fn spawn_logging(
        &mut self,
        exe: &Path,
        id: u64,
        config: &Path,
        append: bool,
    ) -> Result<u32, DevError> {
        let log = self.log_path(id);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .map_err(io("cannot create", &log))?;
        let err = out.try_clone().map_err(io("cannot open", &log))?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io("cannot start", exe))?;
        let pid = child.id();
        self.children.push((id, child));
        Ok(pid)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DevError> {
        let started = Instant::now();
        let nodes: Vec<_> = self
            .topology
            .regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| (n.id, n.admin)))
            .collect();
        for (id, admin) in nodes {
            loop {
                if let Some((_, child)) = self.children.iter_mut().find(|(i, _)| *i == id) {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(DevError::Exited {
                            id,
                            status: status.to_string(),
                            log: self.log_path(id),
                        });
                    }
                }
                if matches!(
                    http_get(&admin.to_string(), "/healthz", Duration::from_secs(1)).await,
                    Ok((200, _))
                ) {
                    break;
                }
                if started.elapsed() > timeout {
                    return Err(DevError::NotReady {
                        id,
                        secs: timeout.as_secs(),
                        log: self.log_path(id),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The pid of node `id`, while this cluster runs it.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c.id())
    }

    /// SIGKILLs node `id` and reaps it (chaos faults).
    pub fn kill(&mut self, id: u64) {
        self.children.retain_mut(|(i, c)| {
            if *i == id {
                let _ = c.kill();
                let _ = c.wait();
                false
            } else {
                true
            }
        });
    }

    /// Starts node `id` again from its config, appending to its log.
    pub fn restart(&mut self, exe: &Path, id: u64) -> Result<u32, DevError> {
        self.kill(id);
        let config = self.dir.join(format!("node-{id}.toml"));
        self.spawn_logging(exe, id, &config, true)
    }

    /// Reports nodes that exited, once each.
    pub fn reap(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        self.children.retain_mut(|(id, c)| match c.try_wait() {
            Ok(Some(status)) => {
                out.push((*id, status.to_string()));
                false
            }
            _ => true,
        });
        out
    }

    /// Stops every node: SIGTERM, then SIGKILL after `grace`. Nodes that a
    /// drill restarted (cluster.json names their new pids) are stopped too.
    pub fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for (_, c) in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let restarted = self.restarted_pids();
        for pid in &restarted {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for (_, c) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in restarted {
            while Instant::now() < deadline && self.is_our_node(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.is_our_node(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        self.children.clear();
    }

    /// Pids in cluster.json that are not this process's children: nodes a
    /// drill restarted, still running one of this cluster's configs.
    fn restarted_pids(&self) -> Vec<u32> {
        let path = self.dir.join("cluster.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ours: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        v["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["nodes"].as_array().into_iter().flatten())
            .filter_map(|n| n["pid"].as_u64().map(|p| p as u32))
            .filter(|p| !ours.contains(p) && self.is_our_node(*p))
            .collect()
    }

    /// Whether `pid` is a running `meridian node` of this cluster (its
    /// command line names a config in this cluster's directory).
    fn is_our_node(&self, pid: u32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("node") && c.contains(&*self.dir.to_string_lossy())
        })
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A minimal HTTP/1.0 GET for health checks and `meridian status`:
/// returns the status code and the body.
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "", None, timeout).await
}

/// A minimal HTTP/1.0 request with a JSON body (empty for none): returns
/// the status code and the body.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(16 * 1024 * 1024).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((code, body))
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP request timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_base_rewrites_every_listener() {
        let t = Topology::parse(
            Path::new("t.toml"),
            r#"
[[region]]
name = "r"
[[region.node]]
id = 1
quic = "127.0.0.1:1"
kafka = "127.0.0.1:2"
admin = "127.0.0.1:3"
[[region.node]]
id = 2
quic = "127.0.0.1:4"
kafka = "127.0.0.1:5"
admin = "127.0.0.1:6"
"#,
        )
        .unwrap();
        let t2 = with_port_base(&t, 20000).unwrap();
        let n2 = t2.node(2).unwrap();
        assert_eq!(
            (n2.kafka.port(), n2.quic.port(), n2.admin.port()),
            (20003, 20004, 20005)
        );
        // The rewritten topology is still valid and round-trips through TOML.
        let again = Topology::parse(Path::new("t2.toml"), &t2.to_toml()).unwrap();
        assert_eq!(again, t2);
        assert!(with_port_base(&t, 65_530).is_err());
    }
}
