//! A committed batch as stored in the `records` column family: a small fixed
//! header, then the records already encoded as a Kafka v2 record batch with
//! their final offsets, HLC timestamps and `meridian.*` headers. A fetch
//! copies these bytes and never re-encodes.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use super::producers::{seq_add, Producer};
use crate::hlc;
use crate::log::records;
use crate::log::RecordIn;

const FORMAT: u8 = 1;
pub const HEADER_LEN: usize = 1 + 8 + 4 + 8;

pub const HEADER_ORIGIN: &str = "meridian.origin";
pub const HEADER_HLC: &str = "meridian.hlc";
/// On a record re-injected at failback: its original record id,
/// `region/epoch/offset` (invariant 7).
pub const HEADER_REINJECTED_FROM: &str = "meridian.reinjected.from";
/// On a record re-injected at failback: its original HLC.
pub const HEADER_REINJECTED_HLC: &str = "meridian.reinjected.hlc";
/// On a record re-injected at failback that an idempotent producer sent:
/// `id/epoch/sequence`, so that a retry stored meanwhile elsewhere is not
/// stored again.
pub const HEADER_REINJECTED_PRODUCER: &str = "meridian.reinjected.producer";

/// Headers the broker writes and trusts (the ones above, and any it adds
/// later under `meridian.`). A produced record's headers by these names
/// are dropped before it is stored: a forged `meridian.reinjected.*` would
/// make failback skip a record, a forged `meridian.hlc` would lie to
/// readers. `meridian.retry.*` is kept: Meridian's consumer (a client)
/// writes those on records it moves down a retry chain, and the broker
/// never reads them.
pub fn broker_reserved_header(name: &str) -> bool {
    name.starts_with("meridian.") && !name.starts_with("meridian.retry.")
}

/// Identity of a stored batch: records `base_offset ..` with HLCs
/// `first_hlc ..`, one apart (see `hlc::assign_first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub count: u32,
    pub first_hlc: u64,
}

impl BatchHeader {
    pub fn end_offset(&self) -> u64 {
        self.base_offset + self.count as u64
    }
    pub fn last_hlc(&self) -> u64 {
        self.first_hlc + self.count as u64 - 1
    }
    /// Offset of the first record whose HLC is at or above `hlc`, if any.
    pub fn offset_for_hlc(&self, hlc: u64) -> Option<u64> {
        if hlc > self.last_hlc() {
            None
        } else {
            Some(self.base_offset + hlc.saturating_sub(self.first_hlc))
        }
    }
}

/// Encodes `records` as one Kafka v2 batch whose records have offsets
/// `base_offset ..` and HLCs `first_hlc ..`, with the identity headers, and
/// an idempotent producer's fields when it came from one.
fn encode_kafka(
    base_offset: u64,
    first_hlc: u64,
    origin: &str,
    records: &[RecordIn],
    producer: Option<Producer>,
    buf: &mut BytesMut,
) {
    assert!(!records.is_empty(), "empty batches are never stored");
    let origin = Bytes::copy_from_slice(origin.as_bytes());
    let kafka_records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec_hlc = first_hlc + i as u64;
            let mut headers: IndexMap<StrBytes, Option<Bytes>> = IndexMap::new();
            for (k, v) in &r.headers {
                headers.insert(StrBytes::from_string(k.clone()), v.clone());
            }
            headers.insert(
                StrBytes::from_static_str(HEADER_ORIGIN),
                Some(origin.clone()),
            );
            headers.insert(
                StrBytes::from_static_str(HEADER_HLC),
                Some(Bytes::from(rec_hlc.to_string())),
            );
            let mut rec = records::plain(
                base_offset as i64,
                i,
                hlc::wall_ms(rec_hlc),
                r.key.clone(),
                r.value.clone(),
                headers,
            );
            if let Some(p) = producer {
                rec.producer_id = p.id;
                rec.producer_epoch = p.epoch;
                rec.sequence = seq_add(p.base_sequence, i as i64);
            }
            rec
        })
        .collect();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    // Encoding into memory with valid v2 records cannot fail.
    RecordBatchEncoder::encode(buf, &kafka_records, &opts).expect("encode record batch");
}

fn header_bytes(h: BatchHeader, batch_len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + batch_len);
    buf.extend_from_slice(&[FORMAT]);
    buf.extend_from_slice(&h.base_offset.to_be_bytes());
    buf.extend_from_slice(&h.count.to_be_bytes());
    buf.extend_from_slice(&h.first_hlc.to_be_bytes());
    buf
}

/// Encodes the stored form of `records` committed at `header`.
pub fn encode(header: BatchHeader, origin: &str, records: &[RecordIn]) -> Vec<u8> {
    assert_eq!(
        header.count as usize,
        records.len(),
        "header matches records"
    );
    encode_as(header, origin, records, None)
}

