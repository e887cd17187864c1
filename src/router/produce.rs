//! Writes: a produce goes to the local partition leader, or is forwarded
//! to a pinned topic's home region; a returning region's records are
//! re-injected at failback.

use std::sync::Arc;
use std::time::Duration;

use super::{AppendTicket, Router};
use crate::command::{Command, CommandResult, PartitionError};
use crate::ids::GroupId;
use crate::link::{Forward, Link, KIND_LINK_FORWARD};
use crate::log::batch;
use crate::log::producers::Producer;
use crate::log::RecordIn;
use crate::meta::Policy;
use crate::raft::{Groups, PartitionGroup};

impl Router {
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
        // Only a leader refuses for its disk: another node answers
        // NOT_LEADER above, and the client goes to the leader.
        self.disk
            .may_write()
            .map_err(|b| PartitionError::DiskFull {
                free: b.free,
                reserve: b.reserve,
            })?;
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
