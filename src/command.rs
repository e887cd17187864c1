//! What every Raft group agrees on: the commands of its log ([`Command`]),
//! what applying one returns ([`CommandResult`]), the openraft type config
//! shared by the region's meta group and one group per partition, and why
//! a write to a partition failed ([`PartitionError`], also sent between
//! regions with forwarded produces and failback requests).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::log::producers::Refusal;
use crate::meta::MetaError;

openraft::declare_raft_types!(
    /// Type configuration of every Meridian Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// What an entry weighs: its exact size as stored and sent (bincode), for
/// every kind of entry. Memory bounds, the AppendEntries byte cap and the
/// entry size limit all count with this, so no kind of entry can pass for
/// smaller than it is.
pub fn entry_bytes(e: &Entry) -> u64 {
    // Serializing an in-memory entry cannot fail; if it ever did, weigh it
    // as too large rather than free.
    bincode::serialized_size(e).unwrap_or(u64::MAX)
}

/// A Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Meta group: create a topic.
    CreateTopic {
        name: String,
        id: uuid::Uuid,
        partitions: u32,
        configs: BTreeMap<String, String>,
    },
    /// Meta group: delete a topic and its partitions' data.
    DeleteTopic { name: String },
    /// Meta group: `region` may accept writes until `until_ms` (Unix ms;
    /// see `meta::lease`). Refused unless the region is in `epoch`: a
    /// node that has not applied its region's seal yet (it is catching up
    /// after a restart or a cut) cannot take a lease for the sealed epoch.
    RenewLease {
        region: String,
        until_ms: i64,
        epoch: u32,
    },
    /// Meta group: fail a region over: seal its epoch's origin logs
    /// (`meta::seal`, invariant 7).
    SealRegion(crate::meta::seal::Seal),
    /// Meta group: an operator moves the home of pinned `topic` to region
    /// `to` (`meta::HomeMove`). The current home seals its log of each
    /// partition (`SealOwn`) and reports where (`HomeSealed`); `to` writes
    /// once its partition applied that seal.
    MoveHome { topic: String, to: String },
    /// Meta group: the old home of a moving topic sealed its log of
    /// `partition` at `end` (its last record has HLC `last_hlc`).
    HomeSealed {
        topic: String,
        partition: u32,
        end: u64,
        last_hlc: u64,
    },
    /// Meta group: change topic configs.
    AlterTopic {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    /// Partition group: append a producer's batch of `count` records,
    /// already encoded by the leader as a Kafka batch with offsets from 0 and
    /// HLCs from `proposed_hlc` (see `log::batch::propose`). The state
    /// machine fixes the final offsets and HLCs.
    Append {
        proposed_hlc: u64,
        count: u32,
        batch: bytes::Bytes,
    },
    /// Partition group: promise that this region's origin log will commit
    /// no record with an HLC at or below `hlc` (a closed timestamp, proposed
    /// by the leader while the partition is idle; invariant 5).
    Close { hlc: u64 },
    /// Partition group: records of another origin log, copied by the link,
    /// as the origin stored them (`log::batch` form, whole batches, in
    /// offset order), and that log's closed timestamp as of their end.
    /// Applying it is idempotent: records already held are skipped
    /// (invariant 3).
    Replicate {
        origin: u32,
        epoch: u32,
        /// The closed timestamp holds once the log reaches `closed_at`:
        /// every record from that offset on has a larger HLC.
        closed: u64,
        closed_at: u64,
        batches: Vec<bytes::Bytes>,
    },
    /// Partition group: origin log `(origin, epoch)` ends at `end` (its last
    /// record has HLC `last_hlc`), as the metadata group's seal says: copies
    /// past it are dropped, and once it is held up to `end` it no longer
    /// holds the view back.
    SealLog {
        origin: u32,
        epoch: u32,
        end: u64,
        last_hlc: u64,
        /// For a topic pinned to the sealed region: the origin id of its new
        /// home, whose log joins the view after the sealed one.
        successor: Option<u32>,
    },
    /// Partition group, at failback: append records of sealed log `from`
    /// that lay past its seal (starting at its offset `offset`) to this
    /// region's origin log as new records (invariant 7). Idempotent: the
    /// group remembers how far each sealed log was re-injected.
    Reinject {
        from: crate::ids::LogRef,
        offset: u64,
        proposed_hlc: u64,
        count: u32,
        batch: bytes::Bytes,
    },
    /// Partition group of a pinned topic's home, once the topic's home was
    /// moved away by command: seals this region's own log where it ends
    /// now, so that no write commits after the point the next home's
    /// records follow. Answered with `SealedAt`.
    SealOwn,
    /// Partition group: another region holds this region's origin log of
    /// `epoch` up to `upto` (proposed by the leader as the link hears it),
    /// so own records below it may enter the view.
    RemoteHeld { epoch: u32, upto: u64 },
    /// Partition group, at failback: origin log `log` (a returning
    /// region's new epoch) joins the view; it starts closed at this
    /// group's current watermark, which is returned.
    Admit { log: crate::ids::LogRef },
    /// Partition group of the returning region: its origin log moves to
    /// `epoch`. With `floor` (the largest watermark the other regions
    /// admitted it at), the new log starts closed there, so its records
    /// sort after everything any region's view holds.
    BeginEpoch { epoch: u32, floor: Option<u64> },
    /// Partition group: as `Append`, for a batch of an idempotent producer
    /// (its id, epoch and sequences are in the batch header). Applied only
    /// if it continues the producer's sequence (`log::producers`); a
    /// producer last seen in another log waits until every other writer
    /// log is held here up to HLC `settled_at`.
    AppendIdempotent {
        proposed_hlc: u64,
        count: u32,
        batch: bytes::Bytes,
        settled_at: u64,
    },
    /// Partition group: retention or DeleteRecords moves the log start to
    /// view position `log_start`, whose record has HLC `hlc` (computed by
    /// the leader from the view below its high watermark, which never
    /// changes). Stored batches wholly before that record in the view are
    /// removed, of each origin log `o` only below `keep[o]`: what every
    /// other region of the topic is known to hold (a log not listed keeps
    /// everything). See `storage::state_machine::trim`.
    Trim {
        log_start: u64,
        hlc: u64,
        keep: Vec<(crate::ids::LogRef, u64)>,
    },
    /// Meta group: DeleteRecords moves the log start of `topic`'s
    /// partitions (partition, view offset) in every region.
    DeleteRecords {
        topic: String,
        starts: Vec<(u32, u64)>,
    },
}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Membership and blank entries.
    None,
    Appended {
        base_offset: u64,
        first_hlc: u64,
        last_hlc: u64,
        /// The batch's position in the global view, when it is known at
        /// commit: the log is the view's only live one (a pinned topic).
        view_offset: Option<u64>,
    },
    /// An append in a region that is not (yet) a writer of the partition's
    /// view: a pinned topic's new home before its group applied the seal
    /// that makes it one. Retriable.
    NotWriter,
    Meta(Result<(), MetaError>),
    /// After `Close` or `Replicate`: the origin log's high watermark and
    /// closed timestamp here.
    LogState {
        next_offset: u64,
        closed: u64,
    },
    /// An append to this region's own origin log after it was sealed:
    /// refused, whatever the proposer believed about its lease.
    Sealed,
    /// After `SealOwn`: this region's log of `epoch` is sealed at `end`,
    /// its last record having HLC `last_hlc`.
    SealedAt {
        epoch: u32,
        end: u64,
        last_hlc: u64,
    },
    /// After `Reinject`: the sealed log is re-injected up to this offset.
    Reinjected {
        upto: u64,
    },
    /// After `AppendIdempotent`: the batch is a retry of one stored before,
    /// records `base_offset..end_offset` of `log`; nothing was stored.
    Duplicate {
        log: crate::ids::LogRef,
        base_offset: u64,
        end_offset: u64,
        view_offset: Option<u64>,
    },
    /// After `AppendIdempotent`: refused by the producer's sequence.
    ProducerRefused(Refusal),
}

