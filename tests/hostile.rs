//! Hostile input against a live node (issue 16): requests built to exhaust
//! memory or stall the node, connection floods, the admin port, and a
//! seeded loop of random frames for every API Meridian serves, and mutated
//! valid requests of every API but the four that create, delete or alter
//! topics and groups (see `corpus`).
//! Throughout, another client keeps producing and fetching, and the node's
//! resident memory stays under `RSS_MAX`.
//!
//! Replay a fuzz run with `MERIDIAN_FUZZ_SEED=<seed printed on failure>`;
//! `MERIDIAN_FUZZ_FRAMES` changes the number of frames (100,000 by default).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{rss, Cluster};
use indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
use meridian::client::{encode_batch, Client, ClientError};
// Every API and version range Meridian serves, as ApiVersions lists them.
use meridian::kafka::SUPPORTED as SERVED;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The bound the node's resident memory must stay under while it is
/// attacked (it idles at about 40 MiB; without the decoder guards one
/// request asks for 300 GB, and a decompression bomb for 4 GiB).
const RSS_MAX: u64 = 768 * 1024 * 1024;

const PER_IP_MAX: usize = 24;
const CONNECTIONS_MAX: usize = 64;
const IDLE_MS: u64 = 3_000;
const READ_TIMEOUT_MS: u64 = 2_000;
/// `kafka.client_log_lines_per_sec`: the fuzz loop alone causes thousands
/// of log-worthy events.
const CLIENT_LOG_LINES: u64 = 5;

fn settings() -> Vec<String> {
    vec![
        format!("kafka.connections_per_ip_max={PER_IP_MAX}"),
        format!("kafka.connections_max={CONNECTIONS_MAX}"),
        format!("kafka.connections_max_idle_ms={IDLE_MS}"),
        format!("kafka.request_read_timeout_ms={READ_TIMEOUT_MS}"),
        "kafka.write_timeout_ms=3000".to_string(),
        // Random fetches must not park connections for long.
        "kafka.fetch_wait_ms_max=200".to_string(),
        format!("kafka.client_log_lines_per_sec={CLIENT_LOG_LINES}"),
        // Bombs from several clients at once must queue for it.
        "kafka.decode_concurrency_max=1".to_string(),
    ]
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True when the server closed the connection (read returns 0 or reset);
/// false when it is still open after the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn header(api: ApiKey, version: i16) -> BytesMut {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("hostile-test")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn request(api: ApiKey, version: i16, req: &impl Encodable) -> Vec<u8> {
    let mut buf = header(api, version);
    req.encode(&mut buf, version).unwrap();
    framed(&buf)
}

/// Whether the node answers an ApiVersions request on `s`.
fn answered(s: &mut TcpStream) -> bool {
    let asked = s.write_all(&request(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    ));
    let mut len = [0u8; 4];
    asked.is_ok() && s.read_exact(&mut len).is_ok() && i32::from_be_bytes(len) > 0
}

