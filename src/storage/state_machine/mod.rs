//! The state machine of one group. For a partition group it turns committed
//! `Append` commands into the origin log: contiguous offsets and strictly
//! increasing HLCs, fixed here so that they hold across leader changes
//! (invariant 2). For the meta group it keeps the region's topics.
//!
//! This file holds the types, recovery at open, the openraft adapter and
//! the apply dispatch; each command family is applied in its own file:
//! [`meta`] (the metadata group), `append` (own log), `idempotence`
//! (producers' sequences), `replicate` (copies), `seal` (seals and home
//! handovers), `failback` (re-injection, admission, epochs), `merge` (the
//! view's upkeep), `persist` (applied state and snapshots). The decisions
//! about the view are pure functions in [`rules`].

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

mod append;
mod failback;
mod idempotence;
mod merge;
mod meta;
mod persist;
mod replicate;
pub mod rules;
mod seal;
mod trim;
mod versions;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, OptionalSend, SnapshotMeta, StorageIOError, StoredMembership,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{key, Db, LogKey, CF_HLC_INDEX, CF_RECORDS, CF_SM_STATE};
use crate::command::{Command, CommandResult, Entry, LogId, StorageError, TypeConfig};
use crate::hlc::Clock;
use crate::ids::{origin_id, GroupId, LogRef, NodeId, EPOCH_FIRST, META_GROUP};
use crate::log::batch::{self, BatchHeader};
use crate::log::producers::{ProducerTable, StoredBatch};
use crate::meta::MetaState;
use crate::view::Segment;
use meta::ApplyMeta;
pub use persist::SnapshotBuilder;
use persist::{load_producers, load_snapshot, store_snapshot};
pub use rules::{held_for_view, settled};

/// One origin log of a partition as held here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// The log's high watermark here: offset of its next record.
    pub next_offset: u64,
    pub last_hlc: u64,
    /// Closed timestamp: the origin commits no further record at or below
    /// it (invariant 5). Always at least `last_hlc`.
    pub closed: u64,
    /// Records below this offset are in the global view.
    pub merged: u64,
    /// Where the control plane sealed this log (invariant 7): nothing at
    /// or past it is ever added.
    pub sealed: Option<u64>,
    /// This region's own log: how far another region is known to hold it.
    /// Own records enter the view only below this (while another region
    /// could take over, see `StateMachine::own_bound`).
    pub remote_held: u64,
}

/// The regions of a partition's topic, as origin ids.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Those whose logs make up the global view (the topic's writers).
    pub writers: Vec<u32>,
    /// Every region that holds the topic.
    pub regions: Vec<u32>,
    /// The region of every node of the topology: where a producer id was
    /// given out (`ids::allocating_node`).
    pub node_regions: Arc<BTreeMap<NodeId, u32>>,
}

/// What a partition group has applied (= committed) here.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The origin log this group writes: this region's, current epoch.
    pub log: LogKey,
    /// The own origin log's high watermark: offset of its next record.
    pub next_offset: u64,
    pub last_hlc: u64,
    /// Length of the global view: the partition's Kafka high watermark.
    pub view_next: u64,
    /// Records committed here that will enter the view but have not yet
    /// (`held_for_view`): offsets up to `view_next + view_pending` exist
    /// in the view of a region that merged further.
    pub view_pending: u64,
    pub view_last_hlc: u64,
    /// The view's watermark: the smallest closed timestamp of the writer origins.
    pub watermark: u64,
    /// Every origin log held here, own and copied.
    pub logs: Arc<BTreeMap<LogRef, LogState>>,
    /// A pinned topic's home as this group's log has it (None: every
    /// writer region writes).
    pub home: Option<u32>,
    /// The sealed logs this group handed a pinned topic's home over from.
    pub handed: Arc<Vec<LogRef>>,
    /// The partition's log start: the first view position readers may
    /// fetch (retention, DeleteRecords).
    pub log_start: u64,
    /// Per origin log: the first offset still stored here.
    pub trimmed: Arc<BTreeMap<LogRef, u64>>,
    /// Records removed from storage here by retention and DeleteRecords.
    pub removed_records: u64,
}