/// Why a partition request failed; each maps to one Kafka error code. The
/// router gives it to the Kafka handlers, and the link carries it back
/// from another region (bincode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PartitionError {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("no leader elected yet")]
    LeaderNotAvailable,
    #[error("timed out waiting for the commit")]
    Timeout,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("not enough regions hold the write: {0}")]
    NotEnoughReplicas(String),
    #[error("{0}")]
    Refused(String),
    /// The region holds no write lease (invariant 6): retriable, and
    /// metadata points to other regions.
    #[error("region {0} holds no write lease (cut off from the other regions?); write to another region")]
    Fenced(String),
    /// The region is back from a failover and this partition has not begun
    /// the region's new epoch yet (failback): retriable, in moments.
    #[error(
        "the partition has not begun region {region}'s epoch {epoch} yet (failing back); retry"
    )]
    EpochPending { region: String, epoch: u32 },
    /// An idempotent producer's batch refused by its sequence.
    #[error("{}", producer_refusal(.0))]
    Producer(Refusal),
    /// The batch, as it would be stored, is larger than one Raft entry
    /// may be (`raft.entry_bytes_max`).
    #[error("the batch is {bytes} bytes as stored, more than raft.entry_bytes_max ({max}); send smaller batches")]
    TooLarge { bytes: u64, max: u64 },
    /// Free disk space on the leader is below `storage.free_bytes_reserve`:
    /// retriable, once space is freed.
    #[error("the node's disk has {} MiB free, below storage.free_bytes_reserve ({} MiB); writes resume when space is freed", .free >> 20, .reserve >> 20)]
    DiskFull { free: u64, reserve: u64 },
}

