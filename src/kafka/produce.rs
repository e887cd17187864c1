//! Produce: decode each partition's record batches (any codec a client uses
//! by default: gzip, snappy, lz4, zstd), propose them in arrival order, and
//! answer once they are committed on a Raft majority with fsync (invariant 1).
//!
//! `acks = 1` is answered like `acks = all`: Raft has no weaker commit, and a
//! stronger guarantee than asked is safe. `acks = 0` gets no response.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::records::{Record, RecordBatchDecoder};

use super::admission::{ByteBudget, Held};
use super::decompress::{Budget, DecompressError, RequestBudget};
use super::{partition_error_code, text};
use crate::command::PartitionError;
use crate::log::batch::broker_reserved_header;
use crate::log::producers::{seq_add, Producer};
use crate::log::RecordIn;
use crate::router::{AppendTicket, Router};

/// Why a partition's batch was refused before it reached Raft.
enum Refused {
    Partition(PartitionError),
    Code(i16, String),
}

/// A partition's records, and the idempotent producer that sent them.
type Decoded = (Vec<RecordIn>, Option<Producer>);

fn decode(
    records: Option<Bytes>,
    max: usize,
    uncompressed_max: usize,
    request: Arc<RequestBudget>,
) -> Result<Decoded, Refused> {
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
    let budget = Budget::new(uncompressed_max, request);
    let decompress =
        |data: &mut Bytes, codec| -> anyhow::Result<Bytes> { Ok(budget.decompress(data, codec)?) };
    let mut kafka: Vec<Record> = Vec::new();
    while bytes.has_remaining() {
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(decompress))
            .map_err(|e| match e.downcast_ref::<DecompressError>() {
                Some(
                    e
                    @ (DecompressError::TooLarge { .. } | DecompressError::RequestTooLarge { .. }),
                ) => Refused::Code(ResponseError::MessageTooLarge.code(), e.to_string()),
                _ => Refused::Code(ResponseError::CorruptMessage.code(), format!("{e:#}")),
            })?;
        kafka.extend(set.records.into_iter().filter(|r| !r.control));
    }
    let producer = producer_of(&kafka)?;
    let records: Vec<RecordIn> = kafka
        .into_iter()
        .map(|r| {
            let mut r = RecordIn::from_kafka(r);
            r.headers.retain(|(k, _)| !broker_reserved_header(k));
            r
        })
        .collect();
    if records.is_empty() {
        return Err(Refused::Code(
            ResponseError::InvalidRecord.code(),
            "batch holds no records".into(),
        ));
    }
    Ok((records, producer))
}

/// Batches up to this size, uncompressed, are decoded on the async worker
/// that received them; anything larger or compressed goes to the blocking
/// pool, at most `kafka.decode_concurrency_max` at once, so that a burst of
/// bombs cannot stall heartbeats and lease renewals.
const INLINE_DECODE_BYTES_MAX: usize = 64 * 1024;

/// Offset of a v2 record batch's attributes (whose low 3 bits name the codec).
const ATTRIBUTES_OFFSET: usize = 21;
/// Offset of a record batch's length (of what follows it).
const LENGTH_OFFSET: usize = 8;

/// Whether any batch in `records` is compressed, or cannot be told (a
/// header cut short): walks the batch headers without decoding them.
fn compressed(records: &[u8]) -> bool {
    let mut at = 0usize;
    while at < records.len() {
        let (Some(len), Some(attributes_low)) = (
            records.get(at + LENGTH_OFFSET..at + LENGTH_OFFSET + 4),
            records.get(at + ATTRIBUTES_OFFSET + 1),
        ) else {
            return true;
        };
        if attributes_low & 0x07 != 0 {
            return true;
        }
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        at = at.saturating_add(LENGTH_OFFSET + 4).saturating_add(len);
    }
    false
}

async fn decode_bounded(
    r: &Router,
    records: Option<Bytes>,
    request: &Arc<RequestBudget>,
) -> Result<Decoded, Refused> {
    let max = r.kafka.batch_bytes_max as usize;
    let uncompressed_max = r.kafka.batch_uncompressed_bytes_max as usize;
    let request = request.clone();
    let heavy = records
        .as_ref()
        .is_some_and(|b| b.len() > INLINE_DECODE_BYTES_MAX || compressed(b));
    if !heavy {
        return decode(records, max, uncompressed_max, request);
    }
    let shutting_down = || {
        Refused::Code(
            ResponseError::UnknownServerError.code(),
            "the node is shutting down".into(),
        )
    };
    let _permit = match r.decode_permits.try_acquire() {
        Ok(p) => p,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            r.metrics.kafka_decode_waits.inc();
            r.decode_permits
                .acquire()
                .await
                .map_err(|_| shutting_down())?
        }
        Err(tokio::sync::TryAcquireError::Closed) => return Err(shutting_down()),
    };
    tokio::task::spawn_blocking(move || decode(records, max, uncompressed_max, request))
        .await
        .unwrap_or_else(|e| {
            Err(Refused::Code(
                ResponseError::UnknownServerError.code(),
                format!("decoding the batch failed: {e}"),
            ))
        })
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

