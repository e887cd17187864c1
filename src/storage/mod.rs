//! One RocksDB per node.
//!
//! Column families:
//! - `raft_log`   `[group][index]` -> Raft entry (bincode)
//! - `raft_state` `[group][tag]` -> vote, committed, last purged log id
//! - `sm_state`   `[group]` -> the state machine's applied state; and
//!   `[ff; 16]` -> the end of the producer ids this node reserved
//!   (`producer_ids`)
//! - `records`    `[group][origin][epoch][base offset]` -> stored batch (see [`crate::log::batch`])
//! - `hlc_index`  `[group][origin][epoch][last hlc]` -> base offset (8 bytes)
//!   and stored size (4 bytes; absent in entries written before retention)
//!   of that batch
//! - `view`       `[group][position]` -> a run of the global view (`view::Run`)
//! - `view_hlc`   `[group][first hlc of a run]` -> its position
//! - `producers`  `[group][producer id]` -> an idempotent producer's state
//!   in the partition (`log::producers::ProducerState`)
//!
//! `[group][origin][epoch]` names one origin log of a partition ([`LogKey`]):
//! the records one region committed in one epoch. A record's id is
//! `(origin, epoch, offset)`.
//!
//! Group commit: Raft log appends are written without a sync and their
//! completion callbacks are handed to one syncer task per node, which fsyncs
//! the write-ahead log once for everything that arrived while the previous
//! fsync ran. Entries are acknowledged to Raft (and so to producers) only
//! after that fsync: invariant 1 without one fsync per record.

pub mod log_store;
pub mod producer_ids;
pub mod read;
pub mod reserve;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use tokio::sync::mpsc;

use crate::ids::GroupId;
use crate::metrics::Metrics;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_SM_STATE: &str = "sm_state";
pub const CF_RECORDS: &str = "records";
pub const CF_HLC_INDEX: &str = "hlc_index";
pub const CF_VIEW: &str = "view";
pub const CF_VIEW_HLC: &str = "view_hlc";
pub const CF_PRODUCERS: &str = "producers";
const ALL_CFS: [&str; 8] = [
    CF_RAFT_LOG,
    CF_RAFT_STATE,
    CF_SM_STATE,
    CF_RECORDS,
    CF_HLC_INDEX,
    CF_VIEW,
    CF_VIEW_HLC,
    CF_PRODUCERS,
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
    /// A write failed on purpose (`POST /faults {"disk_error": true}`).
    #[error("simulated disk error (admin /faults disk_error)")]
    Simulated,
}

/// Key of entry `n` of a group's Raft tables: `[group][n]`.
pub fn key(group: GroupId, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Key of entry `n` under any prefix: `[prefix][n]`.
pub fn key_under(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The number `n` of a key `[prefix][n]` if the key lies under `prefix`.
fn n_under(prefix: &[u8], k: &[u8]) -> Option<u64> {
    if k.len() != prefix.len() + 8 || !k.starts_with(prefix) {
        return None;
    }
    Some(u64::from_be_bytes(
        k[prefix.len()..].try_into().expect("8 bytes"),
    ))
}

/// One origin log of a partition: what region `origin` committed in `epoch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LogKey {
    pub group: GroupId,
    pub origin: u32,
    pub epoch: u32,
}

impl LogKey {
    /// Origin log `log` of partition group `group`.
    pub fn new(group: GroupId, log: crate::ids::LogRef) -> LogKey {
        LogKey {
            group,
            origin: log.origin,
            epoch: log.epoch,
        }
    }

    pub fn prefix(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.group.to_be_bytes());
        k[8..12].copy_from_slice(&self.origin.to_be_bytes());
        k[12..].copy_from_slice(&self.epoch.to_be_bytes());
        k
    }

    pub fn key(&self, n: u64) -> Vec<u8> {
        key_under(&self.prefix(), n)
    }
}

