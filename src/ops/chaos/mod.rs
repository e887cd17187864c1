//! `meridian chaos run chaos/FILE.toml`: starts a dev cluster, drives the
//! drill's verification workload, injects the scenario's faults on
//! schedule, heals them, and checks the invariants the scenario names
//! (docs/disaster-recovery.md#chaos-scenarios).
//!
//! [`scenario`] parses and checks scenario files, [`check`] judges a run;
//! both are pure. This module does the I/O: processes, `/faults`, `/status`.

pub mod check;
pub mod scenario;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::status;
use crate::config::Topology;
use crate::ids::NodeId;
use crate::ops::dev::{http_get, http_request, DevCluster, DevError};
use crate::ops::drill::report::Event;
use crate::ops::drill::{ClusterFile, DrillError, Workload};
use check::{CheckResult, Observation, Run, SealSeen};
use scenario::{Action, Scenario, ScenarioError};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start the dev cluster: {0}")]
    Dev(#[from] DevError),
    #[error(transparent)]
    Workload(#[from] DrillError),
    #[error("{0}")]
    Step(String),
}

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: PathBuf,
    pub topology: PathBuf,
    pub port_base: Option<u16>,
    /// Keep the cluster's directory (configs, data, node logs) even when
    /// every check passed.
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicStats {
    pub topic: String,
    pub replication: String,
    pub acknowledged: usize,
    pub failed_writes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub scenario: String,
    pub description: String,
    pub passed: bool,
    pub checks: Vec<CheckResult>,
    pub topics: Vec<TopicStats>,
    /// Per writer region: the longest time without an acknowledged write.
    pub longest_write_outage_ms: BTreeMap<String, u64>,
    pub seals: Vec<SealSeen>,
    pub timeline: Vec<Event>,
    /// The cluster's directory, when kept (failed runs, or `--keep`).
    pub kept: Option<String>,
}

/// Loads the scenario and the topology, then runs it.
pub async fn run(plan: Plan) -> Result<ChaosReport, ChaosError> {
    let topology = Topology::load(&plan.topology)?;
    let scenario = Scenario::load(&plan.scenario, &topology)?;
    let topology = match plan.port_base {
        Some(b) => crate::ops::dev::with_port_base(&topology, b)?,
        None => topology,
    };
    if topology.regions.len() < 3 {
        return Err(ChaosError::Step(format!(
            "chaos scenarios need at least three regions (the others keep a metadata quorum); {} has {}",
            plan.topology.display(),
            topology.regions.len()
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ChaosError::Step(format!("cannot find the meridian executable: {e}")))?;
    let dir = tempfile::Builder::new()
        .prefix("meridian-chaos-")
        .tempdir()
        .map_err(|e| ChaosError::Step(format!("cannot create a temporary directory: {e}")))?;
    println!(
        "chaos: {} — {}\nstarting a dev cluster in {} ...",
        scenario.name,
        scenario.description,
        dir.path().display()
    );
    let cluster = DevCluster::start(
        &exe,
        topology.clone(),
        Some(dir.path().to_path_buf()),
        None,
        &scenario.settings,
        Duration::from_secs(60),
    )
    .await?;
    let mut runner = Runner {
        exe,
        cluster,
        scenario,
        regions: topology.regions.iter().map(|r| r.name.clone()).collect(),
        nodes: topology
            .regions
            .iter()
            .flat_map(|r| {
                r.nodes
                    .iter()
                    .map(|n| (n.id, (r.name.clone(), n.admin.to_string())))
            })
            .collect(),
        active: BTreeMap::new(),
        killed: BTreeMap::new(),
        paused: Vec::new(),
    };
    let result = runner.run().await;
    runner.resume_paused();
    runner.cluster.stop(Duration::from_secs(5));
    let mut report = result?;
    if !report.passed || plan.keep {
        let kept = dir.keep();
        report.kept = Some(kept.display().to_string());
    }
    Ok(report)
}

struct Runner {
    exe: PathBuf,
    cluster: DevCluster,
    scenario: Scenario,
    regions: Vec<String>,
    /// Node -> (region, admin address).
    nodes: BTreeMap<NodeId, (String, String)>,
    /// Network faults on now, by fault index.
    active: BTreeMap<usize, Action>,
    /// Nodes each process fault killed, by fault index.
    killed: BTreeMap<usize, Vec<NodeId>>,
    paused: Vec<NodeId>,
}

impl Runner {
    async fn run(&mut self) -> Result<ChaosReport, ChaosError> {
        let file = ClusterFile::load(&self.cluster.dir.join("cluster.json"))?;
        let w = Arc::new(Workload::new(
            file,
            "chaos",
            self.scenario.workload.rate,
            self.scenario.workload.partitions,
        ));
        w.event(format!(
            "scenario {}: {} faults over {:.0} s; writing {} rec/s per region and topic",
            self.scenario.name,
            self.scenario.faults.len(),
            self.scenario.span().as_secs_f64(),
            self.scenario.workload.rate
        ));
        w.create_topics().await?;
        let stop_watch = CancellationToken::new();
        let observations = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch(
            self.nodes.clone(),
            observations.clone(),
            stop_watch.clone(),
        ));
        w.start(Vec::new());
        tokio::time::sleep(Duration::from_secs(3)).await;

        let t0 = Instant::now();
        let steps = scenario::timeline(&self.scenario.faults);
        let mut healed_at = w.ms();
        for step in steps {
            tokio::time::sleep_until((t0 + step.at).into()).await;
            let action = self.scenario.faults[step.index].action.clone();
            if step.heal {
                self.heal(step.index, &action).await?;
                w.event(format!("healed: {}", action.describe()));
                healed_at = w.ms();
            } else {
                let what = self.start(step.index, &action).await?;
                w.event(format!("fault: {what}"));
            }
        }
        self.wait_healthy(&w).await?;
        tokio::time::sleep(self.scenario.settle).await;
        w.stop_writing();
        w.event("workload stopped; waiting for every region to serve the same view");
        let views = w.settled_views(Duration::from_secs(60)).await;
        let log = w.finish().await;
        stop_watch.cancel();
        let _ = watcher.await;
        let seals = self.seals().await;
        let run = Run {
            regions: self.regions.clone(),
            topics: w.topics.to_vec(),
            acks: log.acks,
            views,
            observations: std::mem::take(&mut *observations.lock().expect("observations")),
            seals: seals.clone(),
            healed_at_ms: healed_at,
            skew_ms: self.scenario.max_skew_ms(),
            expect_failovers: self.scenario.expect_failovers.clone(),
        };
        let checks = check::evaluate(&run, &self.scenario.checks);
        let topics = run
            .topics
            .iter()
            .zip(["sync", "async"])
            .map(|(t, repl)| {
                let mine = run.acks.iter().filter(|a| a.topic == *t);
                TopicStats {
                    topic: t.clone(),
                    replication: repl.into(),
                    acknowledged: mine.clone().filter(|a| a.acked_ms.is_some()).count(),
                    failed_writes: mine.filter(|a| a.acked_ms.is_none()).count(),
                }
            })
            .collect();
        Ok(ChaosReport {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            passed: checks.iter().all(|c| c.passed),
            checks,
            topics,
            longest_write_outage_ms: check::longest_outage(&run.acks),
            seals,
            timeline: log.events,
            kept: None,
        })
    }

    /// Starts fault `index`; says what it did.
    async fn start(&mut self, index: usize, action: &Action) -> Result<String, ChaosError> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if action.is_network() {
            self.active.insert(index, action.clone());
            self.push_faults(self.nodes.keys().copied().collect()).await;
            return Ok(action.describe());
        }
        let victims: Vec<NodeId> = match action {
            Action::KillNode { node } => vec![*node],
            Action::KillRegion { region } => self.nodes_of(region),
            Action::KillLeader { region } => vec![self.busiest_leader(region).await?],
            Action::Pause { node } => {
                let pid = self
                    .cluster
                    .pid(*node)
                    .ok_or_else(|| ChaosError::Step(format!("node {node} is not running")))?;
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)
                    .map_err(|e| ChaosError::Step(format!("cannot pause node {node}: {e}")))?;
                self.paused.push(*node);
                return Ok(action.describe());
            }
            _ => unreachable!("network faults handled above"),
        };
        for n in &victims {
            self.cluster.kill(*n);
        }
        self.killed.insert(index, victims.clone());
        Ok(match action {
            Action::KillLeader { region } => {
                format!("kill node {} (busiest leader of {region})", victims[0])
            }
            _ => action.describe(),
        })
    }

    async fn heal(&mut self, index: usize, action: &Action) -> Result<(), ChaosError> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if action.is_network() {
            self.active.remove(&index);
            self.push_faults(self.nodes.keys().copied().collect()).await;
            return Ok(());
        }
        let back: Vec<NodeId> = match action {
            Action::Pause { node } => {
                if let Some(pid) = self.cluster.pid(*node) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                }
                self.paused.retain(|n| n != node);
                vec![*node]
            }
            _ => {
                let nodes = self.killed.remove(&index).unwrap_or_default();
                for n in &nodes {
                    self.cluster.restart(&self.exe, *n)?;
                }
                nodes
            }
        };
        // A restarted node starts without faults, and a paused one missed
        // any change: give them the faults that are on now, once they
        // answer.
        if !self.active.is_empty() {
            self.wait_admin(&back, Duration::from_secs(30)).await;
            self.push_faults(back).await;
        }
        Ok(())
    }

    fn nodes_of(&self, region: &str) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, (r, _))| r == region)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The running node of `region` that leads most partitions.
    async fn busiest_leader(&self, region: &str) -> Result<NodeId, ChaosError> {
        let mut best: Option<(usize, NodeId)> = None;
        for id in self.nodes_of(region) {
            let admin = &self.nodes[&id].1;
            let Ok((200, body)) = http_get(admin, "/status", Duration::from_secs(2)).await else {
                continue;
            };
            let led = status::parse(&body).map_or(0, |s| s.partitions_led);
            if best.is_none_or(|(b, _)| led > b) {
                best = Some((led, id));
            }
        }
        best.map(|(_, id)| id).ok_or_else(|| {
            ChaosError::Step(format!("no node of {region} answered to pick a leader"))
        })
    }

    /// Sends each of `nodes` its fault-layer state for the faults on now.
    async fn push_faults(&self, nodes: Vec<NodeId>) {
        let active: Vec<&Action> = self.active.values().collect();
        let posts = nodes.into_iter().map(|id| {
            let state = scenario::fault_state(id, &self.regions, active.iter().copied());
            let body = serde_json::to_string(&state).expect("fault state as JSON");
            let admin = self.nodes[&id].1.clone();
            async move {
                // Dead and paused nodes take no faults; they get them when
                // they come back.
                let _ = http_request(
                    &admin,
                    "POST",
                    "/faults",
                    &body,
                    Some(&self.cluster.admin_token),
                    Duration::from_secs(2),
                )
                .await;
            }
        });
        futures::future::join_all(posts).await;
    }

    async fn wait_admin(&self, nodes: &[NodeId], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for id in nodes {
            let admin = &self.nodes[id].1;
            while Instant::now() < deadline
                && !matches!(
                    http_get(admin, "/status", Duration::from_secs(1)).await,
                    Ok((200, _))
                )
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until every node is healthy again (2 minutes at most).
    async fn wait_healthy(&mut self, w: &Workload) -> Result<(), ChaosError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut sick = Vec::new();
            for (id, (_, admin)) in &self.nodes {
                if !matches!(
                    http_get(admin, "/healthz", Duration::from_secs(2)).await,
                    Ok((200, _))
                ) {
                    sick.push(id.to_string());
                }
            }
            let exited = self.cluster.reap();
            if let Some((id, status)) = exited.first() {
                return Err(ChaosError::Step(format!(
                    "node {id} exited ({status}); see {}/node-{id}.log",
                    self.cluster.dir.display()
                )));
            }
            if sick.is_empty() {
                w.event("every node is healthy again");
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Step(format!(
                    "nodes {} were not healthy 120 s after the last heal; their logs are in {}",
                    sick.join(", "),
                    self.cluster.dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every seal, as the node that knows most of them says.
    async fn seals(&self) -> Vec<SealSeen> {
        let mut best = Vec::new();
        for (_, admin) in self.nodes.values() {
            let Ok((200, body)) = http_get(admin, "/status", Duration::from_secs(2)).await else {
                continue;
            };
            let seals: Vec<SealSeen> = status::parse(&body)
                .map(|s| s.seals)
                .unwrap_or_default()
                .into_iter()
                .map(|x| SealSeen {
                    region: x.region,
                    epoch: x.epoch,
                    decided_at_ms: x.decided_at_ms,
                })
                .collect();
            if seals.len() > best.len() {
                best = seals;
            }
        }
        best
    }

    fn resume_paused(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for n in std::mem::take(&mut self.paused) {
            if let Some(pid) = self.cluster.pid(n) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            }
        }
    }
}

/// Asks every node for its lease state four times a second until `stop`.
async fn watch(
    nodes: BTreeMap<NodeId, (String, String)>,
    out: Arc<Mutex<Vec<Observation>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let asks = nodes.iter().map(|(id, (region, admin))| async move {
            let asked_at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let (200, body) = http_get(admin, "/status", Duration::from_secs(1))
                .await
                .ok()?
            else {
                return None;
            };
            let s = status::parse(&body)?;
            let lease_left = s.lease_ms.unwrap_or(0);
            let own_seals = s.seals.iter().filter(|x| x.region == *region).count();
            Some(Observation {
                asked_at_ms,
                node: *id,
                region: region.clone(),
                accepting: lease_left > 0 && !s.sealed,
                own_seals,
            })
        });
        let seen: Vec<Observation> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        out.lock().expect("observations").extend(seen);
    }
}

impl ChaosReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nchaos scenario {}: {}",
            self.scenario,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  {:<4} {:<22} {}",
                if c.passed { "ok" } else { "FAIL" },
                c.check.name(),
                c.detail
            );
        }
        let _ = writeln!(s, "\nworkload:");
        for t in &self.topics {
            let _ = writeln!(
                s,
                "  {} ({}): {} acknowledged, {} failed writes",
                t.topic, t.replication, t.acknowledged, t.failed_writes
            );
        }
        for (r, ms) in &self.longest_write_outage_ms {
            let _ = writeln!(
                s,
                "  longest write outage, writers of {r}: {:.1} s",
                *ms as f64 / 1000.0
            );
        }
        if !self.seals.is_empty() {
            let _ = writeln!(s, "\nfailovers:");
            for x in &self.seals {
                let _ = writeln!(s, "  {} epoch {} sealed", x.region, x.epoch);
            }
        }
        if let Some(k) = &self.kept {
            let _ = writeln!(
                s,
                "\ncluster directory (configs, data, node logs) kept: {k}"
            );
        }
        s
    }
}

/// Loads a scenario against `topology`, for `meridian chaos check`: every
/// mistake is reported without starting anything.
pub fn check_file(scenario: &Path, topology: &Path) -> Result<Scenario, ChaosError> {
    let t = Topology::load(topology)?;
    Ok(Scenario::load(scenario, &t)?)
}
