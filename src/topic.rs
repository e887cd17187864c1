//! Topic metadata of a region: the meta group's state and its pure rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{partition_group, GroupId};
use crate::raft::types::Command;

/// The internal topic of consumer groups' commits (`group::offsets`);
/// clients may not delete it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Upper bound on partitions per topic; each partition is a Raft group.
pub const PARTITIONS_MAX: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("invalid topic name `{0}`: use 1 to 249 letters, digits, `.`, `_` or `-`")]
    InvalidName(String),
    #[error("invalid partition count {0}: use 1 to {PARTITIONS_MAX}")]
    InvalidPartitions(i64),
    #[error("invalid config `{key}`: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("region {0} was failed over (its origin logs are sealed); it takes writes again only after failback")]
    RegionSealed(String),
    #[error("topic `{0}` is internal: it carries consumer groups' committed offsets; delete groups (DeleteGroups) instead")]
    InternalTopic(String),
    #[error("seal refused: {0}")]
    SealRefused(String),
    #[error("cannot move the home of topic `{topic}`: {reason}")]
    MoveRefused { topic: String, reason: String },
    #[error("lease refused: region {region} is in epoch {current}, not {asked} (the node has not applied its region's seal yet)")]
    StaleEpoch {
        region: String,
        current: u32,
        asked: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: uuid::Uuid,
    /// Sequence number, unique in the region for all time.
    pub seq: u32,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
    /// A pinned topic's home at creation. Its partition groups start their
    /// view from it and follow the home's moves as their logs apply them,
    /// so every replica, whenever it starts, replays the same view.
    pub first_home: Option<String>,
}

impl TopicMeta {
    pub fn group(&self, partition: u32) -> GroupId {
        partition_group(self.seq, partition)
    }

    /// The home a pinned topic has now (`meridian.writers=home:R`).
    pub fn home(&self) -> Option<&str> {
        self.configs.get(KEY_WRITERS)?.strip_prefix("home:")
    }
}

/// A pinned topic's home moved by command from `from` to `to`: each
/// partition's log of `from` (in `from_epoch`) is sealed where its group
/// ended it (`seals`, by partition), and `to`'s log follows it in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeMove {
    pub topic: String,
    pub from: String,
    pub from_epoch: u32,
    pub to: String,
    pub seals: BTreeMap<u32, crate::control::seal::SealEnd>,
}

/// The region's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub topics: BTreeMap<String, TopicMeta>,
    pub next_seq: u32,
    /// Each region's write lease: until when (Unix ms) it may accept writes
    /// (`control::lease`, invariant 6).
    pub leases: crate::control::lease::Leases,
    /// Seals of failed-over regions' epochs (invariant 7), oldest first.
    pub seals: Vec<crate::control::seal::Seal>,
    /// Each region's current epoch; absent: the first.
    pub epochs: BTreeMap<String, u32>,
    /// Moves of pinned topics' homes by command, oldest first.
    pub moves: Vec<HomeMove>,
}

impl MetaState {
    /// `region`'s current epoch: its origin logs are written in this one.
    pub fn epoch_of(&self, region: &str) -> u32 {
        self.epochs
            .get(region)
            .copied()
            .unwrap_or(crate::ids::EPOCH_FIRST)
    }

    /// The last seal of `region`, if it was ever failed over.
    pub fn last_seal(&self, region: &str) -> Option<&crate::control::seal::Seal> {
        self.seals.iter().rev().find(|s| s.region == region)
    }

    /// The move of `topic`'s home that is under way: not every partition
    /// has its seal yet.
    pub fn pending_move(&self, topic: &str) -> Option<&HomeMove> {
        let t = self.topics.get(topic)?;
        self.moves
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .filter(|m| (m.seals.len() as u32) < t.partitions)
    }

    /// Did `region` seal its log of `topic` in its current epoch, when the
    /// topic's home moved away from it? Then it cannot be the home again
    /// before its next epoch (its log of this epoch is closed for good).
    pub fn handed_off(&self, topic: &str, region: &str) -> bool {
        let epoch = self.epoch_of(region);
        self.moves
            .iter()
            .any(|m| m.topic == topic && m.from == region && m.from_epoch == epoch)
    }

