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
mod commit;
pub mod exec;
mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::client::{Client, ClientError, Consumed};
use crate::group::state::code;
use crate::meta::KEY_RETRY_NEXT;
use chain::Position;

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
