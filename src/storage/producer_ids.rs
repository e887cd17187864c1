//! Producer ids for idempotent producers (InitProducerId, in
//! `kafka::producer_ids`): unique across every region, given out without
//! asking any other node.
//!
//! An id is `node << PID_NODE_SHIFT | n` (`ids`): node ids
//! are unique in the topology, and each node counts `n` up. The node stores
//! the end of the block of ids it may give out (fsynced) before giving out
//! any of it, so a restart never reuses one; `n` never falls below the
//! milliseconds since 2024, so a node whose data directory was wiped does
//! not reuse its old ids either (unless it gave out more than one id per
//! millisecond on average, which the stored block covers while it lives).

use std::sync::{Arc, Mutex};

use rocksdb::WriteBatch;

use super::{Db, DbError, CF_SM_STATE};
use crate::ids::{PID_NODE_MAX, PID_NODE_SHIFT};

/// Ids reserved per fsync.
const BLOCK: u64 = 1000;
/// Where a node keeps the end of its reserved block: outside every group's
/// keys (group ids never reach `u64::MAX`).
const BLOCK_KEY: [u8; 16] = [0xff; 16];
/// Milliseconds from the Unix epoch to 2024-01-01, the counter's floor.
const FLOOR_EPOCH_MS: i64 = 1_704_067_200_000;

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    #[error("node id {0} is too large to name producer ids (at most {PID_NODE_MAX})")]
    NodeId(u64),
    #[error("cannot reserve producer ids: {0}")]
    Storage(#[from] DbError),
}

/// The next id this node gives out, and the end of its reserved block.
struct Counter {
    next: u64,
    reserved: u64,
}

pub struct ProducerIds {
    db: Arc<Db>,
    node: u64,
    counter: Mutex<Option<Counter>>,
}

fn now_floor() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (ms - FLOOR_EPOCH_MS).max(0) as u64
}

impl ProducerIds {
    pub fn new(db: Arc<Db>, node: u64) -> Result<Self, ProducerIdError> {
        if node > PID_NODE_MAX {
            return Err(ProducerIdError::NodeId(node));
        }
        Ok(ProducerIds {
            db,
            node,
            counter: Mutex::new(None),
        })
    }

    /// A producer id no node of any region gave out before.
    pub fn next(&self) -> Result<i64, ProducerIdError> {
        let mut guard = self.counter.lock().expect("producer id lock");
        let c = match guard.as_mut() {
            Some(c) => c,
            None => {
                let stored = match self.db.get(CF_SM_STATE, &BLOCK_KEY)? {
                    Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().expect("8")),
                    _ => 0,
                };
                guard.insert(Counter {
                    next: stored,
                    reserved: stored,
                })
            }
        };
        c.next = c.next.max(now_floor());
        if c.next >= c.reserved {
            let reserved = c.next + BLOCK;
            let mut b = WriteBatch::default();
            b.put_cf(self.db.cf(CF_SM_STATE), BLOCK_KEY, reserved.to_be_bytes());
            self.db.write_sync(b)?;
            c.reserved = reserved;
        }
        let n = c.next;
        c.next += 1;
        Ok(((self.node << PID_NODE_SHIFT) | (n & ((1 << PID_NODE_SHIFT) - 1))) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::allocating_node;

    #[tokio::test]
    async fn ids_name_their_node_and_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let mut seen = std::collections::HashSet::new();
        for _restart in 0..3 {
            let db = Db::open(dir.path(), metrics.clone()).unwrap();
            let ids = ProducerIds::new(db, 513).unwrap();
            for _ in 0..(BLOCK + 5) {
                let id = ids.next().unwrap();
                assert!(id > 0);
                assert_eq!(allocating_node(id), 513);
                assert!(seen.insert(id), "id {id} given out twice");
            }
        }
        let db = Db::open(tempfile::tempdir().unwrap().path(), metrics).unwrap();
        assert!(ProducerIds::new(db, PID_NODE_MAX + 1).is_err());
    }
}
