//! The Raft groups of one node: the meta group, started at boot, and the
//! partition groups, started and stopped as the meta group's topics change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::ClientWriteError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::balance;
use super::network::{
    NetworkFactory, KIND_APPEND, KIND_CAMPAIGN, KIND_HELD, KIND_META_RELAY, KIND_META_WRITE,
    KIND_PING, KIND_SNAPSHOT, KIND_VOTE,
};
use super::prevote;
use crate::command::{Command, CommandResult, TypeConfig};

/// A Raft group of this node.
pub type Raft = openraft::Raft<TypeConfig>;
use crate::config::{ControlConfig, RaftConfig, Topology};
use crate::hlc::Clock;
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::meta::{preferred_leader, MetaState};
use crate::metrics::Metrics;
use crate::storage::log_store::CacheLimits;
use crate::storage::state_machine::{Notify, Progress};
use crate::storage::{Db, LogStore, StateMachine};
use crate::transport::{Handler, Transport};

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("cannot start Raft group {group}: {reason}")]
    Start { group: GroupId, reason: String },
}

/// Why a write to a group was not committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("this node is not the group's leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("the group is unavailable: {0}")]
    Unavailable(String),
    #[error("no commit within {0} ms")]
    Timeout(u64),
}

/// Where a proposal's commit (or its failure) arrives.
pub type CommitRx = tokio::sync::oneshot::Receiver<
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, BasicNode>>,
>;

/// One partition's Raft group on this node.
pub struct PartitionGroup {
    pub id: GroupId,
    pub topic: String,
    pub partition: u32,
    pub raft: Raft,
    pub progress: watch::Receiver<Progress>,
    /// This node, the leader, is handing the group to another node
    /// (`raft::balance`): it proposes nothing new meanwhile.
    pub releasing: AtomicBool,
}

impl PartitionGroup {
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }
    pub fn label(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
    pub fn releasing(&self) -> bool {
        self.releasing.load(Ordering::Relaxed)
    }
}

pub struct Groups {
    pub node_id: NodeId,
    pub region: String,
    region_names: Vec<String>,
    /// Voters of the region's partition groups.
    members: BTreeMap<NodeId, BasicNode>,
    nodes_sorted: Vec<NodeId>,
    db: Arc<Db>,
    transport: Arc<Transport>,
    pub clock: Arc<Clock>,
    raft_config: Arc<openraft::Config>,
    /// `raft.append_bytes_max` and the log cache's bounds, for every group.
    limits: GroupLimits,
    /// How often this node looks for a leadership handover (zero: never).
    balance_interval: Duration,
    metrics: Arc<Metrics>,
    pub meta: Raft,
    meta_state: watch::Receiver<Arc<MetaState>>,
    /// The metadata group's voters: every node of every region.
    meta_voters: Vec<NodeId>,
    meta_timing: ControlConfig,
    /// When this node last accepted an AppendEntries of the metadata
    /// group, in ms since `started` (0: never), for `prevote`.
    meta_heard_ms: Arc<AtomicU64>,
    /// Reads the metadata group's last log id for `prevote`.
    meta_log: LogStore,
    started: Instant,
    partitions: RwLock<HashMap<GroupId, Arc<PartitionGroup>>>,
    /// Every node's region as an origin id (where a producer id was given out).
    node_regions: Arc<BTreeMap<NodeId, u32>>,
    /// Bumped after every reconcile, so callers can wait for new groups.
    reconciled: watch::Sender<u64>,
}

/// What every group of a node is bounded by, from `raft.*`.
#[derive(Debug, Clone, Copy)]
struct GroupLimits {
    append_bytes_max: u64,
    cache: CacheLimits,
}

fn raft_config(region: &str, c: &RaftConfig) -> Result<openraft::Config, GroupError> {
    openraft::Config {
        cluster_name: format!("meridian-{region}"),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_ms_min,
        election_timeout_max: c.election_timeout_ms_max,
        max_payload_entries: c.payload_entries_max,
        // Partition snapshots would carry no records; logs are kept whole.
        snapshot_policy: SnapshotPolicy::Never,
        ..Default::default()
    }
    .validate()
    .map_err(|e| GroupError::Config(e.to_string()))
}

