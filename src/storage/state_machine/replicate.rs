//! Copies of another region's origin log, as the link brings them
//! (invariant 3): whole batches, in order, never past a seal.

use rocksdb::WriteBatch;

use super::StateMachine;
use crate::ids::LogRef;
use crate::log::batch;

impl StateMachine {
    /// Appends the batches of `log` that are new here. Batches are whole, so
    /// a log's high watermark is always a batch boundary in every region; a
    /// batch that would leave a gap stops the copy, and the sender resumes
    /// from the high watermark it gets back.
    pub(super) fn replicate(
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
}
