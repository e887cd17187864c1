//! One group under the classic rebalance protocol, driven by hand: joins,
//! syncs, timers and limits; and properties over random sequences.

use super::*;

const LIMITS: Limits = Limits {
    session_timeout_ms_min: 1000,
    session_timeout_ms_max: 60_000,
    max_size: 10,
};
const DELAY: u64 = 300;

fn join(id: &str, protocols: &[&str]) -> Join {
    Join {
        member_id: id.to_string(),
        spec: MemberSpec {
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
                .collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
        },
        require_known_member_id: false,
    }
}

/// Joins a new member with id `id` (no MEMBER_ID_REQUIRED round).
fn join_new(g: &mut Group, now: u64, id: &str) -> (Now<JoinReply>, Vec<Out>) {
    g.join(now, join("", &["range"]), || id.to_string(), &LIMITS)
}

fn joins(outs: &[Out]) -> BTreeMap<String, JoinReply> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Join(m, r) => Some((m.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

/// A stable group of members `ids`, generation 1, first one leading.
fn stable(ids: &[&str]) -> Group {
    let mut g = Group::new("g", DELAY);
    for id in ids {
        assert_eq!(join_new(&mut g, 0, id).0, Now::Wait);
    }
    let outs = g.tick(DELAY);
    assert_eq!(joins(&outs).len(), ids.len());
    let given = ids
        .iter()
        .map(|id| (id.to_string(), Bytes::from(format!("a-{id}"))))
        .collect();
    for id in &ids[1..] {
        assert_eq!(g.sync(DELAY, id, 1, vec![]).0, Now::Wait);
    }
    let (r, outs) = g.sync(DELAY, ids[0], 1, given);
    assert!(matches!(r, Now::Reply(SyncReply { error: 0, .. })));
    assert_eq!(outs.len(), ids.len() - 1);
    assert_eq!(g.state, State::Stable);
    g
}

#[test]
fn members_joining_a_new_group_get_one_generation_after_the_initial_delay() {
    let mut g = Group::new("g", DELAY);
    assert_eq!(join_new(&mut g, 0, "a"), (Now::Wait, vec![]));
    assert_eq!(join_new(&mut g, 100, "b"), (Now::Wait, vec![]));
    assert!(
        g.tick(DELAY - 1).is_empty(),
        "the initial delay holds the join"
    );
    let replies = joins(&g.tick(DELAY));
    assert_eq!(g.state, State::CompletingRebalance);
    let (a, b) = (&replies["a"], &replies["b"]);
    assert_eq!((a.generation, b.generation), (1, 1));
    assert_eq!((a.leader.as_str(), b.leader.as_str()), ("a", "a"));
    assert_eq!(a.protocol.as_deref(), Some("range"));
    let members: Vec<&str> = a.members.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(members, ["a", "b"], "the leader learns every member");
    assert_eq!(
        a.members[1].1,
        Bytes::from("meta-range"),
        "with its metadata"
    );
    assert!(b.members.is_empty(), "followers learn none");
}

#[test]
fn followers_wait_for_the_leaders_assignments() {
    let mut g = Group::new("g", DELAY);
    join_new(&mut g, 0, "a");
    join_new(&mut g, 0, "b");
    g.tick(DELAY);
    assert_eq!(g.sync(1, "b", 1, vec![]), (Now::Wait, vec![]));
    let (r, outs) = g.sync(
        2,
        "a",
        1,
        vec![
            ("a".into(), Bytes::from("p0")),
            ("b".into(), Bytes::from("p1")),
        ],
    );
    let Now::Reply(r) = r else {
        panic!("leader waits")
    };
    assert_eq!(r.assignment, Bytes::from("p0"));
    assert_eq!(
        outs,
        vec![Out::Sync(
            "b".into(),
            SyncReply {
                error: 0,
                protocol_type: Some("consumer".into()),
                protocol: Some("range".into()),
                assignment: Bytes::from("p1")
            }
        )]
    );
    assert_eq!(g.state, State::Stable);
    assert_eq!(g.heartbeat(3, "b", 1), code::NONE);
}

#[test]
fn a_new_member_of_join_group_v4_first_gets_its_id() {
    let mut g = Group::new("g", 0);
    let mut j = join("", &["range"]);
    j.require_known_member_id = true;
    let (r, _) = g.join(0, j.clone(), || "m-1".into(), &LIMITS);
    let Now::Reply(r) = r else { panic!() };
    assert_eq!(
        (r.error, r.member_id.as_str()),
        (code::MEMBER_ID_REQUIRED, "m-1")
    );
    assert!(g.members.is_empty() && !g.is_idle());
    j.member_id = "m-1".into();
    let (r, outs) = g.join(1, j.clone(), || unreachable!(), &LIMITS);
    assert_eq!(r, Now::Wait);
    assert_eq!(joins(&outs)["m-1"].generation, 1);
    j.member_id = "m-2".into();
    let (r, _) = g.join(1, j, || unreachable!(), &LIMITS);
    assert!(matches!(
        r,
        Now::Reply(JoinReply {
            error: code::UNKNOWN_MEMBER_ID,
            ..
        })
    ));
}

#[test]
fn an_id_handed_out_but_never_used_lapses_and_stops_holding_the_rebalance() {
    let mut g = Group::new("g", DELAY);
    join_new(&mut g, 0, "a");
    let mut j = join("", &["range"]);
    j.require_known_member_id = true;
    g.join(0, j, || "late".into(), &LIMITS);
    assert!(
        joins(&g.tick(DELAY)).is_empty(),
        "waits for the announced member"
    );
    let replies = joins(&g.tick(10_000));
    assert_eq!(replies["a"].generation, 1);
}

#[test]
fn a_member_leaving_starts_a_rebalance_that_the_others_join() {
    let mut g = stable(&["a", "b", "c"]);
    assert_eq!(g.leave(10, "a"), (code::NONE, vec![]));
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(g.heartbeat(11, "b", 1), code::REBALANCE_IN_PROGRESS);
    assert_eq!(
        g.join(12, join("b", &["range"]), || unreachable!(), &LIMITS)
            .0,
        Now::Wait
    );
    let (r, outs) = g.join(13, join("c", &["range"]), || unreachable!(), &LIMITS);
    assert_eq!(r, Now::Wait);
    let replies = joins(&outs);
    assert_eq!(
        replies.len(),
        2,
        "no initial delay for a group with members"
    );
    assert_eq!(replies["b"].generation, 2);
    assert_eq!(
        replies["b"].leader, "b",
        "a new leader replaces the one that left"
    );
    assert_eq!(replies["b"].members.len(), 2);
    assert_eq!(g.leave(14, "a").0, code::UNKNOWN_MEMBER_ID);
}

#[test]
fn the_last_member_leaving_empties_the_group() {
    let mut g = stable(&["a"]);
    g.leave(10, "a");
    assert_eq!(g.state, State::Empty);
    assert!(g.is_idle());
    assert_eq!(
        g.check_commit(11, "", -1),
        None,
        "commits from outside a group"
    );
}

#[test]
fn a_silent_member_is_removed_after_its_session_timeout() {
    let mut g = stable(&["a", "b"]);
    assert_eq!(g.heartbeat(9_000, "a", 1), code::NONE);
    assert!(g.tick(DELAY + 9_999).is_empty());
    assert_eq!(g.members.len(), 2);
    g.tick(DELAY + 10_000);
    assert_eq!(g.members.keys().collect::<Vec<_>>(), ["a"], "b was silent");
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(g.heartbeat(DELAY + 10_001, "b", 1), code::UNKNOWN_MEMBER_ID);
}

#[test]
fn a_member_that_does_not_join_again_is_dropped_at_the_rebalance_deadline() {
    let mut g = stable(&["a", "b"]);
    // a's subscription changes: a rebalance; b keeps heartbeating but
    // never joins again.
    let (r, _) = g.join(
        1_000,
        join("a", &["roundrobin", "range"]),
        || unreachable!(),
        &LIMITS,
    );
    assert_eq!(r, Now::Wait);
    assert_eq!(g.heartbeat(2_000, "b", 1), code::REBALANCE_IN_PROGRESS);
    assert!(g.tick(5_999).is_empty());
    let replies = joins(&g.tick(6_000));
    assert_eq!(replies.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(replies["a"].protocol.as_deref(), Some("roundrobin"));
    assert_eq!(g.heartbeat(6_001, "b", 1), code::UNKNOWN_MEMBER_ID);
}

#[test]
fn stale_generations_and_unknown_members_are_refused() {
    let mut g = stable(&["a", "b"]);
    assert_eq!(g.heartbeat(1, "a", 0), code::ILLEGAL_GENERATION);
    assert_eq!(g.heartbeat(1, "x", 1), code::UNKNOWN_MEMBER_ID);
    assert_eq!(
        g.sync(1, "a", 7, vec![]).0,
        Now::Reply(SyncReply {
            error: code::ILLEGAL_GENERATION,
            ..Default::default()
        })
    );
    assert_eq!(g.check_commit(1, "a", 0), Some(code::ILLEGAL_GENERATION));
    assert_eq!(g.check_commit(1, "a", 1), None);
    assert_eq!(g.check_commit(1, "", -1), Some(code::ILLEGAL_GENERATION));
}

#[test]
fn the_group_uses_the_protocol_its_members_prefer_and_all_support() {
    let mut g = Group::new("g", DELAY);
    g.join(
        0,
        join("", &["cooperative-sticky", "range"]),
        || "a".into(),
        &LIMITS,
    );
    g.join(
        0,
        join("", &["range", "cooperative-sticky"]),
        || "b".into(),
        &LIMITS,
    );
    g.join(0, join("", &["range"]), || "c".into(), &LIMITS);
    let replies = joins(&g.tick(DELAY));
    assert_eq!(
        replies["a"].protocol.as_deref(),
        Some("range"),
        "c supports only range"
    );
    let (r, _) = g.join(1, join("", &["roundrobin"]), || "d".into(), &LIMITS);
    assert!(matches!(
        r,
        Now::Reply(JoinReply {
            error: code::INCONSISTENT_GROUP_PROTOCOL,
            ..
        })
    ));
}

#[test]
fn a_repeated_join_with_the_same_subscription_keeps_the_generation() {
    let mut g = stable(&["a", "b"]);
    let (r, outs) = g.join(1, join("b", &["range"]), || unreachable!(), &LIMITS);
    let Now::Reply(r) = r else { panic!() };
    assert_eq!((r.error, r.generation, outs.len()), (0, 1, 0));
    assert_eq!(g.state, State::Stable);
    // The leader joining again asks for a new assignment.
    assert_eq!(
        g.join(2, join("a", &["range"]), || unreachable!(), &LIMITS)
            .0,
        Now::Wait
    );
    assert_eq!(g.state, State::PreparingRebalance);
}

#[test]
fn a_rebalance_tells_members_waiting_for_the_old_assignment() {
    let mut g = Group::new("g", DELAY);
    join_new(&mut g, 0, "a");
    join_new(&mut g, 0, "b");
    g.tick(DELAY);
    assert_eq!(g.sync(DELAY, "b", 1, vec![]).0, Now::Wait);
    let (_, outs) = join_new(&mut g, DELAY + 1, "c");
    assert_eq!(
        outs,
        vec![Out::Sync(
            "b".into(),
            SyncReply {
                error: code::REBALANCE_IN_PROGRESS,
                ..Default::default()
            }
        )]
    );
}

#[test]
fn join_limits_are_enforced() {
    let mut g = Group::new("g", 0);
    let mut j = join("", &["range"]);
    j.spec.session_timeout_ms = 10;
    assert!(matches!(
        g.join(0, j, || "a".into(), &LIMITS).0,
        Now::Reply(JoinReply {
            error: code::INVALID_SESSION_TIMEOUT,
            ..
        })
    ));
    for i in 0..LIMITS.max_size {
        join_new(&mut g, 0, &format!("m{i}"));
    }
    assert!(matches!(
        join_new(&mut g, 0, "one-too-many").0,
        Now::Reply(JoinReply {
            error: code::GROUP_MAX_SIZE_REACHED,
            ..
        })
    ));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8),
        Sync(u8),
        Heartbeat(u8),
        Leave(u8),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Join),
            (0u8..4).prop_map(Op::Sync),
            (0u8..4).prop_map(Op::Heartbeat),
            (0u8..4).prop_map(Op::Leave),
            (0u16..12_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever members do, a group keeps Kafka's shape: a leader
        /// among the members whenever a generation is being assigned
        /// or stable, no members when empty, and every JoinGroup
        /// answered once, all with the same generation and leader.
        #[test]
        fn every_join_is_answered_once_and_generations_agree(ops in proptest::collection::vec(op(), 1..60)) {
            let mut g = Group::new("g", 200);
            let mut now = 0u64;
            let mut waiting_join: BTreeSet<String> = BTreeSet::new();
            let mut gen_of: BTreeMap<String, i32> = BTreeMap::new();
            let answer = |outs: Vec<Out>, waiting_join: &mut BTreeSet<String>, gen_of: &mut BTreeMap<String, i32>| {
                let mut seen: Option<(i32, String)> = None;
                for o in outs {
                    if let Out::Join(m, r) = o {
                        prop_assert!(waiting_join.remove(&m), "{m} answered without waiting");
                        let key = (r.generation, r.leader.clone());
                        if let Some(s) = &seen { prop_assert_eq!(s, &key); }
                        seen = Some(key);
                        gen_of.insert(m, r.generation);
                    }
                }
                Ok(())
            };
            for o in ops {
                now += 1;
                let name = |i: u8| format!("m{i}");
                match o {
                    Op::Join(i) => {
                        let id = name(i);
                        let j = join(if g.members.contains_key(&id) { &id } else { "" }, &["range"]);
                        let (r, outs) = g.join(now, j, || id.clone(), &LIMITS);
                        if r == Now::Wait { waiting_join.insert(id.clone()); }
                        if let Now::Reply(r) = r { if r.error == 0 { gen_of.insert(id, r.generation); } }
                        answer(outs, &mut waiting_join, &mut gen_of)?;
                    }
                    Op::Sync(i) => {
                        let id = name(i);
                        let gen = gen_of.get(&id).copied().unwrap_or(-1);
                        let given = g.members.keys().map(|m| (m.clone(), Bytes::new())).collect();
                        let (_, outs) = g.sync(now, &id, gen, given);
                        answer(outs, &mut waiting_join, &mut gen_of)?;
                    }
                    Op::Heartbeat(i) => {
                        let id = name(i);
                        g.heartbeat(now, &id, gen_of.get(&id).copied().unwrap_or(-1));
                    }
                    Op::Leave(i) => {
                        let id = name(i);
                        let (_, outs) = g.leave(now, &id);
                        waiting_join.remove(&id);
                        answer(outs, &mut waiting_join, &mut gen_of)?;
                    }
                    Op::Wait(ms) => {
                        now += ms as u64;
                        let outs = g.tick(now);
                        answer(outs, &mut waiting_join, &mut gen_of)?;
                    }
                }
                match g.state {
                    State::Empty => prop_assert!(g.members.is_empty()),
                    State::CompletingRebalance | State::Stable => {
                        let leader = g.leader.clone().unwrap_or_default();
                        prop_assert!(g.members.contains_key(&leader));
                        prop_assert!(waiting_join.is_empty(), "joins left waiting: {:?}", waiting_join);
                    }
                    State::PreparingRebalance => {}
                }
            }
            // Long enough for every deadline: nothing waits forever.
            let outs = g.tick(now + 100_000);
            answer(outs, &mut waiting_join, &mut gen_of)?;
            let outs = g.tick(now + 200_000);
            answer(outs, &mut waiting_join, &mut gen_of)?;
            prop_assert!(waiting_join.is_empty(), "joins never answered: {:?}", waiting_join);
        }
    }
}