    /// Why `topic`'s home cannot move to `to` now, if it cannot. Pure: the
    /// metadata state machine checks it at apply; the router checks the
    /// leases (wall clock) before it proposes.
    pub fn check_move(&self, topic: &str, to: &str) -> Result<(), String> {
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| format!("topic `{topic}` does not exist"))?;
        let Some(home) = t.home() else {
            return Err("it is written in every region (`meridian.writers=all`); only a pinned topic (`home:<region>`) has a home to move".into());
        };
        if let Some(regions) = t.configs.get(KEY_REGIONS) {
            let regions = split_regions(regions);
            if !regions.iter().any(|r| r == to) {
                return Err(format!(
                    "region {to} does not hold the topic; its regions are {}",
                    regions.join(", ")
                ));
            }
        }
        if home == to {
            return Ok(()); // already there: nothing to do
        }
        if let Some(m) = self.pending_move(topic) {
            return Err(format!(
                "its move from {} to {} is under way ({} of {} partitions sealed); try again once it is done",
                m.from,
                m.to,
                m.seals.len(),
                t.partitions
            ));
        }
        for r in [home, to] {
            if self.seal_of(r).is_some() {
                return Err(format!(
                    "region {r} was failed over; move the home once it has failed back"
                ));
            }
        }
        if self.handed_off(topic, to) {
            return Err(format!(
                "region {to} closed its log of the topic when the home moved away from it in its epoch {}; it can be the home again only in a later epoch (after a failover and failback)",
                self.epoch_of(to)
            ));
        }
        Ok(())
    }

    /// The seal of a region that was failed over and has not renewed its
    /// lease since: it is away, or back but not yet heard from.
    pub fn seal_of(&self, region: &str) -> Option<&crate::control::seal::Seal> {
        self.last_seal(region)
            .filter(|s| !crate::control::seal::renewed_since(&self.leases, s))
    }
}

/// Topic configs this broker understands, with their defaults. Kafka clients
/// and tools ask for these through DescribeConfigs.
pub const TOPIC_CONFIGS: &[(&str, &str, &str)] = &[
    (
        "retention.ms",
        "-1",
        "Kept for client compatibility; Meridian keeps records until the topic is deleted.",
    ),
    (
        "max.message.bytes",
        "4194304",
        "Largest record batch accepted (bytes).",
    ),
    ("cleanup.policy", "delete", "Only `delete` is supported."),
    (
        "message.timestamp.type",
        "LogAppendTime",
        "Record timestamps are the HLC assigned at commit.",
    ),
    (
        KEY_REGIONS,
        "",
        "Comma-separated regions that hold the topic; empty at creation means every region. Fixed at creation.",
    ),
    (
        KEY_WRITERS,
        "all",
        "`all` (every listed region accepts writes) or `home:<region>`. Fixed at creation, except that a pinned topic's home moves (`meridian topic move-home`).",
    ),
    (
        KEY_REPLICATION,
        "async",
        "`async`: ack after the local region's commit; `sync`: after meridian.sync.quorum regions.",
    ),
    (
        KEY_SYNC_QUORUM,
        "2",
        "Regions, the origin included, that hold a `sync` write before it is acknowledged.",
    ),
    (
        KEY_RPO_MAX_MS,
        "",
        "Optional bound (ms) on an `async` topic's unreplicated window; produce acks wait beyond it.",
    ),
    (
        KEY_DELAY_MS,
        "0",
        "A record is fetchable only once its HLC time plus this many ms has passed; a fetch stops at the first record not yet due (retry topics).",
    ),
    (
        KEY_RETRY_NEXT,
        "",
        "The topic a record rejected by a `meridian consume --group` consumer moves to: the next retry topic, or the dead-letter topic.",
    ),
];

pub const KEY_REGIONS: &str = "meridian.regions";
pub const KEY_WRITERS: &str = "meridian.writers";
pub const KEY_REPLICATION: &str = "meridian.replication";
pub const KEY_SYNC_QUORUM: &str = "meridian.sync.quorum";
pub const KEY_RPO_MAX_MS: &str = "meridian.rpo.max.ms";
pub const KEY_DELAY_MS: &str = "meridian.delay.ms";
pub const KEY_RETRY_NEXT: &str = "meridian.retry.next";
/// Longest `meridian.delay.ms`: a week.
pub const DELAY_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// A topic's `meridian.delay.ms` (0: records are due when committed).
pub fn delay_ms(configs: &BTreeMap<String, String>) -> u64 {
    configs
        .get(KEY_DELAY_MS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The smallest HLC not yet due at wall time `now_ms` in a topic delayed by
/// `delay_ms`: a record is due once its HLC's wall time plus the delay has
/// passed, so every record below this HLC is fetchable.
pub fn due_below(delay_ms: u64, now_ms: i64) -> u64 {
    crate::hlc::from_wall_ms(now_ms.saturating_sub(delay_ms as i64).saturating_add(1))
}
/// Keys that shape the global view; changing them would renumber offsets.
pub const FIXED_AT_CREATION: [&str; 2] = [KEY_REGIONS, KEY_WRITERS];

/// Which regions accept writes for a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    All,
    Home(String),
}

/// How a topic is replicated between regions: its `meridian.*` configs,
/// parsed, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub regions: Vec<String>,
    pub writers: Writers,
    pub sync: bool,
    pub sync_quorum: u32,
    pub rpo_max_ms: Option<u64>,
}

