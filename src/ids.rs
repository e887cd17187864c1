//! Identifiers every layer shares, and the rules that make them: nodes,
//! Raft groups, regions as origins of a log, epochs, log references, and
//! which names regions and topics may have. Pure, at the bottom of the
//! layer order: everything may import it, it imports nothing of the crate.

use serde::{Deserialize, Serialize};

/// A node, unique over every region of the topology.
pub type NodeId = u64;

/// Raft group id. The meta group is 0; partition `p` of the topic with
/// sequence number `s` is `s << 32 | p` (sequence numbers start at 1 and are
/// never reused, so a re-created topic never meets old data).
pub type GroupId = u64;

pub const META_GROUP: GroupId = 0;

pub fn partition_group(topic_seq: u32, partition: u32) -> GroupId {
    ((topic_seq as u64) << 32) | partition as u64
}

/// The stable 32-bit id of a region in keys: FNV-1a of its name.
pub fn origin_id(region: &str) -> u32 {
    region.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// The epoch an origin log starts with; the control plane bumps it when a
/// region is fenced and rejoins.
pub const EPOCH_FIRST: u32 = 1;

/// One origin log of a partition: `(origin id, epoch)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogRef {
    pub origin: u32,
    pub epoch: u32,
}

/// A producer id is `node << PID_NODE_SHIFT | n`: the node that gave it out
/// (node ids are unique across regions, so ids are too) above a counter
/// that node keeps (see `storage::producer_ids`).
pub const PID_NODE_SHIFT: u32 = 47;
/// Node ids a producer id can name (16 bits; config validation holds them
/// below this).
pub const PID_NODE_MAX: u64 = (1 << (63 - PID_NODE_SHIFT)) - 1;

/// The node that gave out producer id `id`.
pub fn allocating_node(id: i64) -> u64 {
    (id as u64) >> PID_NODE_SHIFT
}

/// Names of regions and topics: what Kafka allows in topic names, minus dots
/// for regions (they become metric label values and file names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_groups_never_meet_the_meta_group_or_each_other() {
        assert_eq!(partition_group(1, 0), 1 << 32);
        assert_ne!(partition_group(1, 0), META_GROUP);
        assert_ne!(partition_group(1, 1), partition_group(2, 1));
    }

    #[test]
    fn origin_ids_are_fnv1a_of_the_name() {
        // FNV-1a of the empty string is its offset basis; ids are stored
        // in keys, so they must never change.
        assert_eq!(origin_id(""), 0x811c_9dc5);
        assert_eq!(origin_id("a"), 0xe40c_292c);
        assert_ne!(origin_id("us-east"), origin_id("eu-west"));
    }

    #[test]
    fn names_are_kafka_topic_names_without_dots() {
        assert!(valid_name("us-east_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(&"x".repeat(250)));
    }
}