fn encode_as(
    header: BatchHeader,
    origin: &str,
    records: &[RecordIn],
    producer: Option<Producer>,
) -> Vec<u8> {
    let mut buf = header_bytes(header, estimate(records));
    encode_kafka(
        header.base_offset,
        header.first_hlc,
        origin,
        records,
        producer,
        &mut buf,
    );
    Vec::from(buf)
}

/// The Kafka batch a leader proposes: offsets from 0, HLCs from
/// `proposed_hlc`. If the state machine accepts those HLCs, storing it only
/// patches the base offset (see [`store`]); no replica re-encodes it. An
/// idempotent producer's id, epoch and sequences are kept in the batch, so
/// they travel with it to every region (see `log::producers`).
pub fn propose(
    proposed_hlc: u64,
    origin: &str,
    records: &[RecordIn],
    producer: Option<Producer>,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(estimate(records));
    encode_kafka(0, proposed_hlc, origin, records, producer, &mut buf);
    buf.freeze()
}

/// Where a v2 record batch keeps its producer fields and attributes.
const PRODUCER_ID_AT: usize = 43;
const ATTRIBUTES_AT: usize = 21;
const MAGIC_AT: usize = 16;
const TRANSACTIONAL: u16 = 0x10;

/// The idempotent producer of a Kafka record batch (`kafka`: the batch
/// bytes, as proposed or after a stored header), read from its header
/// without decoding the records; `None` for a batch without one.
pub fn producer_of(kafka: &[u8]) -> Option<Producer> {
    if kafka.len() < PRODUCER_ID_AT + 14 || kafka[MAGIC_AT] != 2 {
        return None;
    }
    let id = i64::from_be_bytes(kafka[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].try_into().ok()?);
    let epoch = i16::from_be_bytes(
        kafka[PRODUCER_ID_AT + 8..PRODUCER_ID_AT + 10]
            .try_into()
            .ok()?,
    );
    let base_sequence = i32::from_be_bytes(
        kafka[PRODUCER_ID_AT + 10..PRODUCER_ID_AT + 14]
            .try_into()
            .ok()?,
    );
    (id >= 0 && epoch >= 0 && base_sequence >= 0).then_some(Producer {
        id,
        epoch,
        base_sequence,
    })
}

/// Whether a Kafka record batch is part of a transaction.
pub fn is_transactional(kafka: &[u8]) -> bool {
    kafka.len() > ATTRIBUTES_AT + 1
        && u16::from_be_bytes([kafka[ATTRIBUTES_AT], kafka[ATTRIBUTES_AT + 1]]) & TRANSACTIONAL != 0
}

/// The stored form of a proposed batch committed at `h`, whose HLCs are the
/// proposed ones. The base offset (the batch's first 8 bytes) is outside the
/// batch CRC, so patching it keeps the batch valid.
pub fn store(h: BatchHeader, proposed: &[u8]) -> Vec<u8> {
    let mut buf = header_bytes(h, proposed.len());
    buf.extend_from_slice(proposed);
    buf[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&h.base_offset.to_be_bytes());
    Vec::from(buf)
}

/// The stored form of a proposed batch committed at `h` with HLCs other than
/// the proposed ones (a new leader proposed at or below the last committed
/// HLC): decode and encode again, identically on every replica. The old
/// identity headers are replaced in place by the encoding.
pub fn restamp(h: BatchHeader, origin: &str, proposed: &[u8]) -> Result<Vec<u8>, String> {
    let records = decode_records(proposed, h.count).map_err(|e| format!("proposed {e}"))?;
    Ok(encode_as(h, origin, &records, producer_of(proposed)))
}

/// A Kafka v2 record batch's header, before its records.
pub const BATCH_HEADER_BYTES: usize = 61;

fn estimate(records: &[RecordIn]) -> usize {
    BATCH_HEADER_BYTES
        + records
            .iter()
            .map(|r| {
                40 + r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())
            })
            .sum::<usize>()
}

