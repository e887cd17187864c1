//! Where a group meets: one group, one coordinator, whichever region its
//! members connect to.
//!
//! Each region has a coordinator for every group (the leader of the
//! group's `__consumer_offsets` partition there). Members of one group that
//! connect to two regions would otherwise form two groups that each assign
//! every partition, and read every record twice. So a coordinator with
//! members announces it: a presence record in the group's offsets
//! partition, renewed while the group has members, travels to every region
//! like a commit. A region whose coordinator sees another region's live
//! presence sends members there (FindCoordinator answers with that
//! region's coordinator), unless its own group became active first.
//!
//! The rule is a pure function of the presence records held, so regions
//! that hold the same records agree where the group meets. A presence is
//! live while it is fresh (its HLC within the time to live), names members,
//! and its region is not failed over.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::log::RecordIn;

/// A presence record's key: the group it names. Its shape differs from a
/// commit's key, so the commit fold skips it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub presence: String,
}

/// A presence record's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Value {
    /// The node that coordinates the group in the writing region.
    pub node: u64,
    /// Members the group had there; 0 when it emptied (others may take
    /// it at once).
    pub members: u32,
    /// HLC at which the group became active there: the earliest active
    /// region keeps the group when two claim it.
    pub since: u64,
}

/// A presence as folded: the latest of one region for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub node: u64,
    pub members: u32,
    pub since: u64,
    /// HLC of the record (its freshness).
    pub at: u64,
}

/// The record announcing that `group` has `members` members coordinated
/// by `node` in the writing region since HLC `since`.
pub fn record(group: &str, value: &Value) -> RecordIn {
    let key = Key {
        presence: group.to_string(),
    };
    RecordIn {
        key: Some(Bytes::from(
            serde_json::to_vec(&key).expect("serialize presence key"),
        )),
        value: Some(Bytes::from(
            serde_json::to_vec(value).expect("serialize presence"),
        )),
        headers: Vec::new(),
    }
}

/// The group and presence a record carries, if it is a presence record.
pub fn parse(r: &RecordIn) -> Option<(String, Value)> {
    let key: Key = serde_json::from_slice(r.key.as_ref()?).ok()?;
    let value: Value = serde_json::from_slice(r.value.as_ref()?).ok()?;
    Some((key.presence, value))
}

/// Where a group's members should meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meet {
    /// This region coordinates the group.
    Here,
    /// Region `region` does; `node` is its coordinator.
    There { region: u32, node: u64 },
}

/// Inputs to [`meeting_place`] besides the presences.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// This region's origin id.
    pub own: u32,
    /// Since when this region's group has members (HLC), if it has any.
    pub own_since: Option<u64>,
    /// Wall clock (Unix ms).
    pub now_ms: i64,
    /// How long a presence stays live without renewal.
    pub ttl_ms: u64,
}

