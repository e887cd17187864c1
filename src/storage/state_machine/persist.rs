//! Persistence: the applied state and producers' changes written with
//! each apply, and the snapshots the meta group takes.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{BasicNode, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use rocksdb::WriteBatch;

use super::{any, Applied, StateMachine};
use crate::command::{StorageError, TypeConfig};
use crate::ids::{GroupId, NodeId};
use crate::log::producers::{ProducerState, ProducerTable};
use crate::storage::{key, Db, DbError, CF_PRODUCERS, CF_SM_STATE};

impl StateMachine {
    pub(super) fn persist(&mut self, mut b: WriteBatch) -> Result<(), StorageError> {
        for (id, st) in self.producers.take_changes() {
            let k = key(self.group, id as u64);
            match st {
                Some(st) => b.put_cf(
                    self.db.cf(CF_PRODUCERS),
                    k,
                    bincode::serialize(&st).expect("serialize producer state"),
                ),
                None => b.delete_cf(self.db.cf(CF_PRODUCERS), k),
            }
        }
        let v = super::versions::encode(&self.applied);
        b.put_cf(self.db.cf(CF_SM_STATE), key(self.group, 0), v);
        // Everything applied is in the synced Raft log; after a crash the
        // log replays what the memtables lost.
        self.db
            .write_unlogged(b)
            .map_err(|e| StorageIOError::write_state_machine(any(e)).into())
    }
}

/// The idempotent producers' state of `group`, as stored.
pub(super) fn load_producers(db: &Db, group: GroupId) -> Result<ProducerTable, DbError> {
    let mut states = Vec::new();
    for r in db.range(CF_PRODUCERS, &group.to_be_bytes(), 0, u64::MAX) {
        let (id, v) = r?;
        let st = ProducerState::decode(&v).map_err(|e| DbError::Corrupt {
            cf: CF_PRODUCERS,
            reason: e.to_string(),
        })?;
        states.push((id as i64, st));
    }
    Ok(ProducerTable::from_states(states))
}

pub struct SnapshotBuilder {
    pub(super) db: Arc<Db>,
    pub(super) group: GroupId,
    pub(super) applied: Applied,
}

/// Where a group's latest snapshot is kept (only the meta group takes
/// snapshots: its state is small, and lease renewals would otherwise grow
/// its log without end).
fn snapshot_key(group: GroupId) -> [u8; 16] {
    key(group, 1)
}

/// Stores a snapshot durably (fsynced): the log before it may be purged
/// right after, and the state machine's own writes skip the WAL.
pub(super) fn store_snapshot(
    db: &Db,
    group: GroupId,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), StorageError> {
    let v = bincode::serialize(&(meta, data)).expect("serialize snapshot");
    let mut b = WriteBatch::default();
    b.put_cf(db.cf(CF_SM_STATE), snapshot_key(group), v);
    db.write_sync(b)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)).into())
}

type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

pub(super) fn load_snapshot(
    db: &Db,
    group: GroupId,
) -> Result<Option<StoredSnapshot>, StorageError> {
    let Some(v) = db
        .get(CF_SM_STATE, &snapshot_key(group))
        .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?
    else {
        return Ok(None);
    };
    let snap: StoredSnapshot =
        bincode::deserialize(&v).map_err(|e| StorageIOError::read_snapshot(None, any(*e)))?;
    Ok(Some(snap))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = super::versions::encode(&self.applied);
        let index = self.applied.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("{}-{}", self.group, index),
        };
        store_snapshot(&self.db, self.group, &meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