/// What a group takes on disk ([`Db::group_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupBytes {
    pub data: u64,
    pub raft_log: u64,
}

/// One stored entry of a group: its number (index or offset) and value.
pub type Numbered = (u64, Box<[u8]>);

/// A log-flush waiter: called with the fsync's outcome.
pub type SyncWaiter = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

pub struct Db {
    db: rocksdb::DB,
    sync_tx: mpsc::Sender<SyncWaiter>,
    /// Every write and WAL sync fails while set (a simulated dying disk).
    failing: std::sync::atomic::AtomicBool,
    /// The first write error, real or simulated.
    write_error: std::sync::Mutex<Option<String>>,
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
            if [CF_RAFT_LOG, CF_RECORDS, CF_VIEW].contains(name) {
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
        let db = Arc::new(Db {
            db,
            sync_tx,
            failing: Default::default(),
            write_error: Default::default(),
        });
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

    /// From now on every write and WAL sync fails, as on a dying disk
    /// (fault injection; there is no way back but a restart).
    pub fn fail_writes(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_failing(&self) -> Result<(), DbError> {
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return self.noted(Err(DbError::Simulated));
        }
        Ok(())
    }

    /// Passes `r` on, keeping the first write error: a node whose disk
    /// refused a write stops (`node.rs`), whatever part of it wrote.
    fn noted<E: Into<DbError>>(&self, r: Result<(), E>) -> Result<(), DbError> {
        r.map_err(|e| {
            let e = e.into();
            let mut first = self.write_error.lock().expect("write error lock");
            first.get_or_insert_with(|| e.to_string());
            e
        })
    }

    /// The first write or WAL sync that failed, if one did.
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().expect("write error lock").clone()
    }

    /// Writes without waiting for an fsync (the WAL still orders it).
    pub fn write(&self, batch: WriteBatch) -> Result<(), DbError> {
        self.check_failing()?;
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.noted(self.db.write_opt(batch, &wo))
    }

    /// Writes without the write-ahead log. For state-machine output only:
    /// everything in it is derived from the synced Raft log, which replays
    /// whatever a crash took from the memtables (column families flush
    /// atomically, so applied state and records never disagree). This halves
    /// the bytes each node writes per record.
    pub fn write_unlogged(&self, batch: WriteBatch) -> Result<(), DbError> {
        self.check_failing()?;
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.noted(self.db.write_opt(batch, &wo))
    }

    /// Writes and fsyncs before returning (rare writes such as votes).
    pub fn write_sync(&self, batch: WriteBatch) -> Result<(), DbError> {
        self.check_failing()?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.noted(self.db.write_opt(batch, &wo))
    }

    /// Queues `waiter` to run after the next WAL fsync.
    pub async fn after_sync(&self, waiter: SyncWaiter) {
        if let Err(e) = self.sync_tx.send(waiter).await {
            // The syncer is gone only while the node shuts down.
            (e.0)(Err(std::io::Error::other("storage is shutting down")));
        }
    }

