//! The state machine, applied command by command on a real RocksDB in a
//! temporary directory. Shared helpers here; tests by command family in
//! the files below.

mod failback;
mod idempotence;
mod seal;
mod trim;

use super::*;
use crate::log::producers::{self, Producer};
use crate::log::RecordIn;
use crate::storage::read;
use openraft::RaftSnapshotBuilder;

/// Applies `cmd` and advances the view, as a committed entry does.
fn step(sm: &mut StateMachine, b: &mut WriteBatch, cmd: Command) -> CommandResult {
    let r = sm.apply_one(b, cmd);
    sm.advance_view(b);
    r
}

fn machine(dir: &std::path::Path) -> StateMachine {
    machine_with(dir, &["us-east", "eu-west"])
}

/// A partition group of region us-east whose view merges `writers`.
fn machine_with(dir: &std::path::Path, writers: &[&str]) -> StateMachine {
    let db = Db::open(dir, Arc::new(crate::metrics::Metrics::new())).unwrap();
    let view = Origins {
        writers: writers.iter().map(|w| origin_id(w)).collect(),
        regions: ["us-east", "eu-west"].map(origin_id).to_vec(),
        node_regions: Arc::new([(1, origin_id("us-east")), (4, origin_id("eu-west"))].into()),
    };
    let (tx, _) = watch::channel(Progress::default());
    StateMachine::open(
        db,
        5,
        "us-east".into(),
        view,
        Arc::new(Clock::new()),
        Notify::Partition(tx),
    )
    .unwrap()
}

fn stored(base_offset: u64, count: u32, first_hlc: u64) -> bytes::Bytes {
    let records = vec![
        RecordIn {
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![],
        };
        count as usize
    ];
    let h = BatchHeader {
        base_offset,
        count,
        first_hlc,
    };
    batch::encode(h, "eu-west", &records).into()
}

fn replicate(closed: u64, closed_at: u64, batches: Vec<bytes::Bytes>) -> Command {
    Command::Replicate {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
        closed,
        closed_at,
        batches,
    }
}

