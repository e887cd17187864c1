//! `meridian drill`: fails a whole region of a running cluster while a
//! verification workload writes a `sync` and an `async` topic from every
//! region and reads from every region, fails the region back, and reports
//! what a disaster would have cost: RTO per region, RPO per topic, records
//! re-injected, duplicates and a timeline (docs/disaster-recovery.md#drills).
//!
//! The pure part, [`evaluate`], turns what the workload saw into the
//! report's figures and verdicts; the rest drives the cluster.

pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{encode_batch, Client, ClientError};
use kafka_protocol::records::Compression;

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

pub use crate::dev::{ClusterFile, ClusterRegion};

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

    fn region(&self, name: &str) -> Option<&ClusterRegion> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Brokers of `first`, then of every other region: a client that knows
    /// every region, as the metadata's broker list teaches it.
    fn bootstrap_from(&self, first: &str) -> String {
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

    fn region_bootstrap(&self, name: &str) -> String {
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

    fn admins(&self) -> Vec<String> {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.admin.clone()))
            .collect()
    }
}

/// What the drill does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster: PathBuf,
    pub region: String,
    pub mode: Mode,
    /// How long the region stays failed, at least until it was failed over.
    pub down: Duration,
    /// Records per second per writer (one per region and topic).
    pub rate: u32,
    pub partitions: u32,
}

/// The workload's shared record of what happened.
#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    /// Per region reading: value -> ms since the start when first read.
    seen: BTreeMap<String, BTreeMap<String, u64>>,
    events: Vec<Event>,
}

struct Drill {
    plan: Plan,
    cluster: ClusterFile,
    start: Instant,
    log: Mutex<Log>,
    topics: [String; 2],
}

impl Drill {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn event(&self, what: impl Into<String>) {
        let what = what.into();
        let t_ms = self.ms();
        println!("[{:>7.1} s] {what}", t_ms as f64 / 1000.0);
        self.log
            .lock()
            .expect("drill log")
            .events
            .push(Event { t_ms, what });
    }
}

/// Runs a drill and returns its report.
pub async fn run(plan: Plan) -> Result<Report, DrillError> {
    let cluster = ClusterFile::load(&plan.cluster)?;
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
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let topics = [
        format!("drill-sync-{suffix}"),
        format!("drill-async-{suffix}"),
    ];
    let d = Arc::new(Drill {
        plan: plan.clone(),
        cluster,
        start: Instant::now(),
        log: Mutex::new(Log::default()),
        topics,
    });
    d.event(format!(
        "drill: fail {} ({:?}) for {} s; writing {} rec/s per region and topic",
        plan.region,
        plan.mode,
        plan.down.as_secs(),
        plan.rate
    ));
    d.create_topics().await?;
    let stop_writers = CancellationToken::new();
    let stop_readers = CancellationToken::new();
    let mut tasks = Vec::new();
    for r in &names {
        for (i, t) in d.topics.iter().enumerate() {
            tasks.push(tokio::spawn(d.clone().writer(
                r.clone(),
                t.clone(),
                i,
                stop_writers.clone(),
            )));
        }
        tasks.push(tokio::spawn(d.clone().reader(
            r.clone(),
            d.cluster.region_bootstrap(r),
            stop_readers.clone(),
        )));
    }
    // The failed region's clients know every region's brokers.
    tasks.push(tokio::spawn(d.clone().reader(
        report::clients_of(&plan.region),
        d.cluster.bootstrap_from(&plan.region),
        stop_readers.clone(),
    )));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let seals_before = d.seals_of_region().await;
    let failed_at = d.ms();
    d.fail().await?;
    let sealed_at = d.wait_sealed(seals_before).await?;
    let until = Instant::now()
        + plan
            .down
            .saturating_sub(Duration::from_millis(sealed_at - failed_at));
    tokio::time::sleep_until(until.max(Instant::now() + Duration::from_secs(3)).into()).await;
    let before_failback = d.views_of_survivors().await;

    d.fail_back().await?;
    d.wait_writes_again().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_writers.cancel();
    d.event("workload stopped; waiting for every region to serve the same view");
    let views = d.settled_views().await;
    stop_readers.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let log = std::mem::take(&mut *d.log.lock().expect("drill log"));
    let observed = Observed {
        region: plan.region.clone(),
        mode: Some(plan.mode),
        regions: names,
        topics: d.topics.to_vec(),
        failed_at_ms: failed_at,
        sealed_at_ms: sealed_at,
        acks: log.acks,
        seen: log.seen,
        before_failback,
        after: views,
        events: log.events,
    };
    Ok(evaluate(&observed))
}

