//! A consumer-group member for the crate and `meridian consume --group`. It
//! joins a group over the Kafka protocol (FindCoordinator, JoinGroup with
//! the `range` assignor, SyncGroup, Heartbeat), reads its partitions, and
//! hands each record to a handler that accepts or rejects it.
//!
//! A rejected record moves to the next topic of its retry chain
//! ([`chain`]): the member commits a [`chain::MoveMarker`] at the record's
//! own offset, writes the record with an idempotent producer to the next
//! topic (same partition index) with headers saying why, which attempt and
//! from where, then commits past it. A member that takes the partition over
//! after a crash finds the marker and scans the next topic for the record
//! before it goes on, so a move is neither lost nor made twice.

pub mod assign;
pub mod chain;
pub mod exec;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::{encode_stamped, Client, ClientError, Connection, Consumed, OutRecord};
use crate::group::state::code;
use crate::meta::KEY_RETRY_NEXT;
use chain::{MoveMarker, Position};

const V_FIND_COORDINATOR: i16 = 3;
const V_JOIN_GROUP: i16 = 5;
const V_SYNC_GROUP: i16 = 3;
const V_HEARTBEAT: i16 = 3;
const V_LEAVE_GROUP: i16 = 1;
const V_OFFSET_COMMIT: i16 = 5;
const V_OFFSET_FETCH: i16 = 5;
/// Joins and coordinator look-ups tried before a member gives up.
const JOIN_TRIES_MAX: u32 = 40;
/// Longest a member holds accepted offsets before it commits them.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Commits tried before a member gives up (with backoff, about 15 s).
const COMMIT_TRIES_MAX: u32 = 10;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("group `{group}`: {what} failed with error {code} ({name}); {hint}")]
    Group {
        group: String,
        what: &'static str,
        code: i16,
        name: String,
        hint: String,
    },
    #[error("record {0} was rejected, but its topic has no `meridian.retry.next`: give it a chain with `meridian topic create --retry-chain <topic>`")]
    NoChain(Position),
    #[error("topic `{0}`'s retry chain (`meridian.retry.next`) loops back on itself or is longer than a chain can be; point the last retry topic at a dead-letter topic")]
    ChainLoop(String),
    #[error("the group's membership changed; the member joins again")]
    Rebalanced,
}

/// Whether a pass over fetched records went through or stopped early (a
/// rebalance, or stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Done,
    Interrupted,
}

/// What the handler says of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Move the record to the next topic of its chain, saying why.
    Reject(String),
}

/// A record handed to the handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    /// 1 on the chain's first topic, one more on each retry topic.
    pub attempt: u32,
    pub record: Consumed,
}

impl Delivery {
    pub fn position(&self) -> Position {
        Position {
            topic: self.topic.clone(),
            partition: self.record.partition,
            offset: self.record.offset,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The coordinator drops a member not heard from for this long; the
    /// member heartbeats every third of it, also while a handler runs.
    pub session_timeout_ms: i32,
    /// How long the group waits for members to rejoin in a rebalance; a
    /// member rejoins once the record in hand is settled, so keep it above
    /// the longest a handler takes.
    pub rebalance_timeout_ms: i32,
    /// How long a fetch waits for records.
    pub fetch_wait_ms: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            fetch_wait_ms: 500,
        }
    }
}

/// What a member did, for progress reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// Rejected records moved to a retry topic.
    pub retried: u64,
    /// Rejected records moved to the dead-letter topic (a chain's end).
    pub dead: u64,
}

/// The member's standing in its group, shared with the heartbeat task.
#[derive(Debug, Clone, Default)]
struct Standing {
    coordinator: Option<String>,
    member_id: String,
    generation: i32,
}

