//! Pre-vote for the metadata group, emulated: openraft 0.9 has none.
//!
//! Without it, a node cut off from the others keeps campaigning, so its
//! term grows; when it is reconnected, the healthy leader sees that term in
//! a reply and steps down, and every region's lease renewals wait for a new
//! election (the "failback gap" of docs/disaster-recovery.md). Raft's
//! pre-vote (Ongaro, section 9.6) asks first whether an election could be
//! won. Here every node asks its peers all the time instead: each pings
//! every other voter, which answers whether it hears a live leader. A node
//! lets openraft campaign (`RuntimeConfigHandle::elect`) only while a
//! majority of voters, itself included, answered recently and hear none.
//!
//! - A node cut off from a majority never campaigns, so it returns with
//!   its old term and follows the leader it finds.
//! - A node that cannot hear the leader while a majority can (a cut between
//!   two regions) does not depose it either; its metadata writes go round
//!   through a third region (`KIND_META_RELAY`).
//! - When the leader is lost, its followers stop vouching for it after
//!   `alive_ms`, well before openraft's election timer fires.
//! - Of the willing voters, only the one with the most up-to-date log (as
//!   a vote compares logs: last term, then last index) campaigns, so every
//!   willing voter grants it its vote.
//! - Should one candidate still fail for long (`stalled`), every willing
//!   voter whose log is as up to date as any other's may campaign, on
//!   openraft's randomized timers: plain Raft, which cannot stay stuck
//!   behind one node.

use crate::ids::NodeId;
use std::time::Duration;

/// What a voter last answered to a ping (or knows of itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub node: NodeId,
    /// How long ago the answer arrived.
    pub age: Duration,
    /// Whether the voter hears a live leader (or is the leader).
    pub hears_leader: bool,
    /// Its last log entry's id as (term, index), which is how a vote
    /// compares logs: the most up-to-date voter campaigns.
    pub last_log: (u64, u64),
}

/// Does a node vouch for a live leader? It leads, or heard an
/// AppendEntries from the leader within `alive`.
pub fn hears_leader(is_leader: bool, heard_ago: Option<Duration>, alive: Duration) -> bool {
    is_leader || heard_ago.is_some_and(|ago| ago < alive)
}

/// May `me` campaign? Only while it hears no leader itself, a majority of
/// the `voters` (itself included) answered within `fresh` and hear none
/// either, and none of those has a more up-to-date log (ties: the lower
/// node id). One candidate, whose log every willing voter accepts, avoids
/// split votes: with nine voters in three regions, three candidates of one
/// region would each keep their region's other votes from the others.
/// Once `stalled` (that candidate failed for long), ties no longer
/// exclude: every willing voter with a most up-to-date log may campaign.
/// `peers` holds the other voters' last answers.
pub fn may_campaign(
    voters: usize,
    me: &Answer,
    peers: &[Answer],
    fresh: Duration,
    stalled: bool,
) -> bool {
    if me.hears_leader {
        return false;
    }
    let willing: Vec<&Answer> = peers
        .iter()
        .filter(|a| a.age < fresh && !a.hears_leader)
        .collect();
    let rank = |a: &Answer| (a.last_log, std::cmp::Reverse(a.node));
    let ahead = |a: &&Answer| {
        if stalled {
            a.last_log <= me.last_log
        } else {
            rank(a) < rank(me)
        }
    };
    1 + willing.len() > voters / 2 && willing.iter().all(ahead)
}

/// A ping's answer on the wire: whether the voter hears a leader, and its
/// last log entry's term and index.
pub fn encode(a: &Answer) -> Vec<u8> {
    let mut v = vec![a.hears_leader as u8];
    v.extend_from_slice(&a.last_log.0.to_be_bytes());
    v.extend_from_slice(&a.last_log.1.to_be_bytes());
    v
}