impl Drill {
    async fn create_topics(&self) -> Result<(), DrillError> {
        let any = self.cluster.bootstrap_from(&self.cluster.regions[0].name);
        let c = Client::new(&any);
        for (t, repl) in self.topics.iter().zip(["sync", "async"]) {
            let mut configs = BTreeMap::new();
            configs.insert("meridian.replication".to_string(), repl.to_string());
            c.create_topic(t, self.plan.partitions as i32, &configs)
                .await
                .map_err(|e| DrillError::Step(format!("cannot create topic {t}: {e}")))?;
        }
        // Every region learns of the topics before the workload starts.
        for r in &self.cluster.regions {
            let c = Client::new(&self.cluster.region_bootstrap(&r.name));
            for t in &self.topics {
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.topic(t, false).await.is_err() {
                    if Instant::now() > deadline {
                        return Err(DrillError::Step(format!(
                            "region {} never learned of topic {t}",
                            r.name
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.event(format!(
            "created topics {} (sync) and {} (async)",
            self.topics[0], self.topics[1]
        ));
        Ok(())
    }

    /// Writes `topic` from `region` (its brokers first, then the others'),
    /// one record per tick, recording each ack.
    async fn writer(
        self: Arc<Self>,
        region: String,
        topic: String,
        _i: usize,
        stop: CancellationToken,
    ) {
        let mut c = Client::new(&self.cluster.bootstrap_from(&region));
        c.timeout = Duration::from_secs(5);
        // No retries: a retried write that had in fact been stored would be
        // stored twice (idempotent producers are not there yet), and the
        // drill counts duplicates as broken invariants. A failed write is
        // reported as failed; the next one is a new record.
        c.retries_max = 0;
        let every = Duration::from_millis(1000 / self.plan.rate.max(1) as u64);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let value = format!("{region}-{seq}");
            let partition = (seq % self.plan.partitions as u64) as i32;
            seq += 1;
            let batch = encode_batch(
                &[(None, Some(Bytes::from(value.clone())))],
                Compression::None,
            );
            let sent = self.ms();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = c.produce(&topic, partition, batch) => r,
            };
            if r.is_err() {
                // As a client does after an error: ask for metadata again.
                c.forget_leaders(&topic).await;
            }
            let ack = Ack {
                topic: topic.clone(),
                writer: region.clone(),
                value,
                sent_ms: sent,
                acked_ms: r.is_ok().then(|| self.ms()),
                error: r.err().map(|e: ClientError| e.to_string()),
            };
            self.log.lock().expect("drill log").acks.push(ack);
        }
    }

    /// Reads the sync topic through `bootstrap`, recording under `label`
    /// when each record was first readable.
    async fn reader(self: Arc<Self>, label: String, bootstrap: String, stop: CancellationToken) {
        let region = label;
        let mut c = Client::new(&bootstrap);
        c.timeout = Duration::from_secs(3);
        c.retries_max = 1;
        let topic = self.topics[0].clone();
        let mut next = vec![0i64; self.plan.partitions as usize];
        while !stop.is_cancelled() {
            for (p, off) in next.iter_mut().enumerate() {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = c.fetch(&topic, p as i32, *off, 200) => r,
                };
                let Ok((recs, _)) = r else {
                    c.forget_leaders(&topic).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let now = self.ms();
                let mut log = self.log.lock().expect("drill log");
                let seen = log.seen.entry(region.clone()).or_default();
                for rec in recs {
                    *off = (*off).max(rec.offset + 1);
                    if let Some(v) = rec.value {
                        seen.entry(String::from_utf8_lossy(&v).into_owned())
                            .or_insert(now);
                    }
                }
            }
        }
    }

    async fn post_faults(&self, body: &str) -> Result<(), DrillError> {
        for a in self.cluster.admins() {
            // Nodes that are down take no faults; that is fine.
            let _ =
                crate::dev::http_request(&a, "POST", "/faults", body, Duration::from_secs(3)).await;
        }
        Ok(())
    }

    async fn fail(&self) -> Result<(), DrillError> {
        let region = self.plan.region.clone();
        match self.plan.mode {
            Mode::Kill => {
                use nix::sys::signal::{kill, Signal};
                use nix::unistd::Pid;
                let r = self.cluster.region(&region).expect("checked");
                for n in &r.nodes {
                    if let Err(e) = kill(Pid::from_raw(n.pid as i32), Signal::SIGKILL) {
                        return Err(DrillError::Step(format!(
                            "cannot kill node {} (pid {}): {e}; is cluster.json current?",
                            n.id, n.pid
                        )));
                    }
                }
                self.event(format!("SIGKILL sent to every node of {region}"));
            }
            Mode::Isolate => {
                let cuts: Vec<String> = self
                    .cluster
                    .regions
                    .iter()
                    .filter(|r| r.name != region)
                    .map(|r| format!(r#"["{region}", "{}"]"#, r.name))
                    .collect();
                self.post_faults(&format!(r#"{{"cut": [{}]}}"#, cuts.join(", ")))
                    .await?;
                self.event(format!("{region} cut off from every other region"));
            }
        }
        Ok(())
    }

    /// How many seals of the region a surviving node reports (an earlier
    /// drill's included).
    async fn seals_of_region(&self) -> usize {
        for r in self
            .cluster
            .regions
            .iter()
            .filter(|r| r.name != self.plan.region)
        {
            for n in &r.nodes {
                if let Ok((200, body)) =
                    crate::dev::http_get(&n.admin, "/status", Duration::from_secs(2)).await
                {
                    let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    return s["seals"].as_array().map_or(0, |v| {
                        v.iter()
                            .filter(|x| x["region"] == self.plan.region.as_str())
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
            .cluster
            .regions
            .iter()
            .filter(|r| r.name != self.plan.region)
            .flat_map(|r| r.nodes.iter().map(|n| n.admin.clone()))
            .collect();
        loop {
            for a in &survivors {
                let Ok((200, body)) =
                    crate::dev::http_get(a, "/status", Duration::from_secs(2)).await
                else {
                    continue;
                };
                let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let sealed = s["seals"].as_array().is_some_and(|v| {
                    v.iter()
                        .filter(|x| x["region"] == self.plan.region.as_str())
                        .count()
                        > before
                });
                if sealed {
                    self.event(format!(
                        "{} failed over (its origin logs sealed)",
                        self.plan.region
                    ));
                    return Ok(self.ms());
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
                self.event(format!("{region} reconnected"));
            }
            Mode::Kill => {
                let exe = std::env::current_exe()
                    .map_err(|e| DrillError::Step(format!("cannot find meridian: {e}")))?;
                let mut restarted = BTreeMap::new();
                let r = self.cluster.region(&region).expect("checked");
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
                update_pids(&self.plan.cluster, &restarted)?;
                self.event(format!("{region} restarted (new pids in cluster.json)"));
            }
        }
        Ok(())
    }

    /// Waits until the region's own brokers take a write again.
    async fn wait_writes_again(&self) -> Result<(), DrillError> {
        let mut c = Client::new(&self.cluster.region_bootstrap(&self.plan.region));
        c.timeout = Duration::from_secs(2);
        c.retries_max = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            // An empty record of the async topic would count as a workload
            // record; ask for metadata and the region's health instead.
            let healthy = futures::future::join_all(
                self.cluster
                    .region(&self.plan.region)
                    .expect("checked")
                    .nodes
                    .iter()
                    .map(|n| crate::dev::http_get(&n.admin, "/healthz", Duration::from_secs(2))),
            )
            .await
            .into_iter()
            .all(|r| matches!(r, Ok((200, _))));
            if healthy && c.topic(&self.topics[1], false).await.is_ok() {
                self.event(format!("{} holds its lease again", self.plan.region));
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

    /// Every record of every drill topic, as `region` serves it.
    async fn view(&self, region: &str) -> Option<BTreeMap<String, Vec<Vec<Rec>>>> {
        let mut c = Client::new(&self.cluster.region_bootstrap(region));
        c.timeout = Duration::from_secs(3);
        c.retries_max = 3;
        let mut out = BTreeMap::new();
        for t in &self.topics {
            let mut parts = Vec::new();
            for p in 0..self.plan.partitions as i32 {
                let mut values = Vec::new();
                let mut off = 0i64;
                loop {
                    let (recs, hw) = c.fetch(t, p, off, 0).await.ok()?;
                    for rec in &recs {
                        off = off.max(rec.offset + 1);
                        let v = rec
                            .value
                            .as_deref()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        let reinjected = rec
                            .headers
                            .iter()
                            .any(|(k, _)| k == crate::storage::batch::HEADER_REINJECTED_FROM);
                        values.push(Rec {
                            value: v,
                            reinjected,
                        });
                    }
                    if off >= hw || recs.is_empty() {
                        break;
                    }
                }
                parts.push(values);
            }
            out.insert(t.clone(), parts);
        }
        Some(out)
    }

    async fn views_of_survivors(&self) -> Views {
        let mut out = BTreeMap::new();
        for r in self
            .cluster
            .regions
            .iter()
            .filter(|r| r.name != self.plan.region)
        {
            if let Some(v) = self.view(&r.name).await {
                out.insert(r.name.clone(), v);
            }
        }
        out
    }

    /// Reads every region's view until they agree and stop growing (at most
    /// 60 s); returns the last reading.
    async fn settled_views(&self) -> Views {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = BTreeMap::new();
        loop {
            let mut now = BTreeMap::new();
            for r in &self.cluster.regions {
                if let Some(v) = self.view(&r.name).await {
                    now.insert(r.name.clone(), v);
                }
            }
            let agree = now.len() == self.cluster.regions.len()
                && now.values().collect::<BTreeSet<_>>().len() == 1;
            if (agree && now == last) || Instant::now() > deadline {
                self.event(if agree {
                    "every region serves the same view".to_string()
                } else {
                    "regions still disagree after 60 s".to_string()
                });
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
