//! The Raft log of one group, in the node's RocksDB.

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;

use super::{key, Db, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::command::{Entry, LogId, StorageError, TypeConfig};
use crate::ids::{GroupId, NodeId};

const TAG_VOTE: u64 = 1;
const TAG_COMMITTED: u64 = 2;
const TAG_PURGED: u64 = 3;

/// What one group keeps of its newest entries in memory
/// (`raft.log_cache_entries_max`, `raft.log_cache_bytes_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    pub entries: usize,
    /// Entries' encoded bytes; the newest entry is always kept.
    pub bytes: usize,
}

impl CacheLimits {
    pub fn of(raft: &crate::config::RaftConfig) -> Self {
        CacheLimits {
            entries: usize::try_from(raft.log_cache_entries_max).unwrap_or(usize::MAX),
            bytes: usize::try_from(raft.log_cache_bytes_max).unwrap_or(usize::MAX),
        }
    }
}

/// The most recently appended entries of a group: a contiguous suffix of the
/// log. Openraft reads every entry back (once per follower to replicate it,
/// once to apply it); these reads skip RocksDB and deserialization.
struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
    limits: CacheLimits,
}

fn entry_bytes(e: &Entry) -> usize {
    crate::command::entry_bytes(e)
        .try_into()
        .unwrap_or(usize::MAX)
}

