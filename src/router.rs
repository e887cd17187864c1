//! Decides where a client request goes: which partition group, and whether
//! this node can serve it. The Kafka layer calls only this module.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, CommandResult, PartitionError};
use crate::config::{KafkaConfig, NodeSpec, Topology};
use crate::ids::{GroupId, NodeId};
use crate::link::{Forward, Link, KIND_LINK_FORWARD};
use crate::log::batch;
use crate::log::producers::{Producer, Refusal};
use crate::log::RecordIn;
use crate::meta::{
    policy, validate_config, validate_create, validate_policy, MetaError, Policy, TopicMeta,
    FIXED_AT_CREATION, KEY_REGIONS, KEY_WRITERS,
};
use crate::metrics::Metrics;
use crate::raft::groups::{CommitRx, WriteError};
use crate::raft::{Groups, PartitionGroup};
use crate::storage::read;

/// The rule of [`Router::check_readable`]: `me` serves reads when it is
/// the leader and has applied an entry of the current term (a new leader's
/// first entry commits everything before it, so its view then holds all
/// its predecessor showed). Not the leader: NOT_LEADER_OR_FOLLOWER, the
/// client refreshes its metadata; not ready yet: LEADER_NOT_AVAILABLE,
/// retriable, for a moment.
pub fn readable(
    me: NodeId,
    leader: Option<NodeId>,
    term: u64,
    applied_term: Option<u64>,
) -> Result<(), PartitionError> {
    match leader {
        Some(l) if l == me => {}
        None => return Err(PartitionError::LeaderNotAvailable),
        other => return Err(PartitionError::NotLeader(other)),
    }
    if applied_term.is_some_and(|t| t >= term) {
        Ok(())
    } else {
        Err(PartitionError::LeaderNotAvailable)
    }
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
pub enum AppendTicket {
    Local {
        rx: CommitRx,
        group: GroupId,
        policy: Policy,
        link: Arc<Link>,
        /// An idempotent producer's append, proposed again if it was held
        /// while the producer's previous region's records arrive.
        again: Option<Command>,
    },
    /// Sent to the topic's home region, which answers once it committed.
    Forwarded(futures::future::BoxFuture<'static, Result<i64, PartitionError>>),
}

impl AppendTicket {
    /// Makes the ack wait as `data`'s policy would, too: an offset commit
    /// (a record of `__consumer_offsets`) of a `sync` topic is held by as
    /// many other regions as that topic's records are (invariant 8).
    pub fn requiring(self, data: &Policy) -> Self {
        match self {
            AppendTicket::Local {
                rx,
                group,
                policy,
                link,
                again,
            } => AppendTicket::Local {
                rx,
                group,
                policy: policy.as_strict_as(data),
                link,
                again,
            },
            forwarded => forwarded,
        }
    }

    /// Waits for the commit (a Raft majority, fsynced: invariant 1), for a
    /// `sync` topic also for `sync.quorum - 1` other regions to commit it,
    /// and for an `async` topic with `rpo.max.ms` until the unreplicated
    /// window is within the bound. Returns the batch's Kafka offset, or -1
    /// when it is not known yet (topics with several writer regions: the
    /// record's position in the view is fixed once every origin closed past
    /// its HLC).
    pub async fn wait(self, timeout: Duration) -> Result<i64, PartitionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (rx, group, policy, link, again) = match self {
            AppendTicket::Forwarded(f) => {
                return tokio::time::timeout(timeout, f)
                    .await
                    .unwrap_or(Err(PartitionError::Timeout))
            }
            AppendTicket::Local {
                rx,
                group,
                policy,
                link,
                again,
            } => (rx, group, policy, link, again),
        };
        let mut result = Groups::wait(rx, timeout).await?.0;
        // A producer that moved here: wait (within the request's time)
        // until the region it came from is held far enough, then propose
        // the same append again. Its settle point stays fixed, so this ends
        // however far behind that region's copies run.
        while let (
            CommandResult::ProducerRefused(Refusal::Settling { origin }),
            Some(cmd @ Command::AppendIdempotent { settled_at, .. }),
        ) = (&result, &again)
        {
            let g = link
                .groups
                .partition(group)
                .ok_or(PartitionError::LeaderNotAvailable)?;
            let mut progress = g.progress.clone();
            let reached = matches!(
                tokio::time::timeout_at(
                    deadline,
                    progress.wait_for(|p| {
                        crate::storage::state_machine::settled(&p.logs, *origin, *settled_at)
                    }),
                )
                .await,
                Ok(Ok(_))
            );
            if !reached {
                break;
            }
            let rx = Groups::submit(&g.raft, cmd.clone()).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            result = Groups::wait(rx, left).await?.0;
        }
        let (view_offset, end) = match result {
            CommandResult::Appended {
                base_offset,
                first_hlc,
                last_hlc,
                view_offset,
            } => (view_offset, base_offset + (last_hlc - first_hlc) + 1),
            // A retry: acknowledged as the original is. A copy of another
            // region's log is held by two regions already (that one and
            // this one).
            CommandResult::Duplicate {
                log,
                end_offset,
                view_offset,
                ..
            } => {
                link.metrics.idempotent_duplicates.inc();
                let own = link
                    .groups
                    .partition(group)
                    .map(|g| g.progress.borrow().own());
                if own != Some(log) {
                    return Ok(view_offset.map_or(-1, |o| o as i64));
                }
                (view_offset, end_offset)
            }
            CommandResult::ProducerRefused(r) => {
                link.metrics.idempotent_refusals.inc();
                tracing::debug!(group, refusal = ?r, "idempotent batch refused");
                return Err(PartitionError::Producer(r));
            }
            CommandResult::NotWriter => return Err(PartitionError::NotLeader(None)),
            CommandResult::Sealed => {
                return Err(PartitionError::Fenced(link.groups.region.clone()))
            }
            other => {
                return Err(PartitionError::Storage(format!(
                    "unexpected apply result {other:?}"
                )))
            }
        };
        let need = policy.remote_acks();
        if need > 0 {
            let mut acks = link.acks(group);
            let held =
                |a: &crate::link::RemoteAcks| a.values().filter(|h| h.next_offset >= end).count();
            let reached = tokio::time::timeout_at(deadline, async {
                loop {
                    if held(&acks.borrow_and_update()) >= need {
                        return true;
                    }
                    if acks.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await
            .unwrap_or(false);
            if !reached {
                link.metrics.sync_ack_timeouts.inc();
                return Err(PartitionError::NotEnoughReplicas(format!(
                    "committed in this region, but fewer than {need} other region(s) held it within {} ms; not acknowledged",
                    timeout.as_millis()
                )));
            }
        } else if let Some(bound) = policy.rpo_max_ms.filter(|_| policy.regions.len() > 1) {
            rpo_backpressure(&link, group, bound, deadline).await?;
        }
        Ok(view_offset.map_or(-1, |o| o as i64))
    }
}

/// Holds an `async` produce's ack while the oldest record of this region's
/// origin log that no other region holds is older than `bound_ms`.
async fn rpo_backpressure(
    link: &Link,
    group: GroupId,
    bound_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<(), PartitionError> {
    let Some(g) = link.groups.partition(group) else {
        return Ok(());
    };
    let mut acks = link.acks(group);
    let mut waited = false;
    loop {
        let own = g.progress.borrow().log;
        let best = acks
            .borrow_and_update()
            .values()
            .map(|h| h.next_offset)
            .max()
            .unwrap_or(0);
        let oldest = read::record_at(link.groups.db(), own, best)
            .ok()
            .flatten()
            .map(|(_, _, hlc)| hlc);
        let age = oldest.map_or(0, |hlc| {
            crate::hlc::wall_ms(link.groups.clock.now()) - crate::hlc::wall_ms(hlc)
        });
        if age <= bound_ms as i64 {
            if waited {
                link.metrics.rpo_waits.inc();
            }
            return Ok(());
        }
        waited = true;
        let tick = tokio::time::sleep(Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(PartitionError::NotEnoughReplicas(format!(
                    "the unreplicated window ({age} ms) exceeds meridian.rpo.max.ms ({bound_ms}) and did not shrink in time"
                )));
            }
            _ = acks.changed() => {}
            _ = tick => {}
        }
    }
}

/// Committed batches read for a fetch.
pub struct ReadResult {
    pub high_watermark: u64,
    /// Where the records that are due end (`meridian.delay.ms`): the high
    /// watermark unless the topic delays its records.
    pub due_end: u64,
    /// When (Unix ms) the record at `due_end` falls due, if one waits there.
    pub next_due_ms: Option<i64>,
    pub batches: Vec<bytes::Bytes>,
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

    /// Proposes a batch: to this region's partition leader, which must be
    /// this node, or, for a topic pinned to another home region, over the
    /// link to the home region. Proposals made by one caller commit in call
    /// order.
    pub async fn submit_append(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<RecordIn>,
        producer: Option<Producer>,
        timeout: Duration,
    ) -> Result<AppendTicket, PartitionError> {
        let (group, policy) = self.with_topic(topic, partition, |t, g| (g, self.policy(t)))?;
        if policy.accepts_writes_in(&self.me.region) {
            return self.propose(group, policy, records, producer).await;
        }
        let Some(home) = policy.writer_regions().into_iter().next() else {
            return Err(PartitionError::Refused(format!(
                "topic {topic} has no writer region"
            )));
        };
        let f = Forward {
            topic: topic.to_string(),
            partition,
            records,
            producer,
            timeout_ms: timeout.as_millis() as u64,
        };
        let link = self.link.clone();
        Ok(AppendTicket::Forwarded(Box::pin(async move {
            forward(link, home, group, f, timeout).await
        })))
    }

    /// Proposes a batch forwarded from another region to this region's
    /// partition leader, which must be this node.
    pub async fn submit_local(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<RecordIn>,
        producer: Option<Producer>,
    ) -> Result<AppendTicket, PartitionError> {
        let (group, policy) = self.with_topic(topic, partition, |t, g| (g, self.policy(t)))?;
        if matches!(policy.writers, crate::meta::Writers::Home(_))
            && !policy.accepts_writes_in(&self.me.region)
        {
            // Forwarded here while the home moved away: the sender retries
            // at the new home (retriable).
            return Err(PartitionError::NotLeader(None));
        }
        if !policy.accepts_writes_in(&self.me.region) {
            return Err(PartitionError::Refused(format!(
                "region {} does not accept writes for topic {topic} (meridian.writers = {:?})",
                self.me.region, policy.writers
            )));
        }
        self.propose(group, policy, records, producer).await
    }

    async fn propose(
        &self,
        group: GroupId,
        policy: Policy,
        records: Vec<RecordIn>,
        producer: Option<Producer>,
    ) -> Result<AppendTicket, PartitionError> {
        // Invariant 6: every write of this region goes through here.
        if !self.fence.may_write(&policy.regions) {
            self.metrics.fenced_produces.inc();
            return Err(PartitionError::Fenced(self.me.region.clone()));
        }
        let g = self.led_partition(group)?;
        // After a failover, this region writes again only once the
        // partition moved to the region's new epoch (failback).
        let epoch = self.groups.meta_state().epoch_of(&self.me.region);
        if g.progress.borrow().log.epoch < epoch {
            return Err(PartitionError::EpochPending {
                region: self.me.region.clone(),
                epoch,
            });
        }
        let count = records.len() as u32;
        let proposed_hlc = self.groups.clock.reserve(count as u64);
        let batch = batch::propose(proposed_hlc, &self.me.region, &records, producer);
        if batch.len() as u64 > self.entry_bytes_max {
            return Err(PartitionError::TooLarge {
                bytes: batch.len() as u64,
                max: self.entry_bytes_max,
            });
        }
        let cmd = match producer {
            None => Command::Append {
                proposed_hlc,
                count,
                batch,
            },
            // Another region's records with HLCs up to the drift margin
            // above this clock can still arrive (the link refuses any
            // further ahead): a producer that moved here waits for those.
            Some(_) => Command::AppendIdempotent {
                proposed_hlc,
                count,
                batch,
                settled_at: proposed_hlc + crate::hlc::span_ms(self.link.cfg.clock_drift_ms_max),
            },
        };
        let again = matches!(cmd, Command::AppendIdempotent { .. }).then(|| cmd.clone());
        let rx = Groups::submit(&g.raft, cmd).await?;
        Ok(AppendTicket::Local {
            rx,
            group,
            policy,
            link: self.link.clone(),
            again,
        })
    }

    /// The partition group `group`, which this node must lead.
    fn led_partition(&self, group: GroupId) -> Result<Arc<PartitionGroup>, PartitionError> {
        let g = self
            .groups
            .partition(group)
            .ok_or(PartitionError::LeaderNotAvailable)?;
        match g.leader() {
            // Handing leadership over (raft::balance): retriable.
            Some(l) if l == self.node_id() && g.releasing() => Err(PartitionError::NotLeader(None)),
            Some(l) if l == self.node_id() => Ok(g),
            None => Err(PartitionError::LeaderNotAvailable),
            other => Err(PartitionError::NotLeader(other)),
        }
    }

    /// Re-injects records of sealed log `from`, starting at its offset
    /// `offset`, as new records of this region's log (failback, invariant
    /// 7); they keep their original id and HLC in headers. Returns how far
    /// `from` is re-injected here now (the caller resumes there).
    pub async fn reinject(
        &self,
        group: GroupId,
        from: crate::ids::LogRef,
        offset: u64,
        records: Vec<RecordIn>,
        timeout: Duration,
    ) -> Result<u64, PartitionError> {
        let g = self.led_partition(group)?;
        let policy = {
            let meta = self.groups.meta_state();
            let t = meta
                .topics
                .values()
                .find(|t| t.name == g.topic)
                .ok_or(PartitionError::UnknownTopicOrPartition)?;
            self.policy(t)
        };
        if !self.fence.may_write(&policy.regions) {
            return Err(PartitionError::Fenced(self.me.region.clone()));
        }
        let count = records.len() as u32;
        let proposed_hlc = self.groups.clock.reserve(count as u64);
        let cmd = Command::Reinject {
            from,
            offset,
            proposed_hlc,
            count,
            batch: batch::propose(proposed_hlc, &self.me.region, &records, None),
        };
        let rx = Groups::submit(&g.raft, cmd).await?;
        match Groups::wait(rx, timeout).await?.0 {
            CommandResult::Reinjected { upto } => Ok(upto),
            // Waiting for another region's records (its retries); the
            // caller tries again.
            CommandResult::ProducerRefused(r) => Err(PartitionError::Producer(r)),
            CommandResult::Sealed => Err(PartitionError::Fenced(self.me.region.clone())),
            CommandResult::NotWriter => Err(PartitionError::NotLeader(None)),
            other => Err(PartitionError::Storage(format!(
                "unexpected re-injection result {other:?}"
            ))),
        }
    }

    /// Committed batches from `offset` that are due (a topic with
    /// `meridian.delay.ms` holds back records younger than the delay), at
    /// most about `max_bytes`.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult, PartitionError> {
        let (group, delay) = self.with_topic(topic, partition, |t, g| {
            (g, crate::meta::delay_ms(&t.configs))
        })?;
        let g = self
            .groups
            .partition(group)
            .ok_or(PartitionError::LeaderNotAvailable)?;
        let hw = g.progress.borrow().view_next;
        let (due_end, next_due_ms) = if delay == 0 {
            (hw, None)
        } else {
            let below = crate::meta::due_below(delay, self.groups.clock.wall_now_ms());
            match read::view_offset_for_hlc(self.groups.db(), g.id, below, hw)
                .map_err(|e| PartitionError::Storage(e.to_string()))?
            {
                Some((pos, hlc)) => (pos, Some(crate::hlc::wall_ms(hlc) + delay as i64)),
                None => (hw, None),
            }
        };
        let batches = read::view(
            self.groups.db(),
            g.id,
            offset.max(0) as u64,
            due_end,
            max_bytes,
        )
        .map_err(|e| PartitionError::Storage(e.to_string()))?;
        Ok(ReadResult {
            high_watermark: hw,
            due_end,
            next_due_ms,
            batches,
        })
    }

    /// Whether this node may answer a client's Fetch or ListOffsets for the
    /// partition: only its region's leader may, once it applied an entry of
    /// its own term. A follower's view, or a new leader's before that
    /// entry, can lag what the old leader showed a consumer, and an offset
    /// past it would look out of range and reset the consumer.
    pub fn check_readable(&self, topic: &str, partition: i32) -> Result<(), PartitionError> {
        let g = self.partition(topic, partition)?;
        let m = g.raft.metrics().borrow().clone();
        readable(
            self.node_id(),
            m.current_leader,
            m.current_term,
            m.last_applied.map(|l| l.leader_id.term),
        )
    }

    pub fn high_watermark(&self, topic: &str, partition: i32) -> Result<u64, PartitionError> {
        Ok(self
            .partition(topic, partition)?
            .progress
            .borrow()
            .view_next)
    }

    /// The high watermark and the records committed here that the view
    /// will take in (`Progress::view_pending`).
    pub fn view_extent(&self, topic: &str, partition: i32) -> Result<(u64, u64), PartitionError> {
        let g = self.partition(topic, partition)?;
        let p = g.progress.borrow();
        Ok((p.view_next, p.view_pending))
    }

    /// Offset and HLC of the first record whose timestamp is at or after `unix_ms`.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        unix_ms: i64,
    ) -> Result<Option<(u64, u64)>, PartitionError> {
        let g = self.partition(topic, partition)?;
        let view_next = g.progress.borrow().view_next;
        let hlc = crate::hlc::from_wall_ms(unix_ms);
        read::view_offset_for_hlc(self.groups.db(), g.id, hlc, view_next)
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
        let mut configs = configs;
        validate_create(name, partitions, &configs)?;
        validate_policy(&configs, &self.region_names())?;
        // The regions are fixed at creation: a later topology change must
        // not change which regions hold an existing topic.
        configs
            .entry(KEY_REGIONS.to_string())
            .or_insert_with(|| self.region_names().join(","));
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
        if name == crate::meta::OFFSETS_TOPIC {
            return Err(MetaError::InternalTopic(name.to_string()).into());
        }
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
        if let Some(v) = set.get(KEY_WRITERS) {
            if set.len() == 1 && delete.is_empty() {
                if let Some(to) = v.strip_prefix("home:") {
                    return self.move_home(name, to, timeout).await;
                }
            }
        }
        for k in set.keys().chain(delete.iter()) {
            if FIXED_AT_CREATION.contains(&k.as_str()) {
                return Err(MetaError::InvalidConfig {
                    key: k.clone(),
                    reason: "fixed at creation: changing it would renumber the topic's offsets; \
                             create a new topic instead"
                        .into(),
                }
                .into());
            }
        }
        for (k, v) in &set {
            validate_config(k, v)?;
        }
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let mut merged = t.configs.clone();
        for k in &delete {
            merged.remove(k);
        }
        merged.extend(set.clone());
        validate_policy(&merged, &self.region_names())?;
        let cmd = Command::AlterTopic {
            name: name.to_string(),
            set,
            delete,
        };
        self.meta(cmd, timeout).await
    }

    /// Moves pinned topic `name`'s home to region `to` (`control::home`):
    /// `meridian.writers=home:<to>` set alone. Both regions must hold
    /// their write leases: the old home seals its logs, the new one takes
    /// over once it has applied those seals.
    async fn move_home(&self, name: &str, to: &str, timeout: Duration) -> Result<(), TopicError> {
        let refused = |reason: String| MetaError::MoveRefused {
            topic: name.to_string(),
            reason,
        };
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let mut configs = t.configs.clone();
        configs.insert(KEY_WRITERS.to_string(), format!("home:{to}"));
        validate_policy(&configs, &self.region_names())?;
        let meta = self.groups.meta_state();
        meta.check_move(name, to).map_err(refused)?;
        let from = t.home().unwrap_or_default();
        if from == to {
            return Ok(());
        }
        let now = self.groups.clock.wall_now_ms();
        for r in [from, to] {
            if !crate::meta::lease::may_write(&meta.leases, r, now, 0) {
                return Err(refused(format!(
                    "region {r} holds no write lease now (cut off, or failing over); \
                     move the home once both regions are healthy"
                ))
                .into());
            }
        }
        tracing::info!(topic = name, from, to, "moving the topic's home");
        self.meta(
            Command::MoveHome {
                topic: name.to_string(),
                to: to.to_string(),
            },
            timeout,
        )
        .await
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

/// Sends a produce to the home region's partition leader, following its
/// leader hints, until `timeout`.
async fn forward(
    link: Arc<Link>,
    home: String,
    group: GroupId,
    f: Forward,
    timeout: Duration,
) -> Result<i64, PartitionError> {
    let payload = bincode::serialize(&f).expect("serialize forward");
    link.call_leader(&home, KIND_LINK_FORWARD, group, &payload, timeout)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_that_applied_its_own_term_serves_reads() {
        // Leader, caught up with its term.
        assert!(readable(1, Some(1), 5, Some(5)).is_ok());
        // A follower (or a stale leader): clients refresh metadata.
        assert!(matches!(
            readable(1, Some(2), 5, Some(5)),
            Err(PartitionError::NotLeader(Some(2)))
        ));
        // No leader yet.
        assert!(matches!(
            readable(1, None, 5, Some(4)),
            Err(PartitionError::LeaderNotAvailable)
        ));
        // A new leader whose first entry is not applied yet: its view may
        // lag what its predecessor showed; retriable.
        assert!(matches!(
            readable(1, Some(1), 6, Some(5)),
            Err(PartitionError::LeaderNotAvailable)
        ));
        assert!(matches!(
            readable(1, Some(1), 6, None),
            Err(PartitionError::LeaderNotAvailable)
        ));
    }
}
