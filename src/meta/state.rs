//! The metadata group's state: the region's topics, write leases, seals,
//! epochs and home moves, with the pure transitions the metadata state
//! machine applies (`storage::state_machine::meta` dispatches commands to
//! them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lease::Leases;
use super::policy::{
    split_regions, validate_config, validate_create, KEY_REGIONS, KEY_WRITERS, PARTITIONS_MAX,
};
use super::seal::{self, Seal, SealEnd};
use crate::ids::{partition_group, GroupId};

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
    pub seals: BTreeMap<u32, SealEnd>,
}

/// The region's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub topics: BTreeMap<String, TopicMeta>,
    pub next_seq: u32,
    /// Each region's write lease: until when (Unix ms) it may accept writes
    /// (`meta::lease`, invariant 6).
    pub leases: Leases,
    /// Seals of failed-over regions' epochs (invariant 7), oldest first.
    pub seals: Vec<Seal>,
    /// Each region's current epoch; absent: the first.
    pub epochs: BTreeMap<String, u32>,
    /// Moves of pinned topics' homes by command, oldest first.
    pub moves: Vec<HomeMove>,
    /// Log starts asked for by DeleteRecords, per partition group: every
    /// region's partition moves its log start at least this far.
    pub log_starts: BTreeMap<GroupId, u64>,
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
    pub fn last_seal(&self, region: &str) -> Option<&Seal> {
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
    pub fn seal_of(&self, region: &str) -> Option<&Seal> {
        self.last_seal(region)
            .filter(|s| !seal::renewed_since(&self.leases, s))
    }
}
/// The transitions. Commands are validated before they are proposed, but
/// validated again here: the state machine is the judge, and two racing
/// creates of one name must give one winner.
impl MetaState {
    pub fn create_topic(
        &mut self,
        name: &str,
        id: uuid::Uuid,
        partitions: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), MetaError> {
        validate_create(name, partitions as i64, configs)?;
        if self.topics.contains_key(name) {
            return Err(MetaError::TopicExists(name.to_string()));
        }
        self.next_seq = self.next_seq.max(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.topics.insert(
            name.to_string(),
            TopicMeta {
                name: name.to_string(),
                id,
                seq,
                partitions,
                configs: configs.clone(),
                first_home: configs
                    .get(KEY_WRITERS)
                    .and_then(|v| v.strip_prefix("home:"))
                    .map(String::from),
            },
        );
        Ok(())
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<(), MetaError> {
        let t = self
            .topics
            .remove(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        for p in 0..t.partitions {
            self.log_starts.remove(&t.group(p));
        }
        Ok(())
    }

    /// DeleteRecords: moves the log start of `topic`'s partitions to at
    /// least the given offsets (a start only moves forward). The offsets
    /// were checked against a high watermark before proposing; every
    /// region moves its log start there once it has merged that far.
    pub fn delete_records(&mut self, topic: &str, starts: &[(u32, u64)]) -> Result<(), MetaError> {
        let t = self
            .topics
            .get(topic)
            .ok_or_else(|| MetaError::UnknownTopic(topic.to_string()))?;
        let groups: Vec<(GroupId, u64)> = starts
            .iter()
            .filter(|(p, _)| *p < t.partitions)
            .map(|(p, o)| (t.group(*p), *o))
            .collect();
        for (g, o) in groups {
            let s = self.log_starts.entry(g).or_insert(0);
            *s = (*s).max(o);
        }
        Ok(())
    }

    /// The log start DeleteRecords asked for in partition group `group`.
    pub fn log_start_of(&self, group: GroupId) -> u64 {
        self.log_starts.get(&group).copied().unwrap_or(0)
    }

    pub fn alter_topic(
        &mut self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), MetaError> {
        for (k, v) in set {
            validate_config(k, v)?;
        }
        let t = self
            .topics
            .get_mut(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        for k in delete {
            t.configs.remove(k);
        }
        t.configs
            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }

    pub fn renew_lease(
        &mut self,
        region: &str,
        until_ms: i64,
        epoch: u32,
    ) -> Result<(), MetaError> {
        // A failed-over region takes its lease again when it returns, from
        // nodes that know its new epoch; its partitions write only once
        // they moved to that epoch (failback), which the router and the
        // partition state machines check.
        let current = self.epoch_of(region);
        if epoch != current {
            return Err(MetaError::StaleEpoch {
                region: region.to_string(),
                current,
                asked: epoch,
            });
        }
        // Renewals may commit out of order: a lease only grows.
        let l = self.leases.entry(region.to_string()).or_insert(until_ms);
        *l = (*l).max(until_ms);
        Ok(())
    }

    pub fn seal_region(&mut self, seal: &Seal) -> Result<(), MetaError> {
        seal::still_valid(&self.leases, &self.seals, seal).map_err(MetaError::SealRefused)?;
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
        // Pinned topics move to their new home (chosen by the leader among
        // the regions still up).
        for (topic, home) in &seal.homes {
            if let Some(t) = self.topics.get_mut(topic) {
                t.configs
                    .insert(KEY_WRITERS.to_string(), format!("home:{home}"));
            }
        }
        self.seals.push(seal);
        Ok(())
    }

    pub fn move_home(&mut self, topic: &str, to: &str) -> Result<(), MetaError> {
        self.check_move(topic, to)
            .map_err(|reason| MetaError::MoveRefused {
                topic: topic.to_string(),
                reason,
            })?;
        let t = self.topics.get_mut(topic).expect("checked");
        let from = t.home().expect("checked").to_string();
        if from == to {
            return Ok(());
        }
        t.configs
            .insert(KEY_WRITERS.to_string(), format!("home:{to}"));
        let from_epoch = self.epoch_of(&from);
        self.moves.push(HomeMove {
            topic: topic.to_string(),
            from,
            from_epoch,
            to: to.to_string(),
            seals: BTreeMap::new(),
        });
        Ok(())
    }

    pub fn home_sealed(
        &mut self,
        topic: &str,
        partition: u32,
        end: SealEnd,
    ) -> Result<(), MetaError> {
        let refused = |reason: &str| MetaError::MoveRefused {
            topic: topic.to_string(),
            reason: reason.into(),
        };
        let partitions = self.topics.get(topic).map_or(0, |t| t.partitions);
        if partition >= partitions {
            return Err(refused("no such partition"));
        }
        let m = self
            .moves
            .iter_mut()
            .rev()
            .find(|m| m.topic == topic)
            .ok_or_else(|| refused("no move of its home was asked for"))?;
        // The first seal counts: the old home's group sealed its log once,
        // and a repeated report names the same point.
        m.seals.entry(partition).or_insert(end);
        Ok(())
    }

    /// A failover of `seal.region` while a move away from it is under way
    /// (or done): where the old home already sealed a partition's log, that
    /// point stands (groups may have applied it, and the new home written
    /// after it); the others are sealed where the failover found them, and
    /// the move completes with those.
    fn merge_move_seals(&mut self, seal: &mut Seal) {
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