/// A v2 batch of one record, with `patch` applied to its bytes and the
/// CRC fixed afterwards (so the batch gets past the checksum).
fn patched_batch(value: &[u8], patch: impl Fn(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::from(
        &encode_batch(
            &[(None, Some(Bytes::copy_from_slice(value)))],
            Compression::None,
        )[..],
    );
    patch(&mut buf);
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// A batch of one record whose (compressed) records section is replaced
/// by `records`, claiming codec `codec` (attributes' low bits).
fn batch_with_records(codec: u8, records: &[u8]) -> Bytes {
    let plain = encode_batch(&[(None, Some(Bytes::from_static(b"x")))], Compression::None);
    let mut buf = BytesMut::from(&plain[..61]);
    buf.put_slice(records);
    let len = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&len.to_be_bytes());
    buf[22] = (buf[22] & !0x07) | codec;
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

fn code_of(r: Result<i64, ClientError>) -> Option<i16> {
    match r {
        Ok(_) => None,
        Err(ClientError::Kafka { code, .. }) => Some(code),
        Err(e) => panic!("expected a Kafka error, got {e}"),
    }
}

const CORRUPT_MESSAGE: i16 = 2;
const MESSAGE_TOO_LARGE: i16 = 10;

/// Produces and fetches every 100 ms until stopped; counts failures.
fn bystander(bootstrap: String, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = Client::new(&bootstrap);
        let mut next = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let batch = encode_batch(
                &[(None, Some(Bytes::from("still here")))],
                Compression::None,
            );
            let r = async {
                let off = client.produce("bystander", 0, batch).await?;
                let (recs, _) = client.fetch("bystander", 0, next.min(off), 500).await?;
                next = off + 1;
                Ok::<_, ClientError>(!recs.is_empty())
            }
            .await;
            match r {
                Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                Ok(false) | Err(_) => {
                    eprintln!("bystander failed: {r:?}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_does_not_stop_the_node() {
    let c = Cluster::one_region_set(&settings());
    let target = c.nodes[0].kafka.clone();
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid).collect();
    let client = Client::new(&c.bootstrap());
    for t in ["bystander", "hostile"] {
        client
            .create_topic(t, 1, &Default::default())
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let by = {
        let (b, s, o, f) = (c.bootstrap(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || bystander(b, s, o, f))
    };
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Every node: the partition leaders that take the
                // produce requests may be any of them.
                for &pid in &pids {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // 1. A Metadata v9 request whose topic array claims u32::MAX - 1
    //    elements: 20 bytes that used to abort the process.
    let mut body = header(ApiKey::Metadata, 9);
    body.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0]);
    let mut s = connect(&target);
    s.write_all(&framed(&body)).unwrap();
    assert!(closed(&mut s), "the connection is closed");
    // The same lie in a non-flexible version's int32 array count.
    let mut body = header(ApiKey::Metadata, 4);
    body.put_i32(i32::MAX);
    let mut s = connect(&target);
    s.write_all(&framed(&body)).unwrap();
    assert!(closed(&mut s));

    // 2. Record and header counts beyond the batch.
    let huge_count = patched_batch(b"v", |b| b[57..61].copy_from_slice(&i32::MAX.to_be_bytes()));
    assert_eq!(
        code_of(client.produce("hostile", 0, huge_count).await),
        Some(CORRUPT_MESSAGE)
    );
    let huge_headers = patched_batch(b"v", |b| {
        b.truncate(b.len() - 1);
        b.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        let record = (b.len() - 62) as u8;
        b[61] = record << 1;
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
    });
    assert_eq!(
        code_of(client.produce("hostile", 0, huge_headers).await),
        Some(CORRUPT_MESSAGE)
    );

    // 3. Decompression bombs: a xerial snappy block header claiming 4 GiB,
    //    and 64 MiB of zeros as gzip (about 64 KiB on the wire).
    let mut snappy = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
    snappy.extend_from_slice(&5u32.to_be_bytes());
    snappy.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(
        code_of(
            client
                .produce("hostile", 0, batch_with_records(2, &snappy))
                .await
        ),
        Some(MESSAGE_TOO_LARGE)
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    for _ in 0..8 {
        assert_eq!(
            code_of(
                client
                    .produce("hostile", 0, batch_with_records(1, &gz))
                    .await
            ),
            Some(MESSAGE_TOO_LARGE)
        );
    }

    // ... and from four clients at once: they take turns to decompress,
    //     kafka.decode_concurrency_max at a time, and each is refused.
    let waits_before = common::metric_sum(&c.nodes, "meridian_kafka_decode_waits_total") as u64;
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let (bootstrap, gz) = (c.bootstrap(), gz.clone());
            tokio::spawn(async move {
                let client = Client::new(&bootstrap);
                let mut codes = Vec::new();
                for _ in 0..8 {
                    let r = client
                        .produce("hostile", 0, batch_with_records(1, &gz))
                        .await;
                    codes.push(code_of(r));
                }
                codes
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), [Some(MESSAGE_TOO_LARGE); 8]);
    }
    let waits =
        common::metric_sum(&c.nodes, "meridian_kafka_decode_waits_total") as u64 - waits_before;
    eprintln!("{waits} decodes waited for kafka.decode_concurrency_max");
    assert!(
        waits > 0,
        "no decode waited for kafka.decode_concurrency_max"
    );

    // 4. Headers under `meridian.` are dropped from produced records.
    let mut headers = IndexMap::new();
    for (k, v) in [
        ("meridian.reinjected.from", "us-east/0/1"),
        ("meridian.hlc", "1"),
        ("app", "kept"),
    ] {
        headers.insert(
            StrBytes::from_static_str(k),
            Some(Bytes::from_static(v.as_bytes())),
        );
    }
    let rec =
        meridian::log::records::plain(0, 0, 0, None, Some(Bytes::from_static(b"forged")), headers);
    let mut b = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut b, [&rec], &opts).unwrap();
    let off = client.produce("hostile", 0, b.freeze()).await.unwrap();
    let (recs, _) = client.fetch("hostile", 0, off, 1000).await.unwrap();
    let names: Vec<&str> = recs[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(!names.contains(&"meridian.reinjected.from"), "{names:?}");
    assert!(names.contains(&"app"), "{names:?}");

    // 5. A connection flood from one address: past the per-IP limit new
    //    connections are accepted and closed, and the listener keeps
    //    accepting; another address is still served. The client's own
    //    connections (bystander, `client`) come from 127.0.0.1 too.
    let mut idle: Vec<TcpStream> = Vec::new();
    let mut refused = 0;
    // All at once (well within the idle timeout), then see which were
    // closed.
    let flood: Vec<TcpStream> = (0..PER_IP_MAX + 8).map(|_| connect(&target)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for mut s in flood {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => refused += 1,
            _ => idle.push(s),
        }
    }
    assert!(
        refused >= 8,
        "{refused} of {} refused; node config:\n{}",
        PER_IP_MAX + 8,
        std::fs::read_to_string(&c.nodes[0].config).unwrap_or_default()
    );
    let other = from_address("127.0.0.2", &target);
    let mut other = other.expect("a connection from 127.0.0.2");
    assert!(answered(&mut other), "127.0.0.2 is served");
    // Idle connections are closed after kafka.connections_max_idle_ms.
    std::thread::sleep(Duration::from_millis(IDLE_MS + 1_500));
    for mut s in idle.drain(..) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(closed(&mut s), "idle connection still open");
    }

    // 5b. A flood from many addresses, each under the per-IP limit: past
    //     kafka.connections_max in all, new connections are accepted and
    //     closed, and once the flood is gone the listener serves again.
    let spread: Vec<TcpStream> = (0..CONNECTIONS_MAX + 16)
        .filter_map(|i| from_address(&format!("127.0.3.{}", 2 + i % 200), &target))
        .collect();
    // Without blocking, until the refused ones are closed (a loaded node
    // may take a while to accept them all), and well before the accepted
    // ones are closed for idling; the bystander's client retries a
    // connection refused meanwhile.
    for s in &spread {
        s.set_nonblocking(true).unwrap();
    }
    let flooded = Instant::now();
    let mut over = 0;
    while over < 16 && flooded.elapsed() < Duration::from_millis(IDLE_MS * 2 / 3) {
        std::thread::sleep(Duration::from_millis(100));
        over = spread
            .iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                matches!(s.read(&mut [0u8; 1]), Ok(0))
            })
            .count();
    }
    assert!(
        over >= 16,
        "{over} of {} connections refused past kafka.connections_max={CONNECTIONS_MAX}",
        spread.len()
    );
    drop(spread);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = from_address("127.0.4.2", &target).expect("a connection");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if answered(&mut s) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after the flood closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 5c. A request that never arrives whole: the connection is closed
    //     kafka.request_read_timeout_ms after its length.
    let mut slow = connect(&target);
    let whole = request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    slow.write_all(&whole[..whole.len() - 2]).unwrap();
    let sent_at = Instant::now();
    slow.set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS * 4)))
        .unwrap();
    assert!(closed(&mut slow), "a trickled request kept its connection");
    assert!(
        sent_at.elapsed() >= Duration::from_millis(READ_TIMEOUT_MS / 2),
        "closed before kafka.request_read_timeout_ms"
    );

    // 6. The admin port: no faults without the token.
    let admin = &c.nodes[0].admin;
    let body = r#"{"skew_ms": 100000}"#;
    let (code, _) = common::http_post(admin, "/faults", body, None).unwrap();
    assert_eq!(code, 401);
    let (code, _) =
        common::http_post(admin, "/faults", body, Some("0123456789abcdef0123")).unwrap();
    assert_eq!(code, 403);

    // 7. Random and mutated frames for every API Meridian serves.
    let seed: u64 = std::env::var("MERIDIAN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let frames: usize = std::env::var("MERIDIAN_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    eprintln!("fuzz: {frames} frames, MERIDIAN_FUZZ_SEED={seed}");
    let started = Instant::now();
    let fuzz_target = target.clone();
    let sent = tokio::task::spawn_blocking(move || fuzz(&fuzz_target, seed, frames))
        .await
        .unwrap();
    eprintln!("fuzz: {sent} frames in {:?}", started.elapsed());
    assert_eq!(sent, frames, "the node stopped taking frames (seed {seed})");

    // The node is alive and well, served the bystander throughout, and
    // never held more than RSS_MAX.
    let off = client
        .produce(
            "hostile",
            0,
            encode_batch(&[(None, Some(Bytes::from("after")))], Compression::None),
        )
        .await
        .unwrap_or_else(|e| panic!("after fuzz (seed {seed}): {e}"));
    assert!(off >= 1);
    stop.store(true, Ordering::Relaxed);
    by.join().unwrap();
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "peak RSS {} MiB; bystander {} ok, {} failed",
        peak >> 20,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(peak < RSS_MAX, "peak RSS {} MiB (seed {seed})", peak >> 20);
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the bystander failed (seed {seed})"
    );
    let log = c.log(c.nodes[0].id);
    assert!(
        log.contains("closing a new client connection at once"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "seed {seed}: {log}");
    // What clients cause is logged at most CLIENT_LOG_LINES a second
    // (a one-second window starts with its first line, so one second of
    // the clock can hold two windows' worth), and the lines dropped are
    // counted in the next one.
    let mut per_second: std::collections::BTreeMap<&str, u64> = Default::default();
    for l in log.lines().filter(|l| l.contains(" suppressed=")) {
        // 2026-12-06T17:25:19.088843Z: up to the whole second.
        *per_second.entry(l.get(..19).unwrap_or(l)).or_default() += 1;
    }
    let busiest = per_second.iter().max_by_key(|(_, n)| **n);
    eprintln!("busiest second of client log lines: {busiest:?}");
    assert!(
        busiest.is_some_and(|(_, n)| *n <= 2 * CLIENT_LOG_LINES),
        "{busiest:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" suppressed=") && !l.contains(" suppressed=0 ")),
        "no line tells of suppressed ones"
    );
}