/// What a decoded record takes besides its key, value and headers' bytes.
const RECORD_BYTES: usize = std::mem::size_of::<RecordIn>();

struct Part {
    topic: String,
    index: i32,
    bytes: u64,
    records: u64,
    ticket: Result<AppendTicket, Refused>,
}

/// Proposes every partition's batch now; the returned future waits for the
/// commits and builds the response (`None` for `acks = 0`). `held` holds
/// the request's frame of the listener's budget; before each
/// partition's records are proposed it takes what the batches decompressed
/// to as well, with the decoded records' own size, waiting for them if
/// they are not free, and holds it until the response is built.
pub async fn submit(
    r: &Arc<Router>,
    req: ProduceRequest,
    budget: &Arc<ByteBudget>,
    held: &mut Held,
) -> BoxFuture<'static, Option<ProduceResponse>> {
    let started = Instant::now();
    let max_ms = r.kafka.produce_timeout_ms_max;
    let timeout = Duration::from_millis(if req.timeout_ms > 0 {
        (req.timeout_ms as u64).min(max_ms)
    } else {
        max_ms
    });
    let mut parts = Vec::new();
    // All partitions of the request together decompress to at most
    // kafka.request_bytes_max.
    let request = RequestBudget::new(r.kafka.request_bytes_max as usize);
    let frame_bytes = held.bytes();
    let mut decoded_records = 0usize;
    for t in req.topic_data {
        let topic = t.name.0.to_string();
        for p in t.partition_data {
            let bytes = p.records.as_ref().map_or(0, |b| b.len() as u64);
            let (ticket, records) = match decode_bounded(r, p.records, &request).await {
                Ok((recs, producer)) => {
                    let n = recs.len() as u64;
                    decoded_records += recs.len();
                    let decoded = request
                        .used()
                        .saturating_add(decoded_records.saturating_mul(RECORD_BYTES));
                    // When they are not free, the produce gives back what
                    // it holds and waits in line for all of it (the budget
                    // never waits while holding): the connection reads
                    // nothing meanwhile, so at most this one request per
                    // connection is in memory and not counted.
                    budget.fit(held, frame_bytes.saturating_add(decoded)).await;
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
                            .with_log_start_offset(
                                r.log_start(&p.topic, p.index).map_or(-1, |s| s as i64),
                            )
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

    use super::*;

    fn batch(compression: Compression, value: &[u8], headers: &[(&str, &str)]) -> Bytes {
        let mut h = IndexMap::new();
        for (k, v) in headers {
            h.insert(
                StrBytes::from_string(k.to_string()),
                Some(Bytes::copy_from_slice(v.as_bytes())),
            );
        }
        let record =
            crate::log::records::plain(0, 0, 0, None, Some(Bytes::copy_from_slice(value)), h);
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, [&record], &opts).unwrap();
        buf.freeze()
    }

    fn code(r: Result<Decoded, Refused>) -> i16 {
        match r {
            Err(Refused::Code(c, _)) => c,
            Err(Refused::Partition(e)) => panic!("{e}"),
            Ok(_) => 0,
        }
    }

    #[test]
    fn broker_headers_are_stripped_and_others_kept() {
        let b = batch(
            Compression::None,
            b"v",
            &[
                ("app", "1"),
                ("meridian.reinjected.from", "us-east/0/7"),
                ("meridian.hlc", "1"),
                ("meridian.retry.attempt", "2"),
            ],
        );
        let (records, _) = decode(Some(b), 1 << 20, 1 << 20, RequestBudget::new(usize::MAX))
            .unwrap_or_else(|_| panic!());
        let names: Vec<&str> = records[0].headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["app", "meridian.retry.attempt"]);
    }

    #[test]
    fn a_batch_that_decompresses_past_the_limit_is_message_too_large() {
        let zeros = vec![0u8; 2 << 20];
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(c, &zeros, &[]);
            assert!(b.len() < 1 << 20, "{c:?} compresses zeros");
            assert_eq!(
                code(decode(
                    Some(b.clone()),
                    1 << 20,
                    1 << 20,
                    RequestBudget::new(usize::MAX)
                )),
                ResponseError::MessageTooLarge.code(),
                "{c:?}"
            );
            // Under a limit that holds it, the same batch is accepted.
            assert_eq!(
                code(decode(
                    Some(b),
                    1 << 20,
                    4 << 20,
                    RequestBudget::new(usize::MAX)
                )),
                0,
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_compressed_batch_behind_a_plain_one_is_seen() {
        let plain = batch(Compression::None, b"v", &[]);
        let zstd = batch(Compression::Zstd, b"v", &[]);
        assert!(!compressed(&plain));
        assert!(compressed(&[&plain[..], &zstd[..]].concat()));
        assert!(
            compressed(&plain[..20]),
            "a cut header counts as compressed"
        );
    }

    #[test]
    fn the_compressed_limit_still_applies_first() {
        let b = batch(Compression::None, &[1u8; 2000], &[]);
        assert_eq!(
            code(decode(
                Some(b),
                1000,
                1 << 20,
                RequestBudget::new(usize::MAX)
            )),
            ResponseError::MessageTooLarge.code()
        );
    }
}
