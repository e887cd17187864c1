//! The state machine of one group. For a partition group it turns committed
//! `Append` commands into the origin log: contiguous offsets and strictly
//! increasing HLCs, fixed here so that they hold across leader changes
//! (invariant 2). For the meta group it keeps the region's topics.

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
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
use super::{
    key, origin_id, Db, LogKey, CF_HLC_INDEX, CF_RECORDS, CF_SM_STATE, CF_VIEW, CF_VIEW_HLC,
    EPOCH_FIRST,
};
use crate::hlc::{self, Clock};
use crate::raft::types::{
    Command, CommandResult, Entry, GroupId, LogId, NodeId, StorageError, TypeConfig, META_GROUP,
};
use crate::topic::MetaState;
use crate::view::{self, LogRef, Run, Segment};

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
    pub view_last_hlc: u64,
    /// The view's watermark: the smallest closed timestamp of the writer origins.
    pub watermark: u64,
    /// Every origin log held here, own and copied.
    pub logs: Arc<BTreeMap<LogRef, LogState>>,
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
        }
    }
}

pub struct StateMachine {
    db: Arc<Db>,
    group: GroupId,
    /// This region: the origin of every record appended here.
    origin: String,
    origin_id: u32,
    /// Origins whose logs make up the global view (the topic's writers).
    view_origins: Vec<u32>,
    applied: Applied,
    /// Records held but not yet in the view, per origin log.
    pending: BTreeMap<LogRef, VecDeque<Segment>>,
    notify: Notify,
    clock: Arc<Clock>,
}

fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl StateMachine {
    /// Loads the group's applied state and publishes it. `view_origins` are
    /// the origin ids whose logs the global view merges (none for the meta
    /// group).
    pub fn open(
        db: Arc<Db>,
        group: GroupId,
        origin: String,
        view_origins: Vec<u32>,
        clock: Arc<Clock>,
        notify: Notify,
    ) -> Result<Self, StorageError> {
        let applied: Applied = match db
            .get(CF_SM_STATE, &key(group, 0))
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?
        {
            Some(v) => {
                bincode::deserialize(&v).map_err(|e| StorageIOError::read_state_machine(any(*e)))?
            }
            None => Applied::default(),
        };
        // The applied state skips the WAL; after a crash it can be older
        // than the latest snapshot, whose log prefix may be purged: start
        // from the snapshot then.
        let applied = match load_snapshot(&db, group)? {
            Some((meta, data)) if meta.last_log_id > applied.last_applied => {
                bincode::deserialize(&data)
                    .map_err(|e| StorageIOError::read_snapshot(None, any(*e)))?
            }
            _ => applied,
        };
        let mut sm = StateMachine {
            db,
            group,
            origin_id: origin_id(&origin),
            origin,
            view_origins,
            applied,
            pending: BTreeMap::new(),
            notify,
            clock,
        };
        sm.load_pending()
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
        sm.clock.observe(sm.own_state().last_hlc);
        sm.publish();
        Ok(sm)
    }

    /// Rebuilds the records not yet merged into the view from storage.
    fn load_pending(&mut self) -> Result<(), super::DbError> {
        for (log, st) in &self.applied.logs {
            if st.merged >= st.next_offset || !self.view_origins.contains(&log.origin) {
                continue;
            }
            let lk = self.log_key(*log);
            let prefix = lk.prefix();
            let start = match self.db.last_at_or_before(CF_RECORDS, &prefix, st.merged)? {
                Some((base, _)) => base,
                None => st.merged,
            };
            let q = self.pending.entry(*log).or_default();
            for r in self.db.range(CF_RECORDS, &prefix, start, st.next_offset) {
                let (_, v) = r?;
                let (h, _) = batch::decode(&v).map_err(|reason| super::DbError::Corrupt {
                    cf: CF_RECORDS,
                    reason,
                })?;
                if h.end_offset() <= st.merged {
                    continue;
                }
                let skip = st.merged.saturating_sub(h.base_offset);
                q.push_back(Segment {
                    base_offset: h.base_offset + skip,
                    count: h.count - skip as u32,
                    first_hlc: h.first_hlc + skip,
                });
            }
        }
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
                    view_last_hlc: self.applied.view_last_hlc,
                    watermark: self.watermark(),
                    logs: Arc::new(self.applied.logs.clone()),
                });
            }
        }
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
        LogKey {
            group: self.group,
            origin: log.origin,
            epoch: log.epoch,
        }
    }

    /// Stores one batch of `log` at the log's end and queues it for the view.
    fn put_batch(&mut self, b: &mut WriteBatch, log: LogRef, h: BatchHeader, stored: &[u8]) {
        let lk = self.log_key(log);
        b.put_cf(self.db.cf(CF_RECORDS), lk.key(h.base_offset), stored);
        b.put_cf(
            self.db.cf(CF_HLC_INDEX),
            lk.key(h.last_hlc()),
            h.base_offset.to_be_bytes(),
        );
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

    fn apply_one(&mut self, b: &mut WriteBatch, cmd: Command) -> CommandResult {
        match cmd {
            Command::Append {
                proposed_hlc,
                count,
                batch: proposed,
            } => {
                let own = self.own_state();
                if count == 0 {
                    return CommandResult::Appended {
                        base_offset: own.next_offset,
                        first_hlc: own.last_hlc,
                        last_hlc: own.last_hlc,
                    };
                }
                // Above the last record and the closed timestamp: invariants 2 and 5.
                let floor = own.last_hlc.max(own.closed);
                let h = BatchHeader {
                    base_offset: own.next_offset,
                    count,
                    first_hlc: hlc::assign_first(proposed_hlc, floor),
                };
                assert!(h.first_hlc > floor, "HLCs strictly increase");
                let stored = if h.first_hlc == proposed_hlc {
                    batch::store(h, &proposed)
                } else {
                    // The leader encoded this batch from records it had just
                    // decoded: decoding it again cannot fail.
                    batch::restamp(h, &self.origin, &proposed).expect("proposed batch decodes")
                };
                self.put_batch(b, self.own_ref(), h, &stored);
                CommandResult::Appended {
                    base_offset: h.base_offset,
                    first_hlc: h.first_hlc,
                    last_hlc: h.last_hlc(),
                }
            }
            Command::Close { hlc } => {
                let own = self.own_ref();
                let st = self.applied.logs.entry(own).or_default();
                st.closed = st.closed.max(hlc).max(st.last_hlc);
                CommandResult::LogState {
                    next_offset: st.next_offset,
                    closed: st.closed,
                }
            }
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
                let st = self.applied.logs.get(&log).copied().unwrap_or_default();
                CommandResult::LogState {
                    next_offset: st.next_offset,
                    closed: st.closed,
                }
            }
            meta_cmd => {
                assert_eq!(self.group, META_GROUP, "meta commands go to the meta group");
                let meta = self.applied.meta.get_or_insert_with(MetaState::default);
                CommandResult::Meta(meta.apply(&meta_cmd))
            }
        }
    }

    /// Appends the batches of `log` that are new here. Batches are whole, so
    /// a log's high watermark is always a batch boundary in every region; a
    /// batch that would leave a gap stops the copy, and the sender resumes
    /// from the high watermark it gets back.
    fn replicate(
        &mut self,
        b: &mut WriteBatch,
        log: LogRef,
        closed: u64,
        closed_at: u64,
        batches: &[bytes::Bytes],
    ) {
        let mut complete = true;
        for stored in batches {
            let next = self.applied.logs.get(&log).map_or(0, |s| s.next_offset);
            let h = match batch::decode(stored) {
                Ok((h, _)) if h.count > 0 => h,
                _ => {
                    tracing::warn!(
                        group = self.group,
                        ?log,
                        "dropping an undecodable replicated batch"
                    );
                    complete = false;
                    break;
                }
            };
            if h.end_offset() <= next {
                continue; // already held: invariant 3
            }
            if h.base_offset != next {
                complete = false;
                break;
            }
            self.put_batch(b, log, h, stored);
        }
        // `closed` holds for the sender's prefix up to `closed_at`: only
        // once that prefix is held here may the view rely on it. (Copies are
        // pipelined, so a closed timestamp can arrive before the records it
        // covers; those copies fail the test and are sent again.)
        let held = self.applied.logs.get(&log).map_or(0, |s| s.next_offset);
        if complete && held >= closed_at {
            let st = self.applied.logs.entry(log).or_default();
            st.closed = st.closed.max(closed);
        }
    }

    /// The view's watermark: the smallest closed timestamp among the
    /// writer origins (an origin's latest epoch counts).
    fn watermark(&self) -> u64 {
        self.view_origins
            .iter()
            .map(|o| {
                self.applied
                    .logs
                    .iter()
                    .filter(|(l, _)| l.origin == *o)
                    .map(|(_, s)| s.closed)
                    .max()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0)
    }

    /// Merges what the watermark allows into the view and stores the runs.
    fn advance_view(&mut self, b: &mut WriteBatch) {
        if self.pending.is_empty() {
            return;
        }
        let w = self.watermark();
        let runs = view::merge(&mut self.pending, w, &mut self.applied.view_next);
        let mut last_hlc = None;
        for run in runs {
            b.put_cf(
                self.db.cf(CF_VIEW),
                key(self.group, run.pos),
                bincode::serialize(&run).expect("serialize run"),
            );
            // The view is sorted by HLC; index each run's first HLC once.
            if last_hlc != Some(run.first_hlc) {
                b.put_cf(
                    self.db.cf(CF_VIEW_HLC),
                    key(self.group, run.first_hlc),
                    run.pos.to_be_bytes(),
                );
                last_hlc = Some(run.first_hlc);
            }
            self.applied.view_last_hlc = run.first_hlc + run.count as u64 - 1;
            if let Some(st) = self.applied.logs.get_mut(&run.log) {
                st.merged = st.merged.max(run.offset + run.count as u64);
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
        let snap: Applied = bincode::deserialize(snapshot.get_ref())
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

pub struct SnapshotBuilder {
    db: Arc<Db>,
    group: GroupId,
    applied: Applied,
}

/// Where a group's latest snapshot is kept (only the meta group takes
/// snapshots: its state is small, and lease renewals would otherwise grow
/// its log without end).
fn snapshot_key(group: GroupId) -> [u8; 16] {
    key(group, 1)
}

/// Stores a snapshot durably (fsynced): the log before it may be purged
/// right after, and the state machine's own writes skip the WAL.
fn store_snapshot(
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

fn load_snapshot(db: &Db, group: GroupId) -> Result<Option<StoredSnapshot>, StorageError> {
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
        let data = bincode::serialize(&self.applied).expect("serialize snapshot");
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

/// Reads committed records of a partition straight from storage.
pub mod read {
    use super::*;
    use crate::storage::DbError;

    /// Stored batches (header and Kafka batch, as the origin stored them) of
    /// `log` from the one holding `from` up to `hw`, at most about
    /// `max_bytes` but always at least one batch, so a large batch cannot
    /// stall a reader.
    pub fn stored(
        db: &Db,
        log: LogKey,
        from: u64,
        hw: u64,
        max_bytes: usize,
    ) -> Result<Vec<bytes::Bytes>, DbError> {
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
            if !out.is_empty() && size + v.len() > max_bytes {
                break;
            }
            size += v.len();
            out.push(bytes::Bytes::from(v.into_vec()));
        }
        Ok(out)
    }

    /// The stored batch of `log` that holds record `offset`: its header,
    /// its stored size in bytes, and that record's HLC; `None` at or past
    /// the log's end.
    pub fn record_at(
        db: &Db,
        log: LogKey,
        offset: u64,
    ) -> Result<Option<(BatchHeader, usize, u64)>, DbError> {
        let Some((_, v)) = db.last_at_or_before(CF_RECORDS, &log.prefix(), offset)? else {
            return Ok(None);
        };
        let (h, _) = batch::decode(&v).map_err(corrupt)?;
        Ok((h.end_offset() > offset).then(|| (h, v.len(), h.first_hlc + (offset - h.base_offset))))
    }

    /// Kafka record batches of the global view of `group` from position
    /// `from` up to `view_next`, at most about `max_bytes` (at least one
    /// batch). Offsets in them are view positions. A batch that lies whole
    /// inside one run of the view keeps its bytes with a new base offset;
    /// part of a batch is encoded again.
    pub fn view(
        db: &Db,
        group: GroupId,
        from: u64,
        view_next: u64,
        max_bytes: usize,
    ) -> Result<Vec<bytes::Bytes>, DbError> {
        let mut out = Vec::new();
        if from >= view_next {
            return Ok(out);
        }
        let prefix = group.to_be_bytes();
        let start = db
            .last_at_or_before(CF_VIEW, &prefix, from)?
            .map_or(from, |(pos, _)| pos);
        let mut size = 0usize;
        for r in db.range(CF_VIEW, &prefix, start, view_next) {
            let (_, v) = r?;
            let run: Run = bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?;
            let lo = from.max(run.pos);
            if lo >= run.end() {
                continue;
            }
            // Origin offsets of the run still wanted.
            let (o_lo, o_hi) = (run.offset + (lo - run.pos), run.offset + run.count as u64);
            let log = LogKey {
                group,
                origin: run.log.origin,
                epoch: run.log.epoch,
            };
            let budget = max_bytes.saturating_sub(size).max(1);
            let mut reached = o_lo;
            for stored in stored(db, log, o_lo, o_hi, budget)? {
                let (h, kafka) = batch::decode(&stored).map_err(corrupt)?;
                let (a, b) = (h.base_offset.max(o_lo), h.end_offset().min(o_hi));
                if a >= b {
                    continue;
                }
                let pos = run.pos + (a - run.offset);
                let piece = if a == h.base_offset && b == h.end_offset() {
                    batch::with_base_offset(kafka, pos)
                } else {
                    batch::reslice(h, kafka, a, b, pos).map_err(corrupt)?
                };
                if !out.is_empty() && size + piece.len() > max_bytes {
                    return Ok(out);
                }
                size += piece.len();
                out.push(piece);
                reached = b;
            }
            if reached < o_hi {
                break; // out of budget inside this run
            }
        }
        Ok(out)
    }

    /// View position and HLC of the first record of the view with an HLC at
    /// or above `hlc`, if the view holds one.
    pub fn view_offset_for_hlc(
        db: &Db,
        group: GroupId,
        hlc: u64,
        view_next: u64,
    ) -> Result<Option<(u64, u64)>, DbError> {
        let prefix = group.to_be_bytes();
        // The run holding `hlc` starts at or before it; runs are HLC-sorted.
        let start = match db.last_at_or_before(CF_VIEW_HLC, &prefix, hlc)? {
            Some((_, pos)) => u64::from_be_bytes(
                pos.as_ref()
                    .try_into()
                    .map_err(|_| corrupt("view hlc index value".into()))?,
            ),
            None => 0,
        };
        for r in db.range(CF_VIEW, &prefix, start, view_next) {
            let (_, v) = r?;
            let run: Run = bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?;
            let last = run.first_hlc + run.count as u64 - 1;
            if last >= hlc {
                let i = hlc.saturating_sub(run.first_hlc);
                return Ok(Some((run.pos + i, run.first_hlc + i)));
            }
        }
        Ok(None)
    }

    fn corrupt(reason: String) -> DbError {
        DbError::Corrupt {
            cf: CF_RECORDS,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::RecordIn;

    fn machine(dir: &std::path::Path) -> StateMachine {
        let db = Db::open(dir, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let view = vec![origin_id("us-east"), origin_id("eu-west")];
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
            vec![],
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
            bincode::serialize(&stale).unwrap(),
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
}
