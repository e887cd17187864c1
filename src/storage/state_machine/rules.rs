//! The state machine's pure decisions over the origin logs it holds: how
//! far the view may merge (the watermark, and this region's own bound),
//! where a batch lands in the view when that is known at commit, and which
//! records are still to enter it. No RocksDB: unit-tested on plain maps.

use std::collections::{BTreeMap, VecDeque};

use super::LogState;
use crate::ids::LogRef;
use crate::meta::seal::{origin_closed, LogClose};
use crate::view::Segment;

/// The view's watermark: the smallest closed timestamp among the writer
/// origins `view_origins`, where a sealed log held up to its seal no longer
/// counts (`meta::seal::origin_closed`), and at most this region's
/// `own_bound`. No writer origin: 0.
pub fn watermark(
    logs: &BTreeMap<LogRef, LogState>,
    view_origins: &[u32],
    own_bound: Option<u64>,
) -> u64 {
    view_origins
        .iter()
        .map(|o| {
            origin_closed(
                logs.iter()
                    .filter(|(l, _)| l.origin == *o)
                    .map(|(_, s)| LogClose {
                        next_offset: s.next_offset,
                        closed: s.closed,
                        sealed_end: s.sealed,
                    }),
            )
        })
        .min()
        .unwrap_or(0)
        .min(own_bound.unwrap_or(u64::MAX))
}

/// `watermark`, or when it is unbounded (every writer origin sealed) the
/// largest closed timestamp or HLC held, and at least `view_last_hlc`: a
/// finite point at or above everything in the view.
pub fn finite_watermark(
    watermark: u64,
    logs: &BTreeMap<LogRef, LogState>,
    view_last_hlc: u64,
) -> u64 {
    match watermark {
        u64::MAX => logs
            .values()
            .map(|s| s.closed.max(s.last_hlc))
            .max()
            .unwrap_or(0)
            .max(view_last_hlc),
        w => w,
    }
}

/// Where a batch at `base_offset` of this region's log `own` lands in the
/// view, when that is known at commit: this region is the pinned topic's
/// home (`home`) and every other log of the view is sealed, so their
/// records fill the view's first positions (all of them: this log's
/// records sort above their seals) and this log's follow.
pub fn view_offset(
    logs: &BTreeMap<LogRef, LogState>,
    view_origins: &[u32],
    own: LogRef,
    home: bool,
    base_offset: u64,
) -> Option<u64> {
    if !home {
        return None;
    }
    let mut before = 0;
    for (l, st) in logs {
        if *l == own || !view_origins.contains(&l.origin) {
            continue;
        }
        before += st.sealed?;
    }
    Some(before + base_offset)
}

/// While another region holds the topic (`topic_regions`) and could take
/// over from this one, this region's own records (log `own`, waiting in
/// `own_pending`) enter the view only once another region holds them: a
/// failover seals this log at the furthest point another region holds,
/// and a record past that point, once in this region's view, would be
/// missing from every other region's. Returns the HLC just below the first
/// own record no other region is known to hold; None: no bound.
pub fn own_bound(
    logs: &BTreeMap<LogRef, LogState>,
    topic_regions: &[u32],
    own: LogRef,
    own_pending: Option<&VecDeque<Segment>>,
) -> Option<u64> {
    let others_live = topic_regions.iter().filter(|o| **o != own.origin).any(|o| {
        let mut of = logs.iter().filter(|(l, _)| l.origin == *o);
        // No log held (a region that does not write) counts as live.
        let mut any = false;
        let live = of.any(|(_, s)| {
            any = true;
            s.sealed.is_none()
        });
        live || !any
    });
    if !others_live {
        return None;
    }
    let st = logs.get(&own).copied().unwrap_or_default();
    if st.remote_held >= st.next_offset {
        return None;
    }
    let seg = own_pending?
        .iter()
        .find(|s| s.base_offset + s.count as u64 > st.remote_held)?;
    let skip = st.remote_held.saturating_sub(seg.base_offset);
    Some((seg.first_hlc + skip).saturating_sub(1))
}
/// Whether every log of `origin` in `logs` is held up to HLC `hlc` (its
/// closed timestamp) or up to its seal; false while none is held.
pub fn settled(logs: &BTreeMap<LogRef, LogState>, origin: u32, hlc: u64) -> bool {
    let mut of = logs.iter().filter(|(l, _)| l.origin == origin).peekable();
    of.peek().is_some()
        && of.all(|(_, st)| match st.sealed {
            Some(end) => st.next_offset >= end,
            None => st.closed >= hlc,
        })
}