    /// Entries `[prefix][from..to)` of a column family, in key order.
    pub fn range<'a>(
        &'a self,
        cf: &'static str,
        prefix: &'a [u8],
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<Numbered, DbError>> + 'a {
        let start = key_under(prefix, from);
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
            .map(|r| r.map_err(DbError::from))
            .map_while(move |r| match r {
                Ok((k, v)) => n_under(prefix, &k).filter(|n| *n < to).map(|n| Ok((n, v))),
                Err(e) => Some(Err(e)),
            })
    }

    /// Entries `[prefix][from..]` of a column family, in key order, for an
    /// iterator that outlives the caller's prefix.
    pub fn range_owned(
        &self,
        cf: &'static str,
        prefix: Vec<u8>,
        from: u64,
    ) -> impl Iterator<Item = Result<Numbered, DbError>> + '_ {
        let start = key_under(&prefix, from);
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
            .map(|r| r.map_err(DbError::from))
            .map_while(move |r| match r {
                Ok((k, v)) => n_under(&prefix, &k).map(|n| Ok((n, v))),
                Err(e) => Some(Err(e)),
            })
    }

    /// Entries `[prefix][..]` of a column family, last first.
    pub fn range_rev_owned(
        &self,
        cf: &'static str,
        prefix: Vec<u8>,
    ) -> impl Iterator<Item = Result<Numbered, DbError>> + '_ {
        let end = key_under(&prefix, u64::MAX);
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(&end, Direction::Reverse))
            .map(|r| r.map_err(DbError::from))
            .map_while(move |r| match r {
                Ok((k, v)) => n_under(&prefix, &k).map(|n| Ok((n, v))),
                Err(e) => Some(Err(e)),
            })
    }

    /// The last entry of `[prefix][..=at]`.
    pub fn last_at_or_before(
        &self,
        cf: &'static str,
        prefix: &[u8],
        at: u64,
    ) -> Result<Option<Numbered>, DbError> {
        let k = key_under(prefix, at);
        let mut it = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&k, Direction::Reverse));
        match it.next() {
            Some(Ok((k, v))) => Ok(n_under(prefix, &k).map(|n| (n, v))),
            Some(Err(e)) => Err(e.into()),
            None => Ok(None),
        }
    }

    /// The first entry of `[prefix][at..]`.
    pub fn first_at_or_after(
        &self,
        cf: &'static str,
        prefix: &[u8],
        at: u64,
    ) -> Result<Option<Numbered>, DbError> {
        self.range(cf, prefix, at, u64::MAX).next().transpose()
    }

    /// Bytes a group takes in the node's SST files, approximately (RocksDB's
    /// estimate from its file indexes; what is still in memory is not
    /// counted): its records and their indexes, the view and producers'
    /// state, and apart its Raft log.
    pub fn group_bytes(&self, group: GroupId) -> GroupBytes {
        let (lo, hi) = (key(group, 0), key(group + 1, 0));
        let range = [rocksdb::Range::new(&lo, &hi)];
        let size = |cf| self.db.get_approximate_sizes_cf(self.cf(cf), &range)[0];
        GroupBytes {
            data: [
                CF_RECORDS,
                CF_HLC_INDEX,
                CF_VIEW,
                CF_VIEW_HLC,
                CF_PRODUCERS,
                CF_SM_STATE,
            ]
            .into_iter()
            .map(size)
            .sum(),
            raft_log: size(CF_RAFT_LOG),
        }
    }

    /// Deletes everything a group stored (topic deletion): every key that
    /// starts with the group id, whatever follows it.
    pub fn delete_group(&self, group: GroupId) -> Result<(), DbError> {
        let mut b = WriteBatch::default();
        for cf in ALL_CFS {
            b.delete_range_cf(self.cf(cf), key(group, 0), key(group + 1, 0));
        }
        self.write_sync(b)
    }

    fn flush_wal(&self) -> Result<(), DbError> {
        self.check_failing()?;
        self.noted(self.db.flush_wal(true))
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
    use crate::ids::{origin_id, EPOCH_FIRST};

    #[test]
    fn keys_sort_by_group_then_number() {
        assert!(key(1, u64::MAX) < key(2, 0));
        assert!(key(1, 255) < key(1, 256));
        assert_eq!(n_under(&7u64.to_be_bytes(), &key(7, 42)), Some(42));
        assert_eq!(n_under(&8u64.to_be_bytes(), &key(7, 42)), None);
        let log = LogKey {
            group: 7,
            origin: origin_id("us-east"),
            epoch: EPOCH_FIRST,
        };
        assert_eq!(n_under(&log.prefix(), &log.key(9)), Some(9));
        assert_eq!(
            n_under(&7u64.to_be_bytes(), &log.key(9)),
            None,
            "other key shapes do not match"
        );
        // Origin logs of a group sort after its group-only keys' start and
        // before the next group: delete_group covers them.
        assert!(key(7, 0)[..] < log.key(0)[..] && log.key(u64::MAX)[..] < key(8, 0)[..]);
        assert_ne!(origin_id("us-east"), origin_id("eu-west"));
        assert_eq!(origin_id("us-east"), origin_id("us-east"));
    }

    #[tokio::test]
    async fn ranges_stay_inside_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let a = LogKey {
            group: 1,
            origin: 10,
            epoch: 1,
        };
        let b2 = LogKey {
            group: 1,
            origin: 10,
            epoch: 2,
        };
        let c = LogKey {
            group: 2,
            origin: 10,
            epoch: 1,
        };
        let mut b = WriteBatch::default();
        for (log, n) in [(a, 5u64), (a, 9), (b2, 1), (c, 1), (c, 3)] {
            b.put_cf(db.cf(CF_RECORDS), log.key(n), n.to_be_bytes());
        }
        db.write(b).unwrap();
        let (pa, pb, pc) = (a.prefix(), b2.prefix(), c.prefix());
        let ns: Vec<u64> = db
            .range(CF_RECORDS, &pa, 0, u64::MAX)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(ns, [5, 9], "epochs are separate logs");
        assert_eq!(db.range(CF_RECORDS, &pa, 6, 9).count(), 0);
        assert_eq!(
            db.last_at_or_before(CF_RECORDS, &pc, 2).unwrap().unwrap().0,
            1
        );
        assert!(db.last_at_or_before(CF_RECORDS, &pb, 0).unwrap().is_none());
        assert!(db.first_at_or_after(CF_RECORDS, &pa, 10).unwrap().is_none());
        db.delete_group(1).unwrap();
        assert!(db.first_at_or_after(CF_RECORDS, &pa, 0).unwrap().is_none());
        assert!(db.first_at_or_after(CF_RECORDS, &pb, 0).unwrap().is_none());
        assert_eq!(
            db.first_at_or_after(CF_RECORDS, &pc, 0).unwrap().unwrap().0,
            1
        );
    }

    #[tokio::test]
    async fn a_groups_bytes_count_its_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut b = WriteBatch::default();
        for n in 0..64u64 {
            // Pseudo-random bytes (xorshift), which LZ4 cannot shrink.
            let v: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            b.put_cf(db.cf(CF_RECORDS), key(3, n), &v);
            b.put_cf(db.cf(CF_RAFT_LOG), key(3, n), &v[..1024]);
        }
        db.write(b).unwrap();
        db.db
            .flush_cfs_opt(
                &[db.cf(CF_RECORDS), db.cf(CF_RAFT_LOG)],
                &rocksdb::FlushOptions::default(),
            )
            .unwrap();
        let g3 = db.group_bytes(3);
        assert!(g3.data > 2 * 1024 * 1024, "{g3:?}");
        assert!(g3.raft_log > 16 * 1024 && g3.raft_log < g3.data, "{g3:?}");
        assert_eq!(db.group_bytes(4), GroupBytes::default());
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

    #[tokio::test]
    async fn a_failing_disk_fails_every_write_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let put = || {
            let mut b = WriteBatch::default();
            b.put_cf(db.cf(CF_SM_STATE), key(1, 0), b"v");
            b
        };
        db.write(put()).unwrap();
        assert_eq!(db.write_error(), None);
        db.fail_writes();
        assert!(matches!(db.write(put()), Err(DbError::Simulated)));
        assert!(matches!(db.write_unlogged(put()), Err(DbError::Simulated)));
        assert!(matches!(db.write_sync(put()), Err(DbError::Simulated)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        db.after_sync(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }))
        .await;
        assert!(!rx.await.unwrap(), "a WAL sync fails too");
        let e = db.write_error().expect("the first error is kept");
        assert!(e.contains("simulated disk error"), "{e}");
    }
}
