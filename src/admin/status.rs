//! What `/status` answers, typed: written by the node (`status_of`) and
//! read back by `meridian status`, the drill, chaos runs and the tests.
//! Field names are the JSON's: renaming one changes the endpoint. A field
//! a node does not send (one of another version) reads as its default, as
//! the untyped readers before this read it as null.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `/status` of one node, parsed; `None` if it is not a node's status.
pub fn parse(body: &str) -> Option<Status> {
    serde_json::from_str(body).ok()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupStatus {
    pub group: u64,
    pub topic: Option<String>,
    pub partition: Option<u32>,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Known on the leader only: the highest index a majority has stored.
    pub commit_index: Option<u64>,
    /// The Kafka high watermark: length of the partition's global view.
    pub high_watermark: Option<u64>,
    /// The partition's log start here (retention, DeleteRecords), and the
    /// records removed from this node's storage.
    pub log_start: Option<u64>,
    pub removed_records: Option<u64>,
    /// Bytes of the group's data (records, indexes, view, state) and of its
    /// Raft log in this node's SST files: RocksDB's estimate, without what
    /// is still in memory.
    pub data_bytes: u64,
    pub raft_log_bytes: u64,
    /// Last entry of the latest snapshot, and the last entry purged from
    /// the log (the meta group only; partition logs are kept whole).
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Origin logs held here.
    pub origin_logs: Vec<OriginLogStatus>,
    /// On the leader: what each other region holds of this region's log.
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OriginLogStatus {
    pub origin: String,
    pub epoch: u32,
    pub next_offset: u64,
    /// Closed timestamp, as wall-clock ms.
    pub closed_ms: i64,
    /// Records of it in the global view.
    pub merged: u64,
    /// The first offset still stored here (retention removed those below).
    pub stored_from: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    pub region: String,
    pub held: u64,
    pub lag_records: u64,
}

/// One failed-over region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SealStatus {
    pub region: String,
    /// The sealed epoch; the region's next one is `epoch + 1`.
    pub epoch: u32,
    /// When the metadata leader decided the failover (Unix ms).
    pub decided_at_ms: i64,
    pub partitions: usize,
    /// Records of the region kept in the global view, summed over partitions.
    pub records: u64,
}

/// A pinned topic's home moved by command (`control::home`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MoveStatus {
    pub topic: String,
    pub from: String,
    pub to: String,
    pub partitions: u32,
    /// Partitions whose old home's log is sealed (metadata).
    pub sealed: usize,
    /// Partitions on this node whose group has applied the handover.
    pub handed_over_here: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub node: u64,
    pub region: String,
    pub kafka: String,
    pub partitions_led: usize,
    /// Partition groups led by each node of this region, as this node's
    /// replicas see them: the spread that `raft::balance` evens out.
    pub leaders: BTreeMap<u64, usize>,
    /// Milliseconds of writing this node's region lease has left, as this
    /// node acts on it; absent with one region (no lease needed).
    pub lease_ms: Option<i64>,
    /// Every region's lease as the applied metadata says: ms of writing left.
    pub leases: BTreeMap<String, i64>,
    /// Whether this node's region was failed over.
    pub sealed: bool,
    /// Failed-over regions, as the applied metadata says.
    pub seals: Vec<SealStatus>,
    /// Moves of pinned topics' homes, oldest first.
    pub moves: Vec<MoveStatus>,
    pub meta: GroupStatus,
    pub partitions: Vec<GroupStatus>,
    pub disk: DiskStatus,
}