/// Connects from a chosen loopback address.
fn from_address(ip: &str, to: &str) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    let from: SocketAddr = format!("{ip}:0").parse().ok()?;
    sock.bind(&from.into()).ok()?;
    let to: SocketAddr = to.parse().ok()?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .ok()?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    Some(s)
}

/// Valid requests, to mutate.
fn corpus() -> Vec<(ApiKey, i16, Vec<u8>)> {
    let topic = || TopicName(StrBytes::from_static_str("hostile"));
    let mut out = Vec::new();
    let mut add = |api: ApiKey, v: i16, req: &dyn Fn(&mut BytesMut, i16)| {
        let mut buf = header(api, v);
        req(&mut buf, v);
        out.push((api, v, buf.to_vec()));
    };
    for v in [4, 9, 12] {
        add(ApiKey::Metadata, v, &|b, v| {
            MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(topic()))]))
                .encode(b, v)
                .unwrap()
        });
    }
    for v in [3, 9] {
        let batch = encode_batch(&[(None, Some(Bytes::from("fuzz")))], Compression::None);
        add(ApiKey::Produce, v, &|b, v| {
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(topic())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.clone())),
                    ])])
                .encode(b, v)
                .unwrap()
        });
    }
    for v in [4, 12] {
        add(ApiKey::Fetch, v, &|b, v| {
            FetchRequest::default()
                .with_max_wait_ms(100)
                .with_max_bytes(1 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(topic())
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20)])])
                .encode(b, v)
                .unwrap()
        });
    }
    for v in [1, 7] {
        add(ApiKey::ListOffsets, v, &|b, v| {
            ListOffsetsRequest::default()
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ])])
                .encode(b, v)
                .unwrap()
        });
    }
    add(ApiKey::FindCoordinator, 3, &|b, v| {
        FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("g"))
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::JoinGroup, 5, &|b, v| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(1000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::OffsetCommit, 8, &|b, v| {
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id_or_member_epoch(-1)
            .encode(b, v)
            .unwrap()
    });
    let group = || GroupId(StrBytes::from_static_str("g"));
    let member = || StrBytes::from_static_str("m");
    add(ApiKey::ApiVersions, 3, &|b, v| {
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fuzz"))
            .with_client_software_version(StrBytes::from_static_str("1"))
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::DescribeConfigs, 4, &|b, v| {
        DescribeConfigsRequest::default()
            .with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("hostile")),
            ])
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::InitProducerId, 4, &|b, v| {
        InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::SyncGroup, 5, &|b, v| {
        SyncGroupRequest::default()
            .with_group_id(group())
            .with_generation_id(1)
            .with_member_id(member())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range")))
            .with_assignments(vec![
                sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(member())
                    .with_assignment(Bytes::from_static(&[0, 1, 0, 0, 0, 1])),
            ])
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::Heartbeat, 4, &|b, v| {
        HeartbeatRequest::default()
            .with_group_id(group())
            .with_generation_id(1)
            .with_member_id(member())
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::LeaveGroup, 4, &|b, v| {
        LeaveGroupRequest::default()
            .with_group_id(group())
            .with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(member())
            ])
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::OffsetFetch, 5, &|b, v| {
        OffsetFetchRequest::default()
            .with_group_id(group())
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic())
                    .with_partition_indexes(vec![0]),
            ]))
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::ListGroups, 4, &|b, v| {
        ListGroupsRequest::default()
            .with_states_filter(vec![StrBytes::from_static_str("Stable")])
            .encode(b, v)
            .unwrap()
    });
    add(ApiKey::DescribeGroups, 5, &|b, v| {
        DescribeGroupsRequest::default()
            .with_groups(vec![group()])
            .encode(b, v)
            .unwrap()
    });
    // CreateTopics, DeleteTopics, IncrementalAlterConfigs, AlterConfigs and DeleteGroups
    // get random bodies only: a mutated valid request would create,
    // delete or alter topics and groups at random (up to 1,024 partitions
    // each), which any client may do today; limiting who may is issue 19's
    // (ACLs and quotas).
    out
}

