//! The cross-region link: copies every partition's origin logs between the
//! regions that hold the topic (invariant 3), carries closed timestamps
//! (invariant 5), and reports the remote high watermarks that `sync`
//! produces wait for (invariant 1).
//!
//! - [`outbound`]: on each partition leader, one copier per remote region
//!   ships the origin logs (own and relayed) that the remote lacks, from the
//!   high watermarks it reports back, and a closer publishes closed
//!   timestamps while the partition is idle.
//! - [`inbound`]: proposes copied batches into the local partition group
//!   (`Command::Replicate`, idempotent) and answers with its high
//!   watermarks.
//!
//! The link also defines the messages of writes forwarded to a pinned
//! topic's home ([`Forward`]) and of failback ([`FailbackReq`]), and sends
//! them ([`Link::call_leader`]); `rpc` serves them on the receiving node.

pub mod inbound;
pub mod outbound;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{LinkConfig, NodeSpec, Topology};
use crate::ids::{GroupId, LogRef, NodeId};
use crate::log::RecordIn;
use crate::metrics::Metrics;
use crate::raft::Groups;
use crate::transport::{Handler, Transport};

/// Copy batches of one origin log into the receiver's partition group.
pub const KIND_LINK_SHIP: u8 = 16;
/// Ask for the receiver's high watermarks of a partition.
pub const KIND_LINK_STATE: u8 = 17;
/// A produce for a topic pinned to the receiver's region.
pub const KIND_LINK_FORWARD: u8 = 18;
/// A returning region's failback steps ([`FailbackReq`]).
pub const KIND_LINK_FAILBACK: u8 = 19;

/// Request kinds the link's copier serves ([`Link`] as a transport
/// `Handler`). Forwarded produces and failback requests travel between the
/// same nodes but are served above the link, by `rpc`.
pub fn is_copy_kind(kind: u8) -> bool {
    kind == KIND_LINK_SHIP || kind == KIND_LINK_STATE
}

/// What a region failing back asks of another region's partition leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FailbackReq {
    /// Re-inject records of sealed log `from`, starting at its offset
    /// `offset`, as new records (`Router::reinject`).
    Reinject {
        from: LogRef,
        offset: u64,
        records: Vec<RecordIn>,
        timeout_ms: u64,
    },
    /// Admit the returning region's new log into the view
    /// (`Command::Admit`).
    Admit { log: LogRef },
}

/// Reinject: how far the sealed log is re-injected; Admit: the closed
/// timestamp the new log starts at.
pub type FailbackReply = Result<u64, crate::command::PartitionError>;

/// A copy of one origin log's batches (stored form), and the log's closed
/// timestamp as of their end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ship {
    pub from_region: String,
    pub log: LogRef,
    /// Every record of the log from `end` on has a larger HLC than this.
    pub closed: u64,
    /// The offset after the last record sent (where a copy without
    /// batches, one that only carries `closed`, starts).
    pub end: u64,
    pub batches: Vec<Bytes>,
}

impl Ship {
    /// The offset the copy starts at: the receiver must hold the log up to
    /// here for the copy to apply.
    pub fn start(&self) -> u64 {
        self.batches
            .first()
            .and_then(|b| crate::log::batch::decode(b).ok())
            .map_or(self.end, |(h, _)| h.base_offset)
    }
}

