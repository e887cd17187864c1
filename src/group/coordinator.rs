//! The group coordinator of one node. A group is coordinated, in each
//! region, by the leader of the `__consumer_offsets` partition the group
//! hashes to: the region its members connect to coordinates it, unless the
//! group already has members in another region, which then coordinates it
//! ([`super::presence`]). Membership lives in memory there
//! ([`state::Group`]); a coordinator change (leader change, failover)
//! makes members join again, and committed offsets, which are records of
//! that partition, survive it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::offsets::{self, Folded, Key, Value};
use super::presence::{self, Meet};
use super::state::{code, Group, Join, JoinReply, Limits, Now, Out, SyncReply};
use crate::config::{GroupsConfig, NodeSpec};
use crate::ids::GroupId;

use crate::command::PartitionError;
use crate::meta::{MetaError, Policy};
use crate::router::{AppendTicket, Router, TopicError};

/// How often timers (session timeouts, rebalance deadlines) are checked
/// and groups this node no longer coordinates are let go.
const TICK: Duration = Duration::from_millis(100);
/// Offsets folded per origin log per read.
const FOLD_BYTES: usize = 1 << 20;
/// A commit from another region this recent, for a group with members
/// here, means the group's members connect to two regions.
const SPLIT_WINDOW_MS: i64 = 30_000;
/// Reads of one fold before a fetch answers "still loading".
const FOLD_ROUNDS_MAX: usize = 64;

/// Where a group's coordinator is, as FindCoordinator answers it.
pub type Located = Result<NodeSpec, (i16, String)>;

/// A topic-partition's commit result.
pub type PartitionCode = (String, Vec<(i32, i16)>);

/// A committed offset as OffsetFetch answers it: offset -1 when none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub error: i16,
}

/// One partition's offset in an OffsetCommit.
pub struct CommitOffset {
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A commit asked for, before it is checked.
pub struct CommitReq {
    pub group: String,
    pub member: String,
    pub generation: i32,
    pub topics: Vec<(String, Vec<CommitOffset>)>,
}

/// A group as DescribeGroups and ListGroups show it.
pub struct Described {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// Member id, client id, host, metadata, assignment.
    pub members: Vec<(String, String, String, Bytes, Bytes)>,
}

/// A JoinGroup's or SyncGroup's answer: now, or once the rebalance gets
/// there. The group's state changed when the request arrived (requests of
/// one connection apply in order, as Kafka's coordinator applies them);
/// only the answer waits.
pub enum Waiting<R> {
    Now(R),
    Later {
        rx: oneshot::Receiver<R>,
        /// The group answers by its rebalance deadline; this bounds the
        /// wait in any case.
        bound: Duration,
        /// The answer if the coordinator lets the group go meanwhile.
        gone: R,
    },
}

impl<R> Waiting<R> {
    pub async fn wait(self) -> R {
        match self {
            Waiting::Now(r) => r,
            Waiting::Later { rx, bound, gone } => match tokio::time::timeout(bound, rx).await {
                Ok(Ok(r)) => r,
                _ => gone,
            },
        }
    }
}

#[derive(Default)]
struct Inner {
    groups: HashMap<String, Group>,
    joins: HashMap<(String, String), oneshot::Sender<JoinReply>>,
    syncs: HashMap<(String, String), oneshot::Sender<SyncReply>>,
}

impl Inner {
    /// Answers waiting JoinGroup and SyncGroup requests. A member with no
    /// waiting request (its connection went) misses nothing: it learns of
    /// the new generation on its next heartbeat. Returns how many
    /// generations the answers complete.
    fn deliver(&mut self, group: &str, outs: Vec<Out>) -> u64 {
        let mut generations = 0;
        for o in outs {
            match o {
                Out::Join(m, r) => {
                    if r.error == code::NONE && r.leader == m {
                        generations += 1;
                    }
                    if let Some(tx) = self.joins.remove(&(group.to_string(), m)) {
                        let _ = tx.send(r);
                    }
                }
                Out::Sync(m, r) => {
                    if let Some(tx) = self.syncs.remove(&(group.to_string(), m)) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
        generations
    }

    /// Forgets a group; its waiting requests are answered NOT_COORDINATOR
    /// (their senders drop).
    fn drop_group(&mut self, group: &str) {
        self.groups.remove(group);
        self.joins.retain(|(g, _), _| g != group);
        self.syncs.retain(|(g, _), _| g != group);
    }
}

pub struct Coordinator {
    router: Arc<Router>,
    cfg: GroupsConfig,
    start: Instant,
    inner: Mutex<Inner>,
    /// Commits folded from each `__consumer_offsets` partition held here.
    folded: Mutex<HashMap<GroupId, Folded>>,
    /// One creation of the internal topic at a time.
    creating: tokio::sync::Mutex<()>,
    /// Groups warned about committing in two regions, and when.
    warned: Mutex<HashMap<String, i64>>,
    /// The presence this node announces for the groups it coordinates.
    announced: Mutex<HashMap<String, Announced>>,
}

/// What this node announced of one group's presence
/// ([`presence`]), and when.
struct Announced {
    /// HLC since which the group has members in this region.
    since: u64,
    /// Members last written; None before the first write succeeded.
    written: Option<u32>,
    /// When it was last written or tried (`Coordinator::now`).
    at_ms: u64,
    /// A write is under way.
    writing: bool,
}

/// Retry delay for a presence write that failed or changed.
const PRESENCE_RETRY_MS: u64 = 200;

/// The error code a failed commit answers with; all are retriable.
fn commit_code(e: PartitionError) -> i16 {
    match e {
        PartitionError::NotLeader(_) => code::NOT_COORDINATOR,
        PartitionError::Timeout => code::REQUEST_TIMED_OUT,
        PartitionError::NotEnoughReplicas(_) => code::NOT_ENOUGH_REPLICAS,
        _ => code::COORDINATOR_NOT_AVAILABLE,
    }
}

fn err(code: i16, msg: impl Into<String>) -> (i16, String) {
    (code, msg.into())
}

impl Coordinator {
    pub fn new(router: Arc<Router>, cfg: GroupsConfig) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            router,
            cfg,
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
            folded: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            warned: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
        })
    }

