//! Offsets and moves: committing what was handled, and moving a rejected
//! record to the next topic of its chain exactly once (marker, idempotent
//! write, commit past it).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use tracing::{debug, info};

use super::chain::{self, MoveMarker, Position};
use crate::client::{encode_stamped, ClientError, OutRecord};
use crate::group::state::code;

use super::{
    coordinator_moved, rebalancing, text, ConsumerError, Delivery, GroupConsumer, COMMIT_TRIES_MAX,
    DUPLICATE_SEQUENCE_NUMBER, V_OFFSET_COMMIT,
};

impl GroupConsumer {
    /// Commits `offset` (the next to read) of a partition, with `metadata`.
    pub(super) async fn commit(
        &self,
        partition: i32,
        topic: &str,
        offset: i64,
        metadata: &str,
    ) -> Result<(), ConsumerError> {
        let s = self.standing.lock().await.clone();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_generation_id_or_member_epoch(s.generation)
            .with_member_id(text(&s.member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(text(metadata)))])]);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match self.coordinator().await {
                Ok(c) => c
                    .call::<_, OffsetCommitResponse>(ApiKey::OffsetCommit, V_OFFSET_COMMIT, &req)
                    .await
                    .map_err(ConsumerError::from),
                Err(e) => Err(e),
            };
            let c = match r {
                Ok(resp) => resp
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0),
                // No answer: the same commit again is harmless.
                Err(ConsumerError::Client(e)) if e.is_retriable() && attempt < COMMIT_TRIES_MAX => {
                    debug!(error = %e, attempt, "commit: trying again");
                    self.forget_coordinator().await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Err(e),
            };
            return match c {
                0 => Ok(()),
                c if rebalancing(c) => {
                    self.rejoin.store(true, Ordering::SeqCst);
                    Err(ConsumerError::Rebalanced)
                }
                c if coordinator_moved(c) => {
                    self.forget_coordinator().await;
                    self.rejoin.store(true, Ordering::SeqCst);
                    Err(ConsumerError::Rebalanced)
                }
                // Not replicated in time: the commit is retried as is.
                code::REQUEST_TIMED_OUT | code::NOT_ENOUGH_REPLICAS
                    if attempt < COMMIT_TRIES_MAX =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                c => Err(self.refused("OffsetCommit", c)),
            };
        }
    }

    /// Writes `record` to `topic`/`partition` with this member's idempotent
    /// producer: a retried write is stored once.
    pub(super) async fn write_once(
        &mut self,
        topic: &str,
        partition: i32,
        record: OutRecord,
    ) -> Result<(), ConsumerError> {
        let (id, epoch) = match self.producer {
            Some(p) => p,
            None => {
                let p = self.client.init_producer_id().await?;
                self.producer = Some(p);
                self.sequences.clear();
                p
            }
        };
        let key = (topic.to_string(), partition);
        let sequence = *self.sequences.get(&key).unwrap_or(&0);
        let batch = encode_stamped(
            &[record],
            Some(crate::client::ProducerStamp {
                id,
                epoch,
                sequence,
            }),
            kafka_protocol::records::Compression::None,
        );
        match self.client.produce(topic, partition, batch).await {
            Ok(_) => {}
            Err(ClientError::Kafka { code, .. }) if code == DUPLICATE_SEQUENCE_NUMBER => {}
            Err(e) => {
                // Whether it was stored is unknown: a fresh producer id, and
                // the marker decides after a restart.
                self.producer = None;
                return Err(e.into());
            }
        }
        self.sequences
            .insert(key, sequence.wrapping_add(1) & i32::MAX);
        Ok(())
    }

    /// Moves a rejected record to the next topic of its chain.
    pub(super) async fn move_on(
        &mut self,
        d: &Delivery,
        reason: &str,
    ) -> Result<(), ConsumerError> {
        let from = d.position();
        let next = self
            .next
            .get(&d.topic)
            .cloned()
            .ok_or_else(|| ConsumerError::NoChain(from.clone()))?;
        let partitions = match self.partitions.get(&next) {
            Some(n) => *n,
            None => self.client.topic(&next, false).await?.leaders.len() as i32,
        };
        let q = chain::target_partition(from.partition, partitions);
        let (end, _) = self.client.list_offset(&next, q, -1).await?;
        let marker = MoveMarker {
            offset: from.offset,
            next: next.clone(),
            partition: q,
            end,
        };
        self.commit(from.partition, &from.topic, from.offset, &marker.encode())
            .await?;
        let record = OutRecord {
            key: d.record.key.clone().map(Bytes::from),
            value: d.record.value.clone().map(Bytes::from),
            headers: chain::moved_headers(&d.record.headers, &from, d.attempt, reason),
        };
        self.write_once(&next, q, record).await?;
        self.commit(from.partition, &from.topic, from.offset + 1, "")
            .await?;
        if self.next.contains_key(&next) {
            self.stats.retried += 1;
        } else {
            self.stats.dead += 1;
        }
        info!(record = %from, attempt = d.attempt, to = %next, reason, "rejected; moved on");
        Ok(())
    }

    /// After a crash between a move's marker and its commit: was the record
    /// at `from` written to the next topic? If so, commit past it.
    pub(super) async fn finish_move(
        &self,
        from: &Position,
        m: &MoveMarker,
    ) -> Result<bool, ConsumerError> {
        let (end, _) = self.client.list_offset(&m.next, m.partition, -1).await?;
        let mut at = m.end.max(0);
        info!(record = %from, next = %m.next, partition = m.partition, from = at, to = end, "checking a move left half done");
        // Records of a delayed topic arrive as they fall due; the scan ends
        // when it reached the end the partition had when it began.
        while at < end {
            let (records, _) = self
                .client
                .fetch(&m.next, m.partition, at, self.settings.fetch_wait_ms)
                .await?;
            for r in records {
                at = r.offset + 1;
                if chain::from_of(&r.headers).as_ref() == Some(from) {
                    self.commit(from.partition, &from.topic, from.offset + 1, "")
                        .await?;
                    info!(record = %from, "the move was made; going on past it");
                    return Ok(true);
                }
            }
        }
        info!(record = %from, "the move was not made; delivering the record again");
        Ok(false)
    }
}