/// The Kafka batch of stored records `from .. to` (origin offsets, inside
/// the batch `h` of `kafka`) renumbered to start at `new_base`: how the
/// global view serves part of a batch. Whole batches only get their base
/// offset patched ([`with_base_offset`]); this decodes and encodes, keeping
/// every record's timestamp, key, value and headers.
pub fn reslice(
    h: BatchHeader,
    kafka: &[u8],
    from: u64,
    to: u64,
    new_base: u64,
) -> Result<Bytes, String> {
    let mut bytes = Bytes::copy_from_slice(kafka);
    let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| e.to_string())?;
    let picked: Vec<Record> = sets
        .into_iter()
        .flat_map(|s| s.records)
        .enumerate()
        .filter(|(i, _)| (from..to).contains(&(h.base_offset + *i as u64)))
        .enumerate()
        .map(|(j, (_, r))| {
            records::plain(new_base as i64, j, r.timestamp, r.key, r.value, r.headers)
        })
        .collect();
    if picked.len() as u64 != to - from {
        return Err(format!(
            "batch at {} holds no records {from}..{to}",
            h.base_offset
        ));
    }
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &picked, &opts).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// A stored Kafka batch with another base offset (outside the batch CRC).
pub fn with_base_offset(kafka: &[u8], base: u64) -> Bytes {
    let mut buf = BytesMut::from(kafka);
    buf[..8].copy_from_slice(&base.to_be_bytes());
    buf.freeze()
}

/// The records of a stored batch, with every header they were stored with.
pub fn records_of(value: &[u8]) -> Result<(BatchHeader, Vec<RecordIn>), String> {
    let (h, kafka) = decode(value)?;
    let records =
        decode_records(kafka, h.count).map_err(|e| format!("stored {e} at {}", h.base_offset))?;
    Ok((h, records))
}

/// The `count` records of a Kafka record batch.
pub fn decode_records(kafka: &[u8], count: u32) -> Result<Vec<RecordIn>, String> {
    let mut bytes = Bytes::copy_from_slice(kafka);
    let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| e.to_string())?;
    let records: Vec<RecordIn> = sets
        .into_iter()
        .flat_map(|s| s.records)
        .map(RecordIn::from_kafka)
        .collect();
    if records.len() != count as usize {
        return Err(format!(
            "batch holds {} records, not {count}",
            records.len()
        ));
    }
    Ok(records)
}

