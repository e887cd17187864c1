//! Idempotent producers: InitProducerId, sequence checks with the error
//! codes Kafka clients act on, and retried batches stored once: by the
//! region that stored the original, and by another region after the
//! producer's region failed. The retries are made by python confluent-kafka
//! (librdkafka), unmodified, whose requests time out or whose broker dies.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{create, meridian, python_json, require, topic_partitions, Cluster};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
use kafka_protocol::records::Compression;
use meridian::client::{
    encode_stamped, fetch_on, produce_on, Client, ClientError, Connection, OutRecord, ProducerStamp,
};
use meridian::ids::allocating_node;

/// A batch of `n` records from producer `pid` at `epoch`, sequences from `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, n: usize, tag: &str) -> Bytes {
    let records: Vec<OutRecord> = (0..n)
        .map(|i| OutRecord {
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            ..Default::default()
        })
        .collect();
    let stamp = ProducerStamp {
        id: pid,
        epoch,
        sequence: seq,
    };
    encode_stamped(&records, Some(stamp), Compression::None)
}

async fn init_producer_id(c: &Connection) -> InitProducerIdResponse {
    let req = InitProducerIdRequest::default()
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(kafka_protocol::messages::ProducerId(-1))
        .with_producer_epoch(-1);
    c.call(ApiKey::InitProducerId, 4, &req).await.unwrap()
}

fn code(r: Result<i64, ClientError>) -> i16 {
    match r {
        Err(ClientError::Kafka { code, .. }) => code,
        other => panic!("expected a Kafka error, got {other:?}"),
    }
}

/// The protocol as a Kafka client sees it, batch by batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_are_checked_and_a_retry_gets_the_original_offset() {
    let c = Cluster::start();
    let client = Client::new(&c.bootstrap());
    client
        .create_topic("idem", 1, &Default::default())
        .await
        .unwrap();
    let leader = client.leader("idem", 0).await.unwrap();

    let a = init_producer_id(&leader).await;
    let b = init_producer_id(&leader).await;
    assert_eq!(a.error_code, 0);
    assert_eq!(a.producer_epoch, 0);
    assert_ne!(a.producer_id, b.producer_id, "a new id each time");
    let pid = a.producer_id.0;
    assert!(
        c.nodes.iter().any(|n| n.id == allocating_node(pid)),
        "the id names the node that gave it out: {pid}"
    );
    // Transactions are not served.
    let tx: InitProducerIdResponse = leader
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(kafka_protocol::messages::TransactionalId(
                    "tx".to_string().into(),
                )))
                .with_transaction_timeout_ms(60_000),
        )
        .await
        .unwrap();
    assert_eq!(tx.error_code, 35, "UNSUPPORTED_VERSION");

    let first = produce_on(&leader, "idem", 0, batch(pid, 0, 0, 3, "a"), -1)
        .await
        .unwrap();
    let retry = produce_on(&leader, "idem", 0, batch(pid, 0, 0, 3, "a"), -1)
        .await
        .unwrap();
    assert_eq!(
        retry, first,
        "the retry is answered with the original offset"
    );
    // A gap, a stranger in mid-sequence, an old epoch after a new one.
    assert_eq!(
        code(produce_on(&leader, "idem", 0, batch(pid, 0, 5, 1, "gap"), -1).await),
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(
        code(produce_on(&leader, "idem", 0, batch(b.producer_id.0, 0, 7, 1, "x"), -1).await),
        59,
        "UNKNOWN_PRODUCER_ID"
    );
    for i in 0..6 {
        produce_on(&leader, "idem", 0, batch(pid, 0, 3 + i, 1, "c"), -1)
            .await
            .unwrap();
    }
    // Older than the five batches remembered: a duplicate all the same.
    assert_eq!(
        code(produce_on(&leader, "idem", 0, batch(pid, 0, 0, 3, "a"), -1).await),
        46,
        "DUPLICATE_SEQUENCE_NUMBER"
    );
    produce_on(&leader, "idem", 0, batch(pid, 1, 0, 1, "e1"), -1)
        .await
        .unwrap();
    assert_eq!(
        code(produce_on(&leader, "idem", 0, batch(pid, 0, 9, 1, "e0"), -1).await),
        47,
        "INVALID_PRODUCER_EPOCH"
    );
    // Stored: 3 + 6 + 1 records, each once.
    let (recs, hw) = fetch_on(&leader, "idem", 0, 0, 1000).await.unwrap();
    assert_eq!(hw, 10);
    assert_eq!(recs.len(), 10);
    let values: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).to_string())
        .collect();
    assert_eq!(&values[..3], ["a-0", "a-1", "a-2"]);
    assert_eq!(values[9], "e1-0");
}

