//! Kafka's standard topic configs that have no effect in Meridian, or none
//! yet, but that clients and frameworks set when they create topics
//! (Kafka Connect, Kafka Streams, admin tools copying a topic's configs).
//! Each is accepted when its value is one Kafka would accept, shown by
//! DescribeConfigs with Kafka's default, and documented with what it means
//! here. Retention (`retention.ms`, `retention.bytes`) is Meridian's own
//! (`policy.rs`); compaction (`cleanup.policy=compact`) is refused until
//! Meridian does what it asks (docs/operations.md, "Topic configs").

/// What values a config takes, as Kafka checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A 64-bit integer from `min` on.
    Long { min: i64 },
    /// A 32-bit integer from `min` on.
    Int { min: i32 },
    /// A number from 0 to 1.
    Ratio,
    /// `true` or `false`.
    Bool,
    /// Only this value: the one Meridian's behaviour matches.
    Only(&'static str),
    /// One of these values.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of `partition:broker` pairs, or `*`, or empty.
    Replicas,
    /// Any text of at most 64 characters.
    Text,
}

/// One Kafka topic config: its name, Kafka's default, its rule, and what it
/// means in Meridian.
pub struct KafkaConfig {
    pub name: &'static str,
    pub default: &'static str,
    pub rule: Rule,
    pub here: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";
const NO_SEGMENTS: &str = "Accepted for compatibility; Meridian stores records in RocksDB, not in segment files, so this has no effect.";
const NO_FLUSH: &str = "Accepted for compatibility; no effect: every acknowledged record is already fsynced on a majority of the region's nodes (group commit).";
const HLC_TIMES: &str = "Accepted for compatibility; no effect: a record's timestamp is the HLC fixed when it is committed, never the producer's clock.";
const COMPACTION: &str = "Accepted for compatibility; no effect while cleanup.policy is `delete` (compaction is not available yet).";

/// Kafka's topic configs Meridian accepts beyond its own (`policy.rs`).
pub const KAFKA_TOPIC_CONFIGS: &[KafkaConfig] = &[
    KafkaConfig {
        name: "compression.type",
        default: "producer",
        rule: Rule::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        here: "Accepted for compatibility; no effect: records are stored uncompressed and served as stored.",
    },
    KafkaConfig {
        name: "delete.retention.ms",
        default: "86400000",
        rule: Rule::Long { min: 0 },
        here: COMPACTION,
    },
    KafkaConfig {
        name: "file.delete.delay.ms",
        default: "60000",
        rule: Rule::Long { min: 0 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "flush.messages",
        default: LONG_MAX,
        rule: Rule::Long { min: 1 },
        here: NO_FLUSH,
    },
    KafkaConfig {
        name: "flush.ms",
        default: LONG_MAX,
        rule: Rule::Long { min: 0 },
        here: NO_FLUSH,
    },
    KafkaConfig {
        name: "follower.replication.throttled.replicas",
        default: "",
        rule: Rule::Replicas,
        here: "Accepted for compatibility; no effect: replication within a region is Raft, unthrottled.",
    },
    KafkaConfig {
        name: "index.interval.bytes",
        default: "4096",
        rule: Rule::Int { min: 0 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "leader.replication.throttled.replicas",
        default: "",
        rule: Rule::Replicas,
        here: "Accepted for compatibility; no effect: replication within a region is Raft, unthrottled.",
    },
    KafkaConfig {
        name: "local.retention.bytes",
        default: "-2",
        rule: Rule::Only("-2"),
        here: "Tiered storage is not available; only -2 (follow retention.bytes) is accepted.",
    },
    KafkaConfig {
        name: "local.retention.ms",
        default: "-2",
        rule: Rule::Only("-2"),
        here: "Tiered storage is not available; only -2 (follow retention.ms) is accepted.",
    },
    KafkaConfig {
        name: "max.compaction.lag.ms",
        default: LONG_MAX,
        rule: Rule::Long { min: 1 },
        here: COMPACTION,
    },
    KafkaConfig {
        name: "message.downconversion.enable",
        default: "true",
        rule: Rule::Bool,
        here: "Accepted for compatibility; no effect: Meridian serves record batches in the v2 format only.",
    },
    KafkaConfig {
        name: "message.format.version",
        default: "3.0-IV1",
        rule: Rule::Text,
        here: "Accepted for compatibility (deprecated in Kafka); no effect: batches are always in the v2 format.",
    },
    KafkaConfig {
        name: "message.timestamp.after.max.ms",
        default: LONG_MAX,
        rule: Rule::Long { min: 0 },
        here: HLC_TIMES,
    },
    KafkaConfig {
        name: "message.timestamp.before.max.ms",
        default: LONG_MAX,
        rule: Rule::Long { min: 0 },
        here: HLC_TIMES,
    },
    KafkaConfig {
        name: "message.timestamp.difference.max.ms",
        default: LONG_MAX,
        rule: Rule::Long { min: 0 },
        here: HLC_TIMES,
    },
    KafkaConfig {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        rule: Rule::Ratio,
        here: COMPACTION,
    },
    KafkaConfig {
        name: "min.compaction.lag.ms",
        default: "0",
        rule: Rule::Long { min: 0 },
        here: COMPACTION,
    },
    KafkaConfig {
        name: "min.insync.replicas",
        default: "1",
        rule: Rule::Int { min: 1 },
        here: "Accepted for compatibility; no effect: a write is acknowledged once a majority of its region's nodes hold it (Raft), and `meridian.replication` says how many regions.",
    },
    KafkaConfig {
        name: "preallocate",
        default: "false",
        rule: Rule::Bool,
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "remote.storage.enable",
        default: "false",
        rule: Rule::Only("false"),
        here: "Tiered storage is not available; only `false` is accepted.",
    },
    KafkaConfig {
        name: "segment.bytes",
        default: "1073741824",
        rule: Rule::Int { min: 14 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "segment.index.bytes",
        default: "10485760",
        rule: Rule::Int { min: 4 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "segment.jitter.ms",
        default: "0",
        rule: Rule::Long { min: 0 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "segment.ms",
        default: "604800000",
        rule: Rule::Long { min: 1 },
        here: NO_SEGMENTS,
    },
    KafkaConfig {
        name: "unclean.leader.election.enable",
        default: "false",
        rule: Rule::Only("false"),
        here: "Only `false` is accepted: a Raft group never elects a leader that may lack acknowledged records.",
    },
];

/// The entry for `key`, if it is one of these.
pub fn find(key: &str) -> Option<&'static KafkaConfig> {
    KAFKA_TOPIC_CONFIGS.iter().find(|c| c.name == key)
}

/// Whether `value` is one `rule` accepts; if not, why, in Kafka's terms.
pub fn check(rule: Rule, value: &str) -> Result<(), String> {
    let v = value.trim();
    match rule {
        Rule::Long { min } => match v.parse::<i64>() {
            Ok(n) if n >= min => Ok(()),
            Ok(_) => Err(format!("`{value}` is below the minimum, {min}")),
            Err(_) => Err(format!("`{value}` is not an integer")),
        },
        Rule::Int { min } => match v.parse::<i32>() {
            Ok(n) if n >= min => Ok(()),
            Ok(_) => Err(format!("`{value}` is below the minimum, {min}")),
            Err(_) => Err(format!("`{value}` is not a 32-bit integer")),
        },
        Rule::Ratio => match v.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok(()),
            _ => Err(format!("`{value}` is not a number from 0 to 1")),
        },
        Rule::Bool => match v.to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{value}`: use `true` or `false`")),
        },
        Rule::Only(only) if v.eq_ignore_ascii_case(only) => Ok(()),
        Rule::Only(only) => Err(format!(
            "`{value}` is not supported; the allowed value is `{only}`"
        )),
        Rule::OneOf(values) if values.contains(&v) => Ok(()),
        Rule::OneOf(values) => Err(format!(
            "`{value}`: allowed values are {}",
            values
                .iter()
                .map(|x| format!("`{x}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Rule::Replicas => {
            let pair = |p: &str| {
                p.split_once(':').is_some_and(|(a, b)| {
                    a.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
                })
            };
            if v.is_empty() || v == "*" || v.split(',').all(pair) {
                Ok(())
            } else {
                Err(format!(
                    "`{value}`: use `*`, or a comma-separated list of partition:broker pairs"
                ))
            }
        }
        Rule::Text if v.len() <= 64 => Ok(()),
        Rule::Text => Err("is longer than 64 characters".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_passes_its_own_rule_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for c in KAFKA_TOPIC_CONFIGS {
            assert!(names.insert(c.name), "{} listed twice", c.name);
            assert_eq!(check(c.rule, c.default), Ok(()), "{}", c.name);
            assert!(!c.here.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn values_are_checked_as_kafka_checks_them() {
        let rule = |k| find(k).unwrap().rule;
        assert_eq!(check(rule("segment.bytes"), "1048576"), Ok(()));
        let e = check(rule("segment.bytes"), "13").unwrap_err();
        assert!(e.contains("minimum, 14"), "{e}");
        assert!(
            check(rule("segment.bytes"), "4294967296").is_err(),
            "beyond i32"
        );
        assert!(check(rule("segment.ms"), "0").is_err());
        assert!(check(rule("flush.messages"), LONG_MAX).is_ok());
        assert!(check(rule("min.cleanable.dirty.ratio"), "0.1").is_ok());
        assert!(check(rule("min.cleanable.dirty.ratio"), "1.5").is_err());
        assert!(check(rule("min.cleanable.dirty.ratio"), "NaN").is_err());
        assert!(check(rule("preallocate"), "TRUE").is_ok());
        assert!(check(rule("preallocate"), "yes").is_err());
        assert!(check(rule("compression.type"), "zstd").is_ok());
        let e = check(rule("compression.type"), "brotli").unwrap_err();
        assert!(e.contains("`producer`"), "{e}");
        let e = check(rule("unclean.leader.election.enable"), "true").unwrap_err();
        assert!(e.contains("allowed value is `false`"), "{e}");
        assert!(check(rule("remote.storage.enable"), "false").is_ok());
        assert!(check(rule("leader.replication.throttled.replicas"), "0:1,1:2").is_ok());
        assert!(check(rule("leader.replication.throttled.replicas"), "*").is_ok());
        assert!(check(rule("leader.replication.throttled.replicas"), "0-1").is_err());
        assert!(check(rule("message.format.version"), &"x".repeat(65)).is_err());
        assert!(
            find("retention.bytes").is_none(),
            "enforced, so listed with Meridian's own configs"
        );
    }
}