impl Recent {
    fn new(limits: CacheLimits) -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    fn push(&mut self, e: &Entry) {
        if self
            .entries
            .back()
            .is_some_and(|last| last.log_id.index + 1 != e.log_id.index)
        {
            // Not contiguous (cannot happen after truncate); start afresh.
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += entry_bytes(e);
        self.entries.push_back(e.clone());
        while self.entries.len() > self.limits.entries
            || (self.bytes > self.limits.bytes && self.entries.len() > 1)
        {
            let old = self.entries.pop_front().expect("not empty");
            self.bytes -= entry_bytes(&old);
        }
    }

    /// Entries `[from, to)` if the cache holds all of them that exist.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if from < first || from > last + 1 {
            return None;
        }
        let end = to.min(last + 1);
        if end <= from {
            return Some(Vec::new());
        }
        Some(
            self.entries
                .range((from - first) as usize..(end - first) as usize)
                .cloned()
                .collect(),
        )
    }

    /// Drops entries at and after `index`.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            let e = self.entries.pop_back().expect("not empty");
            self.bytes -= entry_bytes(&e);
        }
    }

    /// Drops entries at and before `index`.
    fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= index)
        {
            let e = self.entries.pop_front().expect("not empty");
            self.bytes -= entry_bytes(&e);
        }
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    group: GroupId,
    recent: Arc<Mutex<Recent>>,
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl LogStore {
    pub fn new(db: Arc<Db>, group: GroupId, cache: CacheLimits) -> Self {
        LogStore {
            db,
            group,
            recent: Arc::new(Mutex::new(Recent::new(cache))),
        }
    }

    fn get_state<T: serde::de::DeserializeOwned>(
        &self,
        tag: u64,
    ) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .get(CF_RAFT_STATE, &key(self.group, tag))
            .map_err(|e| StorageIOError::read(io_err(e)))?;
        v.map(|v| bincode::deserialize(&v))
            .transpose()
            .map_err(|e| StorageIOError::read(io_err(*e)).into())
    }

    fn put_state<T: serde::Serialize>(
        &self,
        tag: u64,
        v: &T,
        sync: bool,
    ) -> Result<(), StorageError> {
        // Serializing plain data into memory cannot fail.
        let bytes = bincode::serialize(v).expect("serialize raft state");
        let mut b = WriteBatch::default();
        b.put_cf(self.db.cf(CF_RAFT_STATE), key(self.group, tag), bytes);
        let r = if sync {
            self.db.write_sync(b)
        } else {
            self.db.write(b)
        };
        r.map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        // Stored as an Option (see `purge`), like the committed id.
        Ok(self.get_state::<Option<LogId>>(TAG_PURGED)?.flatten())
    }

    /// The id of the last entry in the log (or the last purged one, when
    /// every entry is purged): what a vote compares, read from RocksDB.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let last = self
            .db
            .last_at_or_before(CF_RAFT_LOG, &self.group.to_be_bytes(), u64::MAX)
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        match last {
            Some((index, v)) => {
                let e: Entry = bincode::deserialize(&v)
                    .map_err(|e| StorageIOError::read_log_at_index(index, io_err(*e)))?;
                Ok(Some(e.log_id))
            }
            None => self.last_purged(),
        }
    }

    /// True when this group has never stored a vote or a log entry.
    pub async fn is_pristine(&mut self) -> Result<bool, StorageError> {
        let state = self.get_log_state().await?;
        let vote: Option<Vote<NodeId>> = self.get_state(TAG_VOTE)?;
        Ok(state.last_log_id.is_none() && vote.is_none())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => *x + 1,
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(entries) = self.recent.lock().expect("recent lock").get(from, to) {
            return Ok(entries);
        }
        self.db
            .range(CF_RAFT_LOG, &self.group.to_be_bytes(), from, to)
            .map(|r| {
                let (index, v) = r.map_err(|e| StorageIOError::read_logs(io_err(e)))?;
                bincode::deserialize(&v)
                    .map_err(|e| StorageIOError::read_log_at_index(index, io_err(*e)).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged()?,
            last_log_id: self.last_log_id()?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        // A vote must survive a crash before it is answered: sync now.
        self.put_state(TAG_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(TAG_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only an optimisation for restart; the next log sync persists it.
        self.put_state(TAG_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_state::<Option<LogId>>(TAG_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf(CF_RAFT_LOG);
        let mut b = WriteBatch::default();
        {
            let mut recent = self.recent.lock().expect("recent lock");
            for e in entries {
                let v = bincode::serialize(&e).expect("serialize raft entry");
                b.put_cf(cf, key(self.group, e.log_id.index), v);
                recent.push(&e);
            }
        }
        self.db
            .write(b)
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        // Group commit: the callback runs after the node's next WAL fsync.
        self.db
            .after_sync(Box::new(move |r| callback.log_io_completed(r)))
            .await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent
            .lock()
            .expect("recent lock")
            .truncate(log_id.index);
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            self.db.cf(CF_RAFT_LOG),
            key(self.group, log_id.index),
            key(self.group + 1, 0),
        );
        self.db
            .write_sync(b)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent.lock().expect("recent lock").purge(log_id.index);
        self.put_state(TAG_PURGED, &Some(log_id), false)?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            self.db.cf(CF_RAFT_LOG),
            key(self.group, 0),
            key(self.group, log_id.index + 1),
        );
        self.db
            .write(b)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use openraft::{CommittedLeaderId, Entry as RaftEntry, EntryPayload};

    /// The defaults.
    const LIMITS: CacheLimits = CacheLimits {
        entries: 256,
        bytes: 4 * 1024 * 1024,
    };

    #[test]
    fn the_defaults_are_the_configs() {
        assert_eq!(CacheLimits::of(&Default::default()), LIMITS);
    }

    #[test]
    fn the_configured_bounds_hold() {
        let raft = crate::config::RaftConfig {
            log_cache_entries_max: 5,
            log_cache_bytes_max: 1000,
            ..Default::default()
        };
        let mut r = Recent::new(CacheLimits::of(&raft));
        for i in 1..=10 {
            r.push(&entry(i, 10));
        }
        assert_eq!(indexes(r.get(1, u64::MAX)), None);
        assert_eq!(indexes(r.get(6, u64::MAX)), Some(vec![6, 7, 8, 9, 10]));
        for i in 11..=20 {
            r.push(&entry(i, 300));
        }
        assert!(r.bytes <= 1000, "{} bytes held", r.bytes);
        // Each weighs its 300 bytes and some: two fit in 1000, three not.
        let each = entry_bytes(&entry(20, 300));
        assert!(2 * each <= 1000 && 3 * each > 1000, "{each}");
        assert_eq!(indexes(r.get(19, u64::MAX)), Some(vec![19, 20]));
        assert_eq!(r.get(18, u64::MAX), None);
    }

    fn entry(index: u64, value_len: usize) -> Entry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Append {
                proposed_hlc: index,
                count: 1,
                batch: bytes::Bytes::from(vec![0u8; value_len]),
            }),
        }
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_is_a_bounded_contiguous_suffix() {
        let mut r = Recent::new(LIMITS);
        for i in 1..=300 {
            r.push(&entry(i, 10));
        }
        assert_eq!(r.entries.len(), LIMITS.entries);
        assert_eq!(indexes(r.get(299, u64::MAX)), Some(vec![299, 300]));
        assert_eq!(indexes(r.get(301, 400)), Some(vec![]));
        assert_eq!(r.get(10, 20), None, "evicted entries come from RocksDB");
        r.truncate(299);
        assert_eq!(indexes(r.get(297, u64::MAX)), Some(vec![297, 298]));
        r.push(&entry(299, 10));
        r.purge(297);
        assert_eq!(indexes(r.get(298, 300)), Some(vec![298, 299]));
        assert_eq!(r.get(297, 300), None);
        // Large entries: the byte bound applies, but one entry always stays.
        let mut r = Recent::new(LIMITS);
        r.push(&entry(1, LIMITS.bytes));
        r.push(&entry(2, LIMITS.bytes));
        assert_eq!(indexes(r.get(2, 3)), Some(vec![2]));
        assert!(r.bytes <= LIMITS.bytes + 64);
    }

    #[test]
    fn every_kind_of_entry_counts_its_bytes() {
        // Idempotent appends, cross-region copies and re-injections carry
        // batches as large as plain appends do; each must weigh its batch.
        let big = || bytes::Bytes::from(vec![0u8; LIMITS.bytes / 2]);
        let payloads = [
            Command::AppendIdempotent {
                proposed_hlc: 1,
                count: 1,
                batch: big(),
                settled_at: 0,
            },
            Command::Replicate {
                origin: 1,
                epoch: 0,
                closed: 0,
                closed_at: 0,
                batches: vec![big(), big()],
            },
            Command::Reinject {
                from: crate::ids::LogRef {
                    origin: 1,
                    epoch: 0,
                },
                offset: 0,
                proposed_hlc: 1,
                count: 1,
                batch: big(),
            },
        ];
        for p in payloads {
            let e = RaftEntry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(p),
            };
            assert!(entry_bytes(&e) >= LIMITS.bytes / 2);
            let mut r = Recent::new(LIMITS);
            for i in 1..=4 {
                r.push(&RaftEntry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: e.payload.clone(),
                });
            }
            assert!(r.entries.len() <= 2, "{} entries held", r.entries.len());
        }
    }

    #[tokio::test]
    async fn reads_agree_with_and_without_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(crate::metrics::Metrics::new())).unwrap();
        let mut store = LogStore::new(db.clone(), 7, LIMITS);
        let mut b = WriteBatch::default();
        {
            let mut recent = store.recent.lock().unwrap();
            for i in 1..=5 {
                let e = entry(i, 100);
                b.put_cf(
                    db.cf(CF_RAFT_LOG),
                    key(7, i),
                    bincode::serialize(&e).unwrap(),
                );
                recent.push(&e);
            }
        }
        db.write(b).unwrap();
        let cached = store.try_get_log_entries(2..5).await.unwrap();
        let mut cold = LogStore::new(db, 7, LIMITS);
        let read = cold.try_get_log_entries(2..5).await.unwrap();
        assert_eq!(cached, read);
        assert_eq!(
            cold.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            5
        );
        // Purging (the meta group, behind its snapshots) is remembered
        // exactly, also by a store opened afresh.
        let purged = entry(3, 100).log_id;
        cold.purge(purged).await.unwrap();
        let mut reopened = LogStore::new(cold.db.clone(), 7, LIMITS);
        let st = reopened.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(purged));
        assert_eq!(st.last_log_id.unwrap().index, 5);
        assert!(reopened.try_get_log_entries(4..6).await.unwrap().len() == 2);
    }
}
