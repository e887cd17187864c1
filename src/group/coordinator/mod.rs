//! The group coordinator of one node. A group is coordinated, in each
//! region, by the leader of the `__consumer_offsets` partition the group
//! hashes to: the region its members connect to coordinates it, unless the
//! group already has members in another region, which then coordinates it
//! ([`super::presence`]). Membership lives in memory there
//! ([`state::Group`]); a coordinator change (leader change, failover)
//! makes members join again, and committed offsets, which are records of
//! that partition, survive it.
//!
//! This file holds the coordinator's state and its tick; `presence`
//! (where a group meets), `locate` (FindCoordinator), `members` (joins,
//! syncs, heartbeats, leaves, describe, list, delete), `commit` and
//! `fetch` (offsets) hold the rest.

mod commit;
mod fetch;
mod locate;
mod members;
mod presence;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{GroupsConfig, NodeSpec};
use crate::group::offsets::Folded;
use crate::group::state::{code, Group, JoinReply, Limits, Out, SyncReply};
use crate::ids::GroupId;

use crate::command::PartitionError;
use crate::router::Router;

/// How often timers (session timeouts, rebalance deadlines) are checked
/// and groups this node no longer coordinates are let go.
const TICK: Duration = Duration::from_millis(100);
/// Offsets folded per origin log per read.
const FOLD_BYTES: usize = 1 << 20;
/// A commit from another region this recent, for a group with members
/// here, means the group's members connect to two regions.
const SPLIT_WINDOW_MS: i64 = 30_000;
/// Reads of one fold before a fetch answers "still loading".
const FOLD_ROUNDS_MAX: usize = 64;

/// Where a group's coordinator is, as FindCoordinator answers it.
pub type Located = Result<NodeSpec, (i16, String)>;

/// A topic-partition's commit result.
pub type PartitionCode = (String, Vec<(i32, i16)>);

/// A committed offset as OffsetFetch answers it: offset -1 when none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub error: i16,
}

