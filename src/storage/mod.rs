//! One RocksDB per node.
//!
//! Column families:
//! - `raft_log`   `[group][index]` -> Raft entry (bincode)
//! - `raft_state` `[group][tag]` -> vote, committed, last purged log id
//! - `sm_state`   `[group]` -> the state machine's applied state
//! - `records`    `[group][base offset]` -> stored batch (see [`batch`])
//! - `hlc_index`  `[group][last hlc]` -> base offset of that batch
//!
//! Group commit: Raft log appends are written without a sync and their
//! completion callbacks are handed to one syncer task per node, which fsyncs
//! the write-ahead log once for everything that arrived while the previous
//! fsync ran. Entries are acknowledged to Raft (and so to producers) only
//! after that fsync: invariant 1 without one fsync per record.

pub mod batch;
pub mod log_store;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::raft::types::GroupId;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_SM_STATE: &str = "sm_state";
pub const CF_RECORDS: &str = "records";
pub const CF_HLC_INDEX: &str = "hlc_index";
const ALL_CFS: [&str; 5] = [
    CF_RAFT_LOG,
    CF_RAFT_STATE,
    CF_SM_STATE,
    CF_RECORDS,
    CF_HLC_INDEX,
];

/// Callbacks waiting for the syncer at most; appenders wait when it is full.
const SYNC_QUEUE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "cannot open the database in {path}: {cause}; is another node using this data directory?"
    )]
    Open { path: String, cause: rocksdb::Error },
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt value in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
}

pub fn key(group: GroupId, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn key_n(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[8..16]);
    u64::from_be_bytes(b)
}

fn key_group(k: &[u8]) -> GroupId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    u64::from_be_bytes(b)
}

/// One stored entry of a group: its number (index or offset) and value.
pub type Numbered = (u64, Box<[u8]>);

/// A log-flush waiter: called with the fsync's outcome.
pub type SyncWaiter = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

pub struct Db {
    db: rocksdb::DB,
    sync_tx: mpsc::Sender<SyncWaiter>,
}

impl Db {
    /// Opens (or creates) the node's database and starts its syncer task.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<Db>, DbError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // State-machine writes skip the WAL (see `write_unlogged`); flushing
        // every column family together keeps them consistent with each other
        // after a crash.
        opts.set_atomic_flush(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            // Measured: LZ4 costs less CPU than writing uncompressed SSTs.
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if [CF_RAFT_LOG, CF_RECORDS].contains(name) {
                // Append-only, keyed by position: universal compaction
                // rewrites each byte a few times, not once per level.
                o.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db =
            rocksdb::DB::open_cf_descriptors(&opts, dir, cfs).map_err(|cause| DbError::Open {
                path: dir.display().to_string(),
                cause,
            })?;
        let (sync_tx, sync_rx) = mpsc::channel(SYNC_QUEUE_MAX);
        let db = Arc::new(Db { db, sync_tx });
        tokio::spawn(syncer(Arc::downgrade(&db), sync_rx, metrics));
        Ok(db)
    }

    pub fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        // All column families are created in open(); a missing one is a bug.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub fn get(&self, cf: &'static str, k: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.db.get_cf(self.cf(cf), k)?)
    }

    /// Writes without waiting for an fsync (the WAL still orders it).
    pub fn write(&self, batch: WriteBatch) -> Result<(), DbError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Writes without the write-ahead log. For state-machine output only:
    /// everything in it is derived from the synced Raft log, which replays
    /// whatever a crash took from the memtables (column families flush
    /// atomically, so applied state and records never disagree). This halves
    /// the bytes each node writes per record.
    pub fn write_unlogged(&self, batch: WriteBatch) -> Result<(), DbError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Writes and fsyncs before returning (rare writes such as votes).
    pub fn write_sync(&self, batch: WriteBatch) -> Result<(), DbError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Queues `waiter` to run after the next WAL fsync.
    pub async fn after_sync(&self, waiter: SyncWaiter) {
        if let Err(e) = self.sync_tx.send(waiter).await {
            // The syncer is gone only while the node shuts down.
            (e.0)(Err(std::io::Error::other("storage is shutting down")));
        }
    }