impl Progress {
    pub fn own(&self) -> LogRef {
        LogRef {
            origin: self.log.origin,
            epoch: self.log.epoch,
        }
    }
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
    logs: BTreeMap<LogRef, LogState>,
    /// Positions assigned in the global view.
    view_next: u64,
    /// HLC of the view's last record.
    view_last_hlc: u64,
    meta: Option<MetaState>,
    /// A pinned topic's home moves, in the order applied: the sealed log
    /// of the old home, and the new home's origin, whose log joins the
    /// view after it.
    handovers: Vec<(LogRef, u32)>,
    /// Per sealed log: how far its records past the seal were re-injected
    /// into this region's log.
    reinjected: BTreeMap<LogRef, u64>,
    /// The partition's log start: the first view position a reader may
    /// fetch (retention and DeleteRecords move it forward; `trim`).
    log_start: u64,
    /// Per origin log: the first offset still stored here (records below
    /// it were removed; `trim`).
    trimmed: BTreeMap<LogRef, u64>,
    /// Records removed from storage here, of every origin log.
    removed_records: u64,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            last_applied: None,
            membership: StoredMembership::default(),
            epoch: EPOCH_FIRST,
            logs: BTreeMap::new(),
            view_next: 0,
            view_last_hlc: 0,
            meta: None,
            handovers: Vec::new(),
            reinjected: BTreeMap::new(),
            log_start: 0,
            trimmed: BTreeMap::new(),
            removed_records: 0,
        }
    }
}

pub struct StateMachine {
    db: Arc<Db>,
    group: GroupId,
    /// This region: the origin of every record appended here.
    origin: String,
    origin_id: u32,
    /// Origins whose logs make up the global view (the topic's writers,
    /// and a pinned topic's homes since its first).
    view_origins: Vec<u32>,
    /// A pinned topic's first home (None: every writer region writes).
    first_home: Option<u32>,
    /// Every region that holds the topic.
    topic_regions: Vec<u32>,
    applied: Applied,
    /// Records held but not yet in the view, per origin log.
    pending: BTreeMap<LogRef, VecDeque<Segment>>,
    /// Idempotent producers' state, from every log held here; changes are
    /// stored with the apply that made them.
    producers: ProducerTable,
    node_regions: Arc<BTreeMap<NodeId, u32>>,
    notify: Notify,
    clock: Arc<Clock>,
    /// A storage error met while applying (a trim's reads and writes):
    /// the apply fails before anything more is persisted.
    failed: Option<super::DbError>,
}

fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl StateMachine {
    /// Loads the group's applied state and publishes it. `origins` names
    /// the topic's regions and those whose logs the global view merges
    /// (none for the meta group).
    pub fn open(
        db: Arc<Db>,
        group: GroupId,
        origin: String,
        origins: Origins,
        clock: Arc<Clock>,
        notify: Notify,
    ) -> Result<Self, StorageError> {
        let applied: Applied = match db
            .get(CF_SM_STATE, &key(group, 0))
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?
        {
            Some(v) => {
                versions::decode(&v).map_err(|e| StorageIOError::read_state_machine(any(*e)))?
            }
            None => Applied::default(),
        };
        // The applied state skips the WAL; after a crash it can be older
        // than the latest snapshot, whose log prefix may be purged: start
        // from the snapshot then.
        let applied = match load_snapshot(&db, group)? {
            Some((meta, data)) if meta.last_log_id > applied.last_applied => {
                versions::decode(&data).map_err(|e| StorageIOError::read_snapshot(None, any(*e)))?
            }
            _ => applied,
        };
        let first_home = match origins.writers[..] {
            [home] => Some(home),
            _ => None,
        };
        let mut view_origins = origins.writers;
        for (_, o) in &applied.handovers {
            if !view_origins.contains(o) {
                view_origins.push(*o);
            }
        }
        let producers =
            load_producers(&db, group).map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        let mut sm = StateMachine {
            db,
            group,
            origin_id: origin_id(&origin),
            origin,
            view_origins,
            first_home,
            topic_regions: origins.regions,
            applied,
            pending: BTreeMap::new(),
            producers,
            node_regions: origins.node_regions,
            notify,
            clock,
            failed: None,
        };
        sm.load_pending()
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        sm.clock.observe(sm.own_state().last_hlc);
        sm.publish();
        Ok(sm)
    }

    /// Rebuilds the records not yet merged into the view from storage.
    fn load_pending(&mut self) -> Result<(), super::DbError> {
        let logs: Vec<LogRef> = self.applied.logs.keys().copied().collect();
        for log in logs {
            self.load_pending_of(log)?;
        }
        Ok(())
    }

    /// Queues the records of `log` held but not yet in the view.
    fn load_pending_of(&mut self, log: LogRef) -> Result<(), super::DbError> {
        let Some(st) = self.applied.logs.get(&log).copied() else {
            return Ok(());
        };
        // Records past a seal never enter the view.
        let end = st.sealed.map_or(st.next_offset, |e| e.min(st.next_offset));
        if st.merged >= end || !self.view_origins.contains(&log.origin) {
            return Ok(());
        }
        let prefix = self.log_key(log).prefix();
        let start = match self.db.last_at_or_before(CF_RECORDS, &prefix, st.merged)? {
            Some((base, _)) => base,
            None => st.merged,
        };
        let mut segs = Vec::new();
        for r in self.db.range(CF_RECORDS, &prefix, start, end) {
            let (_, v) = r?;
            let (h, _) = batch::decode(&v).map_err(|reason| super::DbError::Corrupt {
                cf: CF_RECORDS,
                reason,
            })?;
            if h.end_offset() <= st.merged {
                continue;
            }
            let skip = st.merged.saturating_sub(h.base_offset);
            segs.push(Segment {
                base_offset: h.base_offset + skip,
                count: h.count - skip as u32,
                first_hlc: h.first_hlc + skip,
            });
        }
        self.pending.entry(log).or_default().extend(segs);
        Ok(())
    }

    fn publish(&self) {
        match &self.notify {
            Notify::Meta(tx) => {
                let m = self.applied.meta.clone().unwrap_or_default();
                tx.send_replace(Arc::new(m));
            }
            Notify::Partition(tx) => {
                let own = self.own_state();
                tx.send_replace(Progress {
                    log: self.log_key(self.own_ref()),
                    next_offset: own.next_offset,
                    last_hlc: own.last_hlc,
                    view_next: self.applied.view_next,
                    view_pending: held_for_view(&self.applied.logs, &self.view_origins),
                    view_last_hlc: self.applied.view_last_hlc,
                    watermark: self.watermark(),
                    logs: Arc::new(self.applied.logs.clone()),
                    home: self.home(),
                    handed: Arc::new(self.applied.handovers.iter().map(|h| h.0).collect()),
                    log_start: self.applied.log_start,
                    trimmed: Arc::new(self.applied.trimmed.clone()),
                    removed_records: self.applied.removed_records,
                });
            }
        }
    }

    /// A pinned topic's home as this group's log has it: its first home,
    /// then each handover's successor in turn.
    fn home(&self) -> Option<u32> {
        let first = self.first_home?;
        Some(self.applied.handovers.last().map_or(first, |h| h.1))
    }

    fn own_ref(&self) -> LogRef {
        LogRef {
            origin: self.origin_id,
            epoch: self.applied.epoch,
        }
    }

    fn own_state(&self) -> LogState {
        self.applied
            .logs
            .get(&self.own_ref())
            .copied()
            .unwrap_or_default()
    }

    fn log_key(&self, log: LogRef) -> LogKey {
        LogKey::new(self.group, log)
    }

    /// Stores one batch of `log` at the log's end and queues it for the view;
    /// an idempotent producer's batch joins its state.
    fn put_batch(&mut self, b: &mut WriteBatch, log: LogRef, h: BatchHeader, stored: &[u8]) {
        if let Some(p) = batch::producer_of(&stored[batch::HEADER_LEN..]) {
            self.producers.record(
                p,
                StoredBatch {
                    first_seq: p.base_sequence,
                    last_seq: p.last_sequence(h.count),
                    log,
                    base_offset: h.base_offset,
                    count: h.count,
                },
                h.last_hlc(),
            );
        }
        let lk = self.log_key(log);
        b.put_cf(self.db.cf(CF_RECORDS), lk.key(h.base_offset), stored);
        // Base offset and stored size: retention by size adds up sizes
        // from the index alone (entries before retention hold the base only).
        let mut index = [0u8; 12];
        index[..8].copy_from_slice(&h.base_offset.to_be_bytes());
        index[8..].copy_from_slice(&(stored.len().min(u32::MAX as usize) as u32).to_be_bytes());
        b.put_cf(self.db.cf(CF_HLC_INDEX), lk.key(h.last_hlc()), index);
        let st = self.applied.logs.entry(log).or_default();
        st.next_offset = h.end_offset();
        st.last_hlc = h.last_hlc();
        st.closed = st.closed.max(st.last_hlc);
        if self.view_origins.contains(&log.origin) {
            self.pending.entry(log).or_default().push_back(Segment {
                base_offset: h.base_offset,
                count: h.count,
                first_hlc: h.first_hlc,
            });
        }
    }

    /// Applies one command: a short dispatch to the file of its family.
    fn apply_one(&mut self, b: &mut WriteBatch, cmd: Command) -> CommandResult {
        match cmd {
            Command::Append {
                proposed_hlc,
                count,
                batch: proposed,
            } => self.append_own(b, proposed_hlc, count, &proposed, None),
            Command::AppendIdempotent {
                proposed_hlc,
                count,
                batch: proposed,
                settled_at,
            } => self.append_own(b, proposed_hlc, count, &proposed, Some(settled_at)),
            Command::Reinject {
                from,
                offset,
                proposed_hlc,
                count,
                batch: proposed,
            } => self.reinject(b, from, offset, proposed_hlc, count, &proposed),
            Command::RemoteHeld { epoch, upto } => self.remote_held(epoch, upto),
            Command::Admit { log } => self.admit(log),
            Command::SealOwn => self.seal_own(),
            Command::BeginEpoch { epoch, floor } => self.begin_epoch(epoch, floor),
            Command::Close { hlc } => self.close(hlc),
            Command::Replicate {
                origin,
                epoch,
                closed,
                closed_at,
                batches,
            } => {
                let log = LogRef { origin, epoch };
                if log != self.own_ref() {
                    self.replicate(b, log, closed, closed_at, &batches);
                }
                self.log_state(log)
            }
            Command::SealLog {
                origin,
                epoch,
                end,
                last_hlc,
                successor,
            } => {
                let log = LogRef { origin, epoch };
                self.seal(log, end, last_hlc, successor);
                self.log_state(log)
            }
            Command::Trim {
                log_start,
                hlc,
                keep,
            } => {
                if let Err(e) = self.trim(b, log_start, hlc, &keep) {
                    self.failed.get_or_insert(e);
                }
                CommandResult::None
            }
            meta_cmd => {
                assert_eq!(self.group, META_GROUP, "meta commands go to the meta group");
                let meta = self.applied.meta.get_or_insert_with(MetaState::default);
                CommandResult::Meta(meta.apply(&meta_cmd))
            }
        }
    }

    /// What most commands answer: `log`'s high watermark and closed
    /// timestamp here.
    fn log_state(&self, log: LogRef) -> CommandResult {
        let st = self.applied.logs.get(&log).copied().unwrap_or_default();
        CommandResult::LogState {
            next_offset: st.next_offset,
            closed: st.closed,
        }
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
        if let Some(e) = self.failed.take() {
            return Err(StorageIOError::write_state_machine(any(e)).into());
        }
        self.advance_view(&mut b);
        self.persist(b)?;
        self.clock.observe(self.own_state().last_hlc);
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
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
        let snap: Applied = versions::decode(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(*e)))?;
        if self.group != META_GROUP && snap.logs != self.applied.logs {
            // A partition snapshot carries the state, not the records. Raft
            // logs are never purged, so no leader sends one; if one ever
            // came, taking it would silently skip records. Refuse loudly.
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(format!(
                    "group {}: a snapshot would skip records; partition snapshots are not supported",
                    self.group
                )),
            )
            .into());
        }
        store_snapshot(&self.db, self.group, meta, snapshot.get_ref())?;
        self.applied = snap;
        self.persist(WriteBatch::default())?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            load_snapshot(&self.db, self.group)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}
