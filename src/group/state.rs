//! One consumer group's membership under Kafka's classic rebalance
//! protocol, as a pure state machine: calls take the time (milliseconds on
//! the coordinator's monotonic clock) and return the answers to give, to
//! whom. The coordinator holds the waiting requests and the timers.
//!
//! States follow Kafka's group coordinator:
//!
//! ```text
//! Empty --join--> PreparingRebalance --all joined / timeout--> CompletingRebalance
//!   ^                  ^        |                                   |
//!   |                  |        +--no member left--> Empty          | leader's SyncGroup
//!   |                  +--join with new metadata, leave, expiry-----+--> Stable
//! ```
//!
//! The broker never looks inside the protocols' metadata or assignments:
//! the clients' own assignors (range, roundrobin, cooperative-sticky) run
//! in the leader member.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use indexmap::IndexMap;

/// Kafka error codes the group protocol answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    /// The name Kafka's DescribeGroups and ListGroups give the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// Limits the coordinator applies to every group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub session_timeout_ms_min: u64,
    pub session_timeout_ms_max: u64,
    /// Members and ids handed out, at most.
    pub max_size: usize,
}

/// What a member says of itself in a JoinGroup; its latest one stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    /// Protocol names with their metadata, in the member's preference order.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub spec: MemberSpec,
    pub assignment: Bytes,
    last_heard: u64,
    /// Has a JoinGroup waiting for the rebalance to complete.
    awaiting_join: bool,
    /// Has a SyncGroup waiting for the leader's assignments.
    awaiting_sync: bool,
}

/// A JoinGroup request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub member_id: String,
    pub spec: MemberSpec,
    /// JoinGroup v4+: a new member first gets an id (MEMBER_ID_REQUIRED)
    /// and joins again with it.
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinReply {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member with its metadata for the chosen
    /// protocol.
    pub members: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncReply {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

/// An answer to a waiting request of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Join(String, JoinReply),
    Sync(String, SyncReply),
}

/// What a JoinGroup or SyncGroup gets now: an answer, or a wait (the
/// answer comes later as an [`Out`] for that member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Now<R> {
    Reply(R),
    Wait,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// In join order: the first member to join leads a new group.
    pub members: IndexMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not yet joined, with the
    /// time after which they lapse.
    pending: BTreeMap<String, u64>,
    /// When the rebalance under way stops waiting for members to rejoin.
    rebalance_deadline: u64,
    /// A new group's first rebalance does not complete before this.
    delay_until: u64,
    initial_delay: u64,
}

