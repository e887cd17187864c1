//! Appends to this region's own origin log: a producer's batch, and the
//! closed timestamp its leader publishes while the partition is idle.

use rocksdb::WriteBatch;

use super::StateMachine;
use crate::command::CommandResult;
use crate::hlc;
use crate::log::batch;
use crate::log::batch::BatchHeader;

impl StateMachine {
    /// Appends a proposed batch to this region's own origin log. With
    /// `settled_at`, an idempotent producer's batch is first checked against
    /// the producer's state (see [`Self::check_producer`]).
    pub(super) fn append_own(
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

    /// `Close`: this region's log commits nothing further at or below
    /// `hlc` (nor below its last record). A sealed log stays where it is.
    pub(super) fn close(&mut self, hlc: u64) -> CommandResult {
        let own = self.own_ref();
        let st = self.applied.logs.entry(own).or_default();
        if st.sealed.is_none() {
            st.closed = st.closed.max(hlc).max(st.last_hlc);
        }
        self.log_state(own)
    }

    /// `RemoteHeld`: another region holds this region's log of `epoch` up
    /// to `upto`, so its records below may enter the view here.
    pub(super) fn remote_held(&mut self, epoch: u32, upto: u64) -> CommandResult {
        let own = self.own_ref();
        if epoch == self.applied.epoch {
            let st = self.applied.logs.entry(own).or_default();
            st.remote_held = st.remote_held.max(upto.min(st.next_offset));
        }
        self.log_state(own)
    }
}