fn meta_machine(dir: &std::path::Path) -> StateMachine {
    let db = Db::open(dir, Arc::new(crate::metrics::Metrics::new())).unwrap();
    let (tx, _) = watch::channel(Arc::new(MetaState::default()));
    StateMachine::open(
        db,
        META_GROUP,
        "us-east".into(),
        Origins::default(),
        Arc::new(Clock::new()),
        Notify::Meta(tx),
    )
    .unwrap()
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn seal(region: &str, end: u64, last_hlc: u64) -> Command {
    Command::SealLog {
        origin: origin_id(region),
        epoch: EPOCH_FIRST,
        end,
        last_hlc,
        successor: None,
    }
}

fn proposed(hlc: u64, n: usize) -> bytes::Bytes {
    let r = RecordIn {
        key: None,
        value: Some(bytes::Bytes::from_static(b"v")),
        headers: vec![],
    };
    batch::propose(hlc, "us-east", &vec![r; n], None)
}

/// eu-west's stored batch of producer `p`'s first two records
/// (offsets 0 and 1, HLCs from 900), as the link copies it here.
fn west_copy(p: Producer) -> bytes::Bytes {
    let records = vec![
        RecordIn {
            key: None,
            value: Some(bytes::Bytes::from_static(b"w")),
            headers: vec![],
        };
        2
    ];
    let h = BatchHeader {
        base_offset: 0,
        count: 2,
        first_hlc: 900,
    };
    batch::store(h, &batch::propose(900, "eu-west", &records, Some(p))).into()
}

/// Producer `p`'s record `seq` (epoch 0) as failback re-injects it:
/// value `w<seq>`, its producer header.
fn reinjected(p: Producer, seq: i32) -> RecordIn {
    RecordIn {
        key: None,
        value: Some(bytes::Bytes::from(format!("w{seq}"))),
        headers: vec![(
            batch::HEADER_REINJECTED_PRODUCER.into(),
            Some(format!("{}/0/{seq}", p.id).into()),
        )],
    }
}

fn producer(node: u64, seq: i32) -> Producer {
    Producer {
        id: ((node << crate::ids::PID_NODE_SHIFT) | 7) as i64,
        epoch: 0,
        base_sequence: seq,
    }
}

fn idempotent(hlc: u64, n: usize, p: Producer, settled_at: u64) -> Command {
    let r = RecordIn {
        key: None,
        value: Some(bytes::Bytes::from_static(b"v")),
        headers: vec![],
    };
    Command::AppendIdempotent {
        proposed_hlc: hlc,
        count: n as u32,
        batch: batch::propose(hlc, "us-east", &vec![r; n], Some(p)),
        settled_at,
    }
}

/// The meta group's log is purged behind snapshots (lease renewals
/// would grow it without end): a snapshot must carry the whole state,
/// survive a restart, and be what a node starts from when its applied
/// state (written without the WAL) is older than it.
#[tokio::test]
async fn meta_snapshots_carry_the_state_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = meta_machine(&dir.path().join("a"));
    let create = Command::CreateTopic {
        name: "orders".into(),
        id: uuid::Uuid::new_v4(),
        partitions: 3,
        configs: Default::default(),
    };
    let renew = |until_ms| Command::RenewLease {
        region: "us-east".into(),
        until_ms,
        epoch: EPOCH_FIRST,
    };
    sm.apply(vec![entry(1, create), entry(2, renew(5_000))])
        .await
        .unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 2);
    let state = sm.applied.meta.clone().unwrap();
    assert_eq!(state.leases["us-east"], 5_000);

    // Another node takes the snapshot.
    let mut other = meta_machine(&dir.path().join("b"));
    other
        .install_snapshot(
            &snap.meta,
            Box::new(Cursor::new(snap.snapshot.get_ref().clone())),
        )
        .await
        .unwrap();
    assert_eq!(other.applied.meta.as_ref(), Some(&state));
    let current = other.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);

    // Later entries apply on top; a restart whose applied state is
    // older than the snapshot starts from the snapshot.
    sm.apply(vec![entry(3, renew(9_000))]).await.unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let stale = Applied {
        last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 1)),
        ..Applied::default()
    };
    let mut b = WriteBatch::default();
    b.put_cf(
        sm.db.cf(CF_SM_STATE),
        key(META_GROUP, 0),
        versions::encode(&stale),
    );
    sm.db.write_sync(b).unwrap();
    drop(sm);
    let reopened = meta_machine(&dir.path().join("a"));
    assert_eq!(reopened.applied.last_applied, snap.meta.last_log_id);
    assert_eq!(
        reopened.applied.meta.as_ref().unwrap().leases["us-east"],
        9_000
    );
}

/// Pipelined copies can carry a closed timestamp ahead of the records
/// it covers; it must wait for them, or the view would pass records
/// that are still on their way (invariant 5).
#[tokio::test]
async fn a_closed_timestamp_applies_only_with_the_records_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let log = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    let state = |sm: &StateMachine| sm.applied.logs.get(&log).copied().unwrap_or_default();
    let mut b = WriteBatch::default();
    sm.apply_one(&mut b, replicate(1_000, 2, vec![stored(0, 2, 900)]));
    assert_eq!((state(&sm).next_offset, state(&sm).closed), (2, 1_000));
    // A copy that only closes, sent while 2..4 is still in flight.
    sm.apply_one(&mut b, replicate(3_000, 4, vec![]));
    assert_eq!(state(&sm).closed, 1_000, "closed ahead of its records");
    // A copy past a gap: neither its records nor its closed timestamp.
    sm.apply_one(&mut b, replicate(5_000, 6, vec![stored(4, 2, 4_000)]));
    assert_eq!((state(&sm).next_offset, state(&sm).closed), (2, 1_000));
    // The records in flight arrive, then the resent ones.
    sm.apply_one(&mut b, replicate(2_500, 4, vec![stored(2, 2, 2_000)]));
    assert_eq!((state(&sm).next_offset, state(&sm).closed), (4, 2_500));
    // Overlapping copies skip what is held (invariant 3).
    sm.apply_one(
        &mut b,
        replicate(5_000, 6, vec![stored(2, 2, 2_000), stored(4, 2, 4_000)]),
    );
    assert_eq!((state(&sm).next_offset, state(&sm).closed), (6, 5_000));
    // A late closed-only copy for an earlier end still counts (it is
    // lower, so nothing changes).
    sm.apply_one(&mut b, replicate(3_000, 4, vec![]));
    assert_eq!(state(&sm).closed, 5_000);
}
