//! Record batches: encoding them (plain or stamped by an idempotent
//! producer, with any codec), and Produce and Fetch on one connection.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use super::{ClientError, Connection, Consumed, V_FETCH, V_PRODUCE};

/// A record to write, with its headers.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// An idempotent producer's identity and the sequence of a batch's first
/// record in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub id: i64,
    pub epoch: i16,
    pub sequence: i32,
}

/// Encodes records with headers as one Kafka v2 batch, stamped with an
/// idempotent producer's id, epoch and first sequence when given.
pub fn encode_stamped(
    records: &[OutRecord],
    stamp: Option<ProducerStamp>,
    compression: Compression,
) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from)))
                .collect();
            let mut rec =
                crate::log::records::plain(0, i, now, r.key.clone(), r.value.clone(), headers);
            if let Some(s) = stamp {
                rec.producer_id = s.id;
                rec.producer_epoch = s.epoch;
                rec.sequence = s.sequence.wrapping_add(i as i32);
            }
            rec
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode record batch");
    buf.freeze()
}

/// Encodes records as one Kafka v2 batch, as a producer would.
pub fn encode_batch(records: &[(Option<Bytes>, Option<Bytes>)], compression: Compression) -> Bytes {
    let records: Vec<OutRecord> = records
        .iter()
        .map(|(key, value)| OutRecord {
            key: key.clone(),
            value: value.clone(),
            headers: Vec::new(),
        })
        .collect();
    encode_stamped(&records, None, compression)
}

pub async fn produce_on(
    c: &Connection,
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
) -> Result<i64, ClientError> {
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    if acks == 0 {
        c.send_only(ApiKey::Produce, V_PRODUCE, &req).await?;
        return Ok(-1);
    }
    let resp: ProduceResponse = c.call(ApiKey::Produce, V_PRODUCE, &req).await?;
    let p = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partition_responses)
        .next()
        .ok_or_else(|| ClientError::Protocol("empty produce response".into()))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(
            format!("produce to {topic}-{partition}"),
            p.error_code,
            p.error_message.as_ref(),
        ));
    }
    Ok(p.base_offset)
}

pub async fn fetch_on(
    c: &Connection,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> Result<(Vec<Consumed>, i64), ClientError> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(16 * 1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(4 * 1024 * 1024)])]);
    let resp: FetchResponse = c.call(ApiKey::Fetch, V_FETCH, &req).await?;
    let p = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .next()
        .ok_or_else(|| ClientError::Protocol("empty fetch response".into()))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(
            format!("fetch {topic}-{partition}@{offset}"),
            p.error_code,
            None,
        ));
    }
    let mut out = Vec::new();
    if let Some(mut bytes) = p.records {
        while bytes.has_remaining() {
            let set = RecordBatchDecoder::decode(&mut bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            for r in set.records {
                if r.offset < offset {
                    continue; // a batch starts before the requested offset
                }
                let mut origin = None;
                let mut hlc = None;
                let mut headers = Vec::new();
                for (k, v) in r.headers {
                    match k.as_str() {
                        "meridian.origin" => {
                            origin = v.map(|b| String::from_utf8_lossy(&b).into_owned())
                        }
                        "meridian.hlc" => {
                            hlc = v.and_then(|b| {
                                std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
                            })
                        }
                        _ => headers.push((k.to_string(), v.map(|b| b.to_vec()))),
                    }
                }
                out.push(Consumed {
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(|b| b.to_vec()),
                    value: r.value.map(|b| b.to_vec()),
                    origin,
                    hlc,
                    headers,
                });
            }
        }
    }
    Ok((out, p.high_watermark))
}
