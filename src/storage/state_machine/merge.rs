//! The global view's upkeep: what the watermark lets into the view, and
//! where it is stored. The decisions themselves are pure, in `rules.rs`.

use rocksdb::WriteBatch;

use super::{rules, StateMachine};
use crate::storage::{key, CF_VIEW, CF_VIEW_HLC};
use crate::view;

impl StateMachine {
    /// The watermark, or when every writer origin is sealed (unbounded),
    /// the largest closed timestamp held: a finite point at or above
    /// everything in the view.
    pub(super) fn finite_watermark(&self) -> u64 {
        rules::finite_watermark(
            self.watermark(),
            &self.applied.logs,
            self.applied.view_last_hlc,
        )
    }

    /// Where a batch at `base_offset` of this region's log lands in the
    /// view, when that is known at commit (`rules::view_offset`).
    pub(super) fn view_offset(&self, base_offset: u64) -> Option<u64> {
        let home = self.home() == Some(self.origin_id);
        rules::view_offset(
            &self.applied.logs,
            &self.view_origins,
            self.own_ref(),
            home,
            base_offset,
        )
    }

    /// The view's watermark (`rules::watermark`).
    pub(super) fn watermark(&self) -> u64 {
        rules::watermark(&self.applied.logs, &self.view_origins, self.own_bound())
    }

    /// How far this region's own records may enter the view
    /// (`rules::own_bound`).
    pub(super) fn own_bound(&self) -> Option<u64> {
        let own = self.own_ref();
        rules::own_bound(
            &self.applied.logs,
            &self.topic_regions,
            own,
            self.pending.get(&own),
        )
    }

    /// Merges what the watermark allows into the view and stores the runs.
    pub(super) fn advance_view(&mut self, b: &mut WriteBatch) {
        if self.pending.is_empty() {
            return;
        }
        let w = self.watermark();
        let runs = view::merge(&mut self.pending, w, &mut self.applied.view_next);
        let mut last_hlc = None;
        for run in runs {
            b.put_cf(
                self.db.cf(CF_VIEW),
                key(self.group, run.pos),
                bincode::serialize(&run).expect("serialize run"),
            );
            // The view is sorted by HLC; index each run's first HLC once.
            if last_hlc != Some(run.first_hlc) {
                b.put_cf(
                    self.db.cf(CF_VIEW_HLC),
                    key(self.group, run.first_hlc),
                    run.pos.to_be_bytes(),
                );
                last_hlc = Some(run.first_hlc);
            }
            self.applied.view_last_hlc = run.first_hlc + run.count as u64 - 1;
            if let Some(st) = self.applied.logs.get_mut(&run.log) {
                st.merged = st.merged.max(run.offset + run.count as u64);
            }
        }
    }
}