fn idempotent_py(args: &[&str], timeout: Duration) -> serde_json::Value {
    python_json("idempotent.py", args, timeout)
}

/// Sum of a counter over a region's nodes' `/metrics`.
fn counter(c: &Cluster, region: &str, name: &str) -> u64 {
    common::metric_sum(c.region_nodes(region), name) as u64
}

/// `idempotent.py produce` on its own thread, with librdkafka's
/// `request.timeout.ms`, bounded by `secs`.
fn produce_in_background(
    boot: &str,
    topic: &str,
    prefix: &str,
    waves: &str,
    request_timeout_ms: u64,
    secs: u64,
) -> std::thread::JoinHandle<serde_json::Value> {
    let args: Vec<String> = ["produce", boot, topic, prefix, waves]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(r#"{{"request.timeout.ms": {request_timeout_ms}}}"#)])
        .collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        idempotent_py(&args, Duration::from_secs(secs))
    })
}

/// Every node's `/status` of `topic`'s partitions, one line a node, for
/// failure messages.
fn partition_status(c: &Cluster, topic: &str) -> String {
    let mut out = String::new();
    for n in &c.nodes {
        let parts = topic_partitions(&n.admin, topic).map_or_else(
            || "no /status".into(),
            |ps| serde_json::to_string(&ps).unwrap_or_default(),
        );
        out.push_str(&format!("  node {} ({}): {parts}\n", n.id, n.region));
    }
    out
}

fn tally(values: &serde_json::Value) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for v in values.as_array().unwrap() {
        *seen.entry(v.as_str().unwrap().to_string()).or_default() += 1;
    }
    seen
}

fn assert_all_delivered(out: &serde_json::Value, n: usize) {
    assert!(out["fatal"].is_null(), "fatal producer error: {out}");
    assert_eq!(out["failed"], serde_json::json!([]), "{out}");
    assert_eq!(out["delivered"].as_array().unwrap().len(), n, "{out}");
}

/// The producer's first request cannot be acknowledged in time: the
/// topic's quorum is all three regions, and the link between the home and
/// the far region is slowed by seconds (the metadata leader's region is
/// the third, so no lease is hindered and no region is failed over). The
/// request times out (NOT_ENOUGH_REPLICAS, or librdkafka's own timeout)
/// and librdkafka sends the same batches again. Once the home has seen a
/// retry, the slow link is mended: the retries are then answered with the
/// batches stored the first time. The topic is pinned to its home, and
/// another region forwards a retry to the home, where it is recognised.
///
/// librdkafka may write through any region's broker (it connects to any
/// the metadata lists, docs/replication.md "Not yet"). Through the far
/// region, every request is forwarded over the slowed link and given up
/// on before it arrives; and an acknowledgement can come back in time
/// through the third region. Then no retry reaches the home: the link is
/// mended, that producer finishes, and the scenario starts again with a
/// new topic (three tries).
#[test]
fn a_producers_batches_sent_again_are_stored_once() {
    require("python3");
    let c = Cluster::start_three();
    let (_meta, home, far) = c.regions_around_meta_leader();
    let boot = c.region_bootstrap(&home);
    let writers = format!("meridian.writers=home:{home}");
    let retried = || counter(&c, &home, "meridian_idempotent_duplicates_total");
    let mut attempt = 0;
    let (topic, producer) = loop {
        attempt += 1;
        let topic = format!("orders{attempt}");
        create(
            &boot,
            &topic,
            1,
            &[
                writers.as_str(),
                "meridian.replication=sync",
                "meridian.sync.quorum=3",
            ],
        );
        c.delay(&home, &far, 4000);
        let before = retried();
        let producer = produce_in_background(&boot, &topic, "o", "20", 1500, 180);
        let deadline = Instant::now() + Duration::from_secs(20);
        while retried() == before && Instant::now() < deadline && !producer.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if retried() > before {
            break (topic, producer);
        }
        let status = partition_status(&c, &topic);
        c.set_faults("{}");
        let out = producer.join();
        assert!(
            attempt < 3,
            "{home} never saw a batch sent again, three times; producer: {out:?}; the partition on every node:\n{status}"
        );
        eprintln!("{topic}: no retry reached {home}; again with a new topic. producer: {out:?}");
    };
    c.set_faults("{}");
    let out = producer.join().unwrap();
    assert_all_delivered(&out, 20);
    let read = idempotent_py(
        &["read", &boot, &topic, "1", "20", "5000"],
        Duration::from_secs(60),
    );
    let seen = tally(&read["values"]);
    assert_eq!(seen.len(), 20, "every record stored: {read}");
    assert!(
        seen.values().all(|n| *n == 1),
        "a retried batch was stored twice: {seen:?}"
    );
}

