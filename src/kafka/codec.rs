//! Kafka framing: a big-endian i32 length, then a request header and body.
//! Requests are parsed in two steps: the header (cheap, tells the API and
//! version), then the body for that API and version.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("malformed {api:?} v{version} request header: {reason}")]
    Header {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("malformed {api:?} v{version} request (correlation id {correlation_id}): {reason}")]
    Body {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
}

/// Parses the header of one request frame (without its length prefix).
pub fn decode_header(mut frame: Bytes) -> Result<(ApiKey, RequestHeader, Bytes), DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = (&frame[0..2]).get_i16();
    let version = (&frame[2..4]).get_i16();
    let api = ApiKey::try_from(raw_key).map_err(|_| DecodeError::UnknownApi(raw_key))?;
    let header =
        RequestHeader::decode(&mut frame, api.request_header_version(version)).map_err(|e| {
            DecodeError::Header {
                api,
                version,
                reason: format!("{e:#}"),
            }
        })?;
    Ok((api, header, frame))
}

/// Parses a request body. The kafka-protocol decoders check the version and
/// return errors on truncated or inconsistent input; they do not panic.
pub fn decode_body(
    api: ApiKey,
    header: &RequestHeader,
    mut body: Bytes,
) -> Result<RequestKind, DecodeError> {
    RequestKind::decode(api, &mut body, header.request_api_version).map_err(|e| DecodeError::Body {
        api,
        version: header.request_api_version,
        correlation_id: header.correlation_id,
        reason: format!("{e:#}"),
    })
}

/// Encodes a response with its length prefix and header. An error names a
/// bug (a field that does not fit the negotiated version), never client input.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    resp: &ResponseKind,
) -> Result<BytesMut, String> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| e.to_string())?;
    resp.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;
    use kafka_protocol::protocol::StrBytes;

    fn frame_of(api: ApiKey, version: i16, req: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        req.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn header_then_body() {
        let f = frame_of(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let (api, h, body) = decode_header(f).unwrap();
        assert_eq!(api, ApiKey::ApiVersions);
        assert_eq!(h.correlation_id, 7);
        assert!(matches!(
            decode_body(api, &h, body).unwrap(),
            RequestKind::ApiVersions(_)
        ));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(matches!(
            decode_header(Bytes::from_static(b"\x00\x01")),
            Err(DecodeError::TooShort(2))
        ));
        assert!(matches!(
            decode_header(Bytes::from_static(b"\x7f\x00\x00\x01\x00\x00\x00\x01")),
            Err(DecodeError::UnknownApi(0x7f00))
        ));
        let f = frame_of(
            ApiKey::Metadata,
            9,
            &kafka_protocol::messages::MetadataRequest::default(),
        );
        for cut in 0..f.len() {
            let part = f.slice(..cut);
            if let Ok((api, h, body)) = decode_header(part) {
                let _ = decode_body(api, &h, body);
            }
        }
        // Random bytes after a valid header prefix.
        let mut junk = BytesMut::from(&f[..]);
        for (i, b) in junk.iter_mut().enumerate().skip(12) {
            *b = (i * 37 % 251) as u8;
        }
        if let Ok((api, h, body)) = decode_header(junk.freeze()) {
            let _ = decode_body(api, &h, body);
        }
    }

    /// A Metadata v9 request whose topic array claims `count` elements and
    /// carries none.
    fn metadata_v9_claiming(count: u32) -> Bytes {
        let mut f = BytesMut::from(
            &frame_of(
                ApiKey::Metadata,
                9,
                &kafka_protocol::messages::MetadataRequest::default(),
            )[..],
        );
        // Header v2: api key, version, correlation id, client id
        // ("test"), no tagged fields: 2 + 2 + 4 + 2 + 4 + 1 bytes.
        f.truncate(15);
        // Compact array length is count + 1, as an unsigned varint.
        let mut n = count as u64 + 1;
        while n >= 0x80 {
            f.put_u8((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        f.put_u8(n as u8);
        f.put_slice(&[0, 0, 0, 0]);
        f.freeze()
    }

    #[test]
    fn an_array_count_beyond_the_frame_is_refused_before_anything_is_reserved() {
        // Without the vendored patch this asks the allocator for ~300 GB
        // and the process aborts.
        let (api, h, body) = decode_header(metadata_v9_claiming(u32::MAX - 1)).unwrap();
        let e = decode_body(api, &h, body).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        // A count that is merely a little too large fails the same way.
        let (api, h, body) = decode_header(metadata_v9_claiming(1000)).unwrap();
        assert!(decode_body(api, &h, body).is_err());
    }

    /// One uncompressed v2 record batch of one small record, then its
    /// record count or its record's header count patched to `i32::MAX`.
    fn batch(patch_record_count: bool, patch_headers: bool) -> Bytes {
        use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
        let record = crate::log::records::plain(
            0,
            0,
            0,
            None,
            Some(Bytes::from_static(b"v")),
            Default::default(),
        );
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, [&record], &opts).unwrap();
        if patch_record_count {
            // baseOffset 8, length 4, leader epoch 4, magic 1, crc 4,
            // attributes 2, lastOffsetDelta 4, two timestamps 16,
            // producer id 8, epoch 2, base sequence 4: count at 57.
            buf[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        }
        if patch_headers {
            // The record (at 61, after its one-byte size varint) ends with
            // its header count, varint 0; replace that by the zigzag varint
            // of i32::MAX, four bytes longer, and fix both lengths.
            buf.truncate(buf.len() - 1);
            buf.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
            let record = (buf.len() - 62) as u8;
            buf[61] = record << 1;
            let len = (buf.len() - 12) as i32;
            buf[8..12].copy_from_slice(&len.to_be_bytes());
        }
        let crc = crc32c::crc32c(&buf[21..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        buf.freeze()
    }

    #[test]
    fn record_and_header_counts_beyond_the_batch_are_refused() {
        use kafka_protocol::records::RecordBatchDecoder;
        let ok = RecordBatchDecoder::decode(&mut batch(false, false)).unwrap();
        assert_eq!(ok.records.len(), 1);
        let e = RecordBatchDecoder::decode(&mut batch(true, false)).unwrap_err();
        assert!(e.to_string().contains("record_count"), "{e}");
        let e = RecordBatchDecoder::decode(&mut batch(false, true)).unwrap_err();
        assert!(e.to_string().contains("num_headers"), "{e}");
    }
}