impl Policy {
    /// The regions whose origin logs make up the global view.
    pub fn writer_regions(&self) -> Vec<String> {
        match &self.writers {
            Writers::All => self.regions.clone(),
            Writers::Home(r) => vec![r.clone()],
        }
    }

    pub fn accepts_writes_in(&self, region: &str) -> bool {
        self.writer_regions().iter().any(|r| r == region)
    }

    /// True when one origin log is the whole view, so an origin offset is
    /// the Kafka offset and a produce can answer with it.
    pub fn single_writer(&self) -> bool {
        self.writer_regions().len() == 1
    }

    /// This policy, waiting for at least as many other regions as `other`
    /// does before an ack (within this topic's regions).
    pub fn as_strict_as(mut self, other: &Policy) -> Policy {
        if other.remote_acks() > self.remote_acks() {
            self.sync = true;
            self.sync_quorum = other.sync_quorum.min(self.regions.len() as u32);
        }
        self
    }

    /// Other regions that must hold a write before its ack.
    pub fn remote_acks(&self) -> usize {
        if self.sync {
            self.sync_quorum.saturating_sub(1) as usize
        } else {
            0
        }
    }
}

fn split_regions(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The replication policy of a topic with `configs`, in a topology whose
/// regions are `all_regions`. Configs were validated when they were set.
pub fn policy(configs: &BTreeMap<String, String>, all_regions: &[String]) -> Policy {
    let regions = configs
        .get(KEY_REGIONS)
        .map(|v| split_regions(v))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| all_regions.to_vec());
    let writers = match configs
        .get(KEY_WRITERS)
        .and_then(|v| v.strip_prefix("home:"))
    {
        Some(r) => Writers::Home(r.to_string()),
        None => Writers::All,
    };
    Policy {
        sync: configs.get(KEY_REPLICATION).is_some_and(|v| v == "sync"),
        sync_quorum: configs
            .get(KEY_SYNC_QUORUM)
            .and_then(|v| v.parse().ok())
            .unwrap_or(2)
            .min(regions.len() as u32),
        rpo_max_ms: configs.get(KEY_RPO_MAX_MS).and_then(|v| v.parse().ok()),
        regions,
        writers,
    }
}

