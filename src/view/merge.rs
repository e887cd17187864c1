//! Merge order and watermark: which records enter the global view, and at
//! which positions.
//!
//! Records are ordered by `(hlc, origin, epoch)`. A record enters the view
//! once its HLC is at or below the watermark, the minimum closed timestamp of
//! the topic's writer origins: no origin will ever commit another record at
//! or below it (invariant 5), so everything at or below the watermark is
//! known and its order is final. Every region that holds the same origin-log
//! prefixes computes the same runs, whatever order the prefixes arrived in.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ids::LogRef;

/// Records `base_offset ..` of one origin log, with HLCs `first_hlc ..`,
/// one apart (the shape of a stored batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub base_offset: u64,
    pub count: u32,
    pub first_hlc: u64,
}

/// View positions `pos .. pos + count` hold records `offset ..` of `log`,
/// whose HLCs are `first_hlc ..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub pos: u64,
    pub log: LogRef,
    pub offset: u64,
    pub count: u32,
    pub first_hlc: u64,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.pos + self.count as u64
    }
}

/// Moves every pending record with HLC at or below `watermark` into the
/// view, in `(hlc, origin, epoch)` order, starting at position `next_pos`.
/// `pending` holds, per origin log, the records not yet in the view, in
/// offset order; merged records are removed from it. Returns the new runs
/// (adjacent records of one log share a run) and advances `next_pos`.
pub fn merge(
    pending: &mut BTreeMap<LogRef, VecDeque<Segment>>,
    watermark: u64,
    next_pos: &mut u64,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    loop {
        // The head record of every log: the smallest goes next.
        let mut heads = pending
            .iter()
            .filter_map(|(log, q)| {
                q.front()
                    .map(|s| ((s.first_hlc, log.origin, log.epoch), *log))
            })
            .filter(|((hlc, _, _), _)| *hlc <= watermark)
            .collect::<Vec<_>>();
        if heads.is_empty() {
            break;
        }
        heads.sort();
        let (_, log) = heads[0];
        // Take records of this log while they sort before every other log's
        // head and stay at or below the watermark.
        let limit = heads.get(1).map(|(k, _)| *k);
        let q = pending.get_mut(&log).expect("head log is pending");
        let seg = q.front_mut().expect("head segment");
        let mut take = 0u32;
        while take < seg.count {
            let hlc = seg.first_hlc + take as u64;
            if hlc > watermark || limit.is_some_and(|l| (hlc, log.origin, log.epoch) > l) {
                break;
            }
            take += 1;
        }
        debug_assert!(take > 0, "the head record itself qualifies");
        match runs.last_mut() {
            // A run's HLCs are one apart, as in a stored batch.
            Some(r)
                if r.log == log
                    && r.offset + r.count as u64 == seg.base_offset
                    && r.first_hlc + r.count as u64 == seg.first_hlc =>
            {
                r.count += take;
            }
            _ => runs.push(Run {
                pos: *next_pos,
                log,
                offset: seg.base_offset,
                count: take,
                first_hlc: seg.first_hlc,
            }),
        }
        *next_pos += take as u64;
        seg.base_offset += take as u64;
        seg.first_hlc += take as u64;
        seg.count -= take;
        if seg.count == 0 {
            q.pop_front();
        }
    }
    pending.retain(|_, q| !q.is_empty());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: LogRef = LogRef {
        origin: 1,
        epoch: 1,
    };
    const B: LogRef = LogRef {
        origin: 2,
        epoch: 1,
    };

    fn seg(base_offset: u64, count: u32, first_hlc: u64) -> Segment {
        Segment {
            base_offset,
            count,
            first_hlc,
        }
    }

    /// Every merged record as (log, offset, hlc), in view order.
    fn records(runs: &[Run]) -> Vec<(LogRef, u64, u64)> {
        runs.iter()
            .flat_map(|r| (0..r.count as u64).map(move |i| (r.log, r.offset + i, r.first_hlc + i)))
            .collect()
    }

    #[test]
    fn interleaves_by_hlc_and_stops_at_the_watermark() {
        let mut p = BTreeMap::new();
        p.insert(A, VecDeque::from([seg(0, 3, 10)])); // hlc 10, 11, 12
        p.insert(B, VecDeque::from([seg(0, 2, 11)])); // hlc 11, 12
        let mut pos = 0;
        let runs = merge(&mut p, 11, &mut pos);
        assert_eq!(
            records(&runs),
            [(A, 0, 10), (A, 1, 11), (B, 0, 11)],
            "ties break by origin"
        );
        assert_eq!(pos, 3);
        let runs = merge(&mut p, 100, &mut pos);
        assert_eq!(records(&runs), [(A, 2, 12), (B, 1, 12)]);
        assert_eq!(runs[0].pos, 3);
        assert!(p.is_empty());
    }

    #[test]
    fn one_log_is_the_view_itself() {
        let mut p = BTreeMap::new();
        p.insert(
            A,
            VecDeque::from([seg(0, 5, 100), seg(5, 5, 105), seg(10, 1, 200)]),
        );
        let mut pos = 0;
        let runs = merge(&mut p, u64::MAX, &mut pos);
        assert_eq!(runs.len(), 2, "records with consecutive HLCs share a run");
        assert_eq!((runs[0].pos, runs[0].offset, runs[0].count), (0, 0, 10));
        assert_eq!((runs[1].pos, runs[1].first_hlc), (10, 200));
    }

    fn arb_log() -> impl Strategy<Value = Vec<Segment>> {
        proptest::collection::vec((1u32..5, 1u64..20), 0..8).prop_map(|v| {
            let (mut off, mut hlc) = (0u64, 0u64);
            v.into_iter()
                .map(|(count, gap)| {
                    hlc += gap;
                    let s = seg(off, count, hlc);
                    off += count as u64;
                    hlc += count as u64 - 1;
                    s
                })
                .collect()
        })
    }

    proptest! {
        // Invariant 4: whatever watermarks a region sees, and however its
        // origin logs arrived, the view is the same sequence: all records
        // at or below the final watermark, sorted by (hlc, origin), once.
        #[test]
        fn the_view_does_not_depend_on_the_watermark_steps(
            logs in proptest::collection::vec(arb_log(), 1..4),
            steps in proptest::collection::vec(0u64..200, 0..6),
            last in 0u64..200,
        ) {
            let refs: Vec<LogRef> = (0..logs.len() as u32).map(|i| LogRef { origin: i + 1, epoch: 1 }).collect();
            let fresh = || -> BTreeMap<LogRef, VecDeque<Segment>> {
                refs.iter().zip(&logs).map(|(r, l)| (*r, l.iter().copied().collect())).collect()
            };
            let mut stepped = fresh();
            let mut pos = 0;
            let mut got = Vec::new();
            let mut w = 0;
            for s in steps.iter().chain([&last]) {
                w = w.max(*s); // watermarks only grow
                let runs = merge(&mut stepped, w, &mut pos);
                for r in &runs {
                    prop_assert_eq!(r.pos as usize, got.len(), "positions are contiguous");
                    got.extend(records(std::slice::from_ref(r)));
                }
            }
            let mut want: Vec<(LogRef, u64, u64)> = refs.iter().zip(&logs)
                .flat_map(|(r, l)| l.iter().flat_map(move |s| (0..s.count as u64).map(move |i| (*r, s.base_offset + i, s.first_hlc + i))))
                .filter(|(_, _, h)| *h <= w)
                .collect();
            want.sort_by_key(|(r, _, h)| (*h, r.origin, r.epoch));
            prop_assert_eq!(got, want);
        }
    }
}