impl Group {
    /// A new, empty group; its first rebalance waits `initial_delay` ms
    /// for more members.
    pub fn new(id: &str, initial_delay: u64) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: 0,
            delay_until: 0,
            initial_delay,
        }
    }

    /// Members, counting those still joining.
    pub fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    /// Nothing to keep: no member, nobody about to join.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// Handles a JoinGroup. `new_id` is the id a new member gets.
    pub fn join(
        &mut self,
        now: u64,
        j: Join,
        new_id: impl FnOnce() -> String,
        limits: &Limits,
    ) -> (Now<JoinReply>, Vec<Out>) {
        let fail = |error: i16, member_id: &str| {
            (
                Now::Reply(JoinReply {
                    error,
                    member_id: member_id.to_string(),
                    generation: -1,
                    ..Default::default()
                }),
                Vec::new(),
            )
        };
        if !(limits.session_timeout_ms_min..=limits.session_timeout_ms_max)
            .contains(&j.spec.session_timeout_ms)
        {
            return fail(code::INVALID_SESSION_TIMEOUT, &j.member_id);
        }
        if j.spec.protocols.is_empty()
            || j.spec.protocol_type.is_empty()
            || !self.accepts_protocols(&j)
        {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL, &j.member_id);
        }
        let known = self.members.contains_key(&j.member_id);
        if j.member_id.is_empty() {
            if self.members.len() + self.pending.len() >= limits.max_size {
                return fail(code::GROUP_MAX_SIZE_REACHED, "");
            }
            let id = new_id();
            if j.require_known_member_id {
                self.pending
                    .insert(id.clone(), now + j.spec.session_timeout_ms);
                return fail(code::MEMBER_ID_REQUIRED, &id);
            }
            return self.add_member(now, id, j);
        }
        if !known {
            if self.pending.remove(&j.member_id).is_some() {
                let id = j.member_id.clone();
                return self.add_member(now, id, j);
            }
            return fail(code::UNKNOWN_MEMBER_ID, &j.member_id);
        }
        // A known member joins again.
        let m = self.members.get_mut(&j.member_id).expect("known member");
        let changed = m.spec.protocols != j.spec.protocols;
        m.spec = j.spec;
        m.last_heard = now;
        let id = j.member_id;
        match self.state {
            State::PreparingRebalance => {
                self.members[&id].awaiting_join = true;
                (Now::Wait, self.try_complete_join(now))
            }
            State::CompletingRebalance | State::Stable
                if !(changed || self.state == State::Stable && self.is_leader(&id)) =>
            {
                // The same subscription again (a lost response, say): the
                // current generation stands.
                (Now::Reply(self.join_reply(&id)), Vec::new())
            }
            _ => {
                self.members[&id].awaiting_join = true;
                let outs = self.prepare_rebalance(now);
                (Now::Wait, [outs, self.try_complete_join(now)].concat())
            }
        }
    }

    fn add_member(&mut self, now: u64, id: String, j: Join) -> (Now<JoinReply>, Vec<Out>) {
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                spec: j.spec,
                assignment: Bytes::new(),
                last_heard: now,
                awaiting_join: true,
                awaiting_sync: false,
            },
        );
        let outs = if self.state == State::PreparingRebalance {
            Vec::new()
        } else {
            self.prepare_rebalance(now)
        };
        (Now::Wait, [outs, self.try_complete_join(now)].concat())
    }

    /// A member's protocols fit the group: same protocol type, and at least
    /// one protocol every other member supports too.
    fn accepts_protocols(&self, j: &Join) -> bool {
        if self.members.is_empty()
            || self.members.len() == 1 && self.members.contains_key(&j.member_id)
        {
            return true;
        }
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != j.spec.protocol_type)
        {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.id != j.member_id)
            .collect();
        j.spec.protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|m| m.spec.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    /// Starts a rebalance: every member must join again. Members waiting
    /// for a SyncGroup of the generation that ends are told so.
    fn prepare_rebalance(&mut self, now: u64) -> Vec<Out> {
        let mut outs = Vec::new();
        for m in self.members.values_mut() {
            if m.awaiting_sync {
                m.awaiting_sync = false;
                outs.push(Out::Sync(
                    m.id.clone(),
                    SyncReply {
                        error: code::REBALANCE_IN_PROGRESS,
                        ..Default::default()
                    },
                ));
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.spec.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        // Only a new group waits for more members before its first
        // generation; a rebalance of a running group completes as soon as
        // its members joined again.
        let delay = if self.state == State::Empty {
            self.initial_delay
        } else {
            0
        };
        self.delay_until = now + delay;
        self.rebalance_deadline = now + timeout.max(delay);
        self.state = State::PreparingRebalance;
        outs
    }

    /// Completes the join phase once every member has joined again (and a
    /// new group's initial delay passed), or at the rebalance deadline
    /// without those that did not: a new generation, its leader and
    /// protocol, answered to every waiting member.
    fn try_complete_join(&mut self, now: u64) -> Vec<Out> {
        if self.state != State::PreparingRebalance {
            return Vec::new();
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join) && self.pending.is_empty();
        let deadline = now >= self.rebalance_deadline;
        if !(deadline || all_joined && now >= self.delay_until) {
            return Vec::new();
        }
        self.members.retain(|_, m| m.awaiting_join);
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            return Vec::new();
        }
        self.state = State::CompletingRebalance;
        self.protocol_type = self
            .members
            .values()
            .next()
            .map(|m| m.spec.protocol_type.clone());
        self.protocol = Some(self.choose_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let mut outs = Vec::new();
        for id in ids {
            let m = &mut self.members[&id];
            m.awaiting_join = false;
            m.last_heard = now;
            outs.push(Out::Join(id.clone(), self.join_reply(&id)));
        }
        outs
    }

    /// The protocol every member supports that the members rank best: each
    /// member votes for its most preferred candidate; most votes win, ties
    /// go to the first member's preference.
    fn choose_protocol(&self) -> String {
        let candidates: BTreeSet<&str> = self
            .members
            .values()
            .flat_map(|m| m.spec.protocols.iter().map(|(n, _)| n.as_str()))
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.spec.protocols.iter().any(|(p, _)| p == n))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .spec
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let first = self.members.values().next().expect("a member");
        let rank = |n: &str| {
            first
                .spec
                .protocols
                .iter()
                .position(|(p, _)| p == n)
                .unwrap_or(usize::MAX)
        };
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(rank(b.0).cmp(&rank(a.0))))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }

    /// A member's metadata for the group's chosen protocol.
    fn metadata_of(&self, m: &Member) -> Bytes {
        let proto = self.protocol.as_deref().unwrap_or_default();
        m.spec
            .protocols
            .iter()
            .find(|(n, _)| n == proto)
            .map(|(_, md)| md.clone())
            .unwrap_or_default()
    }

    fn join_reply(&self, id: &str) -> JoinReply {
        let members = if self.is_leader(id) {
            self.members
                .values()
                .map(|m| (m.id.clone(), self.metadata_of(m)))
                .collect()
        } else {
            Vec::new()
        };
        JoinReply {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: id.to_string(),
            members,
        }
    }

    /// Checks a member's generation: the error to answer, if any.
    fn check_member(&self, member: &str, generation: i32) -> Option<i16> {
        if !self.members.contains_key(member) {
            Some(code::UNKNOWN_MEMBER_ID)
        } else if generation != self.generation {
            Some(code::ILLEGAL_GENERATION)
        } else {
            None
        }
    }

    /// Handles a SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        now: u64,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (Now<SyncReply>, Vec<Out>) {
        let fail = |error| {
            (
                Now::Reply(SyncReply {
                    error,
                    ..Default::default()
                }),
                Vec::new(),
            )
        };
        if let Some(e) = self.check_member(member, generation) {
            return fail(e);
        }
        self.members[member].last_heard = now;
        match self.state {
            State::Empty => fail(code::UNKNOWN_MEMBER_ID),
            State::PreparingRebalance => fail(code::REBALANCE_IN_PROGRESS),
            State::Stable => (Now::Reply(self.sync_reply(member)), Vec::new()),
            State::CompletingRebalance => {
                self.members[member].awaiting_sync = true;
                if !self.is_leader(member) {
                    return (Now::Wait, Vec::new());
                }
                let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.id).unwrap_or_default();
                }
                self.state = State::Stable;
                let mut outs = Vec::new();
                let ids: Vec<String> = self.members.keys().cloned().collect();
                for id in ids {
                    if self.members[&id].awaiting_sync {
                        self.members[&id].awaiting_sync = false;
                        if id != member {
                            outs.push(Out::Sync(id.clone(), self.sync_reply(&id)));
                        }
                    }
                }
                (Now::Reply(self.sync_reply(member)), outs)
            }
        }
    }

    fn sync_reply(&self, member: &str) -> SyncReply {
        SyncReply {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self.members[member].assignment.clone(),
        }
    }

    /// Handles a Heartbeat: the error code to answer.
    pub fn heartbeat(&mut self, now: u64, member: &str, generation: i32) -> i16 {
        if self.state == State::Empty {
            return code::UNKNOWN_MEMBER_ID;
        }
        if let Some(e) = self.check_member(member, generation) {
            return e;
        }
        self.members[member].last_heard = now;
        match self.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// May `member` of `generation` commit offsets now? `generation < 0`
    /// with no member id is a commit from outside the group protocol
    /// (a consumer that assigns partitions itself): allowed while the
    /// group has no members. A commit counts as a heartbeat.
    pub fn check_commit(&mut self, now: u64, member: &str, generation: i32) -> Option<i16> {
        if generation < 0 && member.is_empty() {
            return (self.state != State::Empty).then_some(code::ILLEGAL_GENERATION);
        }
        if let Some(e) = self.check_member(member, generation) {
            return Some(e);
        }
        self.members[member].last_heard = now;
        (self.state == State::CompletingRebalance).then_some(code::REBALANCE_IN_PROGRESS)
    }

    /// Handles a LeaveGroup of `member`: the error code for it, and the
    /// answers a rebalance gives others.
    pub fn leave(&mut self, now: u64, member: &str) -> (i16, Vec<Out>) {
        if self.pending.remove(member).is_some() {
            return (code::NONE, self.try_complete_join(now));
        }
        if self.members.shift_remove(member).is_none() {
            return (code::UNKNOWN_MEMBER_ID, Vec::new());
        }
        (code::NONE, self.after_removal(now))
    }

    fn after_removal(&mut self, now: u64) -> Vec<Out> {
        let mut outs = match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
            _ => Vec::new(),
        };
        outs.extend(self.try_complete_join(now));
        if self.members.is_empty() && self.state == State::PreparingRebalance {
            // Nobody is left to join: the group empties at once.
            self.state = State::Empty;
            self.generation += 1;
            self.leader = None;
            self.protocol = None;
            self.protocol_type = None;
        }
        outs
    }

    /// Advances time: members silent for their session timeout leave, ids
    /// handed out but never used lapse, a new group's initial delay or a
    /// rebalance's deadline passes.
    pub fn tick(&mut self, now: u64) -> Vec<Out> {
        self.pending.retain(|_, until| *until > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.last_heard + m.spec.session_timeout_ms <= now)
            .map(|m| m.id.clone())
            .collect();
        let mut outs = Vec::new();
        for id in expired {
            if let Some(m) = self.members.shift_remove(&id) {
                if m.awaiting_sync {
                    outs.push(Out::Sync(
                        id.clone(),
                        SyncReply {
                            error: code::UNKNOWN_MEMBER_ID,
                            ..Default::default()
                        },
                    ));
                }
                outs.extend(self.after_removal(now));
            }
        }
        outs.extend(self.try_complete_join(now));
        outs
    }

    /// Every member's id, client id, host and assignment (DescribeGroups).
    pub fn describe(&self) -> Vec<(&Member, Bytes)> {
        self.members
            .values()
            .map(|m| (m, self.metadata_of(m)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
}