/// Sends `frames` random or mutated frames, each read by the node before
/// the next is sent: after each frame it waits for the answer (the
/// connection goes on), for the close (a new connection follows), or
/// 300 ms (no answer: an `acks = 0` produce, a long poll; a new connection
/// follows). Connections come from rotating loopback addresses, so that a
/// hundred thousand of them neither hit the per-address limit nor run out
/// of ports. Returns how many frames the node took; fewer than `frames`
/// when it took none for 30 s.
fn fuzz(addr: &str, seed: u64, frames: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus = corpus();
    let mut sent = 0;
    let mut source = 0u32;
    let mut conn: Option<TcpStream> = None;
    // A node that took no frame for 30 s (it stopped accepting, or closes
    // every connection at once) ends the loop short of `frames`.
    let mut taken_at = Instant::now();
    while sent < frames && taken_at.elapsed() < Duration::from_secs(30) {
        let mut s = match conn.take() {
            Some(s) => s,
            None => {
                source += 1;
                let ip = format!("127.0.{}.{}", 1 + source / 250 % 200, 2 + source % 250);
                match from_address(&ip, addr) {
                    Some(s) => s,
                    None => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
        };
        let body = if rng.gen_bool(0.5) {
            let (_, _, base) = &corpus[rng.gen_range(0..corpus.len())];
            mutate(&mut rng, base)
        } else {
            let (api, lo, hi) = SERVED[rng.gen_range(0..SERVED.len())];
            let mut b = header(api, rng.gen_range(lo..=hi + 1)).to_vec();
            let len = rng.gen_range(0..96);
            b.extend((0..len).map(|_| interesting(&mut rng)));
            b
        };
        let mut f = framed(&body);
        let lying = rng.gen_ratio(1, 200);
        if lying {
            // A lying length prefix desynchronises the stream.
            let l = rng.gen_range(-8i32..=(body.len() as i32 + 8));
            f[..4].copy_from_slice(&l.to_be_bytes());
        }
        if s.write_all(&f).is_err() {
            continue; // closed before the frame: send another
        }
        taken_at = Instant::now();
        sent += 1;
        if lying {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = s.take(64 << 20).read_to_end(&mut Vec::new());
            continue;
        }
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            continue; // closed, or no answer
        }
        let len = i32::from_be_bytes(len);
        assert!(
            (0..=64 << 20).contains(&len),
            "seed {seed}: a response of {len} bytes"
        );
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = vec![0u8; len as usize];
        if s.read_exact(&mut resp).is_ok() {
            conn = Some(s);
        }
    }
    sent
}

/// Bytes that make decoders take unusual paths: lengths and counts at
/// their limits, varint continuations, nulls.
fn interesting(rng: &mut StdRng) -> u8 {
    match rng.gen_range(0..6) {
        0 => 0xff,
        1 => 0x7f,
        2 => 0x80,
        3 => 0,
        _ => rng.gen(),
    }
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if b.is_empty() {
            break;
        }
        let at = rng.gen_range(0..b.len());
        match rng.gen_range(0..5) {
            0 => b[at] = interesting(rng),
            1 => b[at] ^= 1 << rng.gen_range(0..8),
            2 => {
                // A count or length field set to its maximum.
                let end = (at + 4).min(b.len());
                for x in &mut b[at..end] {
                    *x = 0xff;
                }
                if end > at {
                    b[at] = 0x7f;
                }
            }
            3 => b.truncate(at.max(8)),
            _ => {
                let extra: Vec<u8> = (0..rng.gen_range(1..16))
                    .map(|_| interesting(rng))
                    .collect();
                b.splice(at..at, extra);
            }
        }
    }
    b
}