/// Reads `node`'s answer (`None`: malformed); its age is zero.
pub fn decode(node: NodeId, b: &[u8]) -> Option<Answer> {
    let (&hears, log) = b.split_first()?;
    if log.len() != 16 {
        return None;
    }
    let (term, index) = log.split_at(8);
    Some(Answer {
        node,
        age: Duration::ZERO,
        hears_leader: hears == 1,
        last_log: (
            u64::from_be_bytes(term.try_into().ok()?),
            u64::from_be_bytes(index.try_into().ok()?),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FRESH: Duration = Duration::from_millis(1_000);

    /// An answer whose last entry is `index` of term 1.
    fn answer(node: NodeId, age_ms: u64, hears_leader: bool, index: u64) -> Answer {
        answer_at(node, age_ms, hears_leader, (1, index))
    }

    fn answer_at(node: NodeId, age_ms: u64, hears_leader: bool, last_log: (u64, u64)) -> Answer {
        Answer {
            node,
            age: Duration::from_millis(age_ms),
            hears_leader,
            last_log,
        }
    }

    fn me(node: NodeId, index: u64) -> Answer {
        answer(node, 0, false, index)
    }

    /// Which of `all` (each seeing every other's answer) may campaign.
    fn candidates(voters: usize, all: &[Answer], stalled: bool) -> Vec<NodeId> {
        all.iter()
            .filter(|a| {
                let peers: Vec<Answer> = all.iter().filter(|p| p.node != a.node).copied().collect();
                let me = Answer {
                    age: Duration::ZERO,
                    ..**a
                };
                may_campaign(voters, &me, &peers, FRESH, stalled)
            })
            .map(|a| a.node)
            .collect()
    }

    #[test]
    fn a_node_cut_off_from_the_majority_does_not_campaign() {
        // Nine voters; the node's own region (two peers) answers, the six
        // others stopped answering 1.2 s ago.
        let mut peers = vec![answer(2, 50, false, 9), answer(3, 80, false, 9)];
        peers.extend((4..10).map(|n| answer(n, 1_200, false, 9)));
        assert!(!may_campaign(9, &me(1, 10), &peers, FRESH, false));
        assert!(!may_campaign(9, &me(1, 10), &peers, FRESH, true));
    }

    #[test]
    fn the_most_up_to_date_survivor_of_a_lost_leader_campaigns_alone() {
        // Nodes 1-3 are gone with the leader; 4-9 answer and hear no leader.
        let logs = [(4, 10), (5, 12), (6, 12), (7, 11), (8, 9), (9, 12)];
        let all: Vec<Answer> = logs
            .iter()
            .map(|&(n, l)| answer(n, 100, false, l))
            .collect();
        assert_eq!(
            candidates(9, &all, false),
            vec![5],
            "longest log, then lowest id"
        );
        // Stalled, the other most up-to-date voters may campaign too.
        assert_eq!(candidates(9, &all, true), vec![5, 6, 9]);
    }

    #[test]
    fn a_log_ending_in_a_newer_term_outranks_a_longer_log_of_an_older_one() {
        // A start-up race seen in CI: node 1 led term 2 briefly and wrote
        // its blank entry (2, 1) alone; node 9 then led term 3 and its
        // (3, 1) reached the others before it stepped down. Ranked by
        // index alone, node 1 (lowest id) was the only candidate and no
        // voter would grant it a vote: no leader for a minute. Voters
        // compare (term, index); so must the pre-vote.
        let mut all = vec![answer_at(1, 10, false, (2, 1))];
        all.extend((2..10).map(|n| answer_at(n, 10, false, (3, 1))));
        assert_eq!(candidates(9, &all, false), vec![2]);
        // An older term's longer log does not win either.
        all[0].last_log = (2, 7);
        assert_eq!(candidates(9, &all, false), vec![2]);
    }

    #[test]
    fn a_node_that_cannot_hear_a_leader_the_majority_hears_does_not_campaign() {
        // A cut between two regions: this node's region (3) hears no
        // leader, the third region's three and the leader's own do.
        let mut peers = vec![answer(2, 10, false, 5), answer(3, 10, false, 5)];
        peers.extend((4..7).map(|n| answer(n, 10, true, 5)));
        assert!(!may_campaign(9, &me(1, 9), &peers, FRESH, false));
        assert!(!may_campaign(9, &me(1, 9), &peers, FRESH, true));
        // Nor does one that hears the leader itself.
        let quiet: Vec<Answer> = (2..10).map(|n| answer(n, 10, false, 1)).collect();
        let hearing = answer(1, 0, true, 9);
        assert!(!may_campaign(9, &hearing, &quiet, FRESH, true));
        assert!(may_campaign(9, &me(1, 9), &quiet, FRESH, false));
    }

    #[test]
    fn answers_survive_the_wire() {
        let a = answer_at(7, 0, true, (42, 123_456));
        assert_eq!(decode(7, &encode(&a)), Some(a));
        assert_eq!(decode(7, &[1, 2, 3]), None);
        assert_eq!(decode(7, &[1; 9]), None, "the earlier index-only answer");
        assert_eq!(decode(7, &[]), None);
    }

    #[test]
    fn followers_vouch_for_a_leader_only_while_they_hear_it() {
        let alive = Duration::from_millis(500);
        assert!(hears_leader(true, None, alive));
        assert!(hears_leader(false, Some(Duration::from_millis(499)), alive));
        assert!(!hears_leader(
            false,
            Some(Duration::from_millis(500)),
            alive
        ));
        assert!(!hears_leader(false, None, alive));
    }

    proptest! {
        /// A node campaigns only with a majority of willing voters, and of
        /// any set of voters that all see each other's answers, exactly
        /// one campaigns once they are a majority; every willing voter
        /// would grant it its vote (its log is at least as up to date, as a
        /// vote compares them). Stalled, every candidate is such a node.
        #[test]
        fn one_candidate_whose_log_every_willing_voter_accepts(
            voters in 1usize..12,
            logs in proptest::collection::vec((0u64..4, 0u64..4), 1..12),
        ) {
            let n = logs.len().min(voters);
            let all: Vec<Answer> = (0..n)
                .map(|i| answer_at(i as NodeId + 1, 10, false, logs[i]))
                .collect();
            let chosen = candidates(voters, &all, false);
            prop_assert_eq!(chosen.len(), usize::from(2 * n > voters));
            let stalled = candidates(voters, &all, true);
            for c in chosen.iter().chain(&stalled) {
                let log = all[*c as usize - 1].last_log;
                prop_assert!(all.iter().all(|a| a.last_log <= log));
            }
            prop_assert!(chosen.iter().all(|c| stalled.contains(c)));
        }
    }
}