/// One origin log as held by a region: high watermark and closed timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub next_offset: u64,
    pub closed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Every origin log of the partition the receiver holds, after the copy.
    Logs(BTreeMap<LogRef, Held>),
    NotLeader(Option<NodeId>),
    Refused(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forward {
    pub topic: String,
    pub partition: i32,
    pub records: Vec<RecordIn>,
    /// An idempotent producer's id, epoch and first sequence.
    pub producer: Option<crate::log::producers::Producer>,
    pub timeout_ms: u64,
}

/// What a forwarded produce returns: the Kafka offset, or why not.
pub type ForwardReply = Result<i64, crate::command::PartitionError>;

/// High watermark and closed timestamp of every origin log in `logs`. A
/// sealed log counts as held up to its seal at most: what a replica holds
/// past it (a copy that raced the seal) is neither copied nor reported.
pub fn held_map(
    logs: &BTreeMap<LogRef, crate::storage::state_machine::LogState>,
) -> BTreeMap<LogRef, Held> {
    logs.iter()
        .map(|(l, s)| {
            (
                *l,
                Held {
                    next_offset: s.sealed.map_or(s.next_offset, |e| e.min(s.next_offset)),
                    closed: s.closed,
                },
            )
        })
        .collect()
}

/// What one region holds of each origin log of a partition: high
/// watermarks.
pub type Holdings = BTreeMap<LogRef, u64>;

/// Remote regions' high watermarks of this region's origin log of one
/// partition, as the copier last heard them.
pub type RemoteAcks = BTreeMap<String, Held>;

pub struct Link {
    pub groups: Arc<Groups>,
    pub transport: Arc<Transport>,
    pub topology: Topology,
    pub me: NodeSpec,
    pub cfg: LinkConfig,
    pub metrics: Arc<Metrics>,
    acks: Mutex<HashMap<GroupId, watch::Sender<RemoteAcks>>>,
    /// What each remote region holds of every origin log of a partition
    /// this node leads, as its copier last heard (retention keeps what a
    /// region still lacks).
    holdings: Mutex<HashMap<GroupId, BTreeMap<String, Holdings>>>,
    lanes: inbound::Lanes,
}

impl Link {
    pub fn new(
        groups: Arc<Groups>,
        transport: Arc<Transport>,
        topology: Topology,
        me: NodeSpec,
        cfg: LinkConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Link> {
        Arc::new(Link {
            groups,
            transport,
            topology,
            me,
            cfg,
            metrics,
            acks: Mutex::new(HashMap::new()),
            holdings: Mutex::new(HashMap::new()),
            lanes: inbound::Lanes::default(),
        })
    }

    fn acks_tx(&self, group: GroupId) -> watch::Sender<RemoteAcks> {
        self.acks
            .lock()
            .expect("acks lock")
            .entry(group)
            .or_insert_with(|| watch::channel(RemoteAcks::new()).0)
            .clone()
    }

    /// Remote high watermarks of this region's origin log of `group`.
    pub fn acks(&self, group: GroupId) -> watch::Receiver<RemoteAcks> {
        self.acks_tx(group).subscribe()
    }

    pub(crate) fn set_acks(&self, group: GroupId, region: &str, held: Held) {
        self.acks_tx(group).send_if_modified(|m| {
            let changed = m.get(region) != Some(&held);
            m.insert(region.to_string(), held);
            changed
        });
    }

    /// What `region` holds of each origin log of `group` (high
    /// watermarks), as this node's copier last heard; `None` if it has not
    /// heard since it became the partition's leader.
    pub fn holdings(&self, group: GroupId, region: &str) -> Option<Holdings> {
        self.holdings
            .lock()
            .expect("holdings lock")
            .get(&group)?
            .get(region)
            .cloned()
    }

    pub(crate) fn set_holdings(
        &self,
        group: GroupId,
        region: &str,
        theirs: &BTreeMap<LogRef, Held>,
    ) {
        self.holdings
            .lock()
            .expect("holdings lock")
            .entry(group)
            .or_default()
            .insert(
                region.to_string(),
                theirs.iter().map(|(l, h)| (*l, h.next_offset)).collect(),
            );
    }

    /// Forgets what remote regions hold of partitions this node no longer
    /// leads: a new term's copiers hear it again.
    pub(crate) fn forget_holdings(&self, keep: impl Fn(GroupId) -> bool) {
        self.holdings
            .lock()
            .expect("holdings lock")
            .retain(|g, _| keep(*g));
    }

    pub fn region_names(&self) -> Vec<String> {
        self.topology
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// Sends a failback request for `group` to `region`'s partition
    /// leader, until `timeout`.
    pub async fn failback_call(
        &self,
        region: &str,
        group: GroupId,
        req: &FailbackReq,
        timeout: std::time::Duration,
    ) -> FailbackReply {
        let payload = bincode::serialize(req).expect("serialize failback request");
        self.call_leader(region, KIND_LINK_FAILBACK, group, &payload, timeout)
            .await
    }

    /// Sends a request for `group` to `region`'s partition leader, whose
    /// answer is a `Result<T, PartitionError>`: follows leader hints, tries
    /// the region's other nodes while there is no leader or a node is
    /// unreachable, and gives up with `Timeout` after `timeout`.
    pub async fn call_leader<T: serde::de::DeserializeOwned>(
        &self,
        region: &str,
        kind: u8,
        group: GroupId,
        payload: &[u8],
        timeout: std::time::Duration,
    ) -> Result<T, crate::command::PartitionError> {
        use crate::command::PartitionError;
        let nodes = self.region_nodes(region);
        if nodes.is_empty() {
            return Err(PartitionError::Refused(format!(
                "region {region} is not in the topology"
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut target = nodes[group as usize % nodes.len()];
        let mut tries = 0usize;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(PartitionError::Timeout);
            }
            let r = self
                .transport
                .call(target, kind, group, payload, left)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    bincode::deserialize::<Result<T, PartitionError>>(&b).map_err(|e| e.to_string())
                });
            tries += 1;
            match r {
                Ok(Err(PartitionError::NotLeader(Some(l)))) if nodes.contains(&l) => target = l,
                Ok(Err(PartitionError::NotLeader(None) | PartitionError::LeaderNotAvailable))
                | Err(_) => {
                    target = nodes[(group as usize + tries) % nodes.len()];
                    tokio::time::sleep(std::time::Duration::from_millis(50).min(left)).await;
                }
                Ok(r) => return r,
            }
        }
    }

    /// Node ids of a region, sorted.
    pub fn region_nodes(&self, region: &str) -> Vec<NodeId> {
        self.topology
            .region(region)
            .map(|r| r.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default()
    }
}

impl Handler for Link {
    fn handle(
        &self,
        kind: u8,
        group: u64,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        inbound::handle(self, kind, group, payload)
    }
}