/// Splits a stored value into its header and its Kafka record batch bytes.
pub fn decode(value: &[u8]) -> Result<(BatchHeader, &[u8]), String> {
    if value.len() < HEADER_LEN || value[0] != FORMAT {
        return Err(format!(
            "stored batch of {} bytes with format {:?}",
            value.len(),
            value.first()
        ));
    }
    let u64_at = |i: usize| u64::from_be_bytes(value[i..i + 8].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(value[9..13].try_into().expect("4 bytes"));
    Ok((
        BatchHeader {
            base_offset: u64_at(1),
            count,
            first_hlc: u64_at(13),
        },
        &value[HEADER_LEN..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_batch_round_trips_through_a_kafka_decoder() {
        let records = vec![
            RecordIn {
                key: Some(Bytes::from_static(b"k1")),
                value: Some(Bytes::from_static(b"v1")),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            },
            RecordIn {
                key: None,
                value: Some(Bytes::from_static(b"v2")),
                headers: vec![(HEADER_ORIGIN.into(), Some(Bytes::from_static(b"spoofed")))],
            },
        ];
        let first_hlc = hlc::from_wall_ms(1_763_712_000_000) + 5;
        let h = BatchHeader {
            base_offset: 40,
            count: 2,
            first_hlc,
        };
        let stored = encode(h, "us-east", &records);
        let (h2, kafka) = decode(&stored).unwrap();
        assert_eq!(h2, h);
        let mut b = Bytes::copy_from_slice(kafka);
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        assert!(b.is_empty(), "all records in one Kafka batch");
        assert_eq!(set.records.len(), 2);
        assert_eq!(set.records[0].sequence, -1, "not an idempotent batch");
        let r1 = &set.records[1];
        assert_eq!(r1.offset, 41);
        assert_eq!(r1.timestamp, 1_763_712_000_000);
        assert_eq!(r1.value.as_deref(), Some(&b"v2"[..]));
        let origin = r1
            .headers
            .get(&StrBytes::from_static_str(HEADER_ORIGIN))
            .unwrap();
        assert_eq!(
            origin.as_deref(),
            Some(&b"us-east"[..]),
            "producers cannot spoof the origin"
        );
        let hlc_h = r1
            .headers
            .get(&StrBytes::from_static_str(HEADER_HLC))
            .unwrap();
        assert_eq!(
            hlc_h.as_deref(),
            Some((first_hlc + 1).to_string().as_bytes())
        );
        assert_eq!(set.records[0].headers.len(), 3);
    }

    #[test]
    fn an_idempotent_producers_fields_survive_storing_and_restamping() {
        let records = vec![
            RecordIn {
                key: None,
                value: Some(Bytes::from_static(b"a")),
                headers: vec![],
            };
            3
        ];
        let producer = Producer {
            id: 77,
            epoch: 2,
            base_sequence: 40,
        };
        let proposed = propose(1000, "us-east", &records, Some(producer));
        assert_eq!(producer_of(&proposed), Some(producer));
        assert!(!is_transactional(&proposed));
        let h = BatchHeader {
            base_offset: 9,
            count: 3,
            first_hlc: 1000,
        };
        let (_, kafka) = decode(&store(h, &proposed))
            .map(|(h, k)| (h, k.to_vec()))
            .unwrap();
        assert_eq!(producer_of(&kafka), Some(producer), "stored as proposed");
        let moved = BatchHeader {
            first_hlc: 2000,
            ..h
        };
        let restamped = restamp(moved, "us-east", &proposed).unwrap();
        let (_, kafka) = decode(&restamped).unwrap();
        assert_eq!(producer_of(kafka), Some(producer), "kept when re-encoded");
        let mut b = Bytes::copy_from_slice(kafka);
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        let seqs: Vec<i32> = set.records.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, vec![40, 41, 42]);
        assert_eq!(producer_of(&propose(1000, "us-east", &records, None)), None);
    }

    #[test]
    fn offset_for_hlc_inside_a_batch() {
        let h = BatchHeader {
            base_offset: 10,
            count: 3,
            first_hlc: 100,
        };
        assert_eq!(h.offset_for_hlc(50), Some(10));
        assert_eq!(h.offset_for_hlc(101), Some(11));
        assert_eq!(h.offset_for_hlc(102), Some(12));
        assert_eq!(h.offset_for_hlc(103), None);
        assert!(decode(&[2u8; 30]).is_err());
    }

    fn two_records() -> Vec<RecordIn> {
        vec![
            RecordIn {
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v1")),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
            },
            RecordIn {
                key: None,
                value: Some(Bytes::from_static(b"v2")),
                headers: vec![],
            },
        ]
    }

    #[test]
    fn a_proposal_stored_as_proposed_equals_a_fresh_encoding() {
        let first_hlc = hlc::from_wall_ms(1_763_712_000_000) + 3;
        let h = BatchHeader {
            base_offset: 77,
            count: 2,
            first_hlc,
        };
        let proposed = propose(first_hlc, "us-east", &two_records(), None);
        assert_eq!(store(h, &proposed), encode(h, "us-east", &two_records()));
    }

    #[test]
    fn a_restamped_proposal_carries_the_committed_hlcs() {
        let proposed_hlc = hlc::from_wall_ms(1_763_712_000_000);
        let proposed = propose(proposed_hlc, "us-east", &two_records(), None);
        let h = BatchHeader {
            base_offset: 5,
            count: 2,
            first_hlc: proposed_hlc + 1000,
        };
        let stored = restamp(h, "us-east", &proposed).unwrap();
        assert_eq!(stored, encode(h, "us-east", &two_records()));
        let (_, kafka) = decode(&stored).unwrap();
        let set = RecordBatchDecoder::decode(&mut Bytes::copy_from_slice(kafka)).unwrap();
        let hlc1 = set.records[1]
            .headers
            .get(&StrBytes::from_static_str(HEADER_HLC))
            .unwrap();
        assert_eq!(
            hlc1.as_deref(),
            Some((proposed_hlc + 1001).to_string().as_bytes())
        );
        assert_eq!(
            set.records[0].headers.len(),
            3,
            "no duplicated identity headers"
        );
        let wrong = BatchHeader { count: 3, ..h };
        assert!(restamp(wrong, "us-east", &proposed).is_err());
    }

    #[test]
    fn a_resliced_batch_keeps_its_records_under_new_offsets() {
        let records: Vec<RecordIn> = (0..5)
            .map(|i| RecordIn {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![],
            })
            .collect();
        let h = BatchHeader {
            base_offset: 10,
            count: 5,
            first_hlc: hlc::from_wall_ms(1_763_712_000_000),
        };
        let stored = encode(h, "eu-west", &records);
        let (_, kafka) = decode(&stored).unwrap();
        let mut out = reslice(h, kafka, 11, 13, 100).unwrap();
        let set = RecordBatchDecoder::decode(&mut out).unwrap();
        let got: Vec<(i64, Option<Bytes>)> = set
            .records
            .iter()
            .map(|r| (r.offset, r.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (100, Some(Bytes::from("v1"))),
                (101, Some(Bytes::from("v2")))
            ]
        );
        assert!(set.records[0]
            .headers
            .contains_key(&StrBytes::from_static_str(HEADER_HLC)));
        assert!(
            reslice(h, kafka, 14, 16, 0).is_err(),
            "records past the batch"
        );
        let mut whole = with_base_offset(kafka, 7);
        assert_eq!(
            RecordBatchDecoder::decode(&mut whole).unwrap().records[4].offset,
            11
        );
    }
}
