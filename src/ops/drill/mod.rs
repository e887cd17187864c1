//! `meridian drill`: fails a whole region of a running cluster while a
//! verification workload writes a `sync` and an `async` topic from every
//! region and reads from every region, fails the region back, and reports
//! what a disaster would have cost: RTO per region, RPO per topic, records
//! re-injected, duplicates and a timeline (docs/disaster-recovery.md#drills).
//!
//! The pure part, [`evaluate`], turns what the workload saw into the
//! report's figures and verdicts; the rest drives the cluster.

pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::admin::status;
use crate::client::Client;
pub use workload::Workload;

pub use report::{evaluate, Ack, Event, Observed, Rec, Report, TopicReport, Views};

/// How the region is failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// SIGKILL every node of the region, restart them at failback (dev
    /// clusters, whose `cluster.json` names pids and configs).
    Kill,
    /// Cut the region off at the transport (every node's fault layer),
    /// heal at failback; its lease lapses and it is failed over.
    Isolate,
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("cannot read {path}: {reason}")]
    Cluster { path: PathBuf, reason: String },
    #[error("region `{0}` is not in the cluster; its regions are {1}")]
    UnknownRegion(String, String),
    #[error("a drill needs at least three regions (the others must keep a metadata quorum); the cluster has {0}")]
    TooFewRegions(usize),
    #[error("{0}")]
    Step(String),
}

pub use crate::ops::dev::{ClusterFile, ClusterRegion};

impl ClusterFile {
    /// Reads a `cluster.json`.
    pub fn load(path: &Path) -> Result<ClusterFile, DrillError> {
        let bad = |reason: String| DrillError::Cluster {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| bad(format!("not a cluster.json: {e}")))
    }

    /// Asks the first of `admins` that answers for the cluster's topology.
    pub async fn discover(admins: &[String]) -> Result<ClusterFile, DrillError> {
        let mut why = Vec::new();
        for a in admins {
            match crate::ops::dev::http_get(a, "/topology", Duration::from_secs(3)).await {
                Ok((200, body)) => {
                    return serde_json::from_str(&body).map_err(|e| {
                        DrillError::Step(format!("{a}/topology is not a Meridian topology: {e}"))
                    })
                }
                Ok((code, body)) => why.push(format!("{a}: HTTP {code} {}", body.trim())),
                Err(e) => why.push(format!("{a}: {e}")),
            }
        }
        Err(DrillError::Step(format!(
            "no admin address answered GET /topology ({}); give a node's admin address (its `admin` in the topology), not its Kafka address",
            why.join("; ")
        )))
    }

    pub fn region(&self, name: &str) -> Option<&ClusterRegion> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Brokers of `first`, then of every other region: a client that knows
    /// every region, as the metadata's broker list teaches it.
    pub fn bootstrap_from(&self, first: &str) -> String {
        let mut v: Vec<&str> = self
            .region(first)
            .into_iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.kafka.as_str()))
            .collect();
        for r in self.regions.iter().filter(|r| r.name != first) {
            v.extend(r.nodes.iter().map(|n| n.kafka.as_str()));
        }
        v.join(",")
    }

    pub fn region_bootstrap(&self, name: &str) -> String {
        self.region(name)
            .map(|r| {
                r.nodes
                    .iter()
                    .map(|n| n.kafka.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    pub fn admins(&self) -> Vec<String> {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.admin.clone()))
            .collect()
    }
}

/// How the drill finds the cluster.
#[derive(Debug, Clone)]
pub enum Source {
    /// `cluster.json` of `meridian dev`: addresses, pids and configs.
    File(PathBuf),
    /// Admin addresses (`host:port`) of any of its nodes: the first that
    /// answers gives the topology (`GET /topology`). Isolate mode only.
    Admin(Vec<String>),
}

/// What the drill does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster: Source,
    pub region: String,
    pub mode: Mode,
    /// How long the region stays failed, at least until it was failed over.
    pub down: Duration,
    /// Records per second per writer (one per region and topic).
    pub rate: u32,
    pub partitions: u32,
    /// Token for the nodes' `POST /faults`; else the one in cluster.json.
    pub admin_token: Option<String>,
}

struct Drill {
    plan: Plan,
    w: Arc<Workload>,
}