/// The retry goes to another region: the producer's region committed its
/// batch and the metadata leader's region holds a copy, but the producer's
/// region dies before it can answer (the topic's quorum is all three
/// regions, and the third is far away). librdkafka moves to a surviving
/// region (the metadata lists every region's brokers) and sends the batch
/// again; it is answered with the dead region's copy once the failover
/// sealed that region's log, and the producer's next records follow.
///
/// librdkafka may write through another region than the one it was
/// bootstrapped in: after its first metadata it connects to any broker
/// listed (docs/replication.md, "Not yet"). So the link between the two
/// regions other than the metadata leader's is slowed, and the producer's
/// region is whichever of them its first record was stored in; a first
/// record stored in the metadata leader's region is acknowledged at once:
/// then the link is mended, the producer finishes, and the scenario starts
/// again with a new topic.
#[test]
fn a_batch_retried_in_another_region_after_a_failover_is_stored_once() {
    require("python3");
    let mut c = Cluster::start_three();
    let (survivor, a, b) = c.regions_around_meta_leader();
    let boot = c.region_bootstrap(&a);
    let mut attempt = 0;
    let (topic, producer, home) = loop {
        attempt += 1;
        c.delay(&a, &b, 30000);
        let topic = format!("ledger{attempt}");
        create(
            &boot,
            &topic,
            1,
            &["meridian.replication=sync", "meridian.sync.quorum=3"],
        );
        let producer = produce_in_background(&boot, &topic, "l", "1,9", 20000, 200);
        let deadline = Instant::now() + Duration::from_secs(40);
        let origin = loop {
            if let Some(o) = first_origin(&c, &survivor, &topic) {
                break o;
            }
            if Instant::now() >= deadline || producer.is_finished() {
                let status = partition_status(&c, &topic);
                let out = if producer.is_finished() {
                    format!("{:?}", producer.join())
                } else {
                    "still producing".into()
                };
                panic!("{survivor} never held a record of {topic}; producer: {out}; the partition on every node:\n{status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("{topic}: the first record was written through {origin} (bootstrap {a})");
        if origin != survivor {
            break (topic, producer, origin);
        }
        assert!(
            attempt < 3,
            "librdkafka wrote through {survivor}, the metadata leader's region, three times"
        );
        // Mended, the slow link holds none of its records back.
        eprintln!("{topic}: the producer wrote through {survivor}; again with a new topic");
        c.set_faults("{}");
        assert_all_delivered(&producer.join().unwrap(), 10);
    };
    let far = if home == a { b } else { a };
    let ids: Vec<u64> = c.region_nodes(&home).iter().map(|n| n.id).collect();
    for id in ids {
        c.kill9(id);
    }
    // Two regions are left: the operator lowers the quorum so that new
    // writes can be acknowledged.
    let survivors = c.region_bootstrap(&survivor);
    let (ok, o, e) = meridian(&[
        "topic",
        "alter",
        "-b",
        &survivors,
        "--set",
        "meridian.sync.quorum=2",
        &topic,
    ]);
    assert!(ok, "alter: {o}{e}");
    let out = producer.join().unwrap();
    assert_all_delivered(&out, 10);
    let read = idempotent_py(
        &["read", &survivors, &topic, "1", "10", "8000"],
        Duration::from_secs(60),
    );
    let seen = tally(&read["values"]);
    assert!(
        seen.values().all(|n| *n == 1),
        "a retried batch was stored twice: {seen:?}"
    );
    assert_eq!(seen.len(), 10, "every record stored: {read}");
    // The producer moved to either surviving region.
    let retried = counter(&c, &survivor, "meridian_idempotent_duplicates_total")
        + counter(&c, &far, "meridian_idempotent_duplicates_total");
    assert!(
        retried >= 1,
        "no surviving region saw a retry of {home}'s batch: {out}"
    );
}

/// The region whose origin log of `topic`'s partition 0 holds a record,
/// as a node of `region` sees it.
fn first_origin(c: &Cluster, region: &str, topic: &str) -> Option<String> {
    c.region_nodes(region).iter().find_map(|n| {
        topic_partitions(&n.admin, topic)?
            .first()?
            .origin_logs
            .iter()
            .find(|l| l.next_offset >= 1)
            .map(|l| l.origin.clone())
    })
}

/// Issue 16, item 10, third finding: idempotent producers in every region
/// (librdkafka, its defaults plus `enable.idempotence`) while a whole
/// region is SIGKILLed, on an `async` topic. A producer that wrote through
/// the lost region, whose last acknowledged records never left it, goes on
/// in another region past them: it used to get OUT_OF_ORDER_SEQUENCE_NUMBER
/// there, a fatal error that stops a librdkafka producer (and a producer
/// made anew sends its unacknowledged records again, stored twice). Now
/// every producer keeps writing, every survivor's view holds each record
/// once, and lacks only records the lost region acknowledged before it
/// was killed (its `async` tail, re-injected when it returns).
#[test]
fn idempotent_producers_in_every_region_outlive_a_region_kill_without_duplicates() {
    require("python3");
    let c = Cluster::start_three();
    create(
        &c.region_bootstrap("us-east"),
        "everywhere",
        2,
        &["meridian.replication=async"],
    );
    let boots: serde_json::Map<String, serde_json::Value> = ["us-east", "eu-west", "ap-south"]
        .iter()
        .map(|r| (r.to_string(), c.region_bootstrap(r).into()))
        .collect();
    let pids: Vec<u32> = c.region_nodes("ap-south").iter().map(|n| n.pid).collect();
    let out = python_json(
        "regionkill.py",
        &[
            &serde_json::Value::Object(boots).to_string(),
            "ap-south",
            &serde_json::to_string(&pids).unwrap(),
            "everywhere",
            "2",
            "200",
            "14",
            "4",
            "6000",
        ],
        Duration::from_secs(200),
    );
    for (region, p) in out["producers"].as_object().unwrap() {
        assert_eq!(
            p["fatal"],
            serde_json::json!([]),
            "{region}'s producer: {out}"
        );
        assert_eq!(
            p["errors"],
            serde_json::json!([]),
            "{region}'s producer: {out}"
        );
        assert_eq!(
            p["acked"], p["written"],
            "{region}'s producer: every record acknowledged: {out}"
        );
    }
    for (region, v) in out["views"].as_object().unwrap() {
        assert_eq!(v["dups"], 0, "{region}'s view: {out}");
        // What a view may lack is ap-south's tail: records acknowledged
        // there before the kill, by any region's producer (librdkafka
        // writes through whichever region's broker its metadata names).
        assert_eq!(
            v["missing_acked_after_kill"], 0,
            "{region}'s view lacks no record acknowledged after the kill: {out}"
        );
        assert!(
            v["missing"].as_u64().unwrap() <= 200,
            "{region}'s view: ap-south's unreplicated tail is about a second at most: {out}"
        );
    }
    assert_eq!(
        out["views_agree"], true,
        "the survivors serve one view: {out}"
    );
}
