//! The state machine of one group. For a partition group it turns committed
//! `Append` commands into the origin log: contiguous offsets and strictly
//! increasing HLCs, fixed here so that they hold across leader changes
//! (invariant 2). For the meta group it keeps the region's topics.

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::batch::{self, BatchHeader};
use super::{key, origin_id, Db, LogKey, CF_HLC_INDEX, CF_RECORDS, CF_SM_STATE, EPOCH_FIRST};
use crate::hlc::{self, Clock};
use crate::raft::types::{
    Command, CommandResult, Entry, GroupId, LogId, NodeId, StorageError, TypeConfig, META_GROUP,
};
use crate::topic::MetaState;

/// How far a partition's origin log has been applied (= committed) here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The origin log this group writes: this region's, current epoch.
    pub log: LogKey,
    /// The high watermark: offset of the next record.
    pub next_offset: u64,
    pub last_hlc: u64,
}

/// Where a state machine publishes what it applied.
pub enum Notify {
    Meta(watch::Sender<Arc<MetaState>>),
    Partition(watch::Sender<Progress>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// Epoch of this region's origin log.
    epoch: u32,
    next_offset: u64,
    last_hlc: u64,
    meta: Option<MetaState>,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            last_applied: None,
            membership: StoredMembership::default(),
            epoch: EPOCH_FIRST,
            next_offset: 0,
            last_hlc: 0,
            meta: None,
        }
    }
}

pub struct StateMachine {
    db: Arc<Db>,
    group: GroupId,
    /// This region: the origin of every record appended here.
    origin: String,
    origin_id: u32,
    applied: Applied,
    notify: Notify,
    clock: Arc<Clock>,
}

fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl StateMachine {
    /// Loads the group's applied state and publishes it.
    pub fn open(
        db: Arc<Db>,
        group: GroupId,
        origin: String,
        clock: Arc<Clock>,
        notify: Notify,
    ) -> Result<Self, StorageError> {
        let applied = match db
            .get(CF_SM_STATE, &key(group, 0))
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?
        {
            Some(v) => {
                bincode::deserialize(&v).map_err(|e| StorageIOError::read_state_machine(any(*e)))?
            }
            None => Applied::default(),
        };
        clock.observe(applied.last_hlc);
        let sm = StateMachine {
            db,
            group,
            origin_id: origin_id(&origin),
            origin,
            applied,
            notify,
            clock,
        };
        sm.publish();
        Ok(sm)
    }

    fn publish(&self) {
        match &self.notify {
            Notify::Meta(tx) => {
                let m = self.applied.meta.clone().unwrap_or_default();
                tx.send_replace(Arc::new(m));
            }
            Notify::Partition(tx) => {
                tx.send_replace(Progress {
                    log: self.log(),
                    next_offset: self.applied.next_offset,
                    last_hlc: self.applied.last_hlc,
                });
            }
        }
    }

    fn log(&self) -> LogKey {
        LogKey {
            group: self.group,
            origin: self.origin_id,
            epoch: self.applied.epoch,
        }
    }

    fn apply_one(&mut self, b: &mut WriteBatch, cmd: Command) -> CommandResult {
        match cmd {
            Command::Append {
                proposed_hlc,
                count,
                batch: proposed,
            } => {
                if count == 0 {
                    return CommandResult::Appended {
                        base_offset: self.applied.next_offset,
                        first_hlc: self.applied.last_hlc,
                        last_hlc: self.applied.last_hlc,
                    };
                }
                let h = BatchHeader {
                    base_offset: self.applied.next_offset,
                    count,
                    first_hlc: hlc::assign_first(proposed_hlc, self.applied.last_hlc),
                };
                assert!(
                    h.first_hlc > self.applied.last_hlc,
                    "HLCs strictly increase"
                );
                let stored = if h.first_hlc == proposed_hlc {
                    batch::store(h, &proposed)
                } else {
                    // The leader encoded this batch from records it had just
                    // decoded: decoding it again cannot fail.
                    batch::restamp(h, &self.origin, &proposed).expect("proposed batch decodes")
                };
                let log = self.log();
                b.put_cf(self.db.cf(CF_RECORDS), log.key(h.base_offset), stored);
                b.put_cf(
                    self.db.cf(CF_HLC_INDEX),
                    log.key(h.last_hlc()),
                    h.base_offset.to_be_bytes(),
                );
                self.applied.next_offset = h.end_offset();
                self.applied.last_hlc = h.last_hlc();
                CommandResult::Appended {
                    base_offset: h.base_offset,
                    first_hlc: h.first_hlc,
                    last_hlc: h.last_hlc(),
                }
            }
            meta_cmd => {
                assert_eq!(self.group, META_GROUP, "meta commands go to the meta group");
                let meta = self.applied.meta.get_or_insert_with(MetaState::default);
                CommandResult::Meta(meta.apply(&meta_cmd))
            }
        }
    }

    fn persist(&self, mut b: WriteBatch) -> Result<(), StorageError> {
        let v = bincode::serialize(&self.applied).expect("serialize applied state");
        b.put_cf(self.db.cf(CF_SM_STATE), key(self.group, 0), v);
        // Everything applied is in the synced Raft log; after a crash the
        // log replays what the memtables lost.
        self.db
            .write_unlogged(b)
            .map_err(|e| StorageIOError::write_state_machine(any(e)).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::default();
        let mut results = Vec::new();
        for e in entries {
            self.applied.last_applied = Some(e.log_id);
            let r = match e.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(e.log_id), m);
                    CommandResult::None
                }
                EntryPayload::Normal(cmd) => self.apply_one(&mut b, cmd),
            };
            results.push(r);
        }
        self.persist(b)?;
        self.clock.observe(self.applied.last_hlc);
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            group: self.group,
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let snap: Applied = bincode::deserialize(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(*e)))?;
        if self.group != META_GROUP && snap.next_offset > self.applied.next_offset {
            // A partition snapshot carries the state, not the records. Raft
            // logs are never purged, so no leader sends one; if one ever
            // came, taking it would silently skip records. Refuse loudly.
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(format!(
                    "group {}: a snapshot would skip records {}..{}; partition snapshots are not supported",
                    self.group, self.applied.next_offset, snap.next_offset
                )),
            )
            .into());
        }
        self.applied = snap;
        self.persist(WriteBatch::default())?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(None)
    }
}

