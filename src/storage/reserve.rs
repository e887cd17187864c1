//! The free-space reserve: below `storage.free_bytes_reserve` free bytes on
//! the data directory's filesystem, a node refuses new writes from clients
//! (the router asks [`DiskReserve::may_write`]) and keeps serving reads and
//! replication, so that what it holds stays readable and its Raft groups
//! keep their logs whole. It takes writes again once free space is back
//! above the reserve plus a margin ([`resume_margin`]), so that a disk at
//! the edge does not flap between the two.
//!
//! Why refuse before the disk is full: a RocksDB write that fails stops the
//! Raft group it belongs to (openraft treats a storage error as fatal), and
//! a full disk fails every group of the node at once. Refused writes are
//! retried by clients; nothing acknowledged is at stake.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The margin above the reserve that free space must reach before writes
/// resume: a tenth of the reserve, at most 64 MiB.
pub fn resume_margin(reserve: u64) -> u64 {
    (reserve / 10).min(64 * 1024 * 1024)
}

/// Whether a node refusing (`refusing`) goes on refusing with `free` bytes
/// free and a reserve of `reserve` bytes (0: never).
pub fn refuses(refusing: bool, free: u64, reserve: u64) -> bool {
    if reserve == 0 {
        return false;
    }
    if refusing {
        free < reserve.saturating_add(resume_margin(reserve))
    } else {
        free < reserve
    }
}

/// Free bytes an unprivileged writer may use on the filesystem holding
/// `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Bytes of the files under `path`, recursively (symbolic links are not
/// followed; files that vanish meanwhile count as empty).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Why a write was refused: free space was below the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BelowReserve {
    pub free: u64,
    pub reserve: u64,
}

/// One node's reserve: what was last read, and whether writes are refused.
pub struct DiskReserve {
    path: PathBuf,
    reserve: u64,
    free: AtomicU64,
    /// Bytes the data directory holds, as last counted.
    used: AtomicU64,
    refusing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl DiskReserve {
    /// The reserve of the filesystem holding `path`, read once now so that
    /// a node that starts on a full disk refuses from its first write.
    pub fn new(path: &Path, reserve: u64, metrics: Arc<Metrics>) -> Arc<DiskReserve> {
        let r = Arc::new(DiskReserve {
            path: path.to_path_buf(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            used: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            metrics,
        });
        r.check();
        r
    }

    /// `Err` while writes are refused, with the figures for the error.
    pub fn may_write(&self) -> Result<(), BelowReserve> {
        if !self.refusing.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.metrics.disk_refused_writes.inc();
        Err(BelowReserve {
            free: self.free.load(Ordering::Relaxed),
            reserve: self.reserve,
        })
    }

    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Free bytes as last read (`u64::MAX` until one read succeeded).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes the data directory holds, as last counted.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reads free space and updates the state, logging each change (a
    /// failed read keeps the state as it was and says why); counts the
    /// data directory's bytes.
    fn check(&self) {
        let used = dir_bytes(&self.path);
        self.used.store(used, Ordering::Relaxed);
        self.metrics
            .data_dir_bytes
            .set(used.min(i64::MAX as u64) as i64);
        let free = match free_bytes(&self.path) {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read free disk space; the reserve keeps its last state");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        self.metrics
            .disk_free_bytes
            .set(free.min(i64::MAX as u64) as i64);
        let was = self.refusing.load(Ordering::Relaxed);
        let now = refuses(was, free, self.reserve);
        if now == was {
            return;
        }
        self.refusing.store(now, Ordering::Relaxed);
        self.metrics.disk_reserve_refusing.set(now as i64);
        let (free_mib, reserve_mib) = (free >> 20, self.reserve >> 20);
        if now {
            let resume_mib = (self.reserve + resume_margin(self.reserve)) >> 20;
            warn!(
                path = %self.path.display(),
                free_mib,
                reserve_mib,
                "free disk space is below storage.free_bytes_reserve: refusing new writes \
                 (KAFKA_STORAGE_ERROR, retriable) until {resume_mib} MiB are free; \
                 reads and replication go on. Free space, or add disk"
            );
        } else {
            info!(
                path = %self.path.display(),
                free_mib,
                reserve_mib,
                "free disk space is back above storage.free_bytes_reserve: taking writes again"
            );
        }
    }

    /// Reads free space every `interval` until `stop`.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            // statvfs is a system call that can block on a sick disk.
            if tokio::task::spawn_blocking(move || me.check())
                .await
                .is_err()
            {
                warn!("the free-space check panicked; trying again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn refusal_starts_below_the_reserve_and_ends_above_its_margin() {
        let reserve = 1024 * MIB;
        assert_eq!(resume_margin(reserve), 64 * MIB);
        assert_eq!(resume_margin(100 * MIB), 10 * MIB);
        assert!(!refuses(false, reserve, reserve));
        assert!(refuses(false, reserve - 1, reserve));
        // Once refusing, the margin must be regained.
        assert!(refuses(true, reserve, reserve));
        assert!(refuses(true, reserve + 64 * MIB - 1, reserve));
        assert!(!refuses(true, reserve + 64 * MIB, reserve));
        // 0 turns the reserve off, whatever the disk says.
        assert!(!refuses(false, 0, 0));
        assert!(!refuses(true, 0, 0));
        // No overflow at the top.
        assert!(!refuses(true, u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn free_space_of_a_real_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 24]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 1024);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
        let m = Arc::new(Metrics::new());
        // A reserve no disk meets: refusing from the start.
        let r = DiskReserve::new(dir.path(), u64::MAX / 2, m.clone());
        assert!(r.refusing());
        assert!(r.may_write().is_err());
        assert_eq!(m.disk_refused_writes.get(), 1);
        let r = DiskReserve::new(dir.path(), 0, m);
        assert!(r.may_write().is_ok());
        assert_eq!(r.used(), 1024);
    }
}
