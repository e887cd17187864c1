//! A committed batch as stored in the `records` column family: a small fixed
//! header, then the records already encoded as a Kafka v2 record batch with
//! their final offsets, HLC timestamps and `meridian.*` headers. A fetch
//! copies these bytes and never re-encodes.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

use crate::hlc;
use crate::kafka::records;
use crate::raft::types::RecordIn;

const FORMAT: u8 = 1;
pub const HEADER_LEN: usize = 1 + 8 + 4 + 8;

pub const HEADER_ORIGIN: &str = "meridian.origin";
pub const HEADER_HLC: &str = "meridian.hlc";

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

/// Encodes the stored form of `records` committed at `header`.
pub fn encode(header: BatchHeader, origin: &str, records: &[RecordIn]) -> Vec<u8> {
    assert_eq!(
        header.count as usize,
        records.len(),
        "header matches records"
    );
    assert!(!records.is_empty(), "empty batches are never stored");
    let origin = Bytes::copy_from_slice(origin.as_bytes());
    let kafka_records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec_hlc = header.first_hlc + i as u64;
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
            records::plain(
                header.base_offset as i64,
                i,
                hlc::wall_ms(rec_hlc),
                r.key.clone(),
                r.value.clone(),
                headers,
            )
        })
        .collect();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + estimate(records));
    buf.extend_from_slice(&[FORMAT]);
    buf.extend_from_slice(&header.base_offset.to_be_bytes());
    buf.extend_from_slice(&header.count.to_be_bytes());
    buf.extend_from_slice(&header.first_hlc.to_be_bytes());
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    // Encoding into memory with valid v2 records cannot fail.
    RecordBatchEncoder::encode(&mut buf, &kafka_records, &opts).expect("encode record batch");
    Vec::from(buf)
}

fn estimate(records: &[RecordIn]) -> usize {
    61 + records
        .iter()
        .map(|r| {
            40 + r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())
        })
        .sum::<usize>()
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
    use kafka_protocol::records::RecordBatchDecoder;

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
}
