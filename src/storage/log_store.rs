//! The Raft log of one group, in the node's RocksDB.

// openraft's StorageError is large, and it is the error type its storage
// traits require; boxing it in our helpers would only move the cost.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::WriteBatch;

use super::{key, Db, CF_RAFT_LOG, CF_RAFT_STATE};
use crate::raft::types::{Entry, GroupId, LogId, NodeId, StorageError, TypeConfig};

const TAG_VOTE: u64 = 1;
const TAG_COMMITTED: u64 = 2;
const TAG_PURGED: u64 = 3;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    group: GroupId,
}

fn io_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl LogStore {
    pub fn new(db: Arc<Db>, group: GroupId) -> Self {
        LogStore { db, group }
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
        self.db
            .range(CF_RAFT_LOG, self.group, from, to)
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
        let last_purged: Option<LogId> = self.get_state(TAG_PURGED)?;
        let last = self
            .db
            .last_at_or_before(CF_RAFT_LOG, self.group, u64::MAX)
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let last_log_id = match last {
            Some((index, v)) => {
                let e: Entry = bincode::deserialize(&v)
                    .map_err(|e| StorageIOError::read_log_at_index(index, io_err(*e)))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
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
        for e in entries {
            let v = bincode::serialize(&e).expect("serialize raft entry");
            b.put_cf(cf, key(self.group, e.log_id.index), v);
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
