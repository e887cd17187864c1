//! Retention's decisions, pure: where a partition's log start should move
//! (by time, by size, by DeleteRecords) and how far each origin log may be
//! removed while another region may still need it. The partition leader
//! reads what these need from storage (`control::retention`); the group
//! applies the outcome (`Command::Trim`).

use std::collections::BTreeMap;

use crate::ids::LogRef;

/// Size retention over a partition's stored batches: the HLC below which
/// batches go so that what stays is still at least `limit` bytes, as Kafka
/// removes a segment only while the rest stays at or above
/// `retention.bytes`. `logs` yields each origin log's batches newest first
/// as (HLC of the last record, stored bytes). Batches stay newest first
/// across the logs (by HLC, the view's order) until they reach the limit,
/// so only what stays is read. `None` when nothing goes.
pub fn size_cut<I>(logs: Vec<I>, limit: u64) -> Option<u64>
where
    I: Iterator<Item = (u64, u64)>,
{
    let mut logs: Vec<std::iter::Peekable<I>> = logs.into_iter().map(Iterator::peekable).collect();
    let mut newest = || {
        let (_, i) = logs
            .iter_mut()
            .enumerate()
            .filter_map(|(i, l)| l.peek().map(|b| (b.0, i)))
            .max()?;
        logs[i].next()
    };
    let mut kept = 0u64;
    while kept < limit {
        kept = kept.saturating_add(newest()?.1);
    }
    // The newest batch that goes, and everything older.
    newest().map(|(hlc, _)| hlc.saturating_add(1))
}

/// Where the log start moves: the furthest of what retention and
/// DeleteRecords ask for (`cuts`), never back from `current` and never past
/// the high watermark `view_next`.
pub fn target_start(current: u64, view_next: u64, cuts: &[u64]) -> u64 {
    cuts.iter()
        .copied()
        .fold(current, u64::max)
        .min(view_next.max(current))
}

/// How far each origin log may be removed here: what every other region of
/// the topic holds of it (`others`: each region's origin id and what it
/// holds, as the link last heard; a region not heard from holds nothing).
/// A region holds all of its own logs (it wrote them), however stale its
/// last report. With no other region, no limit. A region could ask for
/// anything it does not hold, to copy it or relay it on (invariant 3).
pub fn keep_points<'a>(
    logs: impl Iterator<Item = &'a LogRef>,
    others: &[(u32, BTreeMap<LogRef, u64>)],
) -> Vec<(LogRef, u64)> {
    logs.map(|l| {
        let held = others
            .iter()
            .filter(|(origin, _)| *origin != l.origin)
            .map(|(_, h)| h.get(l).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX);
        (*l, held)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `logs` oldest first, as they are written; size_cut reads them
    /// newest first.
    fn cut(logs: &[&[(u64, u64)]], limit: u64) -> Option<u64> {
        size_cut(
            logs.iter().map(|l| l.iter().rev().copied()).collect(),
            limit,
        )
    }

    #[test]
    fn size_removes_oldest_first_across_logs_and_keeps_at_least_the_limit() {
        let a: &[(u64, u64)] = &[(10, 100), (30, 100), (50, 100)];
        let b: &[(u64, u64)] = &[(20, 100), (40, 100)];
        // 500 bytes; keep 250: 10 and 20 go (300 left), 30 would leave 200.
        assert_eq!(cut(&[a, b], 250), Some(21));
        assert_eq!(cut(&[a, b], 300), Some(21));
        assert_eq!(cut(&[a, b], 301), Some(11));
        assert_eq!(cut(&[a, b], 500), None, "nothing over the limit");
        assert_eq!(cut(&[a, b], 0), Some(51), "0 bytes: everything goes");
        assert_eq!(cut(&[], 0), None);
    }

    #[test]
    fn the_start_only_moves_forward_and_stays_in_the_log() {
        assert_eq!(target_start(5, 100, &[3, 0]), 5);
        assert_eq!(target_start(5, 100, &[30, 7]), 30);
        assert_eq!(target_start(5, 100, &[300]), 100);
        assert_eq!(
            target_start(5, 3, &[]),
            5,
            "never back, even past a shorter view"
        );
    }

    #[test]
    fn a_log_is_kept_where_the_region_holding_least_of_it_stands() {
        let (a, b) = (
            LogRef {
                origin: 1,
                epoch: 1,
            },
            LogRef {
                origin: 2,
                epoch: 1,
            },
        );
        let r3 = (3, BTreeMap::from([(a, 10), (b, 7)]));
        let r4 = (4, BTreeMap::from([(a, 4)]));
        assert_eq!(
            keep_points([a, b].iter(), &[r3.clone(), r4]),
            [(a, 4), (b, 0)],
            "region 4 has not got b at all"
        );
        assert_eq!(
            keep_points([a].iter(), std::slice::from_ref(&r3)),
            [(a, 10)]
        );
        assert_eq!(
            keep_points([a].iter(), &[]),
            [(a, u64::MAX)],
            "a one-region topic"
        );
        // Region 2 wrote b: it holds all of it whatever it last said.
        let r2 = (2, BTreeMap::from([(a, 10), (b, 1)]));
        assert_eq!(
            keep_points([a, b].iter(), std::slice::from_ref(&r2)),
            [(a, 10), (b, u64::MAX)]
        );
        assert_eq!(keep_points([b].iter(), &[r2, r3]), [(b, 7)]);
    }

    proptest! {
        /// What stays is at least the limit, and removing one more batch
        /// (the oldest that stays) would go under it.
        #[test]
        fn size_cut_keeps_the_limit_and_no_more(
            sizes in proptest::collection::vec((1u64..4, 1u64..50), 0..40),
            limit in 0u64..600,
        ) {
            // Spread batches over three logs, HLCs increasing per log and
            // distinct overall.
            let mut logs: Vec<Vec<(u64, u64)>> = vec![vec![], vec![], vec![]];
            for (i, (log, bytes)) in sizes.iter().enumerate() {
                logs[(*log as usize) % 3].push((i as u64 * 10, *bytes));
            }
            let total: u64 = sizes.iter().map(|s| s.1).sum();
            let c = size_cut(logs.iter().map(|l| l.iter().rev().copied()).collect(), limit);
            let stays = |c: Option<u64>| -> u64 {
                logs.iter().flatten().filter(|b| c.is_none_or(|c| b.0 >= c)).map(|b| b.1).sum()
            };
            let kept = stays(c);
            prop_assert!(kept >= limit.min(total));
            let oldest_kept = logs.iter().flatten().filter(|b| c.is_none_or(|c| b.0 >= c)).copied().min();
            if let Some((hlc, bytes)) = oldest_kept {
                prop_assert!(kept - bytes < limit, "batch at {} could have gone", hlc);
            }
        }
    }
}