    /// Entries `[group][from..to)` of a column family, in key order.
    pub fn range(
        &self,
        cf: &'static str,
        group: GroupId,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Numbered, DbError>> + '_ {
        let start = key(group, from);
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
            .map(|r| r.map_err(DbError::from))
            .take_while(move |r| match r {
                Ok((k, _)) => key_group(k) == group && key_n(k) < to,
                Err(_) => true,
            })
            .map(|r| r.map(|(k, v)| (key_n(&k), v)))
    }

    /// The last entry of `[group][..=at]`.
    pub fn last_at_or_before(
        &self,
        cf: &'static str,
        group: GroupId,
        at: u64,
    ) -> Result<Option<Numbered>, DbError> {
        let k = key(group, at);
        let mut it = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&k, Direction::Reverse));
        match it.next() {
            Some(Ok((k, v))) if key_group(&k) == group => Ok(Some((key_n(&k), v))),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    /// The first entry of `[group][at..]`.
    pub fn first_at_or_after(
        &self,
        cf: &'static str,
        group: GroupId,
        at: u64,
    ) -> Result<Option<Numbered>, DbError> {
        self.range(cf, group, at, u64::MAX).next().transpose()
    }

    /// Deletes everything a group stored (topic deletion).
    pub fn delete_group(&self, group: GroupId) -> Result<(), DbError> {
        let mut b = WriteBatch::default();
        for cf in ALL_CFS {
            b.delete_range_cf(self.cf(cf), key(group, 0), key(group + 1, 0));
        }
        self.write_sync(b)
    }

    fn flush_wal(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)
    }
}

/// One fsync for every waiter that queued while the previous one ran.
async fn syncer(
    db: std::sync::Weak<Db>,
    mut rx: mpsc::Receiver<SyncWaiter>,
    metrics: Arc<Metrics>,
) {
    let mut waiters: Vec<SyncWaiter> = Vec::new();
    while let Some(first) = rx.recv().await {
        waiters.push(first);
        while waiters.len() < SYNC_QUEUE_MAX {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        let Some(db) = db.upgrade() else { break };
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || db.flush_wal())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r.map_err(std::io::Error::other));
        metrics.observe_fsync(started.elapsed(), waiters.len());
        for w in waiters.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            w(r);
        }
    }
    for w in waiters.drain(..) {
        w(Err(std::io::Error::other("storage is shutting down")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_group_then_number() {
        assert!(key(1, u64::MAX) < key(2, 0));
        assert!(key(1, 255) < key(1, 256));
        assert_eq!(key_n(&key(7, 42)), 42);
        assert_eq!(key_group(&key(7, 42)), 7);
    }

    #[tokio::test]
    async fn range_and_neighbours_stay_inside_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let mut b = WriteBatch::default();
        for (g, n) in [(1u64, 5u64), (1, 9), (2, 1), (2, 3)] {
            b.put_cf(db.cf(CF_RECORDS), key(g, n), n.to_be_bytes());
        }
        db.write(b).unwrap();
        let ns: Vec<u64> = db
            .range(CF_RECORDS, 1, 0, u64::MAX)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(ns, [5, 9]);
        assert_eq!(
            db.last_at_or_before(CF_RECORDS, 2, 2).unwrap().unwrap().0,
            1
        );
        assert!(db.last_at_or_before(CF_RECORDS, 2, 0).unwrap().is_none());
        assert!(db.first_at_or_after(CF_RECORDS, 1, 10).unwrap().is_none());
        db.delete_group(1).unwrap();
        assert!(db.first_at_or_after(CF_RECORDS, 1, 0).unwrap().is_none());
        assert_eq!(
            db.first_at_or_after(CF_RECORDS, 2, 0).unwrap().unwrap().0,
            1
        );
    }

    #[tokio::test]
    async fn waiters_run_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        db.after_sync(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }))
        .await;
        assert!(rx.await.unwrap());
    }
}