/// The meta group's config: its state is small and its log grows with every
/// lease renewal, so it takes a snapshot every `meta_snapshot_entries`
/// entries and purges the log before it (keeping the last 1,000 for
/// followers that are briefly behind; further behind, they get the
/// snapshot).
///
/// Its timing is its own (`control.meta_*`): it spans the regions, so its
/// heartbeat must cover their round trips, and its elections decide how
/// long the regions' lease renewals wait when its leader is lost.
fn meta_raft_config(c: &RaftConfig, t: &ControlConfig) -> Result<openraft::Config, GroupError> {
    openraft::Config {
        cluster_name: "meridian-meta".to_string(),
        heartbeat_interval: t.meta_heartbeat_ms,
        election_timeout_min: t.meta_election_timeout_ms_min,
        election_timeout_max: t.meta_election_timeout_ms_max,
        max_payload_entries: c.payload_entries_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.meta_snapshot_entries),
        max_in_snapshot_log_to_keep: 1_000.min(c.meta_snapshot_entries),
        purge_batch_size: 256.min(c.meta_snapshot_entries / 2).max(1),
        ..Default::default()
    }
    .validate()
    .map_err(|e| GroupError::Config(e.to_string()))
}

impl Groups {
    /// Opens the meta group and the partition groups it lists, and keeps the
    /// partition groups in step with the meta group until `shutdown`. The
    /// returned task ends once every group has stopped after `shutdown`.
    ///
    /// The meta group spans every node of every region, so that all regions
    /// agree on topics, their partition counts and group ids; its writes are
    /// rare and never on the produce path. Partition groups are the region's.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node_id: NodeId,
        topology: &Topology,
        raft: &RaftConfig,
        control: &ControlConfig,
        db: Arc<Db>,
        transport: Arc<Transport>,
        clock: Arc<Clock>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Groups>, tokio::task::JoinHandle<()>), GroupError> {
        let me = topology
            .node(node_id)
            .ok_or_else(|| GroupError::Config(format!("node {node_id} is not in the topology")))?;
        let region = topology.region(&me.region).ok_or_else(|| {
            GroupError::Config(format!("region {} is not in the topology", me.region))
        })?;
        let raft_config = Arc::new(raft_config(&region.name, raft)?);
        let limits = GroupLimits {
            append_bytes_max: raft.append_bytes_max,
            cache: CacheLimits::of(raft),
        };
        let basic = |n: &crate::config::NodeSpec| (n.id, BasicNode::new(n.quic.to_string()));
        let members: BTreeMap<NodeId, BasicNode> = region.nodes.iter().map(basic).collect();
        let all_members: BTreeMap<NodeId, BasicNode> = topology
            .regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(basic))
            .collect();
        let nodes_sorted: Vec<NodeId> = members.keys().copied().collect();
        let (meta_tx, meta_state) = watch::channel(Arc::new(MetaState::default()));
        let meta_config = Arc::new(meta_raft_config(raft, control)?);
        let meta = open_group(
            node_id,
            META_GROUP,
            &region.name,
            Default::default(),
            Notify::Meta(meta_tx),
            &all_members,
            all_members.keys().next().copied() == Some(node_id),
            FirstLeader::Anyone,
            &db,
            &transport,
            &clock,
            &meta_config,
            limits,
        )
        .await?;
        let meta_log = LogStore::new(db.clone(), META_GROUP, limits.cache);
        let groups = Arc::new(Groups {
            node_id,
            region: region.name.clone(),
            region_names: topology.regions.iter().map(|r| r.name.clone()).collect(),
            members,
            nodes_sorted,
            db,
            transport,
            clock,
            raft_config,
            limits,
            balance_interval: Duration::from_millis(raft.balance_interval_ms),
            metrics,
            meta,
            meta_state,
            meta_voters: all_members.keys().copied().collect(),
            meta_timing: control.clone(),
            meta_heard_ms: Arc::new(AtomicU64::new(0)),
            meta_log,
            started: Instant::now(),
            partitions: RwLock::new(HashMap::new()),
            node_regions: Arc::new(
                topology
                    .regions
                    .iter()
                    .flat_map(|r| r.nodes.iter())
                    .map(|n| (n.id, crate::ids::origin_id(&n.region)))
                    .collect(),
            ),
            reconciled: watch::channel(0).0,
        });
        for (name, balance) in [("prevote", false), ("balance", true)] {
            let (g, s) = (groups.clone(), shutdown.clone());
            crate::supervise::spawn(name, shutdown.clone(), groups.metrics.clone(), move || {
                let (g, s) = (g.clone(), s.clone());
                async move {
                    if balance {
                        g.balance_loop(s).await
                    } else {
                        g.prevote_loop(s).await
                    }
                }
            });
        }
        let g = groups.clone();
        let stopped = tokio::spawn(async move {
            let (r, s) = (g.clone(), shutdown.clone());
            crate::supervise::supervise(
                "reconcile".into(),
                shutdown,
                g.metrics.clone(),
                move || r.clone().reconcile_loop(s.clone()),
            )
            .await;
            // Also after a failed run: every group stops with the node.
            for p in g.partitions() {
                let _ = p.raft.shutdown().await;
            }
            let _ = g.meta.shutdown().await;
        });
        Ok((groups, stopped))
    }

    /// Every `raft.balance_interval_ms`, hands at most one group this node
    /// leads to another node (`raft::balance`).
    async fn balance_loop(self: Arc<Self>, shutdown: CancellationToken) {
        if self.balance_interval.is_zero() {
            shutdown.cancelled().await;
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.balance_interval) => {}
            }
            if let Some((group, to)) = self.balance_plan() {
                self.hand_over(group, to).await;
            }
        }
    }

    /// The region's leadership as this node's replicas see it: groups led
    /// per node.
    pub fn leadership(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes_sorted.iter().map(|n| (*n, 0)).collect();
        for g in self.partitions() {
            if let Some(l) = g.leader() {
                *load.entry(l).or_default() += 1;
            }
        }
        load
    }

    fn balance_plan(&self) -> Option<(GroupId, NodeId)> {
        let load = self.leadership();
        let led: Vec<balance::Led> = self
            .partitions()
            .iter()
            .filter_map(|g| {
                let m = g.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.node_id) || g.releasing() {
                    return None;
                }
                let last = m.last_log_index;
                let ready = m
                    .replication
                    .as_ref()?
                    .iter()
                    .filter(|(n, matched)| **n != self.node_id && matched.map(|l| l.index) == last)
                    .map(|(n, _)| *n)
                    .collect();
                Some(balance::Led {
                    group: g.id,
                    preferred: preferred_leader(
                        &self.nodes_sorted,
                        (g.id >> 32) as u32,
                        g.partition,
                    ),
                    ready,
                })
            })
            .collect();
        balance::plan(self.node_id, &led, &load)
    }

    /// Hands `group`, which this node leads, to `to` (see `raft::balance`).
    async fn hand_over(&self, group: GroupId, to: NodeId) {
        let Some(g) = self.partition(group) else {
            return;
        };
        let ask = self
            .transport
            .call(to, KIND_CAMPAIGN, group, &[], self.transport.rpc_timeout())
            .await;
        if let Err(e) = ask {
            debug!(group, to, error = %e, "the node to hand leadership to did not answer");
            return;
        }
        g.releasing.store(true, Ordering::Relaxed);
        g.raft.runtime_config().heartbeat(false);
        let started = Instant::now();
        let limit = Duration::from_millis(2 * self.raft_config.election_timeout_max);
        while started.elapsed() < limit && g.leader() == Some(self.node_id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        g.raft.runtime_config().heartbeat(true);
        g.releasing.store(false, Ordering::Relaxed);
        let now = g.leader();
        if now == Some(to) {
            info!(group, topic = %g.topic, partition = g.partition, from = self.node_id, to,
                  took_ms = started.elapsed().as_millis() as u64, "partition leadership handed over");
        } else {
            info!(group, to, leader = ?now, "leadership handover did not complete; leading again if still leader");
        }
    }

    /// Asked to take over `group`: campaign until leader, for at most
    /// twice the election timeout (the old leader has stopped its
    /// heartbeats; followers vote once its lease ran out).
    fn campaign(&self, group: GroupId) -> Result<(), String> {
        let g = self
            .partition(group)
            .ok_or_else(|| format!("group {group} is not running on this node"))?;
        let me = self.node_id;
        let limit = Duration::from_millis(2 * self.raft_config.election_timeout_max);
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < limit && g.leader() != Some(me) {
                let _ = g.raft.trigger().elect().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(())
    }

    pub fn meta_state(&self) -> Arc<MetaState> {
        self.meta_state.borrow().clone()
    }

    pub fn meta_leader(&self) -> Option<NodeId> {
        self.meta.metrics().borrow().current_leader
    }

    pub fn partition(&self, group: GroupId) -> Option<Arc<PartitionGroup>> {
        self.partitions
            .read()
            .expect("partitions lock")
            .get(&group)
            .cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<PartitionGroup>> {
        let mut v: Vec<_> = self
            .partitions
            .read()
            .expect("partitions lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|g| g.id);
        v
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Waits until the partition groups of `meta` are running here, or
    /// `timeout` passes.
    pub async fn wait_reconciled(&self, groups: &[GroupId], timeout: Duration) -> bool {
        let mut rx = self.reconciled.subscribe();
        let all_present = || groups.iter().all(|g| self.partition(*g).is_some());
        tokio::time::timeout(timeout, async {
            while !all_present() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// How long ago this node last accepted a metadata AppendEntries.
    fn meta_heard_ago(&self) -> Option<Duration> {
        let heard = self.meta_heard_ms.load(Ordering::Relaxed);
        (heard > 0).then(|| {
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(heard - 1))
        })
    }

    /// This node's own pre-vote answer (`prevote`).
    /// Answered to every ping, so it reads the one metrics field it needs
    /// rather than cloning openraft's metrics; the last log id (whose term
    /// the metrics lack) comes from RocksDB.
    fn prevote_answer(&self) -> prevote::Answer {
        let leader = self.meta.metrics().borrow().current_leader;
        let last_log = match self.meta_log.last_log_id() {
            Ok(id) => id.map_or((0, 0), |id| (id.leader_id.term, id.index)),
            Err(e) => {
                // Vouch for no log at all: this node then never campaigns.
                warn!(error = %e, "cannot read the metadata group's last log id");
                (0, 0)
            }
        };
        prevote::Answer {
            node: self.node_id,
            age: Duration::ZERO,
            hears_leader: prevote::hears_leader(
                leader == Some(self.node_id),
                self.meta_heard_ago(),
                Duration::from_millis(self.meta_timing.meta_election_timeout_ms_min),
            ),
            last_log,
        }
    }

    /// Until `shutdown`: pings every other metadata voter each heartbeat and
    /// lets openraft campaign in the metadata group only while `prevote`
    /// allows it. The node `prevote` picks calls the election itself as soon
    /// as the voters' leader leases (openraft's: `election_timeout_ms_max`
    /// since they last heard the leader) have run out, rather than after a
    /// further random election timeout. After `STALL_ROUNDS` rounds without
    /// a leader, any up-to-date willing node may campaign on openraft's
    /// timers (liveness does not rest on one candidate).
    async fn prevote_loop(self: Arc<Self>, shutdown: CancellationToken) {
        /// Election rounds without a leader after which `prevote` stops
        /// insisting on one candidate.
        const STALL_ROUNDS: u32 = 5;
        let t = &self.meta_timing;
        let period = Duration::from_millis(t.meta_heartbeat_ms);
        let lease = Duration::from_millis(t.meta_election_timeout_ms_max);
        let fresh = lease;
        let peers: Vec<NodeId> = self
            .meta_voters
            .iter()
            .copied()
            .filter(|n| *n != self.node_id)
            .collect();
        let answers: Arc<Mutex<HashMap<NodeId, (Instant, prevote::Answer)>>> = Default::default();
        // The pings end with this run of the loop, also when it fails and
        // its supervisor starts another run (with pings of its own).
        let run_stop = shutdown.child_token();
        let _stop_pings = run_stop.clone().drop_guard();
        for peer in peers.clone() {
            let (this, answers, stop) = (self.clone(), answers.clone(), run_stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let r = this
                        .transport
                        .call(peer, KIND_PING, META_GROUP, &[], fresh)
                        .await;
                    if let Some(a) = r.ok().and_then(|b| prevote::decode(peer, &b)) {
                        let mut all = answers.lock().expect("prevote lock");
                        all.insert(peer, (Instant::now(), a));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                }
            });
        }
        let mut allowed = None;
        let mut leader = None;
        let mut called: Option<Instant> = None;
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (current, term) = {
                let m = self.meta.metrics();
                let m = m.borrow();
                (m.current_leader, m.current_term)
            };
            if current != leader {
                info!(leader = ?current, term, "metadata group leader changed");
                leader = current;
            }
            let last: Vec<prevote::Answer> = {
                let all = answers.lock().expect("prevote lock");
                all.values()
                    .map(|(at, a)| prevote::Answer {
                        age: at.elapsed(),
                        ..*a
                    })
                    .collect()
            };
            let me = self.prevote_answer();
            let voters = self.meta_voters.len();
            // Without a leader for STALL_ROUNDS election rounds, the one
            // candidate pre-vote picks is not getting elected: let every
            // up-to-date willing voter campaign (`prevote`).
            // (The leader hears no AppendEntries, but never campaigns.)
            let heard_ago = self.meta_heard_ago();
            let silent_for = heard_ago.unwrap_or_else(|| self.started.elapsed());
            let stalled = silent_for > lease * STALL_ROUNDS;
            let chosen = prevote::may_campaign(voters, &me, &last, fresh, false);
            let may = chosen || prevote::may_campaign(voters, &me, &last, fresh, true) && stalled;
            if allowed != Some(may) {
                if may && !chosen {
                    warn!(
                        silent_ms = silent_for.as_millis() as u64,
                        "no metadata group leader for long; any up-to-date node may campaign now"
                    );
                }
                debug!(may_campaign = may, "metadata group pre-vote");
                self.meta.runtime_config().elect(may);
                allowed = Some(may);
            }
            let silent = heard_ago.is_none_or(|ago| ago > lease + period / 2);
            let again = called.is_none_or(|at| at.elapsed() > lease);
            if chosen && silent && again {
                info!(term, "calling a metadata group election");
                let _ = self.meta.trigger().elect().await;
                called = Some(Instant::now());
            }
        }
    }

    async fn reconcile_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut rx = self.meta_state.clone();
        loop {
            let meta = rx.borrow_and_update().clone();
            self.reconcile(&meta).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    async fn reconcile(&self, meta: &MetaState) {
        let mut wanted = HashMap::new();
        for t in meta.topics.values() {
            let policy = crate::meta::policy(&t.configs, &self.region_names);
            if !policy.regions.contains(&self.region) {
                continue; // the topic does not live in this region
            }
            let ids = |v: &[String]| v.iter().map(|r| crate::ids::origin_id(r)).collect();
            // A pinned topic's groups start from its first home and follow
            // the moves their logs apply (`TopicMeta::first_home`).
            let writers = match &t.first_home {
                Some(home) => vec![home.clone()],
                None => policy.writer_regions(),
            };
            let writers = crate::storage::state_machine::Origins {
                writers: ids(&writers),
                regions: ids(&policy.regions),
                node_regions: self.node_regions.clone(),
            };
            for p in 0..t.partitions {
                wanted.insert(t.group(p), (t.name.clone(), t.seq, p, writers.clone()));
            }
        }
        let present: Vec<GroupId> = self
            .partitions
            .read()
            .expect("partitions lock")
            .keys()
            .copied()
            .collect();
        for id in present.iter().filter(|id| !wanted.contains_key(id)) {
            let g = self.partitions.write().expect("partitions lock").remove(id);
            if let Some(g) = g {
                info!(group = id, topic = %g.topic, partition = g.partition, "stopping deleted partition group");
                let _ = g.raft.shutdown().await;
                self.metrics.remove_group(&g.label());
                if let Err(e) = self.db.delete_group(*id) {
                    warn!(group = id, error = %e, "cannot delete partition data");
                }
            }
        }
        let mut to_start: Vec<_> = wanted
            .into_iter()
            .filter(|(id, _)| !present.contains(id))
            .collect();
        to_start.sort_by_key(|(id, _)| *id);
        for (id, (topic, seq, p, writers)) in to_start {
            let (tx, progress) = watch::channel(Progress::default());
            let preferred = preferred_leader(&self.nodes_sorted, seq, p) == self.node_id;
            match open_group(
                self.node_id,
                id,
                &self.region,
                writers,
                Notify::Partition(tx),
                &self.members,
                preferred,
                FirstLeader::Preferred,
                &self.db,
                &self.transport,
                &self.clock,
                &self.raft_config,
                self.limits,
            )
            .await
            {
                Ok(raft) => {
                    debug!(group = id, %topic, partition = p, "partition group started");
                    let g = Arc::new(PartitionGroup {
                        id,
                        topic,
                        partition: p,
                        raft,
                        progress,
                        releasing: AtomicBool::new(false),
                    });
                    self.partitions
                        .write()
                        .expect("partitions lock")
                        .insert(id, g);
                }
                Err(e) => warn!(group = id, error = %e, "cannot start partition group"),
            }
        }
        self.reconciled.send_modify(|n| *n += 1);
    }

    /// Proposes `cmd` to a group on this node, without waiting for the
    /// commit: proposals of one caller enter the log in call order.
    pub async fn submit(raft: &Raft, cmd: Command) -> Result<CommitRx, WriteError> {
        raft.client_write_ff(cmd)
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))
    }

    /// Waits for a submitted proposal's result and its log index.
    pub async fn wait(rx: CommitRx, timeout: Duration) -> Result<(CommandResult, u64), WriteError> {
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(WriteError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(_)) => Err(WriteError::Unavailable("the group stopped".into())),
            Ok(Ok(Ok(resp))) => Ok((resp.data, resp.log_id.index)),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteError::NotLeader(f.leader_id))
            }
            Ok(Ok(Err(e))) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Commits `cmd` in partition group `g`, whose leader must be this node.
    pub async fn write_to(
        &self,
        g: &PartitionGroup,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        Ok(Self::write_local(&g.raft, cmd, timeout).await?.0)
    }

    async fn write_local(
        raft: &Raft,
        cmd: Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let rx = Self::submit(raft, cmd).await?;
        Self::wait(rx, timeout).await
    }

    /// Commits a meta command through the meta leader, wherever it is,
    /// retrying with backoff while there is no leader, until `timeout`; then
    /// waits until this node has applied it too, so that whoever asked here
    /// reads their own write.
    pub async fn meta_write(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (result, index) = self.commit_meta(cmd, timeout).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.meta
            .wait(Some(left))
            .applied_index_at_least(Some(index), "meta write applied here")
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        Ok(result)
    }

    /// Commits a meta command through the meta leader, without waiting for
    /// this node to apply it: for a node that may be cut off from the
    /// leader, and that acts on the commit itself (a region lease).
    pub async fn meta_commit(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        Ok(self.commit_meta(cmd, timeout).await?.0)
    }

    /// Commits a meta command through the leader, wherever it is (through a
    /// node of a third region when this node cannot reach it), retrying
    /// with backoff while there is no leader, until `timeout`; returns the
    /// result and the entry's index.
    async fn commit_meta(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WriteError::Timeout(timeout.as_millis() as u64));
            }
            let r = match self.meta_leader() {
                Some(l) if l == self.node_id => {
                    Self::write_local(&self.meta, cmd.clone(), left).await
                }
                Some(l) => self.forward_meta_write(l, &cmd, left).await,
                // Cut off from the leader, a follower loses track of it:
                // another region knows.
                None => self.relay_meta_write("", &cmd, left).await,
            };
            match r {
                Err(WriteError::NotLeader(_)) | Err(WriteError::Unavailable(_)) => {
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Sends a meta command to the leader; if the leader cannot be reached
    /// (a cut between two regions), through a node of a third region.
    async fn forward_meta_write(
        &self,
        leader: NodeId,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let payload = bincode::serialize(cmd).expect("serialize command");
        let direct = self
            .transport
            .call(leader, KIND_META_WRITE, META_GROUP, &payload, timeout)
            .await;
        match direct {
            Ok(resp) => decode_forwarded(&resp),
            Err(_) => {
                // The relays share what is left of the caller's deadline.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let region = self.transport.faults.region_of(leader).unwrap_or("");
                self.relay_meta_write(region, cmd, left).await
            }
        }
    }

    /// Has a node of a region other than this node's and `not` pass a meta
    /// command to the leader it knows; the first that answers wins.
    async fn relay_meta_write(
        &self,
        not: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let payload = bincode::serialize(cmd).expect("serialize command");
        let mut last = WriteError::NotLeader(None);
        for relay in self.transport.faults.relays_around(not) {
            // All relays together stay within the caller's deadline.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WriteError::Timeout(timeout.as_millis() as u64));
            }
            match self
                .transport
                .call(relay, KIND_META_RELAY, META_GROUP, &payload, left)
                .await
            {
                Ok(resp) => match decode_forwarded(&resp) {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                },
                Err(e) => last = WriteError::Unavailable(e.to_string()),
            }
        }
        Err(last)
    }

    fn raft_of(&self, group: GroupId) -> Option<Raft> {
        if group == META_GROUP {
            Some(self.meta.clone())
        } else {
            self.partition(group).map(|g| g.raft.clone())
        }
    }

    /// Refreshes the Raft gauges.
    pub fn update_metrics(&self) {
        let mut led = 0;
        for g in self.partitions() {
            let m = g.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                led += 1;
            }
            self.metrics.set_term(&g.label(), m.current_term);
        }
        let m = self.meta.metrics().borrow().clone();
        self.metrics.set_term("meta", m.current_term);
        self.metrics.raft_leader_groups.set(led);
    }
}

/// How a new group gets its first leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstLeader {
    /// Every node initializes the group and campaigns; the preferred node
    /// calls one more election (the metadata group, whose pre-vote gates
    /// later elections).
    Anyone,
    /// Only the preferred node initializes and campaigns (partition
    /// groups: this spreads their leaders over the region's nodes).
    Preferred,
}

