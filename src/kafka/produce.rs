//! Produce: decode each partition's record batches (any codec a client uses
//! by default: gzip, snappy, lz4, zstd), propose them in arrival order, and
//! answer once they are committed on a Raft majority with fsync (invariant 1).
//!
//! `acks = 1` is answered like `acks = all`: Raft has no weaker commit, and a
//! stronger guarantee than asked is safe. `acks = 0` gets no response.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::records::{Record, RecordBatchDecoder};

use super::{partition_error_code, text};
use crate::raft::types::RecordIn;
use crate::router::{AppendTicket, PartitionError, Router};
use crate::storage::producers::{seq_add, Producer};

/// Why a partition's batch was refused before it reached Raft.
enum Refused {
    Partition(PartitionError),
    Code(i16, String),
}

/// A partition's records, and the idempotent producer that sent them.
type Decoded = (Vec<RecordIn>, Option<Producer>);

fn decode(records: Option<Bytes>, max: usize) -> Result<Decoded, Refused> {
    let Some(mut bytes) = records else {
        return Err(Refused::Code(
            ResponseError::CorruptMessage.code(),
            "no records".into(),
        ));
    };
    if bytes.len() > max {
        return Err(Refused::Code(
            ResponseError::MessageTooLarge.code(),
            format!(
                "batch of {} bytes exceeds kafka.batch_bytes_max ({max})",
                bytes.len()
            ),
        ));
    }
    let sets = RecordBatchDecoder::decode_all(&mut bytes)
        .map_err(|e| Refused::Code(ResponseError::CorruptMessage.code(), e.to_string()))?;
    let kafka: Vec<Record> = sets
        .into_iter()
        .flat_map(|s| s.records)
        .filter(|r| !r.control)
        .collect();
    let producer = producer_of(&kafka)?;
    let records: Vec<RecordIn> = kafka.into_iter().map(RecordIn::from_kafka).collect();
    if records.is_empty() {
        return Err(Refused::Code(
            ResponseError::InvalidRecord.code(),
            "batch holds no records".into(),
        ));
    }
    Ok((records, producer))
}

/// The idempotent producer of a partition's records: every record must
/// carry the same producer id and epoch and consecutive sequence numbers
/// (a client sends one batch per partition). Transactions are refused.
fn producer_of(records: &[Record]) -> Result<Option<Producer>, Refused> {
    let invalid = |m: String| Refused::Code(ResponseError::InvalidRecord.code(), m);
    if records.iter().any(|r| r.transactional) {
        return Err(invalid(
            "transactional batches are not supported by Meridian (idempotent producers are)".into(),
        ));
    }
    let Some(first) = records.first().filter(|r| r.producer_id >= 0) else {
        return Ok(None);
    };
    let p = Producer {
        id: first.producer_id,
        epoch: first.producer_epoch,
        base_sequence: first.sequence,
    };
    if p.epoch < 0 || p.base_sequence < 0 {
        return Err(invalid(format!(
            "producer id {} with epoch {} and sequence {}: an idempotent batch needs both",
            p.id, p.epoch, p.base_sequence
        )));
    }
    for (i, r) in records.iter().enumerate() {
        if r.producer_id != p.id
            || r.producer_epoch != p.epoch
            || r.sequence != seq_add(p.base_sequence, i as i64)
        {
            return Err(invalid(format!(
                "record {i} does not continue producer {}'s batch (producer {}, epoch {}, sequence {})",
                p.id, r.producer_id, r.producer_epoch, r.sequence
            )));
        }
    }
    Ok(Some(p))
}

struct Part {
    topic: String,
    index: i32,
    bytes: u64,
    records: u64,
    ticket: Result<AppendTicket, Refused>,
}

/// Proposes every partition's batch now; the returned future waits for the
/// commits and builds the response (`None` for `acks = 0`).
pub async fn submit(
    r: &Arc<Router>,
    req: ProduceRequest,
) -> BoxFuture<'static, Option<ProduceResponse>> {
    let started = Instant::now();
    let max_ms = r.kafka.produce_timeout_ms_max;
    let timeout = Duration::from_millis(if req.timeout_ms > 0 {
        (req.timeout_ms as u64).min(max_ms)
    } else {
        max_ms
    });
    let mut parts = Vec::new();
    for t in req.topic_data {
        let topic = t.name.0.to_string();
        for p in t.partition_data {
            let bytes = p.records.as_ref().map_or(0, |b| b.len() as u64);
            let (ticket, records) = match decode(p.records, r.kafka.batch_bytes_max as usize) {
                Ok((recs, producer)) => {
                    let n = recs.len() as u64;
                    let t = r
                        .submit_append(&topic, p.index, recs, producer, timeout)
                        .await
                        .map_err(Refused::Partition);
                    (t, n)
                }
                Err(e) => (Err(e), 0),
            };
            parts.push(Part {
                topic: topic.clone(),
                index: p.index,
                bytes,
                records,
                ticket,
            });
        }
    }
    let acks = req.acks;
    let r = r.clone();
    Box::pin(async move {
        let waits = parts.into_iter().map(|p| {
            let r = r.clone();
            async move {
                let result = match p.ticket {
                    Ok(t) => t.wait(timeout).await.map_err(Refused::Partition),
                    Err(e) => Err(e),
                };
                r.metrics.produce_requests.inc();
                let resp = match result {
                    Ok(base) => {
                        r.metrics.produce_records.inc_by(p.records);
                        r.metrics.produce_bytes.inc_by(p.bytes);
                        r.metrics
                            .produce_latency
                            .observe(started.elapsed().as_secs_f64());
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_base_offset(base)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(0)
                    }
                    Err(e) => {
                        r.metrics.produce_errors.inc();
                        let (code, msg) = match e {
                            Refused::Partition(e) => (partition_error_code(&e), e.to_string()),
                            Refused::Code(c, m) => (c, m),
                        };
                        PartitionProduceResponse::default()
                            .with_index(p.index)
                            .with_error_code(code)
                            .with_base_offset(-1)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(-1)
                            .with_error_message(Some(text(msg)))
                    }
                };
                (p.topic, resp)
            }
        });
        let results = futures::future::join_all(waits).await;
        if acks == 0 {
            return None;
        }
        let mut by_topic: BTreeMap<String, Vec<PartitionProduceResponse>> = BTreeMap::new();
        for (topic, resp) in results {
            by_topic.entry(topic).or_default().push(resp);
        }
        Some(
            ProduceResponse::default().with_responses(
                by_topic
                    .into_iter()
                    .map(|(name, partition_responses)| {
                        TopicProduceResponse::default()
                            .with_name(TopicName(text(name)))
                            .with_partition_responses(partition_responses)
                    })
                    .collect(),
            ),
        )
    })
}
