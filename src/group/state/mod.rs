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
mod tests;