/// The node's free disk space and its reserve (`storage.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskStatus {
    /// Free bytes on the data directory's filesystem, as last read.
    pub free_bytes: u64,
    /// Bytes the data directory holds, as last counted.
    pub used_bytes: u64,
    /// `storage.free_bytes_reserve` (0: off).
    pub reserve_bytes: u64,
    /// Whether new writes are refused for lack of space.
    pub refusing_writes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON the endpoint has always answered, field for field; it
    /// reads back into the same value.
    #[test]
    fn the_json_is_unchanged_and_reads_back() {
        let group = |group, topic: Option<&str>| GroupStatus {
            group,
            topic: topic.map(String::from),
            partition: topic.map(|_| 0),
            state: "Leader".into(),
            leader: Some(1),
            term: 3,
            last_log_index: Some(9),
            applied_index: Some(9),
            commit_index: Some(9),
            high_watermark: topic.map(|_| 4),
            log_start: topic.map(|_| 1),
            removed_records: topic.map(|_| 1),
            data_bytes: 5,
            raft_log_bytes: 6,
            snapshot_index: None,
            purged_index: None,
            origin_logs: topic.map_or_else(Vec::new, |_| {
                vec![OriginLogStatus {
                    origin: "us-east".into(),
                    epoch: 1,
                    next_offset: 4,
                    closed_ms: 1_700_000_000_000,
                    merged: 4,
                    stored_from: 1,
                }]
            }),
            links: topic.map_or_else(Vec::new, |_| {
                vec![LinkStatus {
                    region: "eu-west".into(),
                    held: 3,
                    lag_records: 1,
                }]
            }),
        };
        let s = Status {
            node: 1,
            region: "us-east".into(),
            kafka: "127.0.0.1:9092".into(),
            partitions_led: 1,
            leaders: BTreeMap::from([(1, 1), (2, 0)]),
            lease_ms: Some(2500),
            leases: BTreeMap::from([("us-east".to_string(), 2500)]),
            sealed: false,
            seals: vec![SealStatus {
                region: "ap-south".into(),
                epoch: 1,
                decided_at_ms: 1_700_000_000_000,
                partitions: 2,
                records: 7,
            }],
            moves: vec![MoveStatus {
                topic: "orders".into(),
                from: "us-east".into(),
                to: "eu-west".into(),
                partitions: 2,
                sealed: 1,
                handed_over_here: 0,
            }],
            meta: group(0, None),
            partitions: vec![group(4097, Some("orders"))],
            disk: DiskStatus {
                free_bytes: 5 << 30,
                used_bytes: 3 << 20,
                reserve_bytes: 1 << 30,
                refusing_writes: false,
            },
        };
        let json = serde_json::to_string(&s).unwrap();
        let meta = r#"{"group":0,"topic":null,"partition":null,"state":"Leader","leader":1,"term":3,"last_log_index":9,"applied_index":9,"commit_index":9,"high_watermark":null,"log_start":null,"removed_records":null,"data_bytes":5,"raft_log_bytes":6,"snapshot_index":null,"purged_index":null,"origin_logs":[],"links":[]}"#;
        let part = r#"{"group":4097,"topic":"orders","partition":0,"state":"Leader","leader":1,"term":3,"last_log_index":9,"applied_index":9,"commit_index":9,"high_watermark":4,"log_start":1,"removed_records":1,"data_bytes":5,"raft_log_bytes":6,"snapshot_index":null,"purged_index":null,"origin_logs":[{"origin":"us-east","epoch":1,"next_offset":4,"closed_ms":1700000000000,"merged":4,"stored_from":1}],"links":[{"region":"eu-west","held":3,"lag_records":1}]}"#;
        let want = format!(
            r#"{{"node":1,"region":"us-east","kafka":"127.0.0.1:9092","partitions_led":1,"leaders":{{"1":1,"2":0}},"lease_ms":2500,"leases":{{"us-east":2500}},"sealed":false,"seals":[{{"region":"ap-south","epoch":1,"decided_at_ms":1700000000000,"partitions":2,"records":7}}],"moves":[{{"topic":"orders","from":"us-east","to":"eu-west","partitions":2,"sealed":1,"handed_over_here":0}}],"meta":{meta},"partitions":[{part}],"disk":{{"free_bytes":5368709120,"used_bytes":3145728,"reserve_bytes":1073741824,"refusing_writes":false}}}}"#
        );
        assert_eq!(json, want);
        assert_eq!(parse(&json), Some(s));
        assert_eq!(parse("not json"), None);
        // A node of another version may lack a field: it reads as default.
        let old = parse(r#"{"node":3,"region":"eu-west"}"#).unwrap();
        assert_eq!(
            (old.node, old.region.as_str(), old.seals.len()),
            (3, "eu-west", 0)
        );
    }
}
