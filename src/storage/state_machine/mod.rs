//! The state machine of one group. For a partition group it turns committed
//! `Append` commands into the origin log: contiguous offsets and strictly
//! increasing HLCs, fixed here so that they hold across leader changes
//! (invariant 2). For the meta group it keeps the region's topics.

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

mod meta;

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

use super::{
    key, Db, LogKey, CF_HLC_INDEX, CF_PRODUCERS, CF_RECORDS, CF_SM_STATE, CF_VIEW, CF_VIEW_HLC,
};
use crate::command::{Command, CommandResult, Entry, LogId, StorageError, TypeConfig};
use crate::hlc::{self, Clock};
use crate::ids::{origin_id, GroupId, LogRef, NodeId, EPOCH_FIRST, META_GROUP};
use crate::log::batch::{self, BatchHeader};
use crate::log::producers::{self, Producer, ProducerState, ProducerTable, StoredBatch, Verdict};
use crate::meta::seal::{origin_closed, LogClose};
use crate::meta::MetaState;
use crate::view::{self, Run, Segment};
use meta::ApplyMeta;

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
        LogKey {
            group: self.group,
            origin: log.origin,
            epoch: log.epoch,
        }
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
            } => {
                // Only from a sealed log, from its seal on, in order.
                let Some(sealed) = self.applied.logs.get(&from).and_then(|s| s.sealed) else {
                    return CommandResult::NotWriter;
                };
                let upto = self
                    .applied
                    .reinjected
                    .get(&from)
                    .copied()
                    .unwrap_or(sealed);
                if offset != upto || count == 0 {
                    return CommandResult::Reinjected { upto };
                }
                let (kept, kept_batch) =
                    match self.not_yet_stored(from, proposed_hlc, count, &proposed) {
                        Ok(k) => k,
                        Err(refused) => return refused,
                    };
                let appended = match kept_batch {
                    None => CommandResult::Appended {
                        base_offset: 0,
                        first_hlc: 0,
                        last_hlc: 0,
                        view_offset: None,
                    },
                    Some(batch) => self.append_own(b, proposed_hlc, kept, &batch, None),
                };
                match appended {
                    CommandResult::Appended { .. } => {
                        let upto = offset + count as u64;
                        self.applied.reinjected.insert(from, upto);
                        CommandResult::Reinjected { upto }
                    }
                    refused => refused,
                }
            }
            Command::RemoteHeld { epoch, upto } => {
                if epoch == self.applied.epoch {
                    let own = self.own_ref();
                    let st = self.applied.logs.entry(own).or_default();
                    st.remote_held = st.remote_held.max(upto.min(st.next_offset));
                }
                let st = self.own_state();
                CommandResult::LogState {
                    next_offset: st.next_offset,
                    closed: st.closed,
                }
            }
            Command::Admit { log } => {
                if let Some(st) = self.applied.logs.get(&log) {
                    return CommandResult::LogState {
                        next_offset: st.next_offset,
                        closed: st.closed,
                    };
                }
                // The view stops here until the log's closed timestamps
                // arrive; its records all sort above.
                let closed = self.finite_watermark();
                self.applied.logs.insert(
                    log,
                    LogState {
                        closed,
                        last_hlc: 0,
                        next_offset: 0,
                        merged: 0,
                        sealed: None,
                        remote_held: 0,
                    },
                );
                CommandResult::LogState {
                    next_offset: 0,
                    closed,
                }
            }
            Command::SealOwn => self.seal_own(),
            Command::BeginEpoch { epoch, floor } => {
                if epoch > self.applied.epoch {
                    self.applied.epoch = epoch;
                    if let Some(floor) = floor {
                        // Above anything this region's own view holds, too.
                        let closed = floor.max(self.finite_watermark());
                        let own = self.own_ref();
                        let st = self.applied.logs.entry(own).or_default();
                        st.closed = st.closed.max(closed);
                        self.clock.observe(closed);
                    }
                }
                let st = self.own_state();
                CommandResult::LogState {
                    next_offset: st.next_offset,
                    closed: st.closed,
                }
            }
            Command::Close { hlc } => {
                let own = self.own_ref();
                let st = self.applied.logs.entry(own).or_default();
                if st.sealed.is_none() {
                    st.closed = st.closed.max(hlc).max(st.last_hlc);
                }
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
            Command::SealLog {
                origin,
                epoch,
                end,
                last_hlc,
                successor,
            } => {
                let log = LogRef { origin, epoch };
                self.seal(log, end, last_hlc, successor);
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

    /// Appends a proposed batch to this region's own origin log. With
    /// `settled_at`, an idempotent producer's batch is first checked against
    /// the producer's state (see [`Self::check_producer`]).
    fn append_own(
        &mut self,
        b: &mut WriteBatch,
        proposed_hlc: u64,
        count: u32,
        proposed: &[u8],
        settled_at: Option<u64>,
    ) -> CommandResult {
        let own = self.own_state();
        if own.sealed.is_some() {
            // Invariant 6, checked where it cannot be raced: the
            // fence should have refused this write already.
            return CommandResult::Sealed;
        }
        let writer = match self.home() {
            Some(home) => home == self.origin_id,
            None => self.view_origins.contains(&self.origin_id),
        };
        if !writer {
            return CommandResult::NotWriter;
        }
        if count == 0 {
            return CommandResult::Appended {
                base_offset: own.next_offset,
                first_hlc: own.last_hlc,
                last_hlc: own.last_hlc,
                view_offset: self.view_offset(own.next_offset),
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
        let producer = settled_at.and_then(|at| Some((batch::producer_of(proposed)?, at)));
        if let Some((p, settled_at)) = producer {
            if let Some(answer) = self.check_producer(p, count, h.first_hlc, settled_at) {
                return answer;
            }
        }
        let stored = if h.first_hlc == proposed_hlc {
            batch::store(h, proposed)
        } else {
            // The leader encoded this batch from records it had just
            // decoded: decoding it again cannot fail.
            batch::restamp(h, &self.origin, proposed).expect("proposed batch decodes")
        };
        self.put_batch(b, self.own_ref(), h, &stored);
        CommandResult::Appended {
            base_offset: h.base_offset,
            first_hlc: h.first_hlc,
            last_hlc: h.last_hlc(),
            view_offset: self.view_offset(h.base_offset),
        }
    }

    /// Decides an idempotent producer's batch arriving at `now_hlc`: `None`
    /// to append it, or the answer instead (a retry of a stored batch, a
    /// sequence error).
    ///
    /// A producer seen last in another log (it wrote through another
    /// region, or through this region's previous epoch), or one given its id
    /// by another region's node, may have stored batches this region does
    /// not hold yet: its batch waits (a retriable refusal) until every other
    /// writer log is held here up to `settled_at` (the proposal's HLC plus
    /// the clock-drift margin), or up to its seal. Then a retry of a batch
    /// stored anywhere before is recognised.
    fn check_producer(
        &self,
        p: Producer,
        count: u32,
        now_hlc: u64,
        settled_at: u64,
    ) -> Option<CommandResult> {
        let own = self.own_ref();
        let moved = match self.producers.get(p.id, now_hlc) {
            Some(st) => st.last().log != own,
            None => {
                let node = crate::ids::allocating_node(p.id);
                self.node_regions.get(&node) != Some(&self.origin_id)
            }
        };
        if moved {
            if let Some(origin) = self.unsettled_writer(settled_at, None) {
                return Some(CommandResult::ProducerRefused(
                    producers::Refusal::Settling { origin },
                ));
            }
        }
        let verdict = self.producers.check(p, count, now_hlc);
        if self.skips_a_sealed_tail(p, verdict, now_hlc) {
            // The gap says the producer wrote elsewhere since: only once
            // every open writer log is held here can it lie in a failed
            // over region's tail alone.
            if !moved {
                if let Some(origin) = self.unsettled_writer(settled_at, None) {
                    return Some(CommandResult::ProducerRefused(
                        producers::Refusal::Settling { origin },
                    ));
                }
            }
            return None;
        }
        let refusal = match verdict {
            Verdict::Append => return None,
            Verdict::Duplicate(d) => {
                return Some(CommandResult::Duplicate {
                    log: d.log,
                    base_offset: d.base_offset,
                    end_offset: d.base_offset + d.count as u64,
                    view_offset: (d.log == own)
                        .then(|| self.view_offset(d.base_offset))
                        .flatten(),
                })
            }
            Verdict::DuplicateOld => producers::Refusal::DuplicateOld,
            Verdict::OutOfOrder { expected } => producers::Refusal::OutOfOrder {
                expected,
                got: p.base_sequence,
            },
            Verdict::UnknownProducer => producers::Refusal::UnknownProducer,
            Verdict::StaleEpoch { current } => producers::Refusal::StaleEpoch { current },
        };
        Some(CommandResult::ProducerRefused(refusal))
    }

    /// Whether a producer's batch is refused only for sequences it may
    /// have stored in a failed-over region past the seal: the batch lies
    /// past the producer's last one here (or the producer is new here and
    /// past sequence 0), and a log here was sealed recently enough to hold
    /// them ([`StateMachine::sealed_near`]). Such records were
    /// acknowledged there (an `async` topic's tail) and come back by
    /// re-injection at failback; answering OUT_OF_ORDER_SEQUENCE_NUMBER or
    /// UNKNOWN_PRODUCER_ID instead is fatal to librdkafka's idempotent
    /// producer, or makes it start a new epoch and send again what may be
    /// stored. So the batch is stored (once every open writer log is held
    /// here, `check_producer`), and the skipped sequences are kept as a
    /// gap, which re-injection does not take for stored.
    fn skips_a_sealed_tail(&self, p: Producer, verdict: Verdict, now_hlc: u64) -> bool {
        match verdict {
            Verdict::OutOfOrder { expected } if producers::is_ahead(expected, p.base_sequence) => {
                self.producers
                    .get(p.id, now_hlc)
                    .is_some_and(|st| st.epoch == p.epoch && self.sealed_near(st.last_hlc))
            }
            Verdict::UnknownProducer => self.sealed_near(now_hlc),
            _ => false,
        }
    }

    /// Whether a log other than this region's current one is sealed here,
    /// and its region was heard from (its closed timestamp) within
    /// [`producers::GAP_WINDOW_MS`] of `hlc`: it may hold records written
    /// after `hlc` that no other region holds. A log sealed long before
    /// (an old failover, a pinned topic's planned handover) does not.
    fn sealed_near(&self, hlc: u64) -> bool {
        let own = self.own_ref();
        let window = crate::hlc::span_ms(producers::GAP_WINDOW_MS);
        self.applied.logs.iter().any(|(l, s)| {
            *l != own
                && s.sealed.is_some()
                && s.closed.max(s.last_hlc).saturating_add(window) >= hlc
        })
    }

    /// The records of a re-injection (from sealed log `from`) to append:
    /// an idempotent producer's record whose sequence the producer has
    /// stored since (it sent it again elsewhere after the failover) is
    /// dropped. Returns how many are kept and their batch (`None`: none is
    /// left to append). Waits
    /// (refused, the caller retries) until every other writer region's log
    /// is held here up to the proposal, so a retry stored there is seen.
    fn not_yet_stored(
        &self,
        from: LogRef,
        proposed_hlc: u64,
        count: u32,
        proposed: &bytes::Bytes,
    ) -> Result<(u32, Option<bytes::Bytes>), CommandResult> {
        let Ok(records) = batch::decode_records(proposed, count) else {
            return Ok((count, Some(proposed.clone())));
        };
        let producer_of = |r: &crate::log::RecordIn| -> Option<(i64, i16, i32)> {
            let (_, v) = r
                .headers
                .iter()
                .find(|(k, _)| k == batch::HEADER_REINJECTED_PRODUCER)?;
            let text = std::str::from_utf8(v.as_deref()?).ok()?;
            let mut it = text.split('/');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        };
        if records.iter().all(|r| producer_of(r).is_none()) {
            return Ok((count, Some(proposed.clone())));
        }
        if let Some(origin) = self.unsettled_writer(proposed_hlc, Some(from.origin)) {
            return Err(CommandResult::ProducerRefused(
                producers::Refusal::Settling { origin },
            ));
        }
        let now = proposed_hlc.max(self.own_state().last_hlc);
        let kept: Vec<_> = records
            .into_iter()
            .filter(|r| match producer_of(r) {
                Some((id, epoch, seq)) => !self.producers.has_stored(id, epoch, seq, now),
                None => true,
            })
            .collect();
        if kept.is_empty() {
            return Ok((0, None));
        }
        let n = kept.len() as u32;
        Ok((
            n,
            Some(batch::propose(proposed_hlc, &self.origin, &kept, None)),
        ))
    }

    /// A writer region, other than this one and `besides`, whose log is not
    /// yet held here up to `hlc` (its closed timestamp) nor up to its seal.
    fn unsettled_writer(&self, hlc: u64, besides: Option<u32>) -> Option<u32> {
        let own = self.own_ref().origin;
        // This region's own earlier epochs are sealed and held whole.
        self.view_origins
            .iter()
            .copied()
            .filter(|o| *o != own && Some(*o) != besides)
            .find(|o| !settled(&self.applied.logs, *o, hlc))
    }

    /// The watermark, or when every writer origin is sealed (unbounded),
    /// the largest closed timestamp held: a finite point at or above
    /// everything in the view.
    fn finite_watermark(&self) -> u64 {
        match self.watermark() {
            u64::MAX => self
                .applied
                .logs
                .values()
                .map(|s| s.closed.max(s.last_hlc))
                .max()
                .unwrap_or(0)
                .max(self.applied.view_last_hlc),
            w => w,
        }
    }

    /// Seals `log` at `end`. Records this replica holds at or past `end`
    /// (a copy that raced the seal) stay stored but never enter the view;
    /// the sealed region re-injects them at failback.
    ///
    /// With a `successor` (a pinned topic's next home), the home is handed
    /// over: that origin's log joins the view after the sealed one, its
    /// records getting HLCs above `last_hlc`. A handover applies once, and
    /// only from the home this group has now; one proposed before the
    /// handover that precedes it (a region back from a long absence) seals
    /// the log and is proposed again.
    fn seal(&mut self, log: LogRef, end: u64, last_hlc: u64, successor: Option<u32>) {
        let st = self.applied.logs.entry(log).or_default();
        match st.sealed {
            None => {
                st.sealed = Some(end);
                if let Some(q) = self.pending.get_mut(&log) {
                    q.retain_mut(|seg| {
                        let keep = end.saturating_sub(seg.base_offset).min(seg.count as u64);
                        seg.count = keep as u32;
                        keep > 0
                    });
                }
            }
            // Proposed again by a new leader, or sealed by its own region
            // before the metadata group's seal came: the first one counts.
            Some(first) if first != end => tracing::warn!(
                group = self.group,
                ?log,
                first,
                end,
                "a second, different seal of a log is ignored"
            ),
            Some(_) => {}
        }
        // Records written here after the seal sort after the sealed ones.
        self.clock.observe(last_hlc);
        let Some(next) = successor else { return };
        if self.applied.handovers.iter().any(|(l, _)| *l == log) || self.home() != Some(log.origin)
        {
            return;
        }
        self.applied.handovers.push((log, next));
        if next == self.origin_id {
            let own = self.own_ref();
            let st = self.applied.logs.entry(own).or_default();
            st.closed = st.closed.max(last_hlc);
        }
        if !self.view_origins.contains(&next) {
            self.view_origins.push(next);
            let logs: Vec<LogRef> = self
                .applied
                .logs
                .keys()
                .filter(|l| l.origin == next)
                .copied()
                .collect();
            for l in logs {
                if let Err(e) = self.load_pending_of(l) {
                    // The records stay stored; a restart loads them again.
                    tracing::error!(group = self.group, error = %e, "cannot read a new home's records");
                }
            }
        }
    }

    /// Seals this region's own log where it ends now, when it is the
    /// pinned topic's home and the home moves away by command. Everything
    /// committed before is in the log; every append after is refused.
    fn seal_own(&mut self) -> CommandResult {
        let own = self.own_ref();
        let st = self.own_state();
        let end = match st.sealed {
            Some(end) => end,
            None if self.home() == Some(self.origin_id) => st.next_offset,
            None => return CommandResult::NotWriter,
        };
        // At or above every record of the view: the next home's records
        // follow them all.
        let last_hlc = st.last_hlc.max(self.applied.view_last_hlc);
        self.seal(own, end, last_hlc, None);
        CommandResult::SealedAt {
            epoch: own.epoch,
            end,
            last_hlc,
        }
    }

    /// Where a batch at `base_offset` of this region's log lands in the
    /// view, when that is known at commit: this region is the pinned
    /// topic's home and every other log of the view is sealed, so their
    /// records fill the view's first positions (all of them: this log's
    /// records sort above their seals) and this log's follow.
    fn view_offset(&self, base_offset: u64) -> Option<u64> {
        if self.home() != Some(self.origin_id) {
            return None;
        }
        let own = self.own_ref();
        let mut before = 0;
        for (l, st) in &self.applied.logs {
            if *l == own || !self.view_origins.contains(&l.origin) {
                continue;
            }
            before += st.sealed?;
        }
        Some(before + base_offset)
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
            let sealed = self.applied.logs.get(&log).and_then(|s| s.sealed);
            if sealed.is_some_and(|end| h.end_offset() > end) {
                break; // past the seal: stays with its origin until failback
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
    /// writer origins, where a sealed log held up to its seal no longer
    /// counts (`meta::seal::origin_closed`).
    fn watermark(&self) -> u64 {
        self.view_origins
            .iter()
            .map(|o| {
                origin_closed(
                    self.applied
                        .logs
                        .iter()
                        .filter(|(l, _)| l.origin == *o)
                        .map(|(_, s)| LogClose {
                            next_offset: s.next_offset,
                            closed: s.closed,
                            sealed_end: s.sealed,
                        }),
                )
            })
            .min()
            .unwrap_or(0)
            .min(self.own_bound().unwrap_or(u64::MAX))
    }

    /// While another region holds the topic and could take over from this
    /// one, this region's own records enter the view only once another
    /// region holds them: a failover seals this log at the furthest point
    /// another region holds, and a record past that point, once in this
    /// region's view, would be missing from every other region's. Returns
    /// the HLC just below the first own record no other region is known to
    /// hold.
    fn own_bound(&self) -> Option<u64> {
        let others_live = self
            .topic_regions
            .iter()
            .filter(|o| **o != self.origin_id)
            .any(|o| {
                let mut logs = self.applied.logs.iter().filter(|(l, _)| l.origin == *o);
                // No log held (a region that does not write) counts as live.
                let mut any = false;
                let live = logs.any(|(_, s)| {
                    any = true;
                    s.sealed.is_none()
                });
                live || !any
            });
        if !others_live {
            return None;
        }
        let own = self.own_state();
        if own.remote_held >= own.next_offset {
            return None;
        }
        let q = self.pending.get(&self.own_ref())?;
        let seg = q
            .iter()
            .find(|s| s.base_offset + s.count as u64 > own.remote_held)?;
        let skip = own.remote_held.saturating_sub(seg.base_offset);
        Some((seg.first_hlc + skip).saturating_sub(1))
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

    fn persist(&mut self, mut b: WriteBatch) -> Result<(), StorageError> {
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

/// Whether every log of `origin` in `logs` is held up to HLC `hlc` (its
/// closed timestamp) or up to its seal; false while none is held.
pub fn settled(logs: &BTreeMap<LogRef, LogState>, origin: u32, hlc: u64) -> bool {
    let mut of = logs.iter().filter(|(l, _)| l.origin == origin).peekable();
    of.peek().is_some()
        && of.all(|(_, st)| match st.sealed {
            Some(end) => st.next_offset >= end,
            None => st.closed >= hlc,
        })
}

/// How many records held in `logs` of the view's origins are not in the
/// view yet, and will be: below a log's seal, if it has one. (A sealed
/// log's records past the seal never enter the view; the re-injected
/// copies of those are counted in the log that re-injects them.)
pub fn held_for_view(logs: &BTreeMap<LogRef, LogState>, view_origins: &[u32]) -> u64 {
    logs.iter()
        .filter(|(l, _)| view_origins.contains(&l.origin))
        .map(|(_, st)| {
            let end = st.sealed.map_or(st.next_offset, |e| e.min(st.next_offset));
            end.saturating_sub(st.merged)
        })
        .sum()
}

/// The idempotent producers' state of `group`, as stored.
fn load_producers(db: &Db, group: GroupId) -> Result<ProducerTable, super::DbError> {
    let mut states = Vec::new();
    for r in db.range(CF_PRODUCERS, &group.to_be_bytes(), 0, u64::MAX) {
        let (id, v) = r?;
        let st = ProducerState::decode(&v).map_err(|e| super::DbError::Corrupt {
            cf: CF_PRODUCERS,
            reason: e.to_string(),
        })?;
        states.push((id as i64, st));
    }
    Ok(ProducerTable::from_states(states))
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
    use crate::log::RecordIn;

    #[test]
    fn records_held_for_the_view_stop_at_a_seal_and_skip_other_origins() {
        let log = |origin, epoch| LogRef { origin, epoch };
        let st = |next_offset, merged, sealed| LogState {
            next_offset,
            merged,
            sealed,
            ..Default::default()
        };
        let logs: BTreeMap<LogRef, LogState> = [
            (log(1, 0), st(10, 4, None)),    // 6 to come
            (log(2, 0), st(20, 5, Some(8))), // 3 below the seal
            (log(2, 1), st(7, 7, None)),     // all merged
            (log(3, 0), st(50, 0, None)),    // not a view origin
            (log(1, 1), st(3, 5, Some(2))),  // merged past its seal: none
        ]
        .into();
        assert_eq!(held_for_view(&logs, &[1, 2]), 9);
        assert_eq!(held_for_view(&logs, &[]), 0);
        assert_eq!(held_for_view(&BTreeMap::new(), &[1]), 0);
    }

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

    fn seal(region: &str, end: u64, last_hlc: u64) -> Command {
        Command::SealLog {
            origin: origin_id(region),
            epoch: EPOCH_FIRST,
            end,
            last_hlc,
            successor: None,
        }
    }

    /// Invariant 7 in one partition: a sealed origin log holds the view
    /// back until it is held up to its seal, then no longer (the view goes
    /// on without the lost region); nothing past the seal enters the view,
    /// whether it arrives after the seal or was held before it.
    #[tokio::test]
    async fn a_sealed_log_ends_at_its_seal_and_then_stops_holding_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let west = LogRef {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
        };
        let mut b = WriteBatch::default();
        step(&mut sm, &mut b, Command::Close { hlc: 50_000 });
        step(
            &mut sm,
            &mut b,
            replicate(1_000, 2, vec![stored(0, 2, 900)]),
        );
        step(
            &mut sm,
            &mut b,
            replicate(2_500, 4, vec![stored(2, 2, 2_000)]),
        );
        assert_eq!(sm.applied.view_next, 4);
        // eu-west is lost; the seal says its log ends at 6, of which this
        // region holds 4: the view waits for 4..6 (relayed by a survivor).
        step(&mut sm, &mut b, seal("eu-west", 6, 4_001));
        assert_eq!(sm.watermark(), 2_500);
        step(
            &mut sm,
            &mut b,
            replicate(4_001, 6, vec![stored(4, 2, 4_000)]),
        );
        assert_eq!(sm.watermark(), 50_000, "eu-west no longer holds the view");
        assert_eq!(sm.applied.view_next, 6);
        // A copy past the seal is not stored.
        step(
            &mut sm,
            &mut b,
            replicate(9_001, 8, vec![stored(6, 2, 9_000)]),
        );
        assert_eq!(sm.applied.logs[&west].next_offset, 6);
        assert_eq!(sm.applied.view_next, 6);
        // Sealing again changes nothing.
        step(&mut sm, &mut b, seal("eu-west", 8, 9_001));
        assert_eq!(sm.applied.logs[&west].sealed, Some(6));
        // This region's own log, sealed, refuses appends (invariant 6).
        step(&mut sm, &mut b, seal("us-east", 0, 0));
        let append = Command::Append {
            proposed_hlc: 60_000,
            count: 1,
            batch: stored(0, 1, 60_000),
        };
        assert_eq!(step(&mut sm, &mut b, append), CommandResult::Sealed);
    }

    /// A topic pinned to eu-west moves home to us-east when eu-west is
    /// sealed: us-east's records follow every sealed record in the view,
    /// and their Kafka offsets are known at commit; before the seal, us-east
    /// is no writer and its appends are refused (retriable).
    #[tokio::test]
    async fn a_new_home_continues_the_view_after_the_sealed_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine_with(dir.path(), &["eu-west"]);
        let mut b = WriteBatch::default();
        let append = |hlc| {
            let r = RecordIn {
                key: None,
                value: Some(bytes::Bytes::from_static(b"v")),
                headers: vec![],
            };
            Command::Append {
                proposed_hlc: hlc,
                count: 2,
                batch: batch::propose(hlc, "us-east", &[r.clone(), r], None),
            }
        };
        assert_eq!(step(&mut sm, &mut b, append(500)), CommandResult::NotWriter);
        step(
            &mut sm,
            &mut b,
            replicate(1_000, 3, vec![stored(0, 3, 900)]),
        );
        assert_eq!(sm.applied.view_next, 3);
        // The seal says eu-west's log ends at 5 (two records still on
        // their way here), last HLC 7_000, and us-east is the new home.
        step(
            &mut sm,
            &mut b,
            Command::SealLog {
                origin: origin_id("eu-west"),
                epoch: EPOCH_FIRST,
                end: 5,
                last_hlc: 7_000,
                successor: Some(origin_id("us-east")),
            },
        );
        let r = step(&mut sm, &mut b, append(500));
        let CommandResult::Appended {
            first_hlc,
            view_offset,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert!(first_hlc > 7_000, "after every sealed record");
        assert_eq!(view_offset, Some(5), "after eu-west's five records");
        assert_eq!(sm.applied.view_next, 3, "waits for eu-west's last two");
        step(
            &mut sm,
            &mut b,
            replicate(7_000, 5, vec![stored(3, 2, 6_999)]),
        );
        assert_eq!(sm.applied.view_next, 7);
        let r = step(&mut sm, &mut b, append(500));
        assert!(
            matches!(
                r,
                CommandResult::Appended {
                    view_offset: Some(7),
                    ..
                }
            ),
            "{r:?}"
        );
        // A restart keeps us-east in the view.
        sm.persist(b).unwrap();
        drop(sm);
        let sm = machine_with(dir.path(), &["eu-west"]);
        assert!(sm.view_origins.contains(&origin_id("us-east")));
        assert_eq!(sm.view_offset(9), Some(14));
    }

    /// The home moves back by command (eu-west -> us-east at a failover,
    /// then us-east -> eu-west): us-east seals its own log where it ends,
    /// its later appends are refused, eu-west's new log follows in the
    /// view; a stale repeat of the first handover changes nothing, and a
    /// restart keeps the chain.
    #[tokio::test]
    async fn the_home_moves_back_after_the_sealed_log_of_the_interim_home() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine_with(dir.path(), &["eu-west"]);
        let mut b = WriteBatch::default();
        let west = origin_id("eu-west");
        let east = origin_id("us-east");
        let first_handover = Command::SealLog {
            origin: west,
            epoch: EPOCH_FIRST,
            end: 3,
            last_hlc: 1_000,
            successor: Some(east),
        };
        step(
            &mut sm,
            &mut b,
            replicate(1_000, 3, vec![stored(0, 3, 900)]),
        );
        step(&mut sm, &mut b, first_handover.clone());
        assert_eq!(sm.home(), Some(east));
        let r = step(
            &mut sm,
            &mut b,
            Command::Append {
                proposed_hlc: 2_000,
                count: 2,
                batch: proposed(2_000, 2),
            },
        );
        assert!(
            matches!(
                r,
                CommandResult::Appended {
                    view_offset: Some(3),
                    ..
                }
            ),
            "{r:?}"
        );
        // The move back: us-east seals its own log where it ends.
        let r = step(&mut sm, &mut b, Command::SealOwn);
        let CommandResult::SealedAt {
            epoch,
            end,
            last_hlc,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((epoch, end), (EPOCH_FIRST, 2));
        assert!(last_hlc >= 2_001, "at or above its last record");
        assert_eq!(step(&mut sm, &mut b, Command::SealOwn), r, "sealed once");
        let late = Command::Append {
            proposed_hlc: 3_000,
            count: 1,
            batch: proposed(3_000, 1),
        };
        assert_eq!(step(&mut sm, &mut b, late.clone()), CommandResult::Sealed);
        // The metadata group's seal hands the home to eu-west.
        step(
            &mut sm,
            &mut b,
            Command::SealLog {
                origin: east,
                epoch: EPOCH_FIRST,
                end,
                last_hlc,
                successor: Some(west),
            },
        );
        assert_eq!(sm.home(), Some(west));
        // eu-west writes its new epoch's log; it follows in the view.
        let h = BatchHeader {
            base_offset: 0,
            count: 2,
            first_hlc: last_hlc + 10,
        };
        let records = vec![
            RecordIn {
                key: None,
                value: Some(bytes::Bytes::from_static(b"w")),
                headers: vec![],
            };
            2
        ];
        step(
            &mut sm,
            &mut b,
            Command::Replicate {
                origin: west,
                epoch: EPOCH_FIRST + 1,
                closed: last_hlc + 11,
                closed_at: 2,
                batches: vec![batch::encode(h, "eu-west", &records).into()],
            },
        );
        assert_eq!(sm.applied.view_next, 7, "3 + 2 + 2");
        // A stale repeat of the first handover changes nothing.
        step(&mut sm, &mut b, first_handover);
        assert_eq!(sm.home(), Some(west));
        assert_eq!(sm.applied.handovers.len(), 2);
        sm.persist(b).unwrap();
        drop(sm);
        let sm = machine_with(dir.path(), &["eu-west"]);
        assert_eq!(sm.home(), Some(west));
        assert!(sm.view_origins.contains(&east));
        assert_eq!(sm.view_offset(0), None, "us-east is no longer the home");
    }

    /// A group that learns of two handovers in the wrong order (a region
    /// back from a long absence) seals at once but hands over only from
    /// the home it has; proposed again, the second applies after the
    /// first.
    #[tokio::test]
    async fn handovers_apply_in_chain_order_whatever_order_they_come_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine_with(dir.path(), &["eu-west"]);
        let mut b = WriteBatch::default();
        let (west, east) = (origin_id("eu-west"), origin_id("us-east"));
        let seal = |origin, successor| Command::SealLog {
            origin,
            epoch: EPOCH_FIRST,
            end: 0,
            last_hlc: 0,
            successor: Some(successor),
        };
        sm.apply_one(&mut b, seal(east, west));
        assert_eq!(sm.home(), Some(west), "not yet: the home is still eu-west");
        assert!(sm.applied.handovers.is_empty());
        sm.apply_one(&mut b, seal(west, east));
        assert_eq!(sm.home(), Some(east));
        sm.apply_one(&mut b, seal(east, west));
        assert_eq!(sm.home(), Some(west));
        let chain: Vec<u32> = sm.applied.handovers.iter().map(|h| h.1).collect();
        assert_eq!(chain, vec![east, west]);
    }

    /// A region that is not the home does not seal its own log.
    #[tokio::test]
    async fn only_the_home_seals_its_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine_with(dir.path(), &["eu-west"]);
        let mut b = WriteBatch::default();
        assert_eq!(
            sm.apply_one(&mut b, Command::SealOwn),
            CommandResult::NotWriter
        );
        assert_eq!(sm.own_state().sealed, None);
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

    /// Retries of an idempotent producer's batch are answered with the
    /// original, out-of-order batches are refused, and the state outlives a
    /// restart.
    #[tokio::test]
    async fn an_idempotent_producers_retry_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let us = producer(1, 0);
        {
            let mut sm = machine_with(dir.path(), &["us-east"]);
            let mut b = WriteBatch::default();
            let first = step(&mut sm, &mut b, idempotent(1_000, 2, us, 0));
            assert!(matches!(
                first,
                CommandResult::Appended { base_offset: 0, .. }
            ));
            assert_eq!(
                step(&mut sm, &mut b, idempotent(2_000, 2, us, 0)),
                CommandResult::Duplicate {
                    log: sm.own_ref(),
                    base_offset: 0,
                    end_offset: 2,
                    view_offset: Some(0),
                }
            );
            assert_eq!(
                step(&mut sm, &mut b, idempotent(3_000, 1, producer(1, 5), 0)),
                CommandResult::ProducerRefused(producers::Refusal::OutOfOrder {
                    expected: 2,
                    got: 5
                })
            );
            let stranger = Producer {
                id: us.id + 1,
                ..producer(1, 3)
            };
            assert_eq!(
                step(&mut sm, &mut b, idempotent(3_000, 1, stranger, 0)),
                CommandResult::ProducerRefused(producers::Refusal::UnknownProducer)
            );
            let next = step(&mut sm, &mut b, idempotent(4_000, 1, producer(1, 2), 0));
            assert!(matches!(
                next,
                CommandResult::Appended { base_offset: 2, .. }
            ));
            assert_eq!(sm.own_state().next_offset, 3, "each record once");
            sm.persist(b).unwrap();
        }
        let mut sm = machine_with(dir.path(), &["us-east"]);
        let mut b = WriteBatch::default();
        assert!(matches!(
            step(&mut sm, &mut b, idempotent(5_000, 1, producer(1, 2), 0)),
            CommandResult::Duplicate { base_offset: 2, .. }
        ));
        assert_eq!(sm.own_state().next_offset, 3);
    }

    /// A producer that wrote through eu-west and retries here: its batch
    /// waits until eu-west's log is held here up to the proposal's settle
    /// point, and is then recognised as the copy eu-west stored.
    #[tokio::test]
    async fn a_retry_in_another_region_is_recognised_once_that_regions_log_is_here() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let west = LogRef {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
        };
        let mut b = WriteBatch::default();
        step(&mut sm, &mut b, Command::Close { hlc: 500 });
        let p = producer(4, 0);
        step(&mut sm, &mut b, replicate(1_000, 2, vec![west_copy(p)]));
        // eu-west's log is closed at 1000 here: not up to 5000.
        assert_eq!(
            step(&mut sm, &mut b, idempotent(4_000, 2, p, 5_000)),
            CommandResult::ProducerRefused(producers::Refusal::Settling {
                origin: west.origin
            })
        );
        step(&mut sm, &mut b, replicate(6_000, 2, vec![]));
        assert_eq!(
            step(&mut sm, &mut b, idempotent(4_100, 2, p, 5_000)),
            CommandResult::Duplicate {
                log: west,
                base_offset: 0,
                end_offset: 2,
                view_offset: None,
            }
        );
        // The sequence continues here, and then it is this region's.
        let next = step(&mut sm, &mut b, idempotent(7_000, 1, producer(4, 2), 5_500));
        assert!(matches!(
            next,
            CommandResult::Appended { base_offset: 0, .. }
        ));
        assert!(matches!(
            step(
                &mut sm,
                &mut b,
                idempotent(7_100, 1, producer(4, 2), 99_000)
            ),
            CommandResult::Duplicate { base_offset: 0, .. }
        ));
        // A new producer given its id in eu-west waits too; a sealed log
        // held to its seal is settled whatever its closed timestamp.
        let fresh = producer(4, 0);
        let fresh = Producer {
            id: fresh.id + 1,
            ..fresh
        };
        assert!(matches!(
            step(&mut sm, &mut b, idempotent(8_000, 1, fresh, 50_000)),
            CommandResult::ProducerRefused(producers::Refusal::Settling { .. })
        ));
        step(
            &mut sm,
            &mut b,
            Command::SealLog {
                origin: west.origin,
                epoch: west.epoch,
                end: 2,
                last_hlc: 901,
                successor: None,
            },
        );
        assert!(matches!(
            step(&mut sm, &mut b, idempotent(8_100, 1, fresh, 50_000)),
            CommandResult::Appended { .. }
        ));
    }

    /// eu-west committed a producer's batch past its seal (never
    /// acknowledged), and the producer sent it again here after the
    /// failover: at failback that record is not re-injected, the producer's
    /// next one, never stored here, is.
    #[tokio::test]
    async fn a_reinjected_record_the_producer_stored_here_since_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let west = LogRef {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
        };
        let mut b = WriteBatch::default();
        step(&mut sm, &mut b, replicate(1_000, 0, vec![]));
        step(&mut sm, &mut b, seal("eu-west", 0, 900));
        // The retry of sequence 0 (the producer got its id in eu-west).
        let p = producer(4, 0);
        let first = step(&mut sm, &mut b, idempotent(2_000, 1, p, 1_500));
        assert!(matches!(first, CommandResult::Appended { .. }), "{first:?}");
        let past_seal = |seq| reinjected(p, seq);
        let records = [past_seal(0), past_seal(1)];
        let r = step(
            &mut sm,
            &mut b,
            Command::Reinject {
                from: west,
                offset: 0,
                proposed_hlc: 3_000,
                count: 2,
                batch: batch::propose(3_000, "us-east", &records, None),
            },
        );
        assert_eq!(r, CommandResult::Reinjected { upto: 2 });
        let own = sm.own_ref();
        assert_eq!(
            sm.applied.logs[&own].next_offset, 2,
            "the retry and the one record never stored"
        );
        sm.persist(b).unwrap();
        let stored = read::stored(sm.db.as_ref(), sm.log_key(own), 1, 2, 1 << 20).unwrap();
        let (_, recs) = batch::records_of(&stored[0]).unwrap();
        assert_eq!(recs[0].value.as_deref(), Some(&b"w1"[..]));
    }

    /// Issue 16, item 10, third finding: an idempotent producer wrote an
    /// `async` topic through eu-west, which acknowledged sequences 0 to 3
    /// but was failed over with only 0 and 1 copied here. The producer goes
    /// on here at 4: stored (not OUT_OF_ORDER_SEQUENCE_NUMBER, fatal to
    /// librdkafka), with 2 and 3 kept as a gap, so that failback re-injects
    /// them and drops only what the producer sent again here.
    #[tokio::test]
    async fn a_producer_past_a_sealed_regions_tail_goes_on_and_its_tail_comes_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let west = LogRef {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
        };
        let mut b = WriteBatch::default();
        let p = producer(4, 0);
        step(&mut sm, &mut b, replicate(1_000, 2, vec![west_copy(p)]));
        let at = |seq| Producer {
            base_sequence: seq,
            ..p
        };
        // Before the seal: a gap is refused, as Kafka refuses it.
        step(&mut sm, &mut b, replicate(9_000, 2, vec![]));
        assert_eq!(
            step(&mut sm, &mut b, idempotent(4_000, 1, at(4), 5_000)),
            CommandResult::ProducerRefused(producers::Refusal::OutOfOrder {
                expected: 2,
                got: 4
            })
        );
        step(&mut sm, &mut b, seal("eu-west", 2, 901));
        let r = step(&mut sm, &mut b, idempotent(10_000, 1, at(4), 10_500));
        assert!(matches!(r, CommandResult::Appended { .. }), "{r:?}");
        assert!(matches!(
            step(&mut sm, &mut b, idempotent(10_100, 1, at(4), 10_600)),
            CommandResult::Duplicate { .. }
        ));
        // Long after the seal (a producer new here, past 0), no more.
        let late = crate::hlc::span_ms(producers::GAP_WINDOW_MS) + 20_000;
        let stranger = Producer {
            id: p.id + 1,
            ..at(3)
        };
        assert_eq!(
            step(&mut sm, &mut b, idempotent(late, 1, stranger, late)),
            CommandResult::ProducerRefused(producers::Refusal::UnknownProducer)
        );
        // Sequences before the producer's last are not stored again.
        assert!(matches!(
            step(&mut sm, &mut b, idempotent(10_200, 2, at(1), 10_700)),
            CommandResult::ProducerRefused(producers::Refusal::DuplicateOld)
        ));
        // Failback re-injects 2, 3 and 4: 4 was sent again here.
        let past_seal = |seq| reinjected(p, seq);
        let records = [past_seal(2), past_seal(3), past_seal(4)];
        let r = step(
            &mut sm,
            &mut b,
            Command::Reinject {
                from: west,
                offset: 2,
                proposed_hlc: 11_000,
                count: 3,
                batch: batch::propose(11_000, "us-east", &records, None),
            },
        );
        assert_eq!(r, CommandResult::Reinjected { upto: 5 });
        let own = sm.own_ref();
        assert_eq!(
            sm.applied.logs[&own].next_offset, 3,
            "4 once, then 2 and 3 re-injected"
        );
        sm.persist(b).unwrap();
        let stored = read::stored(sm.db.as_ref(), sm.log_key(own), 1, 3, 1 << 20).unwrap();
        let (_, recs) = batch::records_of(&stored[0]).unwrap();
        let values: Vec<_> = recs.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec![&b"w2"[..], &b"w3"[..]]);
    }

    /// Failback as a survivor sees it: the returning region's records past
    /// its seal are re-injected here once each, in order; its new epoch's
    /// log is admitted at this group's watermark, which then waits for that
    /// log's closed timestamps.
    #[tokio::test]
    async fn reinjection_is_idempotent_and_an_admitted_log_holds_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let west = LogRef {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
        };
        let mut b = WriteBatch::default();
        step(&mut sm, &mut b, Command::Close { hlc: 50_000 });
        step(
            &mut sm,
            &mut b,
            replicate(1_000, 2, vec![stored(0, 2, 900)]),
        );
        let reinject = |offset, hlc| Command::Reinject {
            from: west,
            offset,
            proposed_hlc: hlc,
            count: 2,
            batch: proposed(hlc, 2),
        };
        // Not before the log is sealed here.
        assert_eq!(
            step(&mut sm, &mut b, reinject(2, 60_000)),
            CommandResult::NotWriter
        );
        step(&mut sm, &mut b, seal("eu-west", 2, 901));
        assert_eq!(
            step(&mut sm, &mut b, reinject(2, 60_000)),
            CommandResult::Reinjected { upto: 4 }
        );
        let own = sm.own_ref();
        assert_eq!(sm.applied.logs[&own].next_offset, 2);
        // A retry, and a request past a gap, add nothing.
        assert_eq!(
            step(&mut sm, &mut b, reinject(2, 61_000)),
            CommandResult::Reinjected { upto: 4 }
        );
        assert_eq!(
            step(&mut sm, &mut b, reinject(6, 62_000)),
            CommandResult::Reinjected { upto: 4 }
        );
        assert_eq!(sm.applied.logs[&own].next_offset, 2);
        assert_eq!(sm.applied.view_next, 4);

        // eu-west's epoch 2 joins at the current watermark.
        let w = sm.watermark();
        let west2 = LogRef {
            origin: origin_id("eu-west"),
            epoch: 2,
        };
        let r = step(&mut sm, &mut b, Command::Admit { log: west2 });
        assert_eq!(
            r,
            CommandResult::LogState {
                next_offset: 0,
                closed: w
            }
        );
        step(&mut sm, &mut b, Command::Close { hlc: w + 10_000 });
        assert_eq!(sm.watermark(), w, "waits for eu-west's new log");
        step(
            &mut sm,
            &mut b,
            Command::Replicate {
                origin: west2.origin,
                epoch: 2,
                closed: w + 5_000,
                closed_at: 1,
                batches: vec![stored(0, 1, w + 5)],
            },
        );
        assert_eq!(sm.watermark(), w + 5_000);
        assert_eq!(sm.applied.view_next, 5);
        // Admitted again (a retry): the log as it stands.
        let r = step(&mut sm, &mut b, Command::Admit { log: west2 });
        assert!(
            matches!(r, CommandResult::LogState { next_offset: 1, .. }),
            "{r:?}"
        );
    }

    /// Failback as the returning region sees it: its sealed log refuses
    /// appends; after BeginEpoch it writes its new epoch's log, above the
    /// floor the other regions admitted it at.
    #[tokio::test]
    async fn a_new_epoch_writes_above_its_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let mut b = WriteBatch::default();
        let append = |hlc| Command::Append {
            proposed_hlc: hlc,
            count: 1,
            batch: proposed(hlc, 1),
        };
        assert!(matches!(
            sm.apply_one(&mut b, append(100)),
            CommandResult::Appended { .. }
        ));
        sm.apply_one(&mut b, seal("us-east", 1, 100));
        assert_eq!(sm.apply_one(&mut b, append(200)), CommandResult::Sealed);
        sm.apply_one(
            &mut b,
            Command::BeginEpoch {
                epoch: 2,
                floor: Some(90_000),
            },
        );
        assert_eq!(sm.own_ref().epoch, 2);
        let r = sm.apply_one(&mut b, append(300));
        let CommandResult::Appended {
            base_offset,
            first_hlc,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(base_offset, 0, "a new log");
        assert!(first_hlc > 90_000);
        // BeginEpoch again (a retry) changes nothing.
        sm.apply_one(
            &mut b,
            Command::BeginEpoch {
                epoch: 2,
                floor: Some(1),
            },
        );
        assert_eq!(sm.own_state().next_offset, 1);
    }

    /// Own records enter this region's view only once another region holds
    /// them (a failover could seal them away otherwise), unless no other
    /// region could take over any more.
    #[tokio::test]
    async fn own_records_wait_until_another_region_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let mut b = WriteBatch::default();
        let append = |hlc| Command::Append {
            proposed_hlc: hlc,
            count: 2,
            batch: proposed(hlc, 2),
        };
        step(&mut sm, &mut b, append(100));
        step(&mut sm, &mut b, replicate(50_000, 0, vec![]));
        assert_eq!(sm.applied.view_next, 0, "eu-west does not hold them yet");
        step(&mut sm, &mut b, Command::RemoteHeld { epoch: 1, upto: 1 });
        assert_eq!(sm.applied.view_next, 1);
        step(&mut sm, &mut b, Command::RemoteHeld { epoch: 1, upto: 2 });
        assert_eq!(sm.applied.view_next, 2);
        // eu-west failed over: nobody else could seal this log now.
        step(&mut sm, &mut b, seal("eu-west", 0, 0));
        step(&mut sm, &mut b, append(200));
        step(&mut sm, &mut b, Command::Close { hlc: 60_000 });
        assert_eq!(sm.applied.view_next, 4);
    }

    /// A copy that raced the seal leaves records past it on this replica:
    /// they stay stored but never enter the view, here or after a restart.
    #[tokio::test]
    async fn records_held_past_a_seal_never_enter_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = machine(dir.path());
        let mut b = WriteBatch::default();
        sm.apply_one(&mut b, Command::Close { hlc: 50_000 });
        sm.apply_one(
            &mut b,
            replicate(1_000, 4, vec![stored(0, 2, 900), stored(2, 2, 950)]),
        );
        sm.apply_one(&mut b, seal("eu-west", 2, 901));
        sm.advance_view(&mut b);
        assert_eq!(sm.applied.view_next, 2);
        sm.persist(b).unwrap();
        drop(sm);
        let mut sm = machine(dir.path());
        let mut b = WriteBatch::default();
        sm.advance_view(&mut b);
        assert_eq!(sm.applied.view_next, 2);
        assert!(sm.pending.values().all(|q| q.is_empty()));
    }
}
