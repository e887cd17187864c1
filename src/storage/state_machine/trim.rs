//! Retention and DeleteRecords in a partition group (`Command::Trim`): the
//! log start moves forward, and the stored batches that only served reads
//! below it are removed.
//!
//! Which batches go is decided here, at apply, from the command and from
//! storage below the high watermark, which no later command changes: every
//! replica of the region removes the same ones. A batch of origin log `o`
//! goes when all of these hold:
//! - it lies wholly before the new log start in the view: its last record's
//!   HLC is below `hlc`, the HLC of the record at the log start (the view is
//!   sorted by HLC);
//! - it is merged into the view here (below `merged`), so it is neither a
//!   record waiting for the view, nor one past a seal that failback will
//!   re-inject (invariant 7);
//! - it ends at or below `keep[o]`, what every other region of the topic
//!   holds of `o` as the leader's link last heard: no region will ask for
//!   it again, to copy or relay (invariant 3).

use rocksdb::WriteBatch;

use super::StateMachine;
use crate::ids::LogRef;
use crate::storage::{key, read, DbError, CF_HLC_INDEX, CF_RECORDS, CF_VIEW, CF_VIEW_HLC};
use crate::view::Run;

impl StateMachine {
    /// Applies `Command::Trim`. The view is first brought up to this entry
    /// and everything applied so far is written out, so that what follows
    /// reads the same state on every replica, however its entries were
    /// grouped into applies. A failed write fails the apply (the group,
    /// then the node, stops: nothing is persisted past it).
    pub(super) fn trim(
        &mut self,
        b: &mut WriteBatch,
        log_start: u64,
        hlc: u64,
        keep: &[(LogRef, u64)],
    ) -> Result<(), DbError> {
        self.advance_view(b);
        self.db.write_unlogged(std::mem::take(b))?;
        // The leader took `log_start` from its view, which was no longer
        // than the view here at this entry (same log, earlier index).
        let log_start = log_start.min(self.applied.view_next);
        if log_start > self.applied.log_start {
            self.drop_view_below(b, log_start)?;
            self.applied.log_start = log_start;
        }
        for (log, upto) in keep {
            self.drop_records_below(b, *log, hlc, *upto)?;
        }
        Ok(())
    }

    /// Removes the view's runs that end at or before `log_start`.
    fn drop_view_below(&self, b: &mut WriteBatch, log_start: u64) -> Result<(), DbError> {
        let prefix = self.group.to_be_bytes();
        let (pos, first_hlc) = match self.db.last_at_or_before(CF_VIEW, &prefix, log_start)? {
            Some((_, v)) => {
                let run: Run = bincode::deserialize(&v).map_err(|e| DbError::Corrupt {
                    cf: CF_VIEW,
                    reason: e.to_string(),
                })?;
                if run.end() > log_start {
                    (run.pos, run.first_hlc)
                } else {
                    (log_start, self.applied.view_last_hlc.saturating_add(1))
                }
            }
            None => return Ok(()),
        };
        b.delete_range_cf(
            self.db.cf(CF_VIEW),
            key(self.group, 0),
            key(self.group, pos),
        );
        b.delete_range_cf(
            self.db.cf(CF_VIEW_HLC),
            key(self.group, 0),
            key(self.group, first_hlc),
        );
        Ok(())
    }

    /// Removes the stored batches of `log` that lie wholly before HLC
    /// `hlc`, are merged, and end at or below `upto`.
    fn drop_records_below(
        &mut self,
        b: &mut WriteBatch,
        log: LogRef,
        hlc: u64,
        upto: u64,
    ) -> Result<(), DbError> {
        let Some(st) = self.applied.logs.get(&log).copied() else {
            return Ok(());
        };
        let from = self.applied.trimmed.get(&log).copied().unwrap_or(0);
        let lk = self.log_key(log);
        let limit = st.merged.min(upto);
        let Some((upper, index_end)) =
            read::trim_end(&self.db, lk, st.next_offset, from, hlc, limit)?
        else {
            return Ok(());
        };
        b.delete_range_cf(self.db.cf(CF_RECORDS), lk.key(0), lk.key(upper));
        b.delete_range_cf(self.db.cf(CF_HLC_INDEX), lk.key(0), index_end);
        self.applied.trimmed.insert(log, upper);
        self.applied.removed_records += upper - from;
        Ok(())
    }
}