pub struct GroupConsumer {
    client: Arc<Client>,
    group: String,
    settings: Settings,
    /// Topics this member reads: the chains' topics but their ends.
    topics: Vec<String>,
    /// `meridian.retry.next` of the topics read.
    next: BTreeMap<String, String>,
    /// Partition counts of every topic read or moved to.
    partitions: BTreeMap<String, i32>,
    standing: Arc<Mutex<Standing>>,
    rejoin: Arc<AtomicBool>,
    joined: bool,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Next offset to deliver, per assigned partition.
    positions: BTreeMap<(String, i32), i64>,
    producer: Option<(i64, i16)>,
    sequences: HashMap<(String, i32), i32>,
    pub stats: Stats,
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn rebalancing(c: i16) -> bool {
    matches!(
        c,
        code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION | code::UNKNOWN_MEMBER_ID
    )
}

fn coordinator_moved(c: i16) -> bool {
    matches!(
        c,
        code::NOT_COORDINATOR
            | code::COORDINATOR_NOT_AVAILABLE
            | code::COORDINATOR_LOAD_IN_PROGRESS
    )
}

/// What to do about a group request the coordinator refused with `c`.
fn refusal_hint(c: i16) -> &'static str {
    match c {
        code::INCONSISTENT_GROUP_PROTOCOL => {
            "the group's members use another protocol or assignor; give every member the `range` assignor, or use another group id"
        }
        code::INVALID_SESSION_TIMEOUT => {
            "the broker refuses this member's session timeout (Settings::session_timeout_ms); see `[groups] session_timeout_ms_min/_max` in the node config"
        }
        code::GROUP_MAX_SIZE_REACHED => {
            "the group has as many members as `[groups] max_size` allows; stop a member or raise it"
        }
        code::INVALID_GROUP_ID => "give a non-empty group id",
        code::UNKNOWN_TOPIC_OR_PARTITION => {
            "a topic of the group was deleted; recreate it or read other topics"
        }
        _ => "the coordinator's node log says why",
    }
}

impl GroupConsumer {
    /// A member of `group` reading `topics` and, for each, the retry topics
    /// of its chain (followed through `meridian.retry.next`; a chain's last
    /// topic, its dead-letter topic, is written, not read).
    pub async fn subscribe(
        client: Arc<Client>,
        group: &str,
        topics: &[String],
        settings: Settings,
    ) -> Result<GroupConsumer, ConsumerError> {
        let mut read = Vec::new();
        let mut next = BTreeMap::new();
        let mut partitions = BTreeMap::new();
        for start in topics {
            let mut t = start.clone();
            let mut seen = BTreeSet::new();
            loop {
                if !seen.insert(t.clone()) || seen.len() > chain::ATTEMPTS_MAX as usize + 2 {
                    return Err(ConsumerError::ChainLoop(start.clone()));
                }
                let info = client.topic(&t, false).await?;
                partitions.insert(t.clone(), info.leaders.len() as i32);
                let n = client
                    .describe_configs(&t)
                    .await?
                    .into_iter()
                    .find(|(k, v, _)| k == KEY_RETRY_NEXT && !v.is_empty())
                    .map(|(_, v, _)| v);
                // A chain's end is read only when it was named itself.
                if (n.is_some() || t == *start) && !read.contains(&t) {
                    read.push(t.clone());
                }
                match n {
                    Some(n) => {
                        next.insert(t.clone(), n.clone());
                        t = n;
                    }
                    None => break,
                }
            }
        }
        Ok(GroupConsumer {
            client,
            group: group.to_string(),
            settings,
            topics: read,
            next,
            partitions,
            standing: Arc::new(Mutex::new(Standing::default())),
            rejoin: Arc::new(AtomicBool::new(false)),
            joined: false,
            heartbeat: None,
            positions: BTreeMap::new(),
            producer: None,
            sequences: HashMap::new(),
            stats: Stats::default(),
        })
    }

    /// The topics this member reads.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Where a record rejected in `topic` moves, if `topic` has a chain.
    pub fn next_topic(&self, topic: &str) -> Option<&str> {
        self.next.get(topic).map(String::as_str)
    }

