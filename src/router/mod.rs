//! Decides where a client request goes: which partition group, and whether
//! this node can serve it. The Kafka layer calls only this module.
//!
//! This file holds the router and its look-ups (topics, partitions,
//! brokers); `produce` (local, forwarded, re-injected writes), `ack` (the
//! wait for a write's ack policy), `fetch` (reads and who serves them) and
//! `topics` (topic administration) hold the rest.

mod ack;
mod fetch;
mod produce;
mod topics;

use std::sync::Arc;

use crate::command::PartitionError;
use crate::config::{KafkaConfig, NodeSpec, Topology};
use crate::ids::{GroupId, NodeId};
use crate::link::Link;
use crate::meta::{policy, MetaError, Policy, TopicMeta};
use crate::metrics::Metrics;
use crate::raft::groups::WriteError;
use crate::raft::{Groups, PartitionGroup};

pub use ack::AppendTicket;
pub use fetch::{readable, ReadResult};

impl From<WriteError> for PartitionError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader(l) => PartitionError::NotLeader(l),
            WriteError::Timeout(_) => PartitionError::Timeout,
            WriteError::Unavailable(_) => PartitionError::NotLeader(None),
        }
    }
}

/// Why a topic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("the region's metadata group did not commit in time: {0}")]
    Unavailable(String),
}

pub struct Router {
    pub groups: Arc<Groups>,
    pub link: Arc<Link>,
    pub topology: Topology,
    pub me: NodeSpec,
    pub kafka: KafkaConfig,
    pub metrics: Arc<Metrics>,
    pub fence: crate::control::Fence,
    pub producer_ids: crate::storage::producer_ids::ProducerIds,
    /// Produce batches decoded off the async workers at once
    /// (`kafka.decode_concurrency_max`).
    pub decode_permits: tokio::sync::Semaphore,
    /// `raft.entry_bytes_max`: no produce creates a larger entry.
    pub entry_bytes_max: u64,
    /// Free disk space: below the reserve, new writes are refused.
    pub disk: Arc<crate::storage::reserve::DiskReserve>,
}

impl Router {
    pub fn node_id(&self) -> NodeId {
        self.me.id
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.groups.meta_state().topics.get(name).cloned()
    }

    /// Names of every region in the topology.
    pub fn region_names(&self) -> Vec<String> {
        self.link.region_names()
    }

    /// How a topic is replicated between regions.
    pub fn policy(&self, t: &TopicMeta) -> Policy {
        policy(&t.configs, &self.region_names())
    }

    pub fn topics(&self) -> Vec<TopicMeta> {
        self.groups.meta_state().topics.values().cloned().collect()
    }

    /// Looks a topic's partition up in the meta state, without cloning the
    /// topic (this runs on every produce and fetch), and gives `f` the topic
    /// and the partition's group.
    fn with_topic<T>(
        &self,
        topic: &str,
        partition: i32,
        f: impl FnOnce(&TopicMeta, GroupId) -> T,
    ) -> Result<T, PartitionError> {
        let meta = self.groups.meta_state();
        let t = meta
            .topics
            .get(topic)
            .ok_or(PartitionError::UnknownTopicOrPartition)?;
        if partition < 0 || partition as u32 >= t.partitions {
            return Err(PartitionError::UnknownTopicOrPartition);
        }
        Ok(f(t, t.group(partition as u32)))
    }

    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionGroup>, PartitionError> {
        let group = self.with_topic(topic, partition, |_, g| g)?;
        self.groups
            .partition(group)
            .ok_or(PartitionError::LeaderNotAvailable)
    }

    /// Brokers of this region, then of every other region.
    pub fn brokers(&self) -> Vec<&NodeSpec> {
        let mut v: Vec<&NodeSpec> = self
            .topology
            .regions
            .iter()
            .flat_map(|r| r.nodes.iter())
            .collect();
        v.sort_by_key(|n| (n.region != self.me.region, n.id));
        v
    }

    /// Node ids of this region: the replicas of every partition here.
    pub fn region_nodes(&self) -> Vec<NodeId> {
        self.link.region_nodes(&self.me.region)
    }
}