/// One partition's offset in an OffsetCommit.
pub struct CommitOffset {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A commit asked for, before it is checked.
pub struct CommitReq {
    pub group: String,
    pub member: String,
    pub generation: i32,
    pub topics: Vec<(String, Vec<CommitOffset>)>,
}

/// A group as DescribeGroups and ListGroups show it.
pub struct Described {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// Member id, client id, host, metadata, assignment.
    pub members: Vec<(String, String, String, Bytes, Bytes)>,
}

/// A JoinGroup's or SyncGroup's answer: now, or once the rebalance gets
/// there. The group's state changed when the request arrived (requests of
/// one connection apply in order, as Kafka's coordinator applies them);
/// only the answer waits.
pub enum Waiting<R> {
    Now(R),
    Later {
        rx: oneshot::Receiver<R>,
        /// The group answers by its rebalance deadline; this bounds the
        /// wait in any case.
        bound: Duration,
        /// The answer if the coordinator lets the group go meanwhile.
        gone: R,
    },
}

impl<R> Waiting<R> {
    pub async fn wait(self) -> R {
        match self {
            Waiting::Now(r) => r,
            Waiting::Later { rx, bound, gone } => match tokio::time::timeout(bound, rx).await {
                Ok(Ok(r)) => r,
                _ => gone,
            },
        }
    }
}

#[derive(Default)]
struct Inner {
    groups: HashMap<String, Group>,
    joins: HashMap<(String, String), oneshot::Sender<JoinReply>>,
    syncs: HashMap<(String, String), oneshot::Sender<SyncReply>>,
}

impl Inner {
    /// Answers waiting JoinGroup and SyncGroup requests. A member with no
    /// waiting request (its connection went) misses nothing: it learns of
    /// the new generation on its next heartbeat. Returns how many
    /// generations the answers complete.
    fn deliver(&mut self, group: &str, outs: Vec<Out>) -> u64 {
        let mut generations = 0;
        for o in outs {
            match o {
                Out::Join(m, r) => {
                    if r.error == code::NONE && r.leader == m {
                        generations += 1;
                    }
                    if let Some(tx) = self.joins.remove(&(group.to_string(), m)) {
                        let _ = tx.send(r);
                    }
                }
                Out::Sync(m, r) => {
                    if let Some(tx) = self.syncs.remove(&(group.to_string(), m)) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
        generations
    }

    /// Forgets a group; its waiting requests are answered NOT_COORDINATOR
    /// (their senders drop).
    fn drop_group(&mut self, group: &str) {
        self.groups.remove(group);
        self.joins.retain(|(g, _), _| g != group);
        self.syncs.retain(|(g, _), _| g != group);
    }
}

pub struct Coordinator {
    router: Arc<Router>,
    cfg: GroupsConfig,
    start: Instant,
    inner: Mutex<Inner>,
    /// Commits folded from each `__consumer_offsets` partition held here.
    folded: Mutex<HashMap<GroupId, Folded>>,
    /// One creation of the internal topic at a time.
    creating: tokio::sync::Mutex<()>,
    /// Groups warned about committing in two regions, and when.
    warned: Mutex<HashMap<String, i64>>,
    /// The presence this node announces for the groups it coordinates.
    announced: Mutex<HashMap<String, Announced>>,
}

/// What this node announced of one group's presence
/// ([`presence`]), and when.
struct Announced {
    /// HLC since which the group has members in this region.
    since: u64,
    /// Members last written; None before the first write succeeded.
    written: Option<u32>,
    /// When it was last written or tried (`Coordinator::now`).
    at_ms: u64,
    /// A write is under way.
    writing: bool,
}

/// Retry delay for a presence write that failed or changed.
const PRESENCE_RETRY_MS: u64 = 200;

/// The error code a failed commit answers with; all are retriable.
fn commit_code(e: PartitionError) -> i16 {
    match e {
        PartitionError::NotLeader(_) => code::NOT_COORDINATOR,
        PartitionError::Timeout => code::REQUEST_TIMED_OUT,
        PartitionError::NotEnoughReplicas(_) => code::NOT_ENOUGH_REPLICAS,
        _ => code::COORDINATOR_NOT_AVAILABLE,
    }
}

fn err(code: i16, msg: impl Into<String>) -> (i16, String) {
    (code, msg.into())
}

impl Coordinator {
    pub fn new(router: Arc<Router>, cfg: GroupsConfig) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            router,
            cfg,
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
            folded: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            warned: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
        })
    }

    fn delivered(&self, generations: u64) {
        self.router.metrics.group_rebalances.inc_by(generations);
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn limits(&self) -> Limits {
        Limits {
            session_timeout_ms_min: self.cfg.session_timeout_ms_min,
            session_timeout_ms_max: self.cfg.session_timeout_ms_max,
            max_size: self.cfg.max_size as usize,
        }
    }

    /// Checks timers and lets go of groups this node no longer coordinates.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.now();
            let ids: Vec<String> = self
                .inner
                .lock()
                .expect("groups")
                .groups
                .keys()
                .cloned()
                .collect();
            let mine: Vec<(String, bool)> = ids
                .into_iter()
                .map(|id| {
                    let ours = self.is_mine(&id).is_ok();
                    (id, ours)
                })
                .collect();
            let mut sizes = HashMap::new();
            {
                let mut inner = self.inner.lock().expect("groups");
                for (id, ours) in mine {
                    if !ours {
                        info!(group = %id, "no longer this group's coordinator; its members join the new one");
                        inner.drop_group(&id);
                        continue;
                    }
                    let Some(g) = inner.groups.get_mut(&id) else {
                        continue;
                    };
                    let outs = g.tick(now);
                    let idle = g.is_idle();
                    let size = g.size() as u32;
                    self.delivered(inner.deliver(&id, outs));
                    if idle {
                        inner.drop_group(&id);
                    } else {
                        sizes.insert(id, size);
                    }
                }
                let m = &self.router.metrics;
                m.groups_coordinated.set(inner.groups.len() as i64);
                m.group_members
                    .set(inner.groups.values().map(|g| g.members.len() as i64).sum());
            }
            self.announce(&sizes);
        }
    }
}