#[allow(clippy::too_many_arguments)]
async fn open_group(
    node_id: NodeId,
    group: GroupId,
    region: &str,
    origins: crate::storage::state_machine::Origins,
    notify: Notify,
    members: &BTreeMap<NodeId, BasicNode>,
    preferred: bool,
    first: FirstLeader,
    db: &Arc<Db>,
    transport: &Arc<Transport>,
    clock: &Arc<Clock>,
    config: &Arc<openraft::Config>,
    limits: GroupLimits,
) -> Result<Raft, GroupError> {
    let start_err = |reason: String| GroupError::Start { group, reason };
    let mut log = LogStore::new(db.clone(), group, limits.cache);
    let pristine = log
        .is_pristine()
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let sm = StateMachine::open(
        db.clone(),
        group,
        region.to_string(),
        origins,
        clock.clone(),
        notify,
    )
    .map_err(|e| start_err(e.to_string()))?;
    let network = NetworkFactory {
        transport: transport.clone(),
        group,
        append_bytes_max: limits.append_bytes_max,
    };
    let raft = Raft::new(node_id, config.clone(), network, log, sm)
        .instrument(tracing::info_span!("raft", region, node = node_id, group))
        .await
        .map_err(|e| start_err(e.to_string()))?;
    if !pristine {
        return Ok(raft);
    }
    // openraft's initialize() makes the node campaign at once.
    match first {
        FirstLeader::Anyone => {
            // Every node initializes with the same membership, which
            // openraft allows; the preferred one calls another election
            // right after.
            if let Err(e) = raft.initialize(members.clone()).await {
                debug!(group, error = %e, "group already initialized");
            }
            if preferred {
                let _ = raft.trigger().elect().await;
            }
        }
        FirstLeader::Preferred if preferred => {
            if let Err(e) = raft.initialize(members.clone()).await {
                debug!(group, error = %e, "group already initialized");
            }
        }
        FirstLeader::Preferred => {
            // Only the preferred node campaigns, so leaders spread however
            // unevenly the nodes start the group (a node that initialized
            // first used to win every group it started first). Should the
            // preferred node be down, the others initialize once nothing
            // reached them for twice the election timeout.
            let (raft, members) = (raft.clone(), members.clone());
            let wait = Duration::from_millis(config.election_timeout_max * 2);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let untouched = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    m.last_log_index.is_none() && m.current_leader.is_none()
                };
                if untouched {
                    info!(
                        group,
                        "the preferred leader never reached this node; initializing the group here"
                    );
                    if let Err(e) = raft.initialize(members).await {
                        debug!(group, error = %e, "group already initialized");
                    }
                }
            });
        }
    }
    Ok(raft)
}

