//! The Raft groups of one node: the meta group, started at boot, and the
//! partition groups, started and stopped as the meta group's topics change.
//!
//! This file is the registry (types, start, look-ups, metrics); each
//! background job and each kind of work has its own file: `open` (one
//! group), `reconcile` (groups follow the topics), `write` (proposals and
//! metadata writes), `campaign` (the metadata pre-vote driver),
//! `handover` (leadership balance), `serve` (Raft requests and held-log
//! queries).

mod campaign;
mod handover;
mod open;
mod reconcile;
mod serve;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::ClientWriteError;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::command::TypeConfig;
use crate::config::{ControlConfig, RaftConfig, Topology};
use crate::hlc::Clock;
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::meta::MetaState;
use crate::metrics::Metrics;
use crate::storage::log_store::CacheLimits;
use crate::storage::state_machine::{Notify, Progress};
use crate::storage::{Db, LogStore};
use crate::transport::Transport;
use open::{open_group, FirstLeader};

pub use serve::HeldQuery;

/// A Raft group of this node.
pub type Raft = openraft::Raft<TypeConfig>;

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

    pub fn meta_state(&self) -> Arc<MetaState> {
        self.meta_state.borrow().clone()
    }

    /// The metadata state as it changes.
    pub fn meta_watch(&self) -> watch::Receiver<Arc<MetaState>> {
        self.meta_state.clone()
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

    fn raft_of(&self, group: GroupId) -> Option<Raft> {
        if group == META_GROUP {
            Some(self.meta.clone())
        } else {
            self.partition(group).map(|g| g.raft.clone())
        }
    }

    /// What failed such that the node cannot go on, and what to do: a
    /// write of its storage (whichever part of the node wrote), or a group
    /// that stopped on an error or panicked rather than by shutdown. None
    /// while all is well.
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = self.db.write_error() {
            return Some(format!(
                "a write to the node's storage failed: {e}; fix or free the disk, then restart the node"
            ));
        }
        // Runs every 200 ms over every group: names are made only for a
        // group that failed.
        let failed = |raft: &Raft, label: &dyn Fn() -> String| {
            let rx = raft.metrics();
            // A core that panicked drops its metrics sender without
            // setting `running_state`.
            let gone = rx.has_changed().is_err();
            let why = match &rx.borrow().running_state {
                Err(openraft::error::Fatal::Stopped) => return None,
                Ok(()) if !gone => return None,
                Ok(()) => "stopped without an error (its task panicked; see the log above); restart the node".to_string(),
                Err(e) => format!("stopped: {e}; restart the node once the cause is fixed"),
            };
            Some(format!("Raft group {} {why}", label()))
        };
        failed(&self.meta, &|| "meta".to_string()).or_else(|| {
            self.partitions()
                .iter()
                .find_map(|g| failed(&g.raft, &|| g.label()))
        })
    }

    /// Makes every write of this node's storage fail from now on: a
    /// simulated dying disk (admin `/faults`), until the node restarts.
    pub fn fail_disk(&self) {
        self.db.fail_writes();
    }

    /// Refreshes the Raft gauges.
    /// Updates the groups' gauges; with `sizes`, also their bytes on disk
    /// (RocksDB estimates, cheap but not free: the caller asks now and then).
    pub fn update_metrics(&self, sizes: bool) {
        let mut led = 0;
        // Entries from the first not purged to the last (indexes from 0).
        let kept = |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| {
            m.last_log_index.map_or(0, |last| {
                (last + 1).saturating_sub(m.purged.map_or(0, |l| l.index + 1))
            })
        };
        let bytes = |group| {
            sizes.then(|| {
                let b = self.db().group_bytes(group);
                (b.data, b.raft_log)
            })
        };
        for g in self.partitions() {
            let m = g.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                led += 1;
            }
            self.metrics.set_term(&g.label(), m.current_term);
            self.metrics
                .set_group_size(&g.label(), kept(&m), bytes(g.id));
        }
        let m = self.meta.metrics().borrow().clone();
        self.metrics.set_term("meta", m.current_term);
        self.metrics
            .set_group_size("meta", kept(&m), bytes(crate::ids::META_GROUP));
        self.metrics.raft_leader_groups.set(led);
    }
}
