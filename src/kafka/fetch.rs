//! Fetch: committed record batches from the requested offsets. A fetch that
//! finds fewer than `min_bytes` waits (long-poll) for new commits, up to
//! `max_wait_ms` (capped by `kafka.fetch_wait_ms_max`). In a topic with
//! `meridian.delay.ms` a fetch stops at the first record not yet due, and a
//! waiting fetch also wakes when that record falls due.
//!
//! A fetch offset past the high watermark is not out of range while the
//! records up to it are committed here but not yet in the view: another
//! region's view can be ahead of this one's by what its merge took in
//! first (a consumer group's commit made there, see docs/consumers.md).
//! Such a fetch waits, and answers no records until the view reaches it,
//! as a Kafka follower answers an offset between its and the leader's
//! high watermark.
//!
//! An offset below the partition's log start (retention, DeleteRecords)
//! is out of range: the consumer resets by its `auto.offset.reset`.
//!
//! Each read first holds its response's size bound from the listener's
//! byte budget (`kafka.in_flight_bytes_max`): the bytes the client allows
//! (`max_bytes`, and each partition's `partition_max_bytes`), never more
//! than `kafka.fetch_bytes_max`. A long-poll holds nothing while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use tokio::sync::watch;

use super::admission::{ByteBudget, Held};
use super::partition_error_code;
use crate::router::Router;
use crate::storage::state_machine::Progress;

/// What a decoded fetch request holds in memory: its frame, which its
/// strings and tagged fields still point into, and its topics' and
/// partitions' structs.
pub fn request_bytes(req: &FetchRequest, frame: usize) -> usize {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    let topics = req.topics.len().saturating_mul(size_of::<FetchTopic>());
    let partitions: usize = req.topics.iter().map(|t| t.partitions.len()).sum();
    let forgotten = req
        .forgotten_topics_data
        .len()
        .saturating_mul(size_of::<ForgottenTopic>());
    frame
        .saturating_add(topics)
        .saturating_add(partitions.saturating_mul(size_of::<FetchPartition>()))
        .saturating_add(forgotten)
}

/// Serves a fetch; the response comes with the budget it holds (its size
/// bound: fit it to the encoded size).
pub async fn handle(
    r: &Router,
    req: FetchRequest,
    budget: &Arc<ByteBudget>,
) -> (FetchResponse, Held) {
    let started = Instant::now();
    let wait =
        Duration::from_millis((req.max_wait_ms.max(0) as u64).min(r.kafka.fetch_wait_ms_max));
    let deadline = started + wait;
    let max_bytes = if req.max_bytes > 0 {
        (req.max_bytes as usize).min(r.kafka.fetch_bytes_max as usize)
    } else {
        r.kafka.fetch_bytes_max as usize
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let bound = size_bound(&req, max_bytes);
    // Receivers of every requested partition's progress, to wake on commits.
    let mut watches: Vec<watch::Receiver<Progress>> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.to_string(), p.partition))
        })
        .filter_map(|(t, p)| r.partition(&t, p).ok().map(|g| g.progress.clone()))
        .collect();
    loop {
        for w in watches.iter_mut() {
            w.borrow_and_update();
        }
        let held = budget.hold(bound).await;
        let (resp, bytes, errors, next_due_ms) = read_all(r, &req, max_bytes);
        let now = Instant::now();
        if bytes >= min_bytes || errors || now >= deadline || watches.is_empty() {
            r.metrics.fetch_requests.inc();
            r.metrics.fetch_bytes.inc_by(bytes as u64);
            r.metrics
                .fetch_latency
                .observe(started.elapsed().as_secs_f64());
            return (resp, held);
        }
        drop((resp, held));
        let changed =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        // On timeout the next pass answers with what there is; a delayed
        // record falling due is read by the pass after its due time.
        let mut until = deadline;
        if let Some(due) = next_due_ms {
            let wait_ms = due.saturating_sub(r.groups.clock.wall_now_ms()).max(1) as u64;
            until = until.min(now + Duration::from_millis(wait_ms));
        }
        let _ = tokio::time::timeout(until - now, changed).await;
    }
}

/// Encoded bytes a partition's answer takes besides its records, about.
const PARTITION_OVERHEAD: usize = 64;

/// The most a response to `req` can hold, about: the records the client
/// allows (at most `max_bytes`, and the sum of its partitions' own
/// limits) and each partition's fields. A read returns one batch even when
/// the limits are smaller, as Kafka does; the budget is fitted to the
/// encoded response afterwards.
pub fn size_bound(req: &FetchRequest, max_bytes: usize) -> usize {
    let partitions = req.topics.iter().flat_map(|t| &t.partitions);
    let allowed = partitions
        .clone()
        .map(|p| p.partition_max_bytes.max(0) as usize)
        .fold(0usize, usize::saturating_add);
    let fields = partitions
        .count()
        .saturating_add(req.topics.len())
        .saturating_mul(PARTITION_OVERHEAD);
    allowed.min(max_bytes).saturating_add(fields)
}

/// Where a fetch offset stands in a partition's view here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Below the high watermark: there are records to read.
    Read,
    /// At the high watermark, or past it by no more than the records
    /// committed here that the view has still to take in: nothing to read
    /// yet, and no error.
    Wait,
    /// Negative, below the log start, or past everything committed here.
    OutOfRange,
}