fn producer_refusal(r: &Refusal) -> String {
    match r {
        Refusal::DuplicateOld => {
            "the batch's sequence numbers were stored before (a retry of an old batch)".into()
        }
        Refusal::OutOfOrder { expected, got } => {
            format!("out of order: expected sequence {expected}, got {got}")
        }
        Refusal::UnknownProducer => {
            "this partition holds no state of the producer id (never seen, or expired); start its sequence at 0".into()
        }
        Refusal::StaleEpoch { current } => {
            format!("the producer's epoch is older than its current epoch {current}")
        }
        Refusal::Settling { .. } => "the producer last wrote through another region, whose records of this partition are not all here yet; retry".into(),
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;
    use crate::ids::LogRef;

    fn hex(v: &impl Serialize) -> String {
        bincode::serialize(v)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Raft logs, snapshots and link messages on disk and on the wire are
    /// bincode, which encodes no type paths but does encode variant indexes
    /// and field order: moving these types between modules must leave
    /// these bytes as they are.
    #[test]
    fn commands_encode_as_they_always_did() {
        let reinject = Command::Reinject {
            from: LogRef {
                origin: 7,
                epoch: 2,
            },
            offset: 9,
            proposed_hlc: 11,
            count: 1,
            batch: bytes::Bytes::from_static(b"ab"),
        };
        let renew = Command::RenewLease {
            region: "r".into(),
            until_ms: 5,
            epoch: 1,
        };
        // Variant 11; origin, epoch; offset; HLC; count; batch length, bytes.
        assert_eq!(
            hex(&reinject),
            "0b000000070000000200000009000000000000000b000000000000000100000002000000000000006162"
        );
        // Variant 2; region length, "r"; until_ms; epoch.
        assert_eq!(
            hex(&renew),
            "02000000010000000000000072050000000000000001000000"
        );
        assert_eq!(
            hex(&LogRef {
                origin: 7,
                epoch: 2
            }),
            "0700000002000000"
        );
        // The commands of retention: variants 17 and 18. Trim: log start,
        // HLC, no keep points. DeleteRecords: topic length, "t", one
        // start (partition 0, offset 3).
        let trim = Command::Trim {
            log_start: 1,
            hlc: 2,
            keep: vec![],
        };
        assert_eq!(
            hex(&trim),
            "11000000010000000000000002000000000000000000000000000000"
        );
        let delete = Command::DeleteRecords {
            topic: "t".into(),
            starts: vec![(0, 3)],
        };
        assert_eq!(
            hex(&delete),
            "120000000100000000000000740100000000000000000000000300000000000000"
        );
    }
}
