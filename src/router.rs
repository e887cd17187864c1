//! Decides where a client request goes: which partition group, and whether
//! this node can serve it. The Kafka layer calls only this module.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{KafkaConfig, NodeId, NodeSpec, Topology};
use crate::metrics::Metrics;
use crate::raft::groups::WriteError;
use crate::raft::types::{Command, CommandResult, RecordIn};
use crate::raft::{Groups, PartitionGroup};
use crate::storage::batch;
use crate::storage::state_machine::read;
use crate::topic::{validate_config, validate_create, MetaError, TopicMeta};

/// Why a partition request failed; each maps to one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("no leader elected yet")]
    LeaderNotAvailable,
    #[error("timed out waiting for the commit")]
    Timeout,
    #[error("storage error: {0}")]
    Storage(String),
}

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

/// A proposed append, waiting for its commit.
pub struct AppendTicket {
    rx: tokio::sync::oneshot::Receiver<
        Result<
            openraft::raft::ClientWriteResponse<crate::raft::types::TypeConfig>,
            openraft::error::ClientWriteError<NodeId, openraft::BasicNode>,
        >,
    >,
}

impl AppendTicket {
    /// Waits for the commit (a Raft majority, fsynced: invariant 1) and
    /// returns the batch's base offset.
    pub async fn wait(self, timeout: Duration) -> Result<u64, PartitionError> {
        match Groups::wait(self.rx, timeout).await?.0 {
            CommandResult::Appended { base_offset, .. } => Ok(base_offset),
            other => Err(PartitionError::Storage(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
}

/// Committed batches read for a fetch.
pub struct ReadResult {
    pub high_watermark: u64,
    pub batches: Vec<bytes::Bytes>,
}

pub struct Router {
    pub groups: Arc<Groups>,
    pub topology: Topology,
    pub me: NodeSpec,
    pub kafka: KafkaConfig,
    pub metrics: Arc<Metrics>,
}

impl Router {
    pub fn node_id(&self) -> NodeId {
        self.me.id
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.groups.meta_state().topics.get(name).cloned()
    }

    pub fn topics(&self) -> Vec<TopicMeta> {
        self.groups.meta_state().topics.values().cloned().collect()
    }

    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionGroup>, PartitionError> {
        // On every produce and fetch: look the topic up without cloning it.
        let group = {
            let meta = self.groups.meta_state();
            let t = meta
                .topics
                .get(topic)
                .ok_or(PartitionError::UnknownTopicOrPartition)?;
            if partition < 0 || partition as u32 >= t.partitions {
                return Err(PartitionError::UnknownTopicOrPartition);
            }
            t.group(partition as u32)
        };
        self.groups
            .partition(group)
            .ok_or(PartitionError::LeaderNotAvailable)
    }

    /// Proposes a batch to the partition's leader, which must be this node.
    /// Proposals made by one caller commit in call order.
    pub async fn submit_append(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<RecordIn>,
    ) -> Result<AppendTicket, PartitionError> {
        let g = self.partition(topic, partition)?;
        match g.leader() {
            Some(l) if l == self.node_id() => {}
            None => return Err(PartitionError::LeaderNotAvailable),
            other => return Err(PartitionError::NotLeader(other)),
        }
        let count = records.len() as u32;
        let proposed_hlc = self.groups.clock.reserve(count as u64);
        let cmd = Command::Append {
            proposed_hlc,
            count,
            batch: batch::propose(proposed_hlc, &self.me.region, &records),
        };
        let rx = Groups::submit(&g.raft, cmd).await?;
        Ok(AppendTicket { rx })
    }

    /// Committed batches from `offset`, at most about `max_bytes`.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult, PartitionError> {
        let g = self.partition(topic, partition)?;
        let progress = *g.progress.borrow();
        let hw = progress.next_offset;
        let batches = read::batches(
            self.groups.db(),
            progress.log,
            offset.max(0) as u64,
            hw,
            max_bytes,
        )
        .map_err(|e| PartitionError::Storage(e.to_string()))?;
        Ok(ReadResult {
            high_watermark: hw,
            batches,
        })
    }

    pub fn high_watermark(&self, topic: &str, partition: i32) -> Result<u64, PartitionError> {
        Ok(self
            .partition(topic, partition)?
            .progress
            .borrow()
            .next_offset)
    }

    /// Offset and HLC of the first record whose timestamp is at or after `unix_ms`.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        unix_ms: i64,
    ) -> Result<Option<(u64, u64)>, PartitionError> {
        let g = self.partition(topic, partition)?;
        let log = g.progress.borrow().log;
        read::offset_for_hlc(self.groups.db(), log, crate::hlc::from_wall_ms(unix_ms))
            .map_err(|e| PartitionError::Storage(e.to_string()))
    }

    async fn meta(&self, cmd: Command, timeout: Duration) -> Result<(), TopicError> {
        match self.groups.meta_write(cmd, timeout).await {
            Ok(CommandResult::Meta(r)) => Ok(r?),
            Ok(other) => Err(TopicError::Unavailable(format!(
                "unexpected result {other:?}"
            ))),
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    /// Creates a topic and waits (up to `timeout`) until every partition has
    /// a leader, so that a client can produce right after.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i64,
        configs: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<TopicMeta, TopicError> {
        validate_create(name, partitions, &configs)?;
        let cmd = Command::CreateTopic {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions: partitions as u32,
            configs,
        };
        self.meta(cmd, timeout).await?;
        // meta() returns once this node applied the creation; a topic missing
        // now was deleted by someone else in the meantime.
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        self.wait_for_leaders(&t, timeout).await;
        Ok(t)
    }

    async fn wait_for_leaders(&self, t: &TopicMeta, timeout: Duration) {
        let groups: Vec<_> = (0..t.partitions).map(|p| t.group(p)).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.groups.wait_reconciled(&groups, timeout).await {
            return;
        }
        while tokio::time::Instant::now() < deadline {
            let all = groups.iter().all(|g| {
                self.groups
                    .partition(*g)
                    .is_some_and(|g| g.leader().is_some())
            });
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn delete_topic(&self, name: &str, timeout: Duration) -> Result<(), TopicError> {
        self.meta(
            Command::DeleteTopic {
                name: name.to_string(),
            },
            timeout,
        )
        .await
    }

    pub async fn alter_topic(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        timeout: Duration,
    ) -> Result<(), TopicError> {
        for (k, v) in &set {
            validate_config(k, v)?;
        }
        let cmd = Command::AlterTopic {
            name: name.to_string(),
            set,
            delete,
        };
        self.meta(cmd, timeout).await
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
        self.topology
            .region(&self.me.region)
            .map(|r| r.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default()
    }
}