/// Decides where a group meets, from the latest presence of every region
/// (`(origin, seen)`), skipping regions failed over (`failed(origin)`).
/// The live region that became active first wins (ties: the smaller
/// origin id); this region counts when its group has members; with no
/// live region, here.
pub fn meeting_place(
    now: Now,
    seen: impl IntoIterator<Item = (u32, Seen)>,
    failed: impl Fn(u32) -> bool,
) -> Meet {
    let mut best: Option<(u64, u32, u64)> = now.own_since.map(|s| (s, now.own, 0));
    for (origin, s) in seen {
        if origin == now.own || s.members == 0 || failed(origin) {
            continue;
        }
        let age = now.now_ms - crate::hlc::wall_ms(s.at);
        if age > now.ttl_ms as i64 {
            continue;
        }
        if best.is_none_or(|(since, o, _)| (s.since, origin) < (since, o)) {
            best = Some((s.since, origin, s.node));
        }
    }
    match best {
        Some((_, origin, node)) if origin != now.own => Meet::There {
            region: origin,
            node,
        },
        _ => Meet::Here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test times are milliseconds after this Unix time.
    const T0: i64 = 1_800_000_000_000;

    fn hlc_at(ms: i64) -> u64 {
        crate::hlc::from_wall_ms(T0 + ms)
    }

    fn seen(node: u64, members: u32, since_ms: i64, at_ms: i64) -> Seen {
        Seen {
            node,
            members,
            since: hlc_at(since_ms),
            at: hlc_at(at_ms),
        }
    }

    fn now(own_since_ms: Option<i64>) -> Now {
        Now {
            own: 1,
            own_since: own_since_ms.map(hlc_at),
            now_ms: T0 + 100_000,
            ttl_ms: 10_000,
        }
    }

    #[test]
    fn a_record_round_trips_and_is_not_a_commit() {
        let v = Value {
            node: 4,
            members: 2,
            since: 77,
        };
        let r = record("billing", &v);
        assert_eq!(parse(&r), Some(("billing".to_string(), v)));
        let commit = crate::group::offsets::record(
            &crate::group::offsets::Key {
                group: "billing".into(),
                topic: "t".into(),
                partition: 0,
            },
            None,
        );
        assert_eq!(parse(&commit), None);
        let mut commits = Default::default();
        assert_eq!(
            crate::group::offsets::fold(&mut commits, &r, 1, 1),
            None,
            "the commit fold skips presence records"
        );
    }

    #[test]
    fn with_no_other_live_region_the_group_meets_here() {
        assert_eq!(meeting_place(now(None), [], |_| false), Meet::Here);
        // Stale, empty, or failed over: not live.
        let others = [
            (2, seen(5, 2, 80_000, 89_000)),
            (3, seen(8, 0, 80_000, 99_000)),
            (4, seen(9, 1, 80_000, 99_000)),
        ];
        assert_eq!(meeting_place(now(None), others, |o| o == 4), Meet::Here);
    }

    #[test]
    fn a_live_region_draws_members_that_connect_elsewhere() {
        let others = [(2, seen(5, 2, 80_000, 95_000))];
        assert_eq!(
            meeting_place(now(None), others, |_| false),
            Meet::There { region: 2, node: 5 }
        );
    }

    #[test]
    fn the_region_active_first_keeps_the_group() {
        let others = [(2, seen(5, 2, 80_000, 95_000))];
        // Here since before region 2: stay.
        assert_eq!(
            meeting_place(now(Some(79_000)), others, |_| false),
            Meet::Here
        );
        // Here since after: go there.
        assert_eq!(
            meeting_place(now(Some(81_000)), others, |_| false),
            Meet::There { region: 2, node: 5 }
        );
        // Two others: the earliest.
        let two = [
            (3, seen(8, 1, 70_000, 99_000)),
            (2, seen(5, 2, 60_000, 95_000)),
        ];
        assert_eq!(
            meeting_place(now(Some(81_000)), two, |_| false),
            Meet::There { region: 2, node: 5 }
        );
    }

    #[test]
    fn every_region_agrees_where_the_group_meets() {
        // Regions 1, 2 and 3 each see the others' presence and know their
        // own: they pick the same one, whatever the order.
        let all = [
            (1, seen(2, 1, 70_000, 99_000)),
            (2, seen(5, 2, 70_000, 98_000)),
            (3, seen(8, 1, 75_000, 97_000)),
        ];
        let mut picked = Vec::new();
        for own in [1u32, 2, 3] {
            let mine = all.iter().find(|(o, _)| *o == own).unwrap().1;
            let n = Now {
                own,
                own_since: Some(mine.since),
                ..now(None)
            };
            let mut others: Vec<_> = all.iter().copied().filter(|(o, _)| *o != own).collect();
            others.reverse();
            picked.push(match meeting_place(n, others, |_| false) {
                Meet::Here => own,
                Meet::There { region, .. } => region,
            });
        }
        assert_eq!(picked, vec![1, 1, 1]);
    }
}
