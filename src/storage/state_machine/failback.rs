//! Failback (invariant 7): a returning region's records past its seal are
//! re-injected into this region's log as new records, its new log is
//! admitted into the view, and this region's log begins a new epoch.

use rocksdb::WriteBatch;

use super::{LogState, StateMachine};
use crate::command::CommandResult;
use crate::ids::LogRef;

impl StateMachine {
    /// `Reinject`: appends records of sealed log `from`, from its offset
    /// `offset`, to this region's log as new records. Only from a sealed
    /// log, from its seal on, in order; a repeated step answers how far the
    /// log is re-injected and changes nothing.
    pub(super) fn reinject(
        &mut self,
        b: &mut WriteBatch,
        from: LogRef,
        offset: u64,
        proposed_hlc: u64,
        count: u32,
        proposed: &bytes::Bytes,
    ) -> CommandResult {
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
        let (kept, kept_batch) = match self.not_yet_stored(from, proposed_hlc, count, proposed) {
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

    /// `Admit`: the returning region's new log joins the view here.
    pub(super) fn admit(&mut self, log: LogRef) -> CommandResult {
        if self.applied.logs.contains_key(&log) {
            return self.log_state(log);
        }
        // The view stops here until the log's closed timestamps arrive;
        // its records all sort above.
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

    /// `BeginEpoch`: this region's log moves to `epoch`, its records above
    /// `floor` (and above anything this region's view holds).
    pub(super) fn begin_epoch(&mut self, epoch: u32, floor: Option<u64>) -> CommandResult {
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
        self.log_state(self.own_ref())
    }
}
