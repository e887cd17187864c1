//! Seals: a log ends where the control plane sealed it (invariant 7), and
//! a pinned topic's home hands the view over to its next home.

use super::StateMachine;
use crate::command::CommandResult;
use crate::ids::LogRef;

impl StateMachine {
    /// Seals `log` at `end`. Records this replica holds at or past `end`
    /// (a copy that raced the seal) stay stored but never enter the view;
    /// the sealed region re-injects them at failback.
    ///
    /// With a `successor` (a pinned topic's next home), the home is handed
    /// over: that origin's log joins the view after the sealed one, its
    /// records getting HLCs above `last_hlc`. A handover applies once, and
    /// only from the home this group has now; one proposed before the
    /// handover that precedes it (a region back from a long absence) seals
    /// the log and is proposed again.
    pub(super) fn seal(&mut self, log: LogRef, end: u64, last_hlc: u64, successor: Option<u32>) {
        let st = self.applied.logs.entry(log).or_default();
        match st.sealed {
            None => {
                st.sealed = Some(end);
                if let Some(q) = self.pending.get_mut(&log) {
                    q.retain_mut(|seg| {
                        let keep = end.saturating_sub(seg.base_offset).min(seg.count as u64);
                        seg.count = keep as u32;
                        keep > 0
                    });
                }
            }
            // Proposed again by a new leader, or sealed by its own region
            // before the metadata group's seal came: the first one counts.
            Some(first) if first != end => tracing::warn!(
                group = self.group,
                ?log,
                first,
                end,
                "a second, different seal of a log is ignored"
            ),
            Some(_) => {}
        }
        // Records written here after the seal sort after the sealed ones.
        self.clock.observe(last_hlc);
        let Some(next) = successor else { return };
        if self.applied.handovers.iter().any(|(l, _)| *l == log) || self.home() != Some(log.origin)
        {
            return;
        }
        self.applied.handovers.push((log, next));
        if next == self.origin_id {
            let own = self.own_ref();
            let st = self.applied.logs.entry(own).or_default();
            st.closed = st.closed.max(last_hlc);
        }
        if !self.view_origins.contains(&next) {
            self.view_origins.push(next);
            let logs: Vec<LogRef> = self
                .applied
                .logs
                .keys()
                .filter(|l| l.origin == next)
                .copied()
                .collect();
            for l in logs {
                if let Err(e) = self.load_pending_of(l) {
                    // The records stay stored; a restart loads them again.
                    tracing::error!(group = self.group, error = %e, "cannot read a new home's records");
                }
            }
        }
    }

    /// Seals this region's own log where it ends now, when it is the
    /// pinned topic's home and the home moves away by command. Everything
    /// committed before is in the log; every append after is refused.
    pub(super) fn seal_own(&mut self) -> CommandResult {
        let own = self.own_ref();
        let st = self.own_state();
        let end = match st.sealed {
            Some(end) => end,
            None if self.home() == Some(self.origin_id) => st.next_offset,
            None => return CommandResult::NotWriter,
        };
        // At or above every record of the view: the next home's records
        // follow them all.
        let last_hlc = st.last_hlc.max(self.applied.view_last_hlc);
        self.seal(own, end, last_hlc, None);
        CommandResult::SealedAt {
            epoch: own.epoch,
            end,
            last_hlc,
        }
    }
}