/// Checks the `meridian.*` configs of a topic together, against the
/// topology's regions: every named region exists, the home region holds the
/// topic, a sync quorum fits in the regions.
pub fn validate_policy(
    configs: &BTreeMap<String, String>,
    all_regions: &[String],
) -> Result<(), MetaError> {
    let bad = |key: &str, reason: String| MetaError::InvalidConfig {
        key: key.to_string(),
        reason,
    };
    if let Some(v) = configs.get(KEY_REGIONS) {
        for r in split_regions(v) {
            if !all_regions.contains(&r) {
                return Err(bad(
                    KEY_REGIONS,
                    format!(
                        "unknown region `{r}`; the topology's regions are {}",
                        all_regions.join(", ")
                    ),
                ));
            }
        }
    }
    let p = policy(configs, all_regions);
    if let Writers::Home(h) = &p.writers {
        if !all_regions.contains(h) {
            return Err(bad(
                KEY_WRITERS,
                format!(
                    "unknown region `{h}`; the topology's regions are {}",
                    all_regions.join(", ")
                ),
            ));
        }
        if !p.regions.contains(h) {
            return Err(bad(
                KEY_WRITERS,
                format!(
                    "home region `{h}` does not hold the topic; its regions are {}",
                    p.regions.join(", ")
                ),
            ));
        }
    }
    if let Some(q) = configs.get(KEY_SYNC_QUORUM) {
        let n: u32 = q.parse().unwrap_or(0);
        if n as usize > p.regions.len() {
            return Err(bad(
                KEY_SYNC_QUORUM,
                format!(
                    "{n} is more than the topic's {} regions ({})",
                    p.regions.len(),
                    p.regions.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

pub fn validate_topic_name(name: &str) -> Result<(), MetaError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(MetaError::InvalidName(name.to_string()))
    }
}

pub fn validate_config(key: &str, value: &str) -> Result<(), MetaError> {
    let bad = |reason: String| MetaError::InvalidConfig {
        key: key.to_string(),
        reason,
    };
    match key {
        "retention.ms" => value
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| bad(format!("`{value}` is not an integer"))),
        "max.message.bytes" => match value.parse::<u32>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(bad(format!("`{value}` is not a positive integer"))),
        },
        "cleanup.policy" => {
            if value == "delete" {
                Ok(())
            } else {
                Err(bad(format!(
                    "`{value}` is not supported; the allowed value is `delete`"
                )))
            }
        }
        "message.timestamp.type" => {
            if value == "LogAppendTime" || value == "CreateTime" {
                Ok(())
            } else {
                Err(bad(format!("`{value}`: allowed values are `LogAppendTime` and `CreateTime` (both mean the commit HLC here)")))
            }
        }
        KEY_REGIONS => {
            let names = split_regions(value);
            if names.is_empty() {
                return Err(bad("name at least one region, separated by commas".into()));
            }
            match names.iter().find(|n| !crate::ids::valid_name(n)) {
                Some(n) => Err(bad(format!("`{n}` is not a region name"))),
                None => Ok(()),
            }
        }
        KEY_WRITERS => match value.strip_prefix("home:") {
            _ if value == "all" => Ok(()),
            Some(r) if crate::ids::valid_name(r) => Ok(()),
            _ => Err(bad(format!(
                "`{value}`: allowed values are `all` and `home:<region>`"
            ))),
        },
        KEY_REPLICATION => match value {
            "async" | "sync" => Ok(()),
            _ => Err(bad(format!(
                "`{value}`: allowed values are `async` and `sync`"
            ))),
        },
        KEY_SYNC_QUORUM => match value.parse::<u32>() {
            Ok(n) if (1..=16).contains(&n) => Ok(()),
            _ => Err(bad(format!(
                "`{value}`: use a number of regions from 1 to the topic's region count"
            ))),
        },
        KEY_RPO_MAX_MS => match value.parse::<u64>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(bad(format!(
                "`{value}` is not a positive number of milliseconds"
            ))),
        },
        KEY_DELAY_MS => match value.parse::<u64>() {
            Ok(n) if n <= DELAY_MS_MAX => Ok(()),
            _ => Err(bad(format!(
                "`{value}`: use a number of milliseconds from 0 to {DELAY_MS_MAX} (a week)"
            ))),
        },
        KEY_RETRY_NEXT => {
            validate_topic_name(value).map_err(|_| bad(format!("`{value}` is not a topic name")))
        }
        _ => {
            let known: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.0).collect();
            Err(bad(format!(
                "unknown topic config; known keys are {}",
                known.join(", ")
            )))
        }
    }
}

pub fn validate_create(
    name: &str,
    partitions: i64,
    configs: &BTreeMap<String, String>,
) -> Result<(), MetaError> {
    validate_topic_name(name)?;
    if partitions < 1 || partitions > PARTITIONS_MAX as i64 {
        return Err(MetaError::InvalidPartitions(partitions));
    }
    for (k, v) in configs {
        validate_config(k, v)?;
    }
    Ok(())
}

