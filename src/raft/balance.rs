//! Partition leadership balance inside a region.
//!
//! Every partition group has a preferred leader (`meta::preferred_leader`:
//! partitions rotate over the region's nodes). Each node, every
//! `raft.balance_interval_ms`, looks at the groups it leads: one that a live
//! node prefers goes back to that node; failing that, while it leads more
//! than a live node that could take one of its groups whose preferred node
//! is away, one goes to the least-loaded such node. One handover per node
//! per round, so leadership moves gradually and a flapping node cannot
//! make it swing.
//!
//! openraft 0.9 has no leadership transfer, so a handover is emulated: the
//! leader asks the target to campaign (`KIND_CAMPAIGN`), then stops its
//! heartbeats and new writes for the group (writes are answered
//! NOT_LEADER_OR_FOLLOWER, which clients retry after a metadata refresh).
//! Once the followers stop hearing from it, the target, which holds the
//! whole log, wins the election it keeps calling. Should it not win within
//! twice the election timeout, the old leader takes up its heartbeats and
//! writes again.

use crate::ids::{GroupId, NodeId};
use std::collections::BTreeMap;

/// A group this node leads, as the balance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Led {
    pub group: GroupId,
    pub preferred: NodeId,
    /// Followers that hold the leader's whole log (so they are up and can
    /// win an election at once).
    pub ready: Vec<NodeId>,
}

/// The one handover `me` should make now, if any: `(group, to)`. `load`
/// counts the groups each node of the region leads (as this node sees it).
pub fn plan(me: NodeId, led: &[Led], load: &BTreeMap<NodeId, usize>) -> Option<(GroupId, NodeId)> {
    let load_of = |n: NodeId| load.get(&n).copied().unwrap_or(0);
    // Back to the preferred node, the least loaded first.
    let back = led
        .iter()
        .filter(|l| l.preferred != me && l.ready.contains(&l.preferred))
        .min_by_key(|l| (load_of(l.preferred), l.group));
    if let Some(l) = back {
        return Some((l.group, l.preferred));
    }
    // A group whose preferred node is away, to the least-loaded node that
    // could take it, while that leaves this node at least as loaded.
    let mine = load_of(me);
    led.iter()
        .filter(|l| l.preferred != me)
        .filter_map(|l| {
            let to = l.ready.iter().copied().min_by_key(|n| (load_of(*n), *n))?;
            (load_of(to) + 1 < mine).then_some((load_of(to), l.group, to))
        })
        .min()
        .map(|(_, group, to)| (group, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn led(group: GroupId, preferred: NodeId, ready: &[NodeId]) -> Led {
        Led {
            group,
            preferred,
            ready: ready.to_vec(),
        }
    }

    #[test]
    fn a_returned_node_gets_its_groups_back_one_at_a_time() {
        let load = BTreeMap::from([(1, 3), (2, 0), (3, 3)]);
        let mine = [
            led(10, 1, &[2, 3]),
            led(11, 2, &[2, 3]),
            led(12, 2, &[2, 3]),
        ];
        assert_eq!(plan(1, &mine, &load), Some((11, 2)));
    }

    #[test]
    fn a_preferred_node_that_is_not_ready_keeps_waiting() {
        let load = BTreeMap::from([(1, 2), (2, 0), (3, 2)]);
        let mine = [led(10, 1, &[3]), led(11, 2, &[3])];
        assert_eq!(
            plan(1, &mine, &load),
            None,
            "2 lags: not yet, and 3 is not lighter"
        );
    }

    #[test]
    fn an_away_nodes_groups_spread_to_the_least_loaded() {
        // Node 2 is down; node 1 won all its groups' elections.
        let load = BTreeMap::from([(1, 4), (3, 2)]);
        let mine = [
            led(10, 1, &[3]),
            led(11, 1, &[3]),
            led(12, 2, &[3]),
            led(13, 2, &[3]),
        ];
        assert_eq!(plan(1, &mine, &load), Some((12, 3)));
        let even = BTreeMap::from([(1, 3), (3, 3)]);
        assert_eq!(plan(1, &mine[..3], &even), None);
    }

    proptest! {
        /// Applying the plan round after round ends (no move back and
        /// forth), with every group whose preferred node is up led by it,
        /// and the rest spread within one of each other.
        #[test]
        fn rounds_converge_to_the_preferred_and_an_even_spread(
            nodes in 2usize..6,
            groups in 1usize..30,
            away in proptest::collection::vec(any::<bool>(), 6),
            start in proptest::collection::vec(0usize..6, 30),
        ) {
            let nodes: Vec<NodeId> = (1..=nodes as u64).collect();
            let up: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|n| !away[*n as usize - 1])
                .collect();
            prop_assume!(!up.is_empty());
            let preferred = |g: usize| nodes[g % nodes.len()];
            let mut leader: Vec<NodeId> =
                (0..groups).map(|g| up[start[g] % up.len()]).collect();
            let mut moves = 0;
            loop {
                let mut load = BTreeMap::new();
                for l in &leader {
                    *load.entry(*l).or_insert(0usize) += 1;
                }
                let mut moved = false;
                for me in &up {
                    let mine: Vec<Led> = (0..groups)
                        .filter(|g| leader[*g] == *me)
                        .map(|g| led(g as GroupId, preferred(g), &up.iter().copied().filter(|n| n != me).collect::<Vec<_>>()))
                        .collect();
                    if let Some((g, to)) = plan(*me, &mine, &load) {
                        leader[g as usize] = to;
                        moved = true;
                        break;
                    }
                }
                if !moved {
                    break;
                }
                moves += 1;
                prop_assert!(moves <= 4 * groups, "no convergence");
            }
            let mut load: BTreeMap<NodeId, usize> = up.iter().map(|n| (*n, 0)).collect();
            for l in &leader {
                *load.get_mut(l).unwrap() += 1;
            }
            let least = *load.values().min().unwrap();
            for g in 0..groups {
                if up.contains(&preferred(g)) {
                    prop_assert_eq!(leader[g], preferred(g));
                } else {
                    prop_assert!(load[&leader[g]] <= least + 1, "{:?}", load);
                }
            }
        }
    }
}
