//! A client that pipelines fetches and never reads the answers (issue 16,
//! item 3): its responses hold the listener's byte budget
//! (`kafka.in_flight_bytes_max`) instead of memory without a bound, the
//! node goes on serving other clients, and `kafka.write_timeout_ms`
//! disconnects the client that stopped reading. And a client that
//! pipelines behind a long poll: what waits for its turn is bounded by
//! `kafka.connection_queued_bytes_max`.

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

/// A request frame: length, header, body.
fn frame(api: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("silent")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn fetch(topic: &'static str, wait_ms: i32, max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(max_bytes)])])
}

fn fetch_frame(correlation_id: i32) -> Vec<u8> {
    frame(
        ApiKey::Fetch,
        11,
        correlation_id,
        &fetch("big", 0, FETCH_MAX),
    )
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

/// The correlation id of the next response on `s`.
fn next_response(s: &mut TcpStream) -> i32 {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

fn queued_bytes(node: &common::NodeInfo) -> i64 {
    common::metric_sum([node], "meridian_kafka_queued_bytes") as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reads_nothing_more_while_its_queue_is_full() {
    const WAIT_MS: i32 = 15_000;
    let settings = [
        // One response waiting for its turn fills the queue.
        "kafka.connection_queued_bytes_max=1".to_string(),
        "raft.balance_interval_ms=0".to_string(),
    ];
    let c = Cluster::one_region_set(&settings);
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("quiet", 1, &Default::default())
        .await
        .unwrap();
    // The leader serves reads (it has applied an entry of its term).
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.fetch("quiet", 0, 0, 100).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no leader serves reads of `quiet`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = client.topic("quiet", false).await.unwrap().leaders[0];
    let leader = c.node(leader as u64);

    // One connection pipelines a fetch that long-polls the empty
    // partition, a Metadata request (answered at once, its response
    // waits behind the fetch's) and a CreateTopics.
    let create = CreateTopicsRequest::default()
        .with_topics(vec![creatable_topic("after")])
        .with_timeout_ms(10_000);
    let mut frames = frame(ApiKey::Fetch, 11, 1, &fetch("quiet", WAIT_MS, 1 << 20));
    frames.extend(frame(ApiKey::Metadata, 9, 2, &MetadataRequest::default()));
    frames.extend(frame(ApiKey::CreateTopics, 5, 3, &create));
    let mut s = TcpStream::connect(&leader.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let sent = Instant::now();
    s.write_all(&frames).unwrap();

    // While the fetch waits, the Metadata response is queued and the
    // CreateTopics is not read.
    std::thread::sleep(Duration::from_millis(2_000));
    let queued = queued_bytes(leader);
    let exists = client.topic("after", false).await.is_ok();
    assert!(
        sent.elapsed() < Duration::from_millis(WAIT_MS as u64),
        "the checks came after the long poll"
    );
    assert!(queued > 0, "kafka_queued_bytes is {queued}");
    assert!(!exists, "the CreateTopics behind a full queue was served");

    // Once the fetch answers, the rest follow, in order.
    let ids: Vec<i32> = (0..3).map(|_| next_response(&mut s)).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(sent.elapsed() >= Duration::from_millis(WAIT_MS as u64 - 100));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.topic("after", false).await.is_err() {
        assert!(Instant::now() < deadline, "`after` was never created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(queued_bytes(leader), 0);

    // A fetch that would take the queue far past its limit while it waits
    // for its turn closes the connection instead (no client pipelines one).
    let mut frames = frame(ApiKey::Fetch, 11, 1, &fetch("quiet", WAIT_MS, 1 << 20));
    frames.extend(frame(ApiKey::Fetch, 11, 2, &fetch("quiet", 0, 1 << 20)));
    let mut s = TcpStream::connect(&leader.kafka).unwrap();
    s.write_all(&frames).unwrap();
    let refused = "a fetch request larger than the room left";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log(leader.id).contains(refused) {
        assert!(Instant::now() < deadline, "the pipelined fetch was taken");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn creatable_topic(name: &'static str) -> create_topics_request::CreatableTopic {
    create_topics_request::CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str(name)))
        .with_num_partitions(1)
        .with_replication_factor(-1)
}