    fn delivered(&self, generations: u64) {
        self.router.metrics.group_rebalances.inc_by(generations);
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn limits(&self) -> Limits {
        Limits {
            session_timeout_ms_min: self.cfg.session_timeout_ms_min,
            session_timeout_ms_max: self.cfg.session_timeout_ms_max,
            max_size: self.cfg.max_size as usize,
        }
    }

    /// Checks timers and lets go of groups this node no longer coordinates.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.now();
            let ids: Vec<String> = self
                .inner
                .lock()
                .expect("groups")
                .groups
                .keys()
                .cloned()
                .collect();
            let mine: Vec<(String, bool)> = ids
                .into_iter()
                .map(|id| {
                    let ours = self.is_mine(&id).is_ok();
                    (id, ours)
                })
                .collect();
            let mut sizes = HashMap::new();
            {
                let mut inner = self.inner.lock().expect("groups");
                for (id, ours) in mine {
                    if !ours {
                        info!(group = %id, "no longer this group's coordinator; its members join the new one");
                        inner.drop_group(&id);
                        continue;
                    }
                    let Some(g) = inner.groups.get_mut(&id) else {
                        continue;
                    };
                    let outs = g.tick(now);
                    let idle = g.is_idle();
                    let size = g.size() as u32;
                    self.delivered(inner.deliver(&id, outs));
                    if idle {
                        inner.drop_group(&id);
                    } else {
                        sizes.insert(id, size);
                    }
                }
                let m = &self.router.metrics;
                m.groups_coordinated.set(inner.groups.len() as i64);
                m.group_members
                    .set(inner.groups.values().map(|g| g.members.len() as i64).sum());
            }
            self.announce(&sizes);
        }
    }