pub struct SnapshotBuilder {
    group: GroupId,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = bincode::serialize(&self.applied).expect("serialize snapshot");
        let index = self.applied.last_applied.map_or(0, |l| l.index);
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.applied.last_applied,
                last_membership: self.applied.membership.clone(),
                snapshot_id: format!("{}-{}", self.group, index),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Reads committed records of a partition straight from storage.
pub mod read {
    use super::*;

    /// Stored Kafka record batches of `group` from the one holding `from`
    /// up to the high watermark `hw`, at most about `max_bytes` (but always at
    /// least one batch, as Kafka does, so a large batch cannot stall a reader).
    pub fn batches(
        db: &Db,
        log: LogKey,
        from: u64,
        hw: u64,
        max_bytes: usize,
    ) -> Result<Vec<bytes::Bytes>, super::super::DbError> {
        let mut out = Vec::new();
        if from >= hw {
            return Ok(out);
        }
        let prefix = log.prefix();
        let start = match db.last_at_or_before(CF_RECORDS, &prefix, from)? {
            Some((base, v)) => {
                let (h, _) = batch::decode(&v).map_err(corrupt)?;
                if h.end_offset() > from {
                    base
                } else {
                    from
                }
            }
            None => from,
        };
        let mut size = 0usize;
        for r in db.range(CF_RECORDS, &prefix, start, hw) {
            let (_, v) = r?;
            let (_, kafka) = batch::decode(&v).map_err(corrupt)?;
            if !out.is_empty() && size + kafka.len() > max_bytes {
                break;
            }
            size += kafka.len();
            out.push(bytes::Bytes::copy_from_slice(kafka));
        }
        Ok(out)
    }

    /// Offset and HLC of the first record with an HLC at or above `hlc`.
    pub fn offset_for_hlc(
        db: &Db,
        log: LogKey,
        hlc: u64,
    ) -> Result<Option<(u64, u64)>, super::super::DbError> {
        let Some((_, base)) = db.first_at_or_after(CF_HLC_INDEX, &log.prefix(), hlc)? else {
            return Ok(None);
        };
        let base = u64::from_be_bytes(
            base.as_ref()
                .try_into()
                .map_err(|_| corrupt("hlc index value".into()))?,
        );
        let Some(v) = db.get(CF_RECORDS, &log.key(base))? else {
            return Err(corrupt(format!("hlc index names missing batch {base}")));
        };
        let (h, _) = batch::decode(&v).map_err(corrupt)?;
        Ok(h.offset_for_hlc(hlc)
            .map(|o| (o, h.first_hlc + (o - h.base_offset))))
    }

    fn corrupt(reason: String) -> super::super::DbError {
        super::super::DbError::Corrupt {
            cf: CF_RECORDS,
            reason,
        }
    }
}
