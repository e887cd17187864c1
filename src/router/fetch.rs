//! Reads: who may serve them (the leader, once it applied its own term),
//! the global view for a fetch (with `meridian.delay.ms`), high watermarks
//! and offsets by time.

use super::Router;
use crate::command::PartitionError;
use crate::ids::NodeId;
use crate::storage::read;

impl Router {
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

    /// The log start, the high watermark, and the records committed here
    /// that the view will take in (`Progress::view_pending`).
    pub fn view_extent(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(u64, u64, u64), PartitionError> {
        let g = self.partition(topic, partition)?;
        let p = g.progress.borrow();
        let start = log_start(
            p.log_start,
            self.groups.meta_state().log_start_of(g.id),
            p.view_next,
        );
        Ok((start, p.view_next, p.view_pending))
    }

    /// The partition's log start here: the first offset a consumer can
    /// fetch.
    pub fn log_start(&self, topic: &str, partition: i32) -> Result<u64, PartitionError> {
        Ok(self.view_extent(topic, partition)?.0)
    }

    /// Offset and HLC of the first record from the log start on whose
    /// timestamp is at or after `unix_ms`.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: i32,
        unix_ms: i64,
    ) -> Result<Option<(u64, u64)>, PartitionError> {
        let (start, view_next, _) = self.view_extent(topic, partition)?;
        if start >= view_next {
            return Ok(None); // nothing left to find
        }
        let g = self.partition(topic, partition)?;
        let db = self.groups.db();
        let storage = |e: crate::storage::DbError| PartitionError::Storage(e.to_string());
        // The view is sorted by HLC: what lies from the start on is at or
        // after the start's HLC.
        let from = read::view_hlc_at(db, g.id, start)
            .map_err(storage)?
            .unwrap_or(0);
        let hlc = crate::hlc::from_wall_ms(unix_ms).max(from);
        Ok(read::view_offset_for_hlc(db, g.id, hlc, view_next)
            .map_err(storage)?
            .map(|(pos, hlc)| (pos.max(start), hlc)))
    }
}

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

/// The log start readers see: where this region's group trimmed to, or
/// the start DeleteRecords asked for (`asked`, from the metadata group) as
/// soon as that is known here, up to the high watermark. The group trims
/// there at its leader's next retention check.
pub fn log_start(trimmed: u64, asked: u64, view_next: u64) -> u64 {
    trimmed.max(asked.min(view_next))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_records_hide_at_once_up_to_the_high_watermark() {
        assert_eq!(log_start(0, 0, 10), 0);
        assert_eq!(log_start(4, 0, 10), 4);
        assert_eq!(log_start(4, 7, 10), 7);
        assert_eq!(log_start(4, 70, 10), 10, "not merged here yet");
        assert_eq!(log_start(8, 7, 10), 8);
    }

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