    /// Partitions assigned in the current generation.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.positions.keys().cloned().collect()
    }

    fn error(&self, what: &'static str, c: i16, hint: &str) -> ConsumerError {
        ConsumerError::Group {
            group: self.group.clone(),
            what,
            code: c,
            name: kafka_protocol::error::ResponseError::try_from_code(c)
                .map_or_else(|| "unknown".to_string(), |e| format!("{e:?}")),
            hint: hint.to_string(),
        }
    }

    /// The error for a refusal `c` of `what`, with what to do about it.
    fn refused(&self, what: &'static str, c: i16) -> ConsumerError {
        self.error(what, c, refusal_hint(c))
    }

    async fn coordinator(&self) -> Result<Connection, ConsumerError> {
        let known = self.standing.lock().await.coordinator.clone();
        if let Some(addr) = known {
            return Ok(self.client.connection(&addr).await?);
        }
        let req = FindCoordinatorRequest::default()
            .with_key(text(&self.group))
            .with_key_type(0);
        let resp: FindCoordinatorResponse = self
            .client
            .any()
            .await?
            .call(ApiKey::FindCoordinator, V_FIND_COORDINATOR, &req)
            .await?;
        if resp.error_code != 0 {
            return Err(self.error(
                "FindCoordinator",
                resp.error_code,
                "the region's offsets topic may still be starting; try again",
            ));
        }
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        self.standing.lock().await.coordinator = Some(addr.clone());
        Ok(self.client.connection(&addr).await?)
    }

    async fn forget_coordinator(&self) {
        self.standing.lock().await.coordinator = None;
    }

    /// Joins (or rejoins) the group, takes this generation's assignment and
    /// the committed positions of its partitions.
    async fn join(&mut self, stop: &CancellationToken) -> Result<(), ConsumerError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.rejoin.store(false, Ordering::SeqCst);
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..JOIN_TRIES_MAX {
            if stop.is_cancelled() {
                return Ok(());
            }
            let r = match self.try_join().await {
                Ok(Some(assigned)) => self.take_assignment(assigned).await.map(|()| true),
                Ok(None) => Ok(false), // a rebalance started meanwhile
                Err(e) => Err(e),
            };
            match r {
                Ok(true) if !self.rejoin.load(Ordering::SeqCst) => {
                    self.joined = true;
                    self.start_heartbeat();
                    return Ok(());
                }
                Ok(_) => self.rejoin.store(false, Ordering::SeqCst),
                Err(e) => {
                    let again = match &e {
                        ConsumerError::Client(c) => c.is_retriable(),
                        ConsumerError::Group { code, .. } => {
                            coordinator_moved(*code) || rebalancing(*code)
                        }
                        ConsumerError::Rebalanced => true,
                        _ => false,
                    };
                    if !again {
                        return Err(e);
                    }
                    debug!(error = %e, attempt, "joining again");
                    self.forget_coordinator().await;
                    self.rejoin.store(false, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(self.error(
            "JoinGroup",
            code::COORDINATOR_NOT_AVAILABLE,
            "gave up after repeated tries; is the region up?",
        ))
    }

    /// One JoinGroup and SyncGroup round: the assignment, or None when the
    /// group is rebalancing again.
    async fn try_join(&mut self) -> Result<Option<Vec<(String, i32)>>, ConsumerError> {
        let conn = self.coordinator().await?;
        let member_id = self.standing.lock().await.member_id.clone();
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_session_timeout_ms(self.settings.session_timeout_ms)
            .with_rebalance_timeout_ms(self.settings.rebalance_timeout_ms)
            .with_member_id(text(&member_id))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(text(assign::RANGE))
                .with_metadata(assign::encode_subscription(&self.topics))]);
        let resp: JoinGroupResponse = conn.call(ApiKey::JoinGroup, V_JOIN_GROUP, &req).await?;
        match resp.error_code {
            0 => {}
            code::MEMBER_ID_REQUIRED => {
                self.standing.lock().await.member_id = resp.member_id.to_string();
                return Ok(None);
            }
            code::UNKNOWN_MEMBER_ID => {
                self.standing.lock().await.member_id.clear();
                return Ok(None);
            }
            code::REBALANCE_IN_PROGRESS => return Ok(None),
            c => return Err(self.refused("JoinGroup", c)),
        }
        let me = resp.member_id.to_string();
        {
            let mut s = self.standing.lock().await;
            s.member_id = me.clone();
            s.generation = resp.generation_id;
        }
        let mut assignments = Vec::new();
        if resp.leader.as_str() == me {
            let mut members = BTreeMap::new();
            for m in &resp.members {
                let topics = assign::decode_subscription(m.metadata.clone()).unwrap_or_default();
                members.insert(m.member_id.to_string(), topics);
            }
            let mut counts = BTreeMap::new();
            for t in members.values().flatten() {
                if counts.contains_key(t) {
                    continue;
                }
                let n = match self.partitions.get(t) {
                    Some(n) => *n,
                    None => self.client.topic(t, false).await?.leaders.len() as i32,
                };
                counts.insert(t.clone(), n);
            }
            for (m, a) in assign::range(&members, &counts) {
                assignments.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(text(&m))
                        .with_assignment(assign::encode_assignment(&a)),
                );
            }
        }
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_generation_id(resp.generation_id)
            .with_member_id(text(&me))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text(assign::RANGE)))
            .with_assignments(assignments);
        let sync: SyncGroupResponse = conn.call(ApiKey::SyncGroup, V_SYNC_GROUP, &req).await?;
        match sync.error_code {
            0 => {}
            c if rebalancing(c) => return Ok(None),
            c => return Err(self.refused("SyncGroup", c)),
        }
        let assigned = assign::decode_assignment(sync.assignment).ok_or_else(|| {
            self.error(
                "SyncGroup",
                code::INCONSISTENT_GROUP_PROTOCOL,
                "the leader sent an assignment this member cannot read",
            )
        })?;
        info!(group = %self.group, generation = resp.generation_id, partitions = ?assigned, "joined");
        Ok(Some(assigned))
    }

    /// Positions of the assigned partitions: the committed offsets, each
    /// after finishing a move a crashed member left half done.
    async fn take_assignment(&mut self, assigned: Vec<(String, i32)>) -> Result<(), ConsumerError> {
        self.positions.clear();
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p) in &assigned {
            by_topic.entry(t.clone()).or_default().push(*p);
        }
        if by_topic.is_empty() {
            return Ok(());
        }
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_topics(Some(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(text(t)))
                            .with_partition_indexes(ps.clone())
                    })
                    .collect(),
            ));
        let resp: OffsetFetchResponse = self
            .coordinator()
            .await?
            .call(ApiKey::OffsetFetch, V_OFFSET_FETCH, &req)
            .await?;
        if resp.error_code != 0 {
            return Err(self.refused("OffsetFetch", resp.error_code));
        }
        for t in resp.topics {
            let topic = t.name.0.to_string();
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(self.refused("OffsetFetch", p.error_code));
                }
                let committed = p.committed_offset.max(0);
                let marker = p
                    .metadata
                    .as_ref()
                    .and_then(|m| MoveMarker::parse(m.as_str()))
                    .filter(|m| m.offset == committed);
                let from = Position {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: committed,
                };
                let start = match marker {
                    Some(m) if self.finish_move(&from, &m).await? => committed + 1,
                    _ => committed,
                };
                self.positions
                    .insert((topic.clone(), p.partition_index), start);
            }
        }
        // Partitions the response left out start at the beginning.
        for (t, p) in assigned {
            self.positions.entry((t, p)).or_insert(0);
        }
        Ok(())
    }

    /// After a crash between a move's marker and its commit: was the record
    /// at `from` written to the next topic? If so, commit past it.
    async fn finish_move(&self, from: &Position, m: &MoveMarker) -> Result<bool, ConsumerError> {
        let (end, _) = self.client.list_offset(&m.next, m.partition, -1).await?;
        let mut at = m.end.max(0);
        info!(record = %from, next = %m.next, partition = m.partition, from = at, to = end, "checking a move left half done");
        // Records of a delayed topic arrive as they fall due; the scan ends
        // when it reached the end the partition had when it began.
        while at < end {
            let (records, _) = self
                .client
                .fetch(&m.next, m.partition, at, self.settings.fetch_wait_ms)
                .await?;
            for r in records {
                at = r.offset + 1;
                if chain::from_of(&r.headers).as_ref() == Some(from) {
                    self.commit(from.partition, &from.topic, from.offset + 1, "")
                        .await?;
                    info!(record = %from, "the move was made; going on past it");
                    return Ok(true);
                }
            }
        }
        info!(record = %from, "the move was not made; delivering the record again");
        Ok(false)
    }

    fn start_heartbeat(&mut self) {
        let client = self.client.clone();
        let standing = self.standing.clone();
        let rejoin = self.rejoin.clone();
        let group = self.group.clone();
        let every = Duration::from_millis((self.settings.session_timeout_ms / 3).max(100) as u64);
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let s = standing.lock().await.clone();
                let Some(addr) = s.coordinator.clone() else {
                    rejoin.store(true, Ordering::SeqCst);
                    continue;
                };
                let req = HeartbeatRequest::default()
                    .with_group_id(GroupId(text(&group)))
                    .with_generation_id(s.generation)
                    .with_member_id(text(&s.member_id));
                let r: Result<HeartbeatResponse, _> = match client.connection(&addr).await {
                    Ok(c) => c.call(ApiKey::Heartbeat, V_HEARTBEAT, &req).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(h) if h.error_code == 0 => {}
                    Ok(h) => {
                        debug!(group, code = h.error_code, "heartbeat: rejoin");
                        if coordinator_moved(h.error_code) {
                            standing.lock().await.coordinator = None;
                        }
                        rejoin.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        debug!(group, error = %e, "heartbeat failed");
                        standing.lock().await.coordinator = None;
                        rejoin.store(true, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    /// Commits `offset` (the next to read) of a partition, with `metadata`.
    async fn commit(
        &self,
        partition: i32,
        topic: &str,
        offset: i64,
        metadata: &str,
    ) -> Result<(), ConsumerError> {
        let s = self.standing.lock().await.clone();
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_generation_id_or_member_epoch(s.generation)
            .with_member_id(text(&s.member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(text(metadata)))])]);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = match self.coordinator().await {
                Ok(c) => c
                    .call::<_, OffsetCommitResponse>(ApiKey::OffsetCommit, V_OFFSET_COMMIT, &req)
                    .await
                    .map_err(ConsumerError::from),
                Err(e) => Err(e),
            };
            let c = match r {
                Ok(resp) => resp
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| p.error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0),
                // No answer: the same commit again is harmless.
                Err(ConsumerError::Client(e)) if e.is_retriable() && attempt < COMMIT_TRIES_MAX => {
                    debug!(error = %e, attempt, "commit: trying again");
                    self.forget_coordinator().await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Err(e),
            };
            return match c {
                0 => Ok(()),
                c if rebalancing(c) => {
                    self.rejoin.store(true, Ordering::SeqCst);
                    Err(ConsumerError::Rebalanced)
                }
                c if coordinator_moved(c) => {
                    self.forget_coordinator().await;
                    self.rejoin.store(true, Ordering::SeqCst);
                    Err(ConsumerError::Rebalanced)
                }
                // Not replicated in time: the commit is retried as is.
                code::REQUEST_TIMED_OUT | code::NOT_ENOUGH_REPLICAS
                    if attempt < COMMIT_TRIES_MAX =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                c => Err(self.refused("OffsetCommit", c)),
            };
        }
    }

    /// Writes `record` to `topic`/`partition` with this member's idempotent
    /// producer: a retried write is stored once.
    async fn write_once(
        &mut self,
        topic: &str,
        partition: i32,
        record: OutRecord,
    ) -> Result<(), ConsumerError> {
        let (id, epoch) = match self.producer {
            Some(p) => p,
            None => {
                let p = self.client.init_producer_id().await?;
                self.producer = Some(p);
                self.sequences.clear();
                p
            }
        };
        let key = (topic.to_string(), partition);
        let sequence = *self.sequences.get(&key).unwrap_or(&0);
        let batch = encode_stamped(
            &[record],
            Some(crate::client::ProducerStamp {
                id,
                epoch,
                sequence,
            }),
            kafka_protocol::records::Compression::None,
        );
        match self.client.produce(topic, partition, batch).await {
            Ok(_) => {}
            Err(ClientError::Kafka { code, .. }) if code == DUPLICATE_SEQUENCE_NUMBER => {}
            Err(e) => {
                // Whether it was stored is unknown: a fresh producer id, and
                // the marker decides after a restart.
                self.producer = None;
                return Err(e.into());
            }
        }
        self.sequences
            .insert(key, sequence.wrapping_add(1) & i32::MAX);
        Ok(())
    }

    /// Moves a rejected record to the next topic of its chain.
    async fn move_on(&mut self, d: &Delivery, reason: &str) -> Result<(), ConsumerError> {
        let from = d.position();
        let next = self
            .next
            .get(&d.topic)
            .cloned()
            .ok_or_else(|| ConsumerError::NoChain(from.clone()))?;
        let partitions = match self.partitions.get(&next) {
            Some(n) => *n,
            None => self.client.topic(&next, false).await?.leaders.len() as i32,
        };
        let q = chain::target_partition(from.partition, partitions);
        let (end, _) = self.client.list_offset(&next, q, -1).await?;
        let marker = MoveMarker {
            offset: from.offset,
            next: next.clone(),
            partition: q,
            end,
        };
        self.commit(from.partition, &from.topic, from.offset, &marker.encode())
            .await?;
        let record = OutRecord {
            key: d.record.key.clone().map(Bytes::from),
            value: d.record.value.clone().map(Bytes::from),
            headers: chain::moved_headers(&d.record.headers, &from, d.attempt, reason),
        };
        self.write_once(&next, q, record).await?;
        self.commit(from.partition, &from.topic, from.offset + 1, "")
            .await?;
        if self.next.contains_key(&next) {
            self.stats.retried += 1;
        } else {
            self.stats.dead += 1;
        }
        info!(record = %from, attempt = d.attempt, to = %next, reason, "rejected; moved on");
        Ok(())
    }

    /// Reads until `stop`, handing each record to `handler` in offset order
    /// per partition and settling it before the next: accepted, its offset
    /// is committed with the others accepted (within a second, before a
    /// move, a rebalance or leaving); rejected, it moves on first. A
    /// rebalance rejoins; records the group did not see committed are
    /// delivered again.
    pub async fn run<H, Fut>(
        &mut self,
        mut handler: H,
        stop: &CancellationToken,
    ) -> Result<Stats, ConsumerError>
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Verdict>,
    {
        let result = self.run_inner(&mut handler, stop).await;
        self.leave().await;
        result.map(|()| self.stats)
    }

    async fn run_inner<H, Fut>(
        &mut self,
        handler: &mut H,
        stop: &CancellationToken,
    ) -> Result<(), ConsumerError>
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Verdict>,
    {
        let wait = Duration::from_millis(self.settings.fetch_wait_ms.max(1) as u64);
        while !stop.is_cancelled() {
            if !self.joined || self.rejoin.load(Ordering::SeqCst) {
                self.join(stop).await?;
                continue;
            }
            if self.positions.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let fetches = self.positions.iter().map(|((t, p), at)| {
                let client = self.client.clone();
                let (t, p, at, w) = (t.clone(), *p, *at, self.settings.fetch_wait_ms);
                async move {
                    let r = client.fetch(&t, p, at, w).await;
                    (t, p, r)
                }
            });
            let fetched = tokio::select! {
                _ = stop.cancelled() => break,
                f = futures::future::join_all(fetches) => f,
            };
            for (topic, partition, r) in fetched {
                let (records, _) = r?;
                let flow = self
                    .settle_records(&topic, partition, records, handler, stop)
                    .await?;
                if flow == Flow::Interrupted {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Hands `records` of one partition to `handler` in order and settles
    /// each. Accepted offsets are committed together: when the records
    /// run out, at least every [`COMMIT_EVERY`], and before a move (whose
    /// marker commit covers them).
    async fn settle_records<H, Fut>(
        &mut self,
        topic: &str,
        partition: i32,
        records: Vec<Consumed>,
        handler: &mut H,
        stop: &CancellationToken,
    ) -> Result<Flow, ConsumerError>
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Verdict>,
    {
        let key = (topic.to_string(), partition);
        let mut unsaved: Option<i64> = None;
        let mut saved_at = Instant::now();
        let mut flow = Flow::Done;
        for record in records {
            if self.rejoin.load(Ordering::SeqCst) || stop.is_cancelled() {
                flow = Flow::Interrupted;
                break;
            }
            if self.positions.get(&key) != Some(&record.offset) {
                continue; // below the position (or a gap: fetch again)
            }
            let d = Delivery {
                topic: topic.to_string(),
                attempt: chain::attempt_of(&record.headers),
                record,
            };
            let offset = d.record.offset;
            let settled = match handler(d.clone()).await {
                Verdict::Accept => {
                    self.stats.accepted += 1;
                    unsaved = Some(offset + 1);
                    Ok(())
                }
                Verdict::Reject(reason) => self.move_on(&d, &reason).await.map(|()| {
                    unsaved = None;
                    saved_at = Instant::now();
                }),
            };
            match settled {
                Ok(()) => {
                    self.positions.insert(key.clone(), offset + 1);
                }
                Err(ConsumerError::Rebalanced) => {
                    warn!(record = %d.position(), "the group rebalanced before the record was moved on; it is delivered again");
                    flow = Flow::Interrupted;
                    break;
                }
                Err(e) => return Err(e),
            }
            if let Some(at) = unsaved.filter(|_| saved_at.elapsed() >= COMMIT_EVERY) {
                self.commit(partition, topic, at, "").await?;
                unsaved = None;
                saved_at = Instant::now();
            }
        }
        if let Some(at) = unsaved {
            match self.commit(partition, topic, at, "").await {
                Ok(()) => {}
                Err(ConsumerError::Rebalanced) => {
                    warn!(topic, partition, offset = at, "the group rebalanced before accepted records were committed; the new owner delivers them again");
                    flow = Flow::Interrupted;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(flow)
    }

    /// Leaves the group so that the others take its partitions at once.
    async fn leave(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if !self.joined {
            return;
        }
        self.joined = false;
        let s = self.standing.lock().await.clone();
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_member_id(text(&s.member_id));
        if let Ok(c) = self.coordinator().await {
            let r: Result<LeaveGroupResponse, _> =
                c.call(ApiKey::LeaveGroup, V_LEAVE_GROUP, &req).await;
            debug!(group = %self.group, ok = r.is_ok(), "left the group");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do() {
        assert!(refusal_hint(code::INCONSISTENT_GROUP_PROTOCOL).contains("`range` assignor"));
        assert!(refusal_hint(code::GROUP_MAX_SIZE_REACHED).contains("max_size"));
        assert!(refusal_hint(12345).contains("node log"));
        let e = ConsumerError::Group {
            group: "g".into(),
            what: "JoinGroup",
            code: code::GROUP_MAX_SIZE_REACHED,
            name: "GroupMaxSizeReached".into(),
            hint: refusal_hint(code::GROUP_MAX_SIZE_REACHED).into(),
        };
        assert_eq!(
            e.to_string(),
            "group `g`: JoinGroup failed with error 81 (GroupMaxSizeReached); the group has as many members as `[groups] max_size` allows; stop a member or raise it"
        );
    }
}
