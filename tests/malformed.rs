//! Malformed, truncated and oversized Kafka requests get a clean error or a
//! closed connection with a log line, and the node keeps serving others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Cluster;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, InitProducerIdRequest, InitProducerIdResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True when the server closed the connection (read returns 0 or reset).
fn closed(mut s: TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn frame(api: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("malformed-test")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf.put_slice(body);
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn response(s: &mut TcpStream) -> Bytes {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_node_keeps_serving() {
    let c = Cluster::start();
    let addr = c.nodes[0].kafka.clone();
    let id = c.nodes[0].id;

    // Negative and oversized lengths: closed before reading a body.
    let mut s = connect(&addr);
    s.write_all(&(-5i32).to_be_bytes()).unwrap();
    assert!(closed(s), "negative length");
    let mut s = connect(&addr);
    s.write_all(&(500 * 1024 * 1024i32).to_be_bytes()).unwrap();
    assert!(closed(s), "oversized length");

    // Unknown API key, and a known API with a garbage body.
    let mut s = connect(&addr);
    let mut bad = frame(ApiKey::Metadata, 9, &[0xff; 3]);
    bad[4] = 0x7f; // api key 0x7fXX
    s.write_all(&bad).unwrap();
    assert!(closed(s), "unknown api key");
    let mut s = connect(&addr);
    s.write_all(&frame(ApiKey::Metadata, 9, &[0xff, 0xff, 0xff, 0x01]))
        .unwrap();
    assert!(closed(s), "garbage metadata body");

    // Truncated: the length promises more than arrives, then the client leaves.
    {
        let mut s = connect(&addr);
        let f = frame(ApiKey::ApiVersions, 3, &[0, 0, 0]);
        s.write_all(&f[..f.len() - 2]).unwrap();
    }

    // A version Meridian does not serve (InitProducerId v5 is for
    // transactions) gets its error code, not a hang-up.
    let mut s = connect(&addr);
    let mut body = BytesMut::new();
    InitProducerIdRequest::default()
        .with_transaction_timeout_ms(1000)
        .encode(&mut body, 5)
        .unwrap();
    s.write_all(&frame(ApiKey::InitProducerId, 5, &body))
        .unwrap();
    let mut r = response(&mut s);
    let h =
        ResponseHeader::decode(&mut r, ApiKey::InitProducerId.response_header_version(5)).unwrap();
    assert_eq!(h.correlation_id, 42);
    let ip = InitProducerIdResponse::decode(&mut r, 5).unwrap();
    assert_eq!(ip.error_code, 35, "UNSUPPORTED_VERSION");

    // A too-new ApiVersions is answered in v0 with UNSUPPORTED_VERSION and our ranges.
    let mut s = connect(&addr);
    s.write_all(&frame(ApiKey::ApiVersions, 9, &[])).unwrap();
    let mut r = response(&mut s);
    assert_eq!(r.get_i32(), 42);
    let av = ApiVersionsResponse::decode(&mut r, 0).unwrap();
    assert_eq!(av.error_code, 35);
    assert!(av
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));

    // The node still serves a well-behaved client.
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("ok", 1, &Default::default())
        .await
        .unwrap();
    let off = client
        .produce(
            "ok",
            0,
            encode_batch(&[(None, Some(Bytes::from("fine")))], Compression::Gzip),
        )
        .await
        .unwrap();
    let (recs, _) = client.fetch("ok", 0, off, 1000).await.unwrap();
    assert_eq!(recs[0].value.as_deref(), Some(&b"fine"[..]));

    let log = c.log(id);
    assert!(
        log.contains("closing connection: request size is outside"),
        "{log}"
    );
    assert!(
        log.contains("closing connection: undecodable request"),
        "{log}"
    );
}