impl MetaState {
    /// Applies a meta command. Commands are validated before they are
    /// proposed, but validated again here: the state machine is the judge,
    /// and two racing creates of one name must give one winner.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), MetaError> {
        match cmd {
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                validate_create(name, *partitions as i64, configs)?;
                if self.topics.contains_key(name) {
                    return Err(MetaError::TopicExists(name.clone()));
                }
                self.next_seq = self.next_seq.max(1);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        seq,
                        partitions: *partitions,
                        configs: configs.clone(),
                        first_home: configs
                            .get(KEY_WRITERS)
                            .and_then(|v| v.strip_prefix("home:"))
                            .map(String::from),
                    },
                );
                Ok(())
            }
            Command::DeleteTopic { name } => self
                .topics
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| MetaError::UnknownTopic(name.clone())),
            Command::AlterTopic { name, set, delete } => {
                for (k, v) in set {
                    validate_config(k, v)?;
                }
                let t = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetaError::UnknownTopic(name.clone()))?;
                for k in delete {
                    t.configs.remove(k);
                }
                t.configs
                    .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(())
            }
            Command::RenewLease {
                region,
                until_ms,
                epoch,
            } => {
                // A failed-over region takes its lease again when it
                // returns, from nodes that know its new epoch; its
                // partitions write only once they moved to that epoch
                // (failback), which the router and the partition state
                // machines check.
                let current = self.epoch_of(region);
                if *epoch != current {
                    return Err(MetaError::StaleEpoch {
                        region: region.clone(),
                        current,
                        asked: *epoch,
                    });
                }
                // Renewals may commit out of order: a lease only grows.
                let l = self.leases.entry(region.clone()).or_insert(*until_ms);
                *l = (*l).max(*until_ms);
                Ok(())
            }
            Command::SealRegion(seal) => {
                crate::control::seal::still_valid(&self.leases, &self.seals, seal)
                    .map_err(MetaError::SealRefused)?;
                let current = self.epoch_of(&seal.region);
                if seal.epoch != current {
                    return Err(MetaError::SealRefused(format!(
                        "region {} is in epoch {current}, not {}",
                        seal.region, seal.epoch
                    )));
                }
                self.epochs.insert(seal.region.clone(), current + 1);
                let mut seal = seal.clone();
                self.merge_move_seals(&mut seal);
                // Pinned topics move to their new home (chosen by the
                // leader among the regions still up).
                for (topic, home) in &seal.homes {
                    if let Some(t) = self.topics.get_mut(topic) {
                        t.configs
                            .insert(KEY_WRITERS.to_string(), format!("home:{home}"));
                    }
                }
                self.seals.push(seal);
                Ok(())
            }
            Command::MoveHome { topic, to } => {
                self.check_move(topic, to)
                    .map_err(|reason| MetaError::MoveRefused {
                        topic: topic.clone(),
                        reason,
                    })?;
                let t = self.topics.get_mut(topic).expect("checked");
                let from = t.home().expect("checked").to_string();
                if from == *to {
                    return Ok(());
                }
                t.configs
                    .insert(KEY_WRITERS.to_string(), format!("home:{to}"));
                let from_epoch = self.epoch_of(&from);
                self.moves.push(HomeMove {
                    topic: topic.clone(),
                    from,
                    from_epoch,
                    to: to.clone(),
                    seals: BTreeMap::new(),
                });
                Ok(())
            }
            Command::HomeSealed {
                topic,
                partition,
                end,
                last_hlc,
            } => {
                let refused = |reason: &str| MetaError::MoveRefused {
                    topic: topic.clone(),
                    reason: reason.into(),
                };
                let partitions = self.topics.get(topic).map_or(0, |t| t.partitions);
                if *partition >= partitions {
                    return Err(refused("no such partition"));
                }
                let m = self
                    .moves
                    .iter_mut()
                    .rev()
                    .find(|m| m.topic == *topic)
                    .ok_or_else(|| refused("no move of its home was asked for"))?;
                // The first seal counts: the old home's group sealed its
                // log once, and a repeated report names the same point.
                m.seals
                    .entry(*partition)
                    .or_insert(crate::control::seal::SealEnd {
                        end: *end,
                        last_hlc: *last_hlc,
                    });
                Ok(())
            }
            Command::Append { .. }
            | Command::AppendIdempotent { .. }
            | Command::Close { .. }
            | Command::Replicate { .. }
            | Command::SealLog { .. }
            | Command::SealOwn
            | Command::Reinject { .. }
            | Command::Admit { .. }
            | Command::RemoteHeld { .. }
            | Command::BeginEpoch { .. } => Ok(()),
        }
    }

    /// A failover of `seal.region` while a move away from it is under way
    /// (or done): where the old home already sealed a partition's log, that
    /// point stands (groups may have applied it, and the new home written
    /// after it); the others are sealed where the failover found them, and
    /// the move completes with those.
    fn merge_move_seals(&mut self, seal: &mut crate::control::seal::Seal) {
        for m in self
            .moves
            .iter_mut()
            .filter(|m| m.from == seal.region && m.from_epoch == seal.epoch)
        {
            let Some(t) = self.topics.get(&m.topic) else {
                continue;
            };
            for p in 0..t.partitions {
                let g = t.group(p);
                match m.seals.get(&p) {
                    Some(e) => {
                        seal.ends.insert(g, *e);
                    }
                    None => {
                        if let Some(e) = seal.ends.get(&g) {
                            m.seals.insert(p, *e);
                        }
                    }
                }
            }
        }
    }

    pub fn by_id(&self, id: uuid::Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| t.id == id)
    }
}