/// Classifies `offset` against the log start, the view's high watermark
/// `hw` and the records `pending` for it (`Progress::view_pending`).
pub fn position(offset: i64, start: u64, hw: u64, pending: u64) -> Position {
    let Ok(offset) = u64::try_from(offset) else {
        return Position::OutOfRange;
    };
    if offset < start {
        Position::OutOfRange
    } else if offset < hw {
        Position::Read
    } else if offset - hw <= pending {
        Position::Wait
    } else {
        Position::OutOfRange
    }
}

/// Reads every requested partition once: the response, its record bytes,
/// whether any partition answered with an error, and when the earliest
/// record held back by a delay falls due (Unix ms).
fn read_all(
    r: &Router,
    req: &FetchRequest,
    max_bytes: usize,
) -> (FetchResponse, usize, bool, Option<i64>) {
    let mut total = 0usize;
    let mut errors = false;
    let mut next_due: Option<i64> = None;
    let mut responses = Vec::new();
    for t in &req.topics {
        let topic = t.topic.0.to_string();
        let mut partitions = Vec::new();
        for p in &t.partitions {
            let left = max_bytes.saturating_sub(total);
            let part_max = (p.partition_max_bytes.max(0) as usize).min(left);
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(Some(vec![]))
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(Default::default()));
            let (start, hw, pending) = match r
                .check_readable(&topic, p.partition)
                .and_then(|()| r.view_extent(&topic, p.partition))
            {
                Ok((start, hw, pending)) => (start, hw as i64, pending),
                Err(e) => {
                    data.error_code = partition_error_code(&e);
                    errors = true;
                    partitions.push(data);
                    continue;
                }
            };
            data.high_watermark = hw;
            data.last_stable_offset = hw;
            data.log_start_offset = start as i64;
            let position = position(p.fetch_offset, start, hw as u64, pending);
            if position == Position::OutOfRange {
                data.error_code = ResponseError::OffsetOutOfRange.code();
                errors = true;
            } else if position == Position::Read && (part_max > 0 || total == 0) {
                match r.read(&topic, p.partition, p.fetch_offset, part_max.max(1)) {
                    Ok(res) => {
                        if let Some(due) = res.next_due_ms {
                            next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        }
                        let mut buf =
                            BytesMut::with_capacity(res.batches.iter().map(|b| b.len()).sum());
                        for b in &res.batches {
                            buf.extend_from_slice(b);
                        }
                        total += buf.len();
                        data.records = Some(buf.freeze());
                    }
                    Err(e) => {
                        data.error_code = partition_error_code(&e);
                        errors = true;
                    }
                }
            }
            partitions.push(data);
        }
        responses.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions),
        );
    }
    (
        FetchResponse::default().with_responses(responses),
        total,
        errors,
        next_due,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(partition_max: &[i32]) -> FetchRequest {
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        let partitions = partition_max
            .iter()
            .map(|&m| FetchPartition::default().with_partition_max_bytes(m))
            .collect();
        FetchRequest::default().with_topics(vec![FetchTopic::default().with_partitions(partitions)])
    }

    #[test]
    fn the_size_bound_is_what_the_client_allows_within_the_cap() {
        let fields = |n: usize| (n + 1) * PARTITION_OVERHEAD;
        // librdkafka's defaults: 1 MiB a partition, 50 MiB in all.
        assert_eq!(
            size_bound(&request(&[1 << 20; 3]), 50 << 20),
            (3 << 20) + fields(3)
        );
        assert_eq!(
            size_bound(&request(&[1 << 20; 80]), 50 << 20),
            (50 << 20) + fields(80)
        );
        assert_eq!(size_bound(&request(&[-1, 0]), 50 << 20), fields(2));
        assert_eq!(
            size_bound(&request(&[i32::MAX; 4]), 8 << 20),
            (8 << 20) + fields(4)
        );
        assert_eq!(size_bound(&FetchRequest::default(), 1 << 20), 0);
    }

    #[test]
    fn an_offset_is_out_of_range_only_past_what_is_committed_here() {
        assert_eq!(position(-1, 0, 10, 5), Position::OutOfRange);
        assert_eq!(position(i64::MIN, 0, 0, 0), Position::OutOfRange);
        assert_eq!(position(0, 0, 10, 0), Position::Read);
        assert_eq!(position(9, 0, 10, 0), Position::Read);
        assert_eq!(position(10, 0, 10, 0), Position::Wait);
        assert_eq!(position(11, 0, 10, 0), Position::OutOfRange);
        assert_eq!(position(15, 0, 10, 5), Position::Wait);
        assert_eq!(position(16, 0, 10, 5), Position::OutOfRange);
        assert_eq!(position(i64::MAX, 0, u64::MAX, 0), Position::Read);
        assert_eq!(position(i64::MAX, 0, 0, u64::MAX), Position::Wait);
        // Below the log start (retention, DeleteRecords): the consumer
        // resets, as Kafka's do.
        assert_eq!(position(3, 4, 10, 0), Position::OutOfRange);
        assert_eq!(position(4, 4, 10, 0), Position::Read);
        assert_eq!(
            position(10, 10, 10, 0),
            Position::Wait,
            "everything removed"
        );
    }
}
