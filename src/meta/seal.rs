//! Seals (invariant 7), as pure functions: when a lost region is due for
//! failover, where each of its origin logs ends, and what a seal does to the
//! view's watermark.
//!
//! A seal is the control plane's decision that origin `region`'s epoch
//! `epoch` ends, per partition, at the furthest offset that any surviving
//! region held when the seal was taken. Every record acknowledged as `sync`
//! was committed by another region before its ack, so it lies below that
//! point. Survivors that hold less get the rest from the others over the
//! link (relay), and records past the seal, which no survivor held (`async`
//! writes not yet copied), stay with the lost region until failback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lease::{self, Leases};
use crate::ids::GroupId;

/// Where one origin log of one partition ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealEnd {
    /// Offset after the log's last record.
    pub end: u64,
    /// HLC of the last record (0 for an empty log).
    pub last_hlc: u64,
}

/// The seal of one region's epoch, as committed by the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub region: String,
    pub epoch: u32,
    /// When the metadata leader decided (its wall clock, Unix ms): the
    /// region's lease had expired by then (checked again at apply).
    pub decided_at_ms: i64,
    /// The clock margin the expiry was judged with.
    pub margin_ms: u64,
    pub ends: BTreeMap<GroupId, SealEnd>,
    /// Topics pinned to the region, by name, and their new home.
    pub homes: BTreeMap<String, String>,
}

/// The new home of a topic pinned to a lost region: the first of the
/// topic's regions (in their configured order) that is still up.
pub fn new_home(topic_regions: &[String], lost: &str, up: &[&str]) -> Option<String> {
    topic_regions
        .iter()
        .find(|r| *r != lost && up.contains(&r.as_str()))
        .cloned()
}

/// What one node of a surviving region holds of the lost region's log of
/// one partition group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub group: GroupId,
    pub next_offset: u64,
    pub last_hlc: u64,
}

/// Is `region` due for failover at `now_ms` (the deciding node's wall
/// clock)? Only once its lease has expired for certain (invariant 6), and
/// only if it is not sealed already.
pub fn due(leases: &Leases, seals: &[Seal], region: &str, now_ms: i64, margin_ms: u64) -> bool {
    lease::expired_for_others(leases, region, now_ms, margin_ms)
        && seals
            .iter()
            .rev()
            .find(|s| s.region == region)
            .is_none_or(|s| renewed_since(leases, s))
}

/// Has the sealed region renewed its lease since the seal was decided (it
/// came back)? Its lease had expired by then, so a lease running past the
/// decision was renewed later.
pub fn renewed_since(leases: &Leases, seal: &Seal) -> bool {
    leases
        .get(&seal.region)
        .is_some_and(|until| *until > seal.decided_at_ms)
}

/// The seal point of every group in `groups`: the furthest any survivor
/// holds (an empty log for groups nobody reported).
pub fn seal_points(groups: &[GroupId], answers: &[Held]) -> BTreeMap<GroupId, SealEnd> {
    let mut ends: BTreeMap<GroupId, SealEnd> = groups
        .iter()
        .map(|g| {
            (
                *g,
                SealEnd {
                    end: 0,
                    last_hlc: 0,
                },
            )
        })
        .collect();
    for a in answers {
        if let Some(e) = ends.get_mut(&a.group) {
            if a.next_offset > e.end {
                *e = SealEnd {
                    end: a.next_offset,
                    last_hlc: a.last_hlc,
                };
            }
        }
    }
    ends
}

/// May the metadata group apply `seal` with `leases` as they stand? Not if
/// a renewal committed after the decision extended the lease: then the
/// region is back and the seal is stale.
pub fn still_valid(leases: &Leases, seals: &[Seal], seal: &Seal) -> Result<(), String> {
    if seals
        .iter()
        .any(|s| s.region == seal.region && s.epoch == seal.epoch)
    {
        return Err(format!(
            "region {} epoch {} is sealed already",
            seal.region, seal.epoch
        ));
    }
    if !lease::expired_for_others(leases, &seal.region, seal.decided_at_ms, seal.margin_ms) {
        return Err(format!(
            "region {} renewed its lease after the failover was decided",
            seal.region
        ));
    }
    Ok(())
}

/// One origin log as the view's watermark sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogClose {
    pub next_offset: u64,
    pub closed: u64,
    pub sealed_end: Option<u64>,
}