    /// Writes the presence of the groups with members here when it
    /// changed or is due for renewal, and once more, empty, when a group
    /// went from here (`sizes`: groups coordinated here and their members).
    fn announce(self: &Arc<Self>, sizes: &HashMap<String, u32>) {
        let now = self.now();
        let renew = self.cfg.presence_renew_ms;
        let mut due = Vec::new();
        {
            let mut announced = self.announced.lock().expect("announced");
            for group in sizes.keys() {
                if !announced.contains_key(group) {
                    let since = self.anchored_since(group);
                    announced.insert(
                        group.clone(),
                        Announced {
                            since,
                            written: None,
                            at_ms: 0,
                            writing: false,
                        },
                    );
                }
            }
            announced.retain(|group, a| {
                let size = sizes.get(group).copied().unwrap_or(0);
                if a.writing {
                    return true;
                }
                // Gone from here, and nothing (more) to retract.
                if size == 0 && a.written.is_none_or(|w| w == 0) {
                    return false;
                }
                let waited = now.saturating_sub(a.at_ms);
                let changed = a.written != Some(size) && waited >= PRESENCE_RETRY_MS;
                if changed || (size > 0 && waited >= renew) {
                    a.writing = true;
                    a.at_ms = now;
                    due.push((group.clone(), size, a.since));
                }
                true
            });
        }
        for (group, size, since) in due {
            let me = self.clone();
            tokio::spawn(async move {
                let written = me.write_presence(&group, size, since).await;
                let mut announced = me.announced.lock().expect("announced");
                match written {
                    // Another node coordinates the group now; it announces.
                    None => {
                        announced.remove(&group);
                    }
                    Some(ok) => {
                        if let Some(a) = announced.get_mut(&group) {
                            a.writing = false;
                            a.at_ms = me.now();
                            if ok {
                                a.written = Some(size);
                            }
                        }
                    }
                }
            });
        }
    }

    /// Since when `group` has members in this region: from this region's
    /// live presence when the group only changed coordinator here (a
    /// leader change), so it keeps its claim; else now.
    fn anchored_since(&self, group: &str) -> u64 {
        self.own_presence_since(group)
            .unwrap_or_else(|| self.router.groups.clock.now())
    }

    /// The `since` of this region's own live presence of `group`, as
    /// folded here (written by this region's coordinator, whichever node
    /// that is now).
    fn own_presence_since(&self, group: &str) -> Option<u64> {
        let clock = &self.router.groups.clock;
        let own = self.own_origin();
        let gid = self.partition_of(group)?.1;
        let folded = self.folded.lock().expect("folded");
        folded
            .get(&gid)?
            .presence
            .get(group)?
            .get(&own)
            .copied()
            .filter(|s| {
                s.members > 0
                    && clock.wall_now_ms() - crate::hlc::wall_ms(s.at)
                        <= self.cfg.presence_ttl_ms as i64
            })
            .map(|s| s.since)
    }