/// The preferred leader of a group: partitions rotate over the region's
/// nodes (sorted by id), so leadership is spread evenly.
pub fn preferred_leader(nodes_sorted: &[u64], topic_seq: u32, partition: u32) -> u64 {
    let i = (topic_seq as usize + partition as usize) % nodes_sorted.len();
    nodes_sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn create_assigns_fresh_sequence_numbers() {
        let mut m = MetaState::default();
        m.apply(&create("a", 3)).unwrap();
        m.apply(&create("b", 1)).unwrap();
        assert_eq!(m.topics["a"].seq, 1);
        assert_eq!(m.topics["b"].seq, 2);
        assert_eq!(
            m.apply(&create("a", 3)),
            Err(MetaError::TopicExists("a".into()))
        );
        m.apply(&Command::DeleteTopic { name: "a".into() }).unwrap();
        m.apply(&create("a", 3)).unwrap();
        assert_eq!(
            m.topics["a"].seq, 3,
            "a re-created topic never reuses a sequence"
        );
    }

    #[test]
    fn invalid_names_partitions_and_configs_are_refused() {
        let mut m = MetaState::default();
        assert!(matches!(
            m.apply(&create("a b", 1)),
            Err(MetaError::InvalidName(_))
        ));
        assert!(matches!(
            m.apply(&create("a", 0)),
            Err(MetaError::InvalidPartitions(0))
        ));
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        let e = validate_create("a", 1, &configs).unwrap_err();
        assert!(e.to_string().contains("allowed value is `delete`"), "{e}");
        let e = validate_config("retention.bytes", "1").unwrap_err();
        assert!(e.to_string().contains("known keys are"), "{e}");
    }

    #[test]
    fn a_lease_is_renewed_only_for_the_regions_current_epoch() {
        let mut m = MetaState::default();
        let renew = |until_ms, epoch| Command::RenewLease {
            region: "us-east".into(),
            until_ms,
            epoch,
        };
        m.apply(&renew(1_000, 1)).unwrap();
        let seal = crate::control::seal::Seal {
            region: "us-east".into(),
            epoch: 1,
            decided_at_ms: 2_000,
            margin_ms: 500,
            ends: Default::default(),
            homes: Default::default(),
        };
        m.apply(&Command::SealRegion(seal)).unwrap();
        // A node that has not applied the seal renews for epoch 1: refused,
        // so it cannot write its sealed log on the strength of that renewal.
        let e = m.apply(&renew(9_000, 1)).unwrap_err();
        assert!(
            matches!(
                e,
                MetaError::StaleEpoch {
                    current: 2,
                    asked: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(m.leases["us-east"], 1_000);
        m.apply(&renew(9_000, 2)).unwrap();
        assert_eq!(m.leases["us-east"], 9_000);
    }

    fn create_pinned(m: &mut MetaState, name: &str, home: &str) {
        let configs = BTreeMap::from([(KEY_WRITERS.to_string(), format!("home:{home}"))]);
        m.apply(&Command::CreateTopic {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions: 2,
            configs,
        })
        .unwrap();
    }

    fn move_home(topic: &str, to: &str) -> Command {
        Command::MoveHome {
            topic: topic.into(),
            to: to.into(),
        }
    }

    fn home_sealed(partition: u32, end: u64) -> Command {
        Command::HomeSealed {
            topic: "orders".into(),
            partition,
            end,
            last_hlc: end * 10,
        }
    }

    #[test]
    fn a_pinned_topics_home_moves_once_every_partition_is_sealed() {
        let mut m = MetaState::default();
        create_pinned(&mut m, "orders", "us-east");
        m.apply(&create("all", 1)).unwrap();
        assert_eq!(m.topics["orders"].first_home.as_deref(), Some("us-east"));
        let refused = |m: &mut MetaState, cmd: &Command| match m.apply(cmd) {
            Err(MetaError::MoveRefused { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let why = refused(&mut m, &move_home("all", "eu-west"));
        assert!(why.contains("only a pinned topic"), "{why}");
        m.apply(&move_home("orders", "us-east")).unwrap();
        assert!(m.moves.is_empty(), "already there: nothing to do");

        m.apply(&move_home("orders", "eu-west")).unwrap();
        assert_eq!(m.topics["orders"].home(), Some("eu-west"));
        assert_eq!(m.topics["orders"].first_home.as_deref(), Some("us-east"));
        let why = refused(&mut m, &move_home("orders", "ap-south"));
        assert!(
            why.contains("under way (0 of 2 partitions sealed)"),
            "{why}"
        );
        m.apply(&home_sealed(0, 7)).unwrap();
        m.apply(&home_sealed(0, 9)).unwrap();
        assert_eq!(m.moves[0].seals[&0].end, 7, "the first seal counts");
        assert!(m.pending_move("orders").is_some());
        m.apply(&home_sealed(1, 3)).unwrap();
        assert!(m.pending_move("orders").is_none());
        assert!(m.apply(&home_sealed(2, 3)).is_err(), "no partition 2");

        // us-east sealed its log of this epoch: it cannot be the home
        // again before its next epoch.
        assert!(m.handed_off("orders", "us-east"));
        let why = refused(&mut m, &move_home("orders", "us-east"));
        assert!(why.contains("only in a later epoch"), "{why}");
        m.epochs.insert("us-east".into(), 2);
        m.check_move("orders", "us-east").unwrap();
    }

    #[test]
    fn a_failover_of_the_old_home_completes_its_move_with_the_same_seals() {
        let mut m = MetaState::default();
        create_pinned(&mut m, "orders", "us-east");
        m.leases.insert("us-east".into(), 1_000);
        m.apply(&move_home("orders", "eu-west")).unwrap();
        m.apply(&home_sealed(0, 7)).unwrap();
        let g = |p| m.topics["orders"].group(p);
        let (g0, g1) = (g(0), g(1));
        let end = |end| crate::control::seal::SealEnd { end, last_hlc: 1 };
        // The failover found less of partition 0 (us-east's tail was not
        // copied before it was lost) than us-east had sealed.
        let seal = crate::control::seal::Seal {
            region: "us-east".into(),
            epoch: 1,
            decided_at_ms: 2_000,
            margin_ms: 500,
            ends: BTreeMap::from([(g0, end(5)), (g1, end(4))]),
            homes: Default::default(),
        };
        m.apply(&Command::SealRegion(seal)).unwrap();
        assert_eq!(m.seals[0].ends[&g0].end, 7, "the move's seal stands");
        assert_eq!(m.moves[0].seals[&1].end, 4, "the failover's completes it");
        assert!(m.pending_move("orders").is_none());
        // A region failed over cannot take the home.
        let e = m.check_move("orders", "us-east").unwrap_err();
        assert!(e.contains("failed over"), "{e}");
    }

    #[test]
    fn alter_sets_and_deletes() {
        let mut m = MetaState::default();
        m.apply(&create("t", 1)).unwrap();
        let mut set = BTreeMap::new();
        set.insert("retention.ms".to_string(), "1000".to_string());
        m.apply(&Command::AlterTopic {
            name: "t".into(),
            set,
            delete: vec![],
        })
        .unwrap();
        assert_eq!(m.topics["t"].configs["retention.ms"], "1000");
        m.apply(&Command::AlterTopic {
            name: "t".into(),
            set: BTreeMap::new(),
            delete: vec!["retention.ms".into()],
        })
        .unwrap();
        assert!(m.topics["t"].configs.is_empty());
    }

    #[test]
    fn preferred_leaders_are_spread() {
        let nodes = [1, 2, 3];
        let mut counts = BTreeMap::new();
        for p in 0..12 {
            *counts.entry(preferred_leader(&nodes, 5, p)).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }

    #[test]
    fn an_offset_commit_waits_for_as_many_regions_as_its_topics_records() {
        let all: Vec<String> = ["us-east", "eu-west", "ap-south"]
            .map(String::from)
            .to_vec();
        let cfg = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let offsets = policy(&BTreeMap::new(), &all);
        let sync3 = policy(
            &cfg(&[(KEY_REPLICATION, "sync"), (KEY_SYNC_QUORUM, "3")]),
            &all,
        );
        let sync2 = policy(&cfg(&[(KEY_REPLICATION, "sync")]), &all);
        let asyn = policy(&BTreeMap::new(), &all);
        assert_eq!(offsets.clone().as_strict_as(&asyn).remote_acks(), 0);
        assert_eq!(offsets.clone().as_strict_as(&sync2).remote_acks(), 1);
        assert_eq!(offsets.clone().as_strict_as(&sync3).remote_acks(), 2);
        // Never laxer than it was.
        assert_eq!(sync3.clone().as_strict_as(&asyn).remote_acks(), 2);
        // Bounded by the regions that hold the offsets topic.
        let two = policy(&cfg(&[(KEY_REGIONS, "us-east,eu-west")]), &all);
        assert_eq!(two.as_strict_as(&sync3).remote_acks(), 1);
    }

    #[test]
    fn replication_policy_defaults_and_checks() {
        let all: Vec<String> = ["us-east", "eu-west", "ap-south"]
            .map(String::from)
            .to_vec();
        let p = policy(&BTreeMap::new(), &all);
        assert_eq!(p.regions, all);
        assert_eq!(
            (p.writers.clone(), p.sync, p.sync_quorum),
            (Writers::All, false, 2)
        );
        assert_eq!(p.remote_acks(), 0);
        assert!(!p.single_writer());
        let c = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = policy(
            &c(&[
                (KEY_WRITERS, "home:eu-west"),
                (KEY_REPLICATION, "sync"),
                (KEY_SYNC_QUORUM, "3"),
            ]),
            &all,
        );
        assert_eq!(p.writers, Writers::Home("eu-west".into()));
        assert!(
            p.single_writer() && p.accepts_writes_in("eu-west") && !p.accepts_writes_in("us-east")
        );
        assert_eq!(p.remote_acks(), 2);
        let e = validate_config(KEY_REPLICATION, "semi").unwrap_err();
        assert!(e.to_string().contains("`async` and `sync`"), "{e}");
        let e = validate_config(KEY_WRITERS, "us-east").unwrap_err();
        assert!(e.to_string().contains("home:<region>"), "{e}");
        let e = validate_policy(&c(&[(KEY_WRITERS, "home:mars")]), &all).unwrap_err();
        assert!(e.to_string().contains("unknown region `mars`"), "{e}");
        let e = validate_policy(&c(&[(KEY_REGIONS, "us-east,mars")]), &all).unwrap_err();
        assert!(e.to_string().contains("unknown region `mars`"), "{e}");
        let e = validate_policy(
            &c(&[(KEY_REGIONS, "us-east"), (KEY_WRITERS, "home:eu-west")]),
            &all,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not hold the topic"), "{e}");
        let e = validate_policy(
            &c(&[(KEY_REGIONS, "us-east,eu-west"), (KEY_SYNC_QUORUM, "3")]),
            &all,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("more than the topic's 2 regions"),
            "{e}"
        );
    }

    #[test]
    fn delayed_records_fall_due_at_hlc_plus_delay() {
        let hlc = crate::hlc::from_wall_ms(1_800_000_000_000) + 5; // a logical tick in
        let due_ms = crate::hlc::wall_ms(hlc) + 1000;
        // Due once the wall clock reaches its time plus the delay, not before.
        assert!(hlc >= due_below(1000, due_ms - 1));
        assert!(hlc < due_below(1000, due_ms));
        // No delay: everything up to now is due.
        assert!(hlc < due_below(0, crate::hlc::wall_ms(hlc)));
        let c = BTreeMap::from([(KEY_DELAY_MS.to_string(), "250".to_string())]);
        assert_eq!(delay_ms(&c), 250);
        assert_eq!(delay_ms(&BTreeMap::new()), 0);
    }

    #[test]
    fn delay_and_retry_configs_are_checked() {
        assert!(validate_config(KEY_DELAY_MS, "0").is_ok());
        assert!(validate_config(KEY_DELAY_MS, &DELAY_MS_MAX.to_string()).is_ok());
        let e = validate_config(KEY_DELAY_MS, "-5").unwrap_err();
        assert!(e.to_string().contains("from 0 to"), "{e}");
        assert!(validate_config(KEY_DELAY_MS, &(DELAY_MS_MAX + 1).to_string()).is_err());
        assert!(validate_config(KEY_RETRY_NEXT, "orders.retry.1").is_ok());
        let e = validate_config(KEY_RETRY_NEXT, "no spaces").unwrap_err();
        assert!(e.to_string().contains("not a topic name"), "{e}");
    }
}
