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
                reason: e.to_string(),
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
        reason: e.to_string(),
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
}
