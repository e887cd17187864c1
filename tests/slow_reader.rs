//! A client that pipelines fetches and never reads the answers (issue 16,
//! item 3): its responses hold the listener's byte budget
//! (`kafka.in_flight_bytes_max`) instead of memory without a bound, the
//! node goes on serving other clients, and `kafka.write_timeout_ms`
//! disconnects the client that stopped reading.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{rss, Cluster};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};

const BUDGET: u64 = 32 << 20;
const FETCH_MAX: i32 = 4 << 20;
const WRITE_TIMEOUT_MS: u64 = 4_000;
/// Fetches each silent connection sends (`kafka.in_flight_requests_max`).
const PIPELINED: usize = 64;
/// Silent connections to each node.
const SILENT: usize = 4;
/// How much the nodes' resident memory may grow while they are attacked:
/// the budget, and the responses being built within it. Without the
/// budget on responses, the partition leader builds all of them:
/// 4 × 64 × 4 MiB = 1 GiB.
const GROWTH_MAX: u64 = 256 << 20;

fn fetch_frame(correlation_id: i32) -> Vec<u8> {
    let version = 11;
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("silent")))
        .encode(&mut buf, ApiKey::Fetch.request_header_version(version))
        .unwrap();
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(FETCH_MAX)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("big")))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(FETCH_MAX)])])
        .encode(&mut buf, version)
        .unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// A connection with a small receive window, so that the kernel takes
/// little of what the node writes.
fn silent(to: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    sock.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_the_budget_not_memory_and_is_disconnected() {
    let settings = [
        format!("kafka.in_flight_bytes_max={BUDGET}"),
        "kafka.request_bytes_max=8388608".to_string(),
        format!("kafka.fetch_bytes_max={FETCH_MAX}"),
        format!("kafka.write_timeout_ms={WRITE_TIMEOUT_MS}"),
        // The partition leader stays where it is.
        "raft.balance_interval_ms=0".to_string(),
    ];
    let c = Cluster::one_region_set(&settings);
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("big", 1, &Default::default())
        .await
        .unwrap();
    // 4 MiB of records that do not compress, in batches of 1 MiB.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..4 {
        let records: Vec<(Option<Bytes>, Option<Bytes>)> = (0..16)
            .map(|_| {
                let value: Vec<u8> = (0..64 * 1024)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                (None, Some(Bytes::from(value)))
            })
            .collect();
        client
            .produce("big", 0, encode_batch(&records, Compression::None))
            .await
            .unwrap();
    }
    let leader = client.topic("big", false).await.unwrap().leaders[0];
    let leader = c.node(leader as u64);
    let before = rss(leader.pid);

    // The partition leader gets the silent clients: 64 fetches each,
    // never read.
    let frames: Vec<u8> = (0..PIPELINED as i32).flat_map(fetch_frame).collect();
    let mut conns = Vec::new();
    for _ in 0..SILENT {
        let mut s = silent(&leader.kafka);
        s.write_all(&frames).unwrap();
        conns.push(s);
    }
    let sent = Instant::now();
    let mut growth = 0u64;
    while sent.elapsed() < Duration::from_millis(WRITE_TIMEOUT_MS - 1_000) {
        growth = growth.max(rss(leader.pid).saturating_sub(before));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("resident memory grew by {} MiB at most", growth >> 20);
    assert!(
        growth < GROWTH_MAX,
        "the leader's resident memory grew by {} MiB",
        growth >> 20
    );

    // Another client is served, at the latest once the silent ones are
    // disconnected.
    let (records, _) =
        tokio::time::timeout(Duration::from_secs(60), client.fetch("big", 0, 0, 1_000))
            .await
            .expect("another client is served within 60 s")
            .unwrap();
    assert!(!records.is_empty());

    // The silent clients are disconnected, one after another: a response
    // that waits for the budget has not started its write timeout yet.
    let timed_out = "the client took no response for kafka.write_timeout_ms";
    let deadline = sent + Duration::from_secs(60);
    while c.log(leader.id).matches(timed_out).count() < SILENT {
        assert!(
            Instant::now() < deadline,
            "{} of {SILENT} silent connections timed out",
            c.log(leader.id).matches(timed_out).count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What the kernel holds is all they can read before the end.
    let all = PIPELINED * FETCH_MAX as usize;
    for mut s in conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut read = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => read += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false, // timed out: still open
            }
        };
        assert!(
            ended,
            "a silent connection is still open after {read} bytes"
        );
        assert!(read < all / 2, "{read} bytes of {all} delivered");
    }
}