/// The closed timestamp an origin contributes to the watermark, from its
/// logs (one per epoch) held here: the smallest among them, where a sealed
/// log held up to its seal counts as closed forever (nothing more will ever
/// be added to it). An origin none of whose logs is held yet contributes 0.
pub fn origin_closed(logs: impl IntoIterator<Item = LogClose>) -> u64 {
    logs.into_iter()
        .map(|l| match l.sealed_end {
            Some(end) if l.next_offset >= end => u64::MAX,
            _ => l.closed,
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held(group: GroupId, next_offset: u64) -> Held {
        Held {
            group,
            next_offset,
            last_hlc: next_offset * 10,
        }
    }

    #[test]
    fn seal_point_is_the_furthest_held_by_any_survivor() {
        let answers = [held(1, 5), held(1, 9), held(2, 3), held(1, 7), held(99, 50)];
        let ends = seal_points(&[1, 2, 3], &answers);
        assert_eq!(
            ends[&1],
            SealEnd {
                end: 9,
                last_hlc: 90
            }
        );
        assert_eq!(ends[&2].end, 3);
        assert_eq!(ends[&3].end, 0, "nobody holds anything: an empty log");
        assert!(!ends.contains_key(&99), "only the groups asked for");
    }

    proptest! {
        /// Invariant 7: a record that some survivor committed (as every
        /// `sync`-acknowledged record is) lies below the seal.
        #[test]
        fn nothing_a_survivor_holds_is_past_the_seal(
            answers in proptest::collection::vec((0u64..4, 0u64..1000), 0..20)
        ) {
            let answers: Vec<Held> = answers.into_iter().map(|(g, n)| held(g, n)).collect();
            let ends = seal_points(&[0, 1, 2, 3], &answers);
            for a in &answers {
                prop_assert!(ends[&a.group].end >= a.next_offset);
            }
            for (g, e) in &ends {
                prop_assert!(e.end == 0 || answers.iter().any(|a| a.group == *g && a.next_offset == e.end));
            }
        }
    }

    fn leases(until: i64) -> Leases {
        [("us-east".to_string(), until)].into_iter().collect()
    }

    fn seal(decided_at_ms: i64) -> Seal {
        Seal {
            region: "us-east".into(),
            epoch: 1,
            decided_at_ms,
            margin_ms: 500,
            ends: BTreeMap::new(),
            homes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_pinned_topic_moves_to_its_first_region_still_up() {
        let regions: Vec<String> = ["us-east", "eu-west", "ap-south"]
            .map(String::from)
            .to_vec();
        let up = ["ap-south", "eu-west"];
        assert_eq!(
            new_home(&regions, "us-east", &up).as_deref(),
            Some("eu-west")
        );
        assert_eq!(
            new_home(&regions, "us-east", &["ap-south"]).as_deref(),
            Some("ap-south")
        );
        assert_eq!(new_home(&regions[..1], "us-east", &up), None);
    }

    #[test]
    fn due_only_after_the_lease_expired_for_certain_and_once() {
        let l = leases(10_000);
        assert!(!due(&l, &[], "us-east", 10_000, 500));
        assert!(!due(&l, &[], "us-east", 10_500, 500), "within the margin");
        assert!(due(&l, &[], "us-east", 10_501, 500));
        assert!(
            !due(&l, &[], "eu-west", 99_999, 500),
            "a region that never held a lease"
        );
        assert!(!due(&l, &[seal(10_501)], "us-east", 20_000, 500));
        // Back after the seal (renewed), then lost again: due again.
        let back = leases(15_000);
        assert!(!due(&back, &[seal(10_501)], "us-east", 15_000, 500));
        assert!(due(&back, &[seal(10_501)], "us-east", 15_501, 500));
    }

    #[test]
    fn a_renewal_after_the_decision_voids_the_seal() {
        assert_eq!(still_valid(&leases(10_000), &[], &seal(10_501)), Ok(()));
        assert!(still_valid(&leases(12_000), &[], &seal(10_501)).is_err());
        assert!(still_valid(&leases(10_000), &[seal(10_501)], &seal(10_600)).is_err());
    }

    #[test]
    fn a_sealed_log_stops_holding_the_watermark_once_complete() {
        let open = LogClose {
            next_offset: 5,
            closed: 100,
            sealed_end: None,
        };
        assert_eq!(origin_closed([open]), 100);
        let short = LogClose {
            sealed_end: Some(8),
            ..open
        };
        assert_eq!(origin_closed([short]), 100, "records 5..8 still to come");
        let done = LogClose {
            sealed_end: Some(5),
            ..open
        };
        assert_eq!(origin_closed([done]), u64::MAX);
        let next_epoch = LogClose {
            next_offset: 0,
            closed: 300,
            sealed_end: None,
        };
        assert_eq!(origin_closed([done, next_epoch]), 300);
        assert_eq!(origin_closed([short, next_epoch]), 100);
        assert_eq!(origin_closed([]), 0, "nothing heard from the origin yet");
    }
}