fn de<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    bincode::deserialize(payload).map_err(|e| format!("malformed request: {e}"))
}

fn ser<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// Asks a node how much of origin log `(origin, epoch)` it holds, per group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldQuery {
    pub origin: u32,
    pub epoch: u32,
    pub groups: Vec<GroupId>,
}

impl Groups {
    /// The groups of `q` this node leads.
    fn led_of(&self, q: &HeldQuery) -> Vec<Arc<PartitionGroup>> {
        q.groups
            .iter()
            .filter_map(|id| self.partition(*id))
            .filter(|g| g.leader() == Some(self.node_id))
            .collect()
    }

    /// How far this node holds `q`'s log, for the groups of `q` it leads.
    /// Each answer follows a linearizable read, so it covers every entry
    /// the group committed: everything the region acknowledged holding
    /// (what a `sync` ack waited for) is included. Groups it does not lead,
    /// or that cannot confirm their leadership within `timeout`, are left
    /// out.
    pub async fn held(&self, q: &HeldQuery, timeout: Duration) -> Vec<crate::meta::seal::Held> {
        held_of(self.led_of(q), q, timeout).await
    }
}

async fn held_of(
    led: Vec<Arc<PartitionGroup>>,
    q: &HeldQuery,
    timeout: Duration,
) -> Vec<crate::meta::seal::Held> {
    let log = crate::ids::LogRef {
        origin: q.origin,
        epoch: q.epoch,
    };
    let reads = led.into_iter().map(|g| async move {
        let confirmed = tokio::time::timeout(timeout, g.raft.ensure_linearizable())
            .await
            .is_ok_and(|r| r.is_ok());
        confirmed.then(|| {
            let st = g
                .progress
                .borrow()
                .logs
                .get(&log)
                .copied()
                .unwrap_or_default();
            crate::meta::seal::Held {
                group: g.id,
                next_offset: st.next_offset,
                last_hlc: st.last_hlc,
            }
        })
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

impl Handler for Groups {
    fn handle(
        &self,
        kind: u8,
        group: GroupId,
        payload: bytes::Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        if kind == KIND_CAMPAIGN {
            let r = self.campaign(group);
            return Box::pin(async move { r.map(|()| Vec::new()) });
        }
        if kind == KIND_PING {
            let answer = prevote::encode(&self.prevote_answer());
            return Box::pin(async move { Ok(answer) });
        }
        if kind == KIND_HELD {
            let q: Result<HeldQuery, String> = de(&payload);
            let led = q.as_ref().map(|q| self.led_of(q)).unwrap_or_default();
            let timeout = self.transport.rpc_timeout() / 2;
            return Box::pin(async move { ser(&held_of(led, &q?, timeout).await) });
        }
        let raft = self.raft_of(group);
        let meta_timeout = self.transport.rpc_timeout();
        let transport = self.transport.clone();
        let me = self.node_id;
        // Where a metadata AppendEntries this node accepts is noted.
        let heard = (group == META_GROUP && kind == KIND_APPEND)
            .then(|| (self.started, self.meta_heard_ms.clone()));
        Box::pin(async move {
            let raft = raft.ok_or_else(|| format!("group {group} is not running on this node"))?;
            match kind {
                KIND_APPEND => {
                    let req: AppendEntriesRequest<TypeConfig> = de(&payload)?;
                    let resp = raft.append_entries(req).await;
                    if let (Some((started, at)), Ok(r)) = (heard, &resp) {
                        // A leader whose term this node accepts.
                        if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                            at.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        }
                    }
                    ser(&resp)
                }
                KIND_VOTE => {
                    let req: VoteRequest<NodeId> = de(&payload)?;
                    ser(&raft.vote(req).await)
                }
                KIND_SNAPSHOT => {
                    let req: InstallSnapshotRequest<TypeConfig> = de(&payload)?;
                    ser(&raft.install_snapshot(req).await)
                }
                KIND_META_WRITE if group == META_GROUP => {
                    let cmd: Command = de(&payload)?;
                    // Forwarded once only: a node that is no longer leader answers NotLeader.
                    ser(&Groups::write_local(&raft, cmd, meta_timeout).await)
                }
                KIND_META_RELAY if group == META_GROUP => {
                    // One hop only: to the leader this node knows.
                    let cmd: Command = de(&payload)?;
                    let leader = raft.metrics().borrow().current_leader;
                    match leader {
                        Some(l) if l == me => {
                            ser(&Groups::write_local(&raft, cmd, meta_timeout).await)
                        }
                        Some(l) => transport
                            .call(l, KIND_META_WRITE, META_GROUP, &payload, meta_timeout)
                            .await
                            .map_err(|e| e.to_string()),
                        None => ser(&Err::<(CommandResult, u64), _>(WriteError::NotLeader(None))),
                    }
                }
                _ => Err(format!("unknown request kind {kind} for group {group}")),
            }
        })
    }
}

fn decode_forwarded(resp: &[u8]) -> Result<(CommandResult, u64), WriteError> {
    bincode::deserialize::<Result<(CommandResult, u64), WriteError>>(resp)
        .map_err(|e| WriteError::Unavailable(format!("bad forwarded response: {e}")))?
}