/// `raft.entry_bytes_max` holds for what is stored, not only for what the
/// client sent: Meridian adds an origin and an HLC header to every record,
/// so a batch of many small records within every Kafka limit can grow past
/// the Raft entry limit. It is refused with MESSAGE_TOO_LARGE before it is
/// proposed; a smaller batch of the same records is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_outgrows_a_raft_entry_once_stored_is_refused() {
    const LIMIT: usize = 64 * 1024;
    let c = Cluster::one_region_set(&[
        format!("kafka.batch_bytes_max={LIMIT}"),
        format!("kafka.batch_uncompressed_bytes_max={LIMIT}"),
        format!("raft.entry_bytes_max={LIMIT}"),
    ]);
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("entries", 1, &Default::default())
        .await
        .unwrap();
    let records = |n: usize| -> Vec<(Option<Bytes>, Option<Bytes>)> {
        (0..n)
            .map(|i| (None, Some(Bytes::from(format!("{i:020}")))))
            .collect()
    };
    let big = encode_batch(&records(1_000), Compression::None);
    assert!(
        big.len() < LIMIT / 2,
        "the batch as sent ({} bytes) is within the Kafka limits",
        big.len()
    );
    assert_eq!(
        code_of(client.produce("entries", 0, big).await),
        Some(MESSAGE_TOO_LARGE),
        "a batch stored larger than raft.entry_bytes_max"
    );
    let small = encode_batch(&records(100), Compression::None);
    assert_eq!(client.produce("entries", 0, small).await.unwrap(), 0);
    let log = c.log(c.nodes[0].id);
    assert!(!log.contains("panicked"), "{log}");
}
