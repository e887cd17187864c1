//! The consumer protocol's `range` assignor and its wire formats, as pure
//! functions: the group leader decides who reads which partitions.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    consumer_protocol_assignment, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The assignor's name in JoinGroup; Java and librdkafka consumers use the
/// same name for the same rule, so they can share a group with this one.
pub const RANGE: &str = "range";
const VERSION: i16 = 0;

/// Per member, per topic, its partitions: for each topic, the members that
/// subscribe to it (sorted by id) get consecutive ranges, the first ones
/// one partition more when the count does not divide.
pub fn range(
    members: &BTreeMap<String, Vec<String>>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .keys()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &n) in partitions {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subs.is_empty() || n <= 0 {
            continue;
        }
        let (each, extra) = (n / subs.len() as i32, n % subs.len() as i32);
        let mut next = 0;
        for (i, m) in subs.iter().enumerate() {
            let count = each + i32::from((i as i32) < extra);
            if count > 0 {
                out.get_mut(*m)
                    .expect("member listed")
                    .insert(topic.clone(), (next..next + count).collect());
            }
            next += count;
        }
    }
    out
}

fn name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// A member's JoinGroup metadata: the topics it reads.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let s = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.clone()))
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(VERSION);
    s.encode(&mut buf, VERSION).expect("encode subscription");
    buf.freeze()
}

/// The topics in a member's JoinGroup metadata (any consumer-protocol
/// version: later versions only add fields at the end).
pub fn decode_subscription(mut b: Bytes) -> Option<Vec<String>> {
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16().clamp(0, 3);
    let s = ConsumerProtocolSubscription::decode(&mut b, version).ok()?;
    Some(s.topics.iter().map(|t| t.to_string()).collect())
}

pub fn encode_assignment(assigned: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assigned
            .iter()
            .map(|(t, ps)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(name(t))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    let mut buf = BytesMut::new();
    buf.put_i16(VERSION);
    a.encode(&mut buf, VERSION).expect("encode assignment");
    buf.freeze()
}

/// A SyncGroup assignment as (topic, partition) pairs; empty bytes mean
/// nothing assigned.
pub fn decode_assignment(mut b: Bytes) -> Option<Vec<(String, i32)>> {
    if b.remaining() < 2 {
        return Some(Vec::new());
    }
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version).ok()?;
    Some(
        a.assigned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let m = members(&[("b", &["t", "u"]), ("a", &["t"])]);
        let p = BTreeMap::from([("t".to_string(), 5), ("u".to_string(), 2)]);
        let a = range(&m, &p);
        assert_eq!(a["a"]["t"], [0, 1, 2]);
        assert_eq!(a["b"]["t"], [3, 4]);
        assert_eq!(a["b"]["u"], [0, 1]);
        assert!(!a["a"].contains_key("u"));
    }

    #[test]
    fn wire_formats_read_back() {
        let topics = vec!["orders".to_string(), "orders.retry.1".to_string()];
        assert_eq!(
            decode_subscription(encode_subscription(&topics)),
            Some(topics)
        );
        let assigned = BTreeMap::from([("orders".to_string(), vec![0, 2])]);
        assert_eq!(
            decode_assignment(encode_assignment(&assigned)),
            Some(vec![("orders".to_string(), 0), ("orders".to_string(), 2)])
        );
        assert_eq!(decode_assignment(Bytes::new()), Some(vec![]));
        assert_eq!(decode_subscription(Bytes::from_static(&[0])), None);
    }

    proptest! {
        #[test]
        fn range_assigns_every_partition_once(
            n_members in 1usize..6,
            counts in proptest::collection::vec(0i32..20, 1..4),
        ) {
            let topics: Vec<String> = (0..counts.len()).map(|i| format!("t{i}")).collect();
            let m: BTreeMap<String, Vec<String>> =
                (0..n_members).map(|i| (format!("m{i}"), topics.clone())).collect();
            let p: BTreeMap<String, i32> =
                topics.iter().cloned().zip(counts.iter().copied()).collect();
            let a = range(&m, &p);
            for (t, &n) in &p {
                let mut all: Vec<i32> = a.values().flat_map(|x| x.get(t).cloned().unwrap_or_default()).collect();
                all.sort();
                prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
                let sizes: Vec<usize> = a.values().map(|x| x.get(t).map_or(0, |v| v.len())).collect();
                prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }
}
