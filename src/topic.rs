//! Topic metadata of a region: the meta group's state and its pure rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::raft::types::{partition_group, Command, GroupId};

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: uuid::Uuid,
    /// Sequence number, unique in the region for all time.
    pub seq: u32,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    pub fn group(&self, partition: u32) -> GroupId {
        partition_group(self.seq, partition)
    }
}

/// The region's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub topics: BTreeMap<String, TopicMeta>,
    pub next_seq: u32,
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
];

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
            Command::Append { .. } => Ok(()),
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
}
