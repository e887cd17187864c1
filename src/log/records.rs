//! Kafka records as Meridian writes them: neither transactional nor
//! idempotent, timestamps of type CreateTime.

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};

/// Record `i` of a batch starting at `base_offset`. The sequence follows the
/// offset (base sequence -1): kafka-protocol's encoder keeps records in one
/// batch only while `offset - sequence` stays the same.
pub fn plain(
    base_offset: i64,
    i: usize,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: IndexMap<StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: base_offset + i as i64,
        sequence: i as i32 - 1,
        timestamp,
        key,
        value,
        headers,
    }
}