    /// Appends one presence record of `group`: whether it committed here,
    /// or None when this node no longer coordinates the group.
    async fn write_presence(&self, group: &str, members: u32, since: u64) -> Option<bool> {
        let Ok((p, _)) = self.is_mine(group) else {
            return None;
        };
        let value = presence::Value {
            node: self.router.node_id(),
            members,
            since,
        };
        let submitted = self.submit(p, vec![presence::record(group, &value)]).await;
        let result = match submitted {
            Ok(ticket) => ticket.wait(self.commit_timeout()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => Some(true),
            Err(e) => {
                debug!(group, error = %e, "group presence not written; retrying");
                Some(false)
            }
        }
    }

    /// This region's origin id.
    fn own_origin(&self) -> u32 {
        self.router
            .topology
            .node(self.router.node_id())
            .map_or(0, |n| crate::ids::origin_id(&n.region))
    }

    /// Where `group` meets, by the presence records folded here
    /// ([`presence::meeting_place`]).
    fn meeting(&self, group: &str, gid: GroupId) -> Meet {
        // This node's claim if it coordinates the group, else this
        // region's as its coordinator announced it: every node of a region
        // sends members to the same place.
        let announced = self
            .announced
            .lock()
            .expect("announced")
            .get(group)
            .map(|a| a.since);
        let own_since = announced.or_else(|| self.own_presence_since(group));
        let seen: Vec<(u32, presence::Seen)> = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .and_then(|f| f.presence.get(group))
            .map(|m| m.iter().map(|(o, s)| (*o, *s)).collect())
            .unwrap_or_default();
        if seen.is_empty() {
            return Meet::Here;
        }
        let meta = self.router.groups.meta_state();
        let regions = self.router.region_names();
        let failed = |origin: u32| {
            regions
                .iter()
                .find(|r| crate::ids::origin_id(r) == origin)
                .is_some_and(|r| meta.seal_of(r).is_some())
        };
        let now = presence::Now {
            own: self.own_origin(),
            own_since,
            now_ms: self.router.groups.clock.wall_now_ms(),
            ttl_ms: self.cfg.presence_ttl_ms,
        };
        match presence::meeting_place(now, seen, failed) {
            // A node this topology does not know (a record written by
            // hand): nowhere to send members.
            Meet::There { node, .. } if self.router.topology.node(node).is_none() => Meet::Here,
            m => m,
        }
    }

    /// Ok when this node coordinates `group` now and the group meets in
    /// this region: NOT_COORDINATOR when it meets in another (the member
    /// looks the coordinator up again and is sent there).
    fn coordinates(&self, group: &str) -> Result<(u32, GroupId), (i16, String)> {
        let (p, gid) = self.is_mine(group)?;
        let _ = self.fold(gid);
        match self.meeting(group, gid) {
            Meet::Here => Ok((p, gid)),
            Meet::There { node, .. } => {
                // Members here (joined before the other region's presence
                // arrived) go there; the group here empties at once, so
                // its presence no longer claims the group.
                let mut inner = self.inner.lock().expect("groups");
                if inner.groups.contains_key(group) {
                    info!(
                        group,
                        node, "the group meets in another region; its members here are sent there"
                    );
                    inner.drop_group(group);
                }
                drop(inner);
                debug!(group, node, "group meets in another region");
                Err(err(
                    code::NOT_COORDINATOR,
                    "the group meets in another region",
                ))
            }
        }
    }

    /// The internal topic, created on first use.
    async fn offsets_topic(&self) -> Result<crate::meta::TopicMeta, (i16, String)> {
        if let Some(t) = self.router.topic(offsets::TOPIC) {
            return Ok(t);
        }
        let _one = self.creating.lock().await;
        if let Some(t) = self.router.topic(offsets::TOPIC) {
            return Ok(t);
        }
        info!(
            partitions = self.cfg.offsets_partitions,
            "creating {} for consumer groups",
            offsets::TOPIC
        );
        match self
            .router
            .create_topic(
                offsets::TOPIC,
                self.cfg.offsets_partitions as i64,
                Default::default(),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(t) => Ok(t),
            Err(TopicError::Meta(MetaError::TopicExists(_))) => self
                .router
                .topic(offsets::TOPIC)
                .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "offsets topic deleted")),
            Err(e) => Err(err(
                code::COORDINATOR_NOT_AVAILABLE,
                format!("cannot create {}: {e}", offsets::TOPIC),
            )),
        }
    }

    /// The offsets partition of `group` and its group id.
    fn partition_of(&self, group: &str) -> Option<(u32, GroupId)> {
        let t = self.router.topic(offsets::TOPIC)?;
        let p = offsets::partition_for(group, t.partitions);
        Some((p, t.group(p)))
    }

    /// Ok when this node coordinates `group` now.
    fn is_mine(&self, group: &str) -> Result<(u32, GroupId), (i16, String)> {
        let (p, gid) = self
            .partition_of(group)
            .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic yet"))?;
        let pg = self.router.groups.partition(gid).ok_or_else(|| {
            err(
                code::COORDINATOR_NOT_AVAILABLE,
                "offsets partition not started here yet",
            )
        })?;
        match pg.leader() {
            Some(l) if l == self.router.node_id() => Ok((p, gid)),
            Some(_) => Err(err(
                code::NOT_COORDINATOR,
                "another node coordinates this group",
            )),
            None => Err(err(
                code::COORDINATOR_NOT_AVAILABLE,
                "the group's offsets partition has no leader yet",
            )),
        }
    }

    /// FindCoordinator: the node of this region that leads the group's
    /// offsets partition.
    pub async fn locate(&self, group: &str) -> Located {
        if group.is_empty() {
            return Err(err(code::INVALID_GROUP_ID, "empty group id"));
        }
        self.offsets_topic().await?;
        let (_, gid) = self
            .partition_of(group)
            .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic yet"))?;
        // A group with members in another region meets there.
        let _ = self.fold(gid);
        if let Meet::There { node, .. } = self.meeting(group, gid) {
            if let Some(n) = self.router.topology.node(node) {
                debug!(
                    group,
                    node, "group meets in another region; sending the member there"
                );
                return Ok(n.clone());
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let leader = self.router.groups.partition(gid).and_then(|g| g.leader());
            if let Some(n) = leader.and_then(|l| self.router.topology.node(l)) {
                return Ok(n.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(
                    code::COORDINATOR_NOT_AVAILABLE,
                    "the group's offsets partition has no leader in this region yet",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// JoinGroup: applied now, answered when the rebalance completes.
    pub fn join(&self, group: &str, j: Join) -> Waiting<JoinReply> {
        let fail = |error: i16| {
            Waiting::Now(JoinReply {
                error,
                generation: -1,
                member_id: j.member_id.clone(),
                ..Default::default()
            })
        };
        if group.is_empty() {
            return fail(code::INVALID_GROUP_ID);
        }
        if let Err((e, _)) = self.coordinates(group) {
            return fail(e);
        }
        let wait_ms = j.spec.rebalance_timeout_ms.max(j.spec.session_timeout_ms);
        let fresh = format!("{}-{}", j.spec.client_id, uuid::Uuid::new_v4());
        let member = if j.member_id.is_empty() {
            fresh.clone()
        } else {
            j.member_id.clone()
        };
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let delay = self.cfg.initial_rebalance_delay_ms;
        let limits = self.limits();
        let g = inner
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group, delay));
        let (r, outs) = g.join(now, j, || fresh, &limits);
        let w = match r {
            Now::Reply(r) => Waiting::Now(r),
            Now::Wait => {
                let (tx, rx) = oneshot::channel();
                // Registered before the answers go out: this join may be
                // the one that completes the rebalance.
                inner.joins.insert((group.to_string(), member.clone()), tx);
                Waiting::Later {
                    rx,
                    bound: Duration::from_millis(wait_ms + delay) + Duration::from_secs(5),
                    gone: JoinReply {
                        error: code::NOT_COORDINATOR,
                        generation: -1,
                        member_id: member,
                        ..Default::default()
                    },
                }
            }
        };
        self.delivered(inner.deliver(group, outs));
        w
    }

    /// SyncGroup: applied now; a follower's answer waits for the leader's.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Waiting<SyncReply> {
        let fail = |error| {
            Waiting::Now(SyncReply {
                error,
                ..Default::default()
            })
        };
        if let Err((e, _)) = self.coordinates(group) {
            return fail(e);
        }
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let Some(g) = inner.groups.get_mut(group) else {
            return fail(code::UNKNOWN_MEMBER_ID);
        };
        let bound = g.members.get(member).map_or(0, |m| {
            m.spec.session_timeout_ms.max(m.spec.rebalance_timeout_ms)
        });
        let (r, outs) = g.sync(now, member, generation, assignments);
        let w = match r {
            Now::Reply(r) => Waiting::Now(r),
            Now::Wait => {
                let (tx, rx) = oneshot::channel();
                inner
                    .syncs
                    .insert((group.to_string(), member.to_string()), tx);
                Waiting::Later {
                    rx,
                    bound: Duration::from_millis(bound) + Duration::from_secs(5),
                    gone: SyncReply {
                        error: code::NOT_COORDINATOR,
                        ..Default::default()
                    },
                }
            }
        };
        self.delivered(inner.deliver(group, outs));
        w
    }

    pub fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        if let Err((e, _)) = self.coordinates(group) {
            return e;
        }
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        match inner.groups.get_mut(group) {
            Some(g) => g.heartbeat(now, member, generation),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: an error code per member.
    pub fn leave(&self, group: &str, members: &[String]) -> Result<Vec<i16>, i16> {
        self.is_mine(group).map_err(|e| e.0)?;
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let mut codes = Vec::new();
        for m in members {
            let Some(g) = inner.groups.get_mut(group) else {
                codes.push(code::UNKNOWN_MEMBER_ID);
                continue;
            };
            let (c, outs) = g.leave(now, m);
            codes.push(c);
            inner.joins.remove(&(group.to_string(), m.clone()));
            inner.syncs.remove(&(group.to_string(), m.clone()));
            self.delivered(inner.deliver(group, outs));
            if c == code::NONE {
                info!(group, member = %m, "member left the group");
            }
        }
        Ok(codes)
    }

    /// OffsetCommit: checks the member and proposes one record per
    /// partition to the group's offsets partition in this region when the
    /// request arrives (so a commit sent before a JoinGroup on the same
    /// connection counts for the generation it names); the returned future
    /// answers once it committed here and, when a committed topic is
    /// `sync`, once as many other regions hold it as that topic's records
    /// need (invariant 8).
    pub async fn commit(
        self: &Arc<Self>,
        req: CommitReq,
    ) -> futures::future::BoxFuture<'static, Vec<PartitionCode>> {
        let all = |code: i16| -> Vec<PartitionCode> {
            req.topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (p.partition, code)).collect()))
                .collect()
        };
        let ready =
            |r: Vec<PartitionCode>| -> futures::future::BoxFuture<'static, Vec<PartitionCode>> {
                Box::pin(async move { r })
            };
        let (p, gid) = match self.coordinates(&req.group) {
            Ok(x) => x,
            Err((c, _)) => return ready(all(c)),
        };
        {
            let mut inner = self.inner.lock().expect("groups");
            let now = self.now();
            let refused = match inner.groups.get_mut(&req.group) {
                Some(g) => g.check_commit(now, &req.member, req.generation),
                None if req.generation < 0 => None,
                None => Some(code::UNKNOWN_MEMBER_ID),
            };
            if let Some(c) = refused {
                debug!(group = %req.group, member = %req.member, generation = req.generation, code = c, "offset commit refused");
                return ready(all(c));
            }
        }
        let mut results: Vec<PartitionCode> = Vec::new();
        let mut records = Vec::new();
        let mut strictest: Option<Policy> = None;
        for (topic, parts) in &req.topics {
            let meta = self.router.topic(topic);
            let mut codes = Vec::new();
            for CommitOffset {
                partition,
                offset,
                leader_epoch: epoch,
                metadata,
            } in parts
            {
                let c = match &meta {
                    None => code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(t) if *partition < 0 || *partition as u32 >= t.partitions => {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    }
                    _ if metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > self.cfg.offset_metadata_bytes_max as usize) =>
                    {
                        code::OFFSET_METADATA_TOO_LARGE
                    }
                    _ if *offset < 0 => code::INVALID_COMMIT_OFFSET_SIZE,
                    _ => {
                        records.push(offsets::record(
                            &Key {
                                group: req.group.clone(),
                                topic: topic.clone(),
                                partition: *partition,
                            },
                            Some(&Value {
                                offset: *offset,
                                metadata: metadata.clone().unwrap_or_default(),
                                leader_epoch: *epoch,
                            }),
                        ));
                        code::NONE
                    }
                };
                codes.push((*partition, c));
            }
            if let Some(t) = &meta {
                let pol = self.router.policy(t);
                if strictest
                    .as_ref()
                    .is_none_or(|s| pol.remote_acks() > s.remote_acks())
                {
                    strictest = Some(pol);
                }
            }
            results.push((topic.clone(), codes));
        }
        if records.is_empty() {
            return ready(results);
        }
        let n = records.len() as u64;
        let proposed = self.propose(p, records, strictest.as_ref()).await;
        let me = self.clone();
        Box::pin(async move {
            let outcome = match proposed {
                Ok(ticket) => me.await_commit(gid, ticket, n).await,
                Err(c) => Err(c),
            };
            if let Err(c) = outcome {
                for (_, codes) in &mut results {
                    for (_, pc) in codes.iter_mut() {
                        if *pc == code::NONE {
                            *pc = c;
                        }
                    }
                }
            }
            results
        })
    }

    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.commit_timeout_ms)
    }

    /// Appends records (commits, presence) to offsets partition `p` in
    /// this region.
    async fn submit(
        &self,
        p: u32,
        records: Vec<crate::log::RecordIn>,
    ) -> Result<AppendTicket, PartitionError> {
        self.router
            .submit_append(
                offsets::TOPIC,
                p as i32,
                records,
                None,
                self.commit_timeout(),
            )
            .await
    }

    /// Proposes commit records to offsets partition `p`.
    async fn propose(
        &self,
        p: u32,
        records: Vec<crate::log::RecordIn>,
        data_policy: Option<&Policy>,
    ) -> Result<AppendTicket, i16> {
        let ticket = self.submit(p, records).await.map_err(|e| {
            self.router.metrics.offset_commit_errors.inc();
            debug!(error = %e, "offset commit not proposed");
            commit_code(e)
        })?;
        Ok(match data_policy {
            Some(pol) => ticket.requiring(pol),
            None => ticket,
        })
    }

    /// Waits for proposed commit records, then folds them, so that a fetch
    /// right after sees them (they were applied here before the answer).
    async fn await_commit(
        &self,
        gid: GroupId,
        ticket: AppendTicket,
        records: u64,
    ) -> Result<(), i16> {
        let m = &self.router.metrics;
        ticket.wait(self.commit_timeout()).await.map_err(|e| {
            m.offset_commit_errors.inc();
            warn!(error = %e, "offset commit not acknowledged");
            commit_code(e)
        })?;
        m.offset_commits.inc_by(records);
        let _ = self.fold(gid);
        Ok(())
    }

    /// Folds what `gid`'s logs gained; false while more remains.
    fn fold(&self, gid: GroupId) -> Result<bool, i16> {
        let Some(pg) = self.router.groups.partition(gid) else {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        };
        let (logs, own) = {
            let p = pg.progress.borrow();
            (p.logs.clone(), p.log.origin)
        };
        let caught = self
            .folded
            .lock()
            .expect("folded")
            .entry(gid)
            .or_default()
            .catch_up(self.router.groups.db(), gid, &logs, FOLD_BYTES)
            .map_err(|e| {
                warn!(error = %e, "cannot read committed offsets");
                code::COORDINATOR_NOT_AVAILABLE
            })?;
        self.warn_split(own, &caught.groups);
        Ok(caught.done)
    }

    /// Warns when a group with members here also committed recently in
    /// another region: its members connect to two regions, which each
    /// coordinate them as a whole group (docs/consumers.md).
    fn warn_split(&self, own: u32, folded: &[(String, u32, u64)]) {
        let now = self.router.groups.clock.wall_now_ms();
        for (group, origin, hlc) in folded {
            if *origin == own || now - crate::hlc::wall_ms(*hlc) > SPLIT_WINDOW_MS {
                continue;
            }
            let active = self
                .inner
                .lock()
                .expect("groups")
                .groups
                .get(group)
                .is_some_and(|g| !g.members.is_empty());
            let mut warned = self.warned.lock().expect("warned");
            let due = warned
                .get(group)
                .is_none_or(|last| now - last > SPLIT_WINDOW_MS);
            if active && due {
                warned.insert(group.clone(), now);
                let region = self
                    .router
                    .region_names()
                    .into_iter()
                    .find(|r| crate::ids::origin_id(r) == *origin)
                    .unwrap_or_else(|| format!("origin {origin}"));
                warn!(group = %group, other_region = %region,
                    "consumer group also commits in another region: two regions claimed it at once, or it just moved here; members connecting to two regions meet in one of them (docs/consumers.md#one-group-across-regions)");
            }
        }
        let mut warned = self.warned.lock().expect("warned");
        warned.retain(|_, at| now - *at <= SPLIT_WINDOW_MS);
    }

    /// Folds `gid` to the end of what this node applied, after making sure
    /// it applied everything its region committed (a new leader may lag).
    async fn load(&self, gid: GroupId) -> Result<(), i16> {
        if let Some(pg) = self.router.groups.partition(gid) {
            let read = tokio::time::timeout(Duration::from_secs(5), pg.raft.ensure_linearizable());
            match read.await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(code::NOT_COORDINATOR),
                Err(_) => return Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            }
        }
        for _ in 0..FOLD_ROUNDS_MAX {
            if self.fold(gid)? {
                return Ok(());
            }
        }
        Err(code::COORDINATOR_LOAD_IN_PROGRESS)
    }

    /// OffsetFetch: the group's commits for `topics` (None: every topic
    /// it committed).
    pub async fn fetch(
        &self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, Vec<FetchedOffset>)>, i16> {
        let (_, gid) = self.is_mine(group).map_err(|e| e.0)?;
        self.load(gid).await?;
        let folded = self.folded.lock().expect("folded");
        let f = folded.get(&gid);
        let lookup = |topic: &str, partition: i32| {
            let key = Key {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
            };
            let c = f.and_then(|f| f.commits.get(&key));
            match c {
                // The commit reached this region before the records it
                // names (they travel by other links): a fetch there would
                // be out of range and the client would reset its position.
                // Retriable; the region catches up in moments.
                Some(c)
                    if self
                        .router
                        .high_watermark(topic, partition)
                        .is_ok_and(|hw| c.value.offset > hw as i64) =>
                {
                    FetchedOffset {
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        error: code::UNSTABLE_OFFSET_COMMIT,
                    }
                }
                Some(c) if c.value.offset >= 0 => FetchedOffset {
                    partition,
                    offset: c.value.offset,
                    leader_epoch: c.value.leader_epoch,
                    metadata: c.value.metadata.clone(),
                    error: code::NONE,
                },
                _ => FetchedOffset {
                    partition,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error: code::NONE,
                },
            }
        };
        Ok(match topics {
            Some(ts) => ts
                .into_iter()
                .map(|(t, ps)| {
                    let offs = ps.into_iter().map(|p| lookup(&t, p)).collect();
                    (t, offs)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<String, Vec<FetchedOffset>> =
                    Default::default();
                for (k, _) in f.map(|f| f.of_group(group)).unwrap_or_default() {
                    by_topic
                        .entry(k.topic.clone())
                        .or_default()
                        .push(lookup(&k.topic, k.partition));
                }
                by_topic.into_iter().collect()
            }
        })
    }

    /// DescribeGroups: a group this node coordinates; "Dead" when it has
    /// neither members nor commits.
    pub async fn describe(&self, group: &str) -> Result<Described, i16> {
        let (_, gid) = self.is_mine(group).map_err(|e| e.0)?;
        let inner = self.inner.lock().expect("groups");
        if let Some(g) = inner.groups.get(group).filter(|g| !g.members.is_empty()) {
            return Ok(Described {
                state: g.state.name(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol: g.protocol.clone().unwrap_or_default(),
                members: g
                    .describe()
                    .into_iter()
                    .map(|(m, meta)| {
                        (
                            m.id.clone(),
                            m.spec.client_id.clone(),
                            m.spec.client_host.clone(),
                            meta,
                            m.assignment.clone(),
                        )
                    })
                    .collect(),
            });
        }
        drop(inner);
        let _ = self.fold(gid);
        let has_commits = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .is_some_and(|f| !f.of_group(group).is_empty());
        Ok(Described {
            state: if has_commits { "Empty" } else { "Dead" },
            protocol_type: if has_commits {
                "consumer".into()
            } else {
                String::new()
            },
            protocol: String::new(),
            members: Vec::new(),
        })
    }

    /// ListGroups: the groups this node coordinates or holds commits of
    /// (offsets partitions it leads), with state and protocol type.
    pub fn list(&self) -> Vec<(String, &'static str, String)> {
        let mut out: std::collections::BTreeMap<String, (&'static str, String)> =
            Default::default();
        let Some(t) = self.router.topic(offsets::TOPIC) else {
            return Vec::new();
        };
        for p in 0..t.partitions {
            let gid = t.group(p);
            let led = self
                .router
                .groups
                .partition(gid)
                .is_some_and(|g| g.leader() == Some(self.router.node_id()));
            if !led {
                continue;
            }
            let _ = self.fold(gid);
            if let Some(f) = self.folded.lock().expect("folded").get(&gid) {
                for g in f.groups() {
                    out.insert(g, ("Empty", "consumer".into()));
                }
            }
        }
        for (id, g) in &self.inner.lock().expect("groups").groups {
            if !g.members.is_empty() {
                out.insert(
                    id.clone(),
                    (g.state.name(), g.protocol_type.clone().unwrap_or_default()),
                );
            }
        }
        out.into_iter().map(|(g, (s, p))| (g, s, p)).collect()
    }

    /// DeleteGroups: a group without members loses its commits (a
    /// deletion record per committed partition, replicated like commits).
    pub async fn delete(&self, group: &str) -> i16 {
        let (p, gid) = match self.is_mine(group) {
            Ok(x) => x,
            Err((c, _)) => return c,
        };
        {
            let inner = self.inner.lock().expect("groups");
            if inner
                .groups
                .get(group)
                .is_some_and(|g| !g.members.is_empty())
            {
                return code::NON_EMPTY_GROUP;
            }
        }
        if let Err(c) = self.load(gid).await {
            return c;
        }
        let keys: Vec<Key> = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .map(|f| {
                f.of_group(group)
                    .into_iter()
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if keys.is_empty() {
            return code::GROUP_ID_NOT_FOUND;
        }
        let records = keys.iter().map(|k| offsets::record(k, None)).collect();
        let outcome = match self.propose(p, records, None).await {
            Ok(ticket) => self.await_commit(gid, ticket, 0).await,
            Err(c) => Err(c),
        };
        match outcome {
            Ok(()) => {
                info!(group, partitions = keys.len(), "group deleted");
                self.inner.lock().expect("groups").drop_group(group);
                code::NONE
            }
            Err(c) => c,
        }
    }
}