/// Runs a drill and returns its report.
pub async fn run(plan: Plan) -> Result<Report, DrillError> {
    let cluster = match &plan.cluster {
        Source::File(path) => ClusterFile::load(path)?,
        Source::Admin(addrs) => {
            if plan.mode == Mode::Kill {
                return Err(DrillError::Step(
                    "--mode kill needs --cluster (the pids and configs of a `meridian dev` cluster); \
                     against a cluster found by --admin use --mode isolate"
                        .into(),
                ));
            }
            ClusterFile::discover(addrs).await?
        }
    };
    let names: Vec<String> = cluster.regions.iter().map(|r| r.name.clone()).collect();
    if cluster.region(&plan.region).is_none() {
        return Err(DrillError::UnknownRegion(
            plan.region.clone(),
            names.join(", "),
        ));
    }
    if names.len() < 3 {
        return Err(DrillError::TooFewRegions(names.len()));
    }
    let w = Arc::new(Workload::new(cluster, "drill", plan.rate, plan.partitions));
    let d = Drill {
        plan: plan.clone(),
        w: w.clone(),
    };
    w.event(format!(
        "drill: fail {} ({:?}) for {} s; writing {} rec/s per region and topic",
        plan.region,
        plan.mode,
        plan.down.as_secs(),
        plan.rate
    ));
    w.create_topics().await?;
    // The failed region's clients know every region's brokers.
    w.start(vec![(
        report::clients_of(&plan.region),
        w.cluster.bootstrap_from(&plan.region),
    )]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let seals_before = d.seals_of_region().await;
    let failed_at = w.ms();
    d.fail().await?;
    let sealed_at = d.wait_sealed(seals_before).await?;
    let until = Instant::now()
        + plan
            .down
            .saturating_sub(Duration::from_millis(sealed_at - failed_at));
    tokio::time::sleep_until(until.max(Instant::now() + Duration::from_secs(3)).into()).await;
    let before_failback = w.views_except(&plan.region).await;

    let failback_at = w.ms();
    d.fail_back().await?;
    d.wait_writes_again().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.stop_writing();
    w.event("workload stopped; waiting for every region to serve the same view");
    let views = w.settled_views(Duration::from_secs(60)).await;
    let log = w.finish().await;
    let observed = Observed {
        region: plan.region.clone(),
        mode: Some(plan.mode),
        regions: names,
        topics: w.topics.to_vec(),
        failed_at_ms: failed_at,
        sealed_at_ms: sealed_at,
        failback_at_ms: failback_at,
        acks: log.acks,
        seen: log.seen,
        before_failback,
        after: views,
        events: log.events,
    };
    Ok(evaluate(&observed))
}

impl Drill {
    async fn post_faults(&self, body: &str) -> Result<(), DrillError> {
        let token = self
            .plan
            .admin_token
            .as_deref()
            .or(self.w.cluster.admin_token.as_deref());
        for a in self.w.cluster.admins() {
            let r = crate::ops::dev::http_request(
                &a,
                "POST",
                "/faults",
                body,
                token,
                Duration::from_secs(3),
            )
            .await;
            // Nodes that are down take no faults; that is fine. A node
            // that refuses them makes the drill meaningless: stop.
            if let Ok((401 | 403, why)) = r {
                return Err(DrillError::Step(format!(
                    "node {a} refused to set faults: {}; the nodes need admin.faults = true and the drill their admin.token (--admin-token)",
                    why.trim()
                )));
            }
        }
        Ok(())
    }

    async fn fail(&self) -> Result<(), DrillError> {
        let region = self.plan.region.clone();
        match self.plan.mode {
            Mode::Kill => {
                use nix::sys::signal::{kill, Signal};
                use nix::unistd::Pid;
                let r = self.w.cluster.region(&region).expect("checked");
                for n in &r.nodes {
                    if let Err(e) = kill(Pid::from_raw(n.pid as i32), Signal::SIGKILL) {
                        return Err(DrillError::Step(format!(
                            "cannot kill node {} (pid {}): {e}; is cluster.json current?",
                            n.id, n.pid
                        )));
                    }
                }
                self.w
                    .event(format!("SIGKILL sent to every node of {region}"));
            }
            Mode::Isolate => {
                let cuts: Vec<String> = self
                    .w
                    .cluster
                    .regions
                    .iter()
                    .filter(|r| r.name != region)
                    .map(|r| format!(r#"["{region}", "{}"]"#, r.name))
                    .collect();
                self.post_faults(&format!(r#"{{"cut": [{}]}}"#, cuts.join(", ")))
                    .await?;
                self.w
                    .event(format!("{region} cut off from every other region"));
            }
        }
        Ok(())
    }

    /// How many seals of the region a surviving node reports (an earlier
    /// drill's included).
    async fn seals_of_region(&self) -> usize {
        for r in self
            .w
            .cluster
            .regions
            .iter()
            .filter(|r| r.name != self.plan.region)
        {
            for n in &r.nodes {
                if let Ok((200, body)) =
                    crate::ops::dev::http_get(&n.admin, "/status", Duration::from_secs(2)).await
                {
                    return status::parse(&body).map_or(0, |s| {
                        s.seals
                            .iter()
                            .filter(|x| x.region == self.plan.region)
                            .count()
                    });
                }
            }
        }
        0
    }

    /// Waits until a surviving node reports a new seal of the region.
    async fn wait_sealed(&self, before: usize) -> Result<u64, DrillError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let survivors: Vec<String> = self
            .w
            .cluster
            .regions
            .iter()
            .filter(|r| r.name != self.plan.region)
            .flat_map(|r| r.nodes.iter().map(|n| n.admin.clone()))
            .collect();
        loop {
            for a in &survivors {
                let Ok((200, body)) =
                    crate::ops::dev::http_get(a, "/status", Duration::from_secs(2)).await
                else {
                    continue;
                };
                let sealed = status::parse(&body).is_some_and(|s| {
                    s.seals
                        .iter()
                        .filter(|x| x.region == self.plan.region)
                        .count()
                        > before
                });
                if sealed {
                    self.w.event(format!(
                        "{} failed over (its origin logs sealed)",
                        self.plan.region
                    ));
                    return Ok(self.w.ms());
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Step(format!(
                    "{} was not failed over within 120 s; is control.failover on?",
                    self.plan.region
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fail_back(&self) -> Result<(), DrillError> {
        let region = self.plan.region.clone();
        match self.plan.mode {
            Mode::Isolate => {
                self.post_faults("{}").await?;
                self.w.event(format!("{region} reconnected"));
            }
            Mode::Kill => {
                let exe = std::env::current_exe()
                    .map_err(|e| DrillError::Step(format!("cannot find meridian: {e}")))?;
                let mut restarted = BTreeMap::new();
                let r = self.w.cluster.region(&region).expect("checked");
                for n in &r.nodes {
                    let config = PathBuf::from(&n.config);
                    let log = config.with_file_name(format!("node-{}.log", n.id));
                    let out = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .map_err(|e| {
                            DrillError::Step(format!("cannot open {}: {e}", log.display()))
                        })?;
                    let err = out
                        .try_clone()
                        .map_err(|e| DrillError::Step(e.to_string()))?;
                    let child = std::process::Command::new(&exe)
                        .arg("node")
                        .arg("--config")
                        .arg(&config)
                        .stdin(std::process::Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .spawn()
                        .map_err(|e| {
                            DrillError::Step(format!("cannot restart node {}: {e}", n.id))
                        })?;
                    restarted.insert(n.id, child.id());
                }
                if let Source::File(path) = &self.plan.cluster {
                    update_pids(path, &restarted)?;
                }
                self.w
                    .event(format!("{region} restarted (new pids in cluster.json)"));
            }
        }
        Ok(())
    }

    /// Waits until the region's own brokers take a write again.
    async fn wait_writes_again(&self) -> Result<(), DrillError> {
        let mut c = Client::new(&self.w.cluster.region_bootstrap(&self.plan.region));
        c.timeout = Duration::from_secs(2);
        c.retries_max = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            // An empty record of the async topic would count as a workload
            // record; ask for metadata and the region's health instead.
            let healthy = futures::future::join_all(
                self.w
                    .cluster
                    .region(&self.plan.region)
                    .expect("checked")
                    .nodes
                    .iter()
                    .map(|n| {
                        crate::ops::dev::http_get(&n.admin, "/healthz", Duration::from_secs(2))
                    }),
            )
            .await
            .into_iter()
            .all(|r| matches!(r, Ok((200, _))));
            if healthy && c.topic(&self.w.topics[1], false).await.is_ok() {
                self.w
                    .event(format!("{} holds its lease again", self.plan.region));
                return Ok(());
            }
            last = "not healthy yet".into();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(DrillError::Step(format!(
            "{} did not come back within 120 s ({last})",
            self.plan.region
        )))
    }
}

/// Records the restarted nodes' pids in `cluster.json`, so that `meridian
/// dev` stops them too and a later drill can kill them.
fn update_pids(path: &Path, pids: &BTreeMap<u64, u32>) -> Result<(), DrillError> {
    let bad = |reason: String| DrillError::Cluster {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    for r in v["regions"].as_array_mut().into_iter().flatten() {
        for n in r["nodes"].as_array_mut().into_iter().flatten() {
            if let Some(pid) = n["id"].as_u64().and_then(|id| pids.get(&id)) {
                n["pid"] = serde_json::json!(pid);
            }
        }
    }
    let text = serde_json::to_string_pretty(&v).expect("serialize cluster file");
    std::fs::write(path, text).map_err(|e| bad(e.to_string()))
}