/// How many records held in `logs` of the view's origins are not in the
/// view yet, and will be: below a log's seal, if it has one. (A sealed
/// log's records past the seal never enter the view; the re-injected
/// copies of those are counted in the log that re-injects them.)
pub fn held_for_view(logs: &BTreeMap<LogRef, LogState>, view_origins: &[u32]) -> u64 {
    logs.iter()
        .filter(|(l, _)| view_origins.contains(&l.origin))
        .map(|(_, st)| {
            let end = st.sealed.map_or(st.next_offset, |e| e.min(st.next_offset));
            end.saturating_sub(st.merged)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(origin: u32, epoch: u32) -> LogRef {
        LogRef { origin, epoch }
    }

    fn st(next_offset: u64, closed: u64, sealed: Option<u64>) -> LogState {
        LogState {
            next_offset,
            closed,
            sealed,
            ..Default::default()
        }
    }

    #[test]
    fn records_held_for_the_view_stop_at_a_seal_and_skip_other_origins() {
        let log = |origin, epoch| LogRef { origin, epoch };
        let st = |next_offset, merged, sealed| LogState {
            next_offset,
            merged,
            sealed,
            ..Default::default()
        };
        let logs: BTreeMap<LogRef, LogState> = [
            (log(1, 0), st(10, 4, None)),    // 6 to come
            (log(2, 0), st(20, 5, Some(8))), // 3 below the seal
            (log(2, 1), st(7, 7, None)),     // all merged
            (log(3, 0), st(50, 0, None)),    // not a view origin
            (log(1, 1), st(3, 5, Some(2))),  // merged past its seal: none
        ]
        .into();
        assert_eq!(held_for_view(&logs, &[1, 2]), 9);
        assert_eq!(held_for_view(&logs, &[]), 0);
        assert_eq!(held_for_view(&BTreeMap::new(), &[1]), 0);
    }

    #[test]
    fn the_watermark_is_the_least_closed_writer_and_a_held_seal_stops_counting() {
        let logs: BTreeMap<LogRef, LogState> = [
            (log(1, 1), st(10, 500, None)),
            (log(2, 1), st(8, 300, Some(8))), // sealed and held: closed forever
            (log(2, 2), st(4, 700, None)),
            (log(3, 1), st(2, 100, None)), // not a writer
        ]
        .into();
        assert_eq!(watermark(&logs, &[1, 2], None), 500);
        assert_eq!(watermark(&logs, &[1, 2, 3], None), 100);
        // This region's own bound caps it.
        assert_eq!(watermark(&logs, &[1, 2], Some(450)), 450);
        // A writer none of whose logs is held yet holds the view at 0.
        assert_eq!(watermark(&logs, &[1, 4], None), 0);
        // No writer at all: nothing may enter.
        assert_eq!(watermark(&logs, &[], None), 0);
        // A sealed log not yet held up to its seal still counts.
        let short: BTreeMap<LogRef, LogState> = [(log(2, 1), st(5, 300, Some(8)))].into();
        assert_eq!(watermark(&short, &[2], None), 300);
        // Every writer sealed and held: unbounded, and the finite form
        // stands at or above everything held and merged.
        let sealed: BTreeMap<LogRef, LogState> = [
            (log(1, 1), st(3, 900, Some(3))),
            (log(2, 1), st(8, 300, Some(8))),
        ]
        .into();
        let w = watermark(&sealed, &[1, 2], None);
        assert_eq!(w, u64::MAX);
        assert_eq!(finite_watermark(w, &sealed, 950), 950);
        assert_eq!(finite_watermark(w, &sealed, 10), 900);
        assert_eq!(finite_watermark(42, &sealed, 950), 42);
    }

    #[test]
    fn a_homes_batch_knows_its_view_offset_once_every_other_log_is_sealed() {
        let own = log(1, 2);
        let mut logs: BTreeMap<LogRef, LogState> = [
            (log(2, 1), st(9, 0, Some(7))),
            (log(1, 1), st(5, 0, Some(5))),
            (own, st(3, 0, None)),
            (log(3, 1), st(40, 0, None)), // not in the view
        ]
        .into();
        assert_eq!(view_offset(&logs, &[1, 2], own, true, 3), Some(7 + 5 + 3));
        assert_eq!(
            view_offset(&logs, &[1, 2], own, false, 3),
            None,
            "not the home"
        );
        logs.insert(log(2, 2), st(1, 0, None));
        assert_eq!(
            view_offset(&logs, &[1, 2], own, true, 3),
            None,
            "a live log"
        );
    }

    #[test]
    fn own_records_wait_below_what_another_live_region_holds() {
        let own = log(1, 1);
        let seg = |base_offset, count, first_hlc| Segment {
            base_offset,
            count,
            first_hlc,
        };
        let pending: VecDeque<Segment> = [seg(0, 4, 100), seg(4, 4, 200)].into();
        let mut logs: BTreeMap<LogRef, LogState> = [
            (
                own,
                LogState {
                    next_offset: 8,
                    remote_held: 5,
                    ..Default::default()
                },
            ),
            (log(2, 1), st(0, 0, None)),
        ]
        .into();
        // Offset 5 is the first not held elsewhere: HLC 201, bound 200.
        assert_eq!(own_bound(&logs, &[1, 2], own, Some(&pending)), Some(200));
        // A region that holds the topic but wrote nothing counts as live.
        assert_eq!(own_bound(&logs, &[1, 3], own, Some(&pending)), Some(200));
        // Alone in the topic: no bound.
        assert_eq!(own_bound(&logs, &[1], own, Some(&pending)), None);
        // Every other region's logs sealed: none can take over.
        logs.insert(log(2, 1), st(0, 0, Some(0)));
        assert_eq!(own_bound(&logs, &[1, 2], own, Some(&pending)), None);
        logs.insert(log(2, 2), st(0, 0, None));
        // All held elsewhere: no bound.
        logs.get_mut(&own).unwrap().remote_held = 8;
        assert_eq!(own_bound(&logs, &[1, 2], own, Some(&pending)), None);
        // Nothing held elsewhere: just below the first pending record.
        logs.get_mut(&own).unwrap().remote_held = 0;
        assert_eq!(own_bound(&logs, &[1, 2], own, Some(&pending)), Some(99));
    }
}
