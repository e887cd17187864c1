//! Topic policy: the configs a topic may carry, their checks, the
//! replication and write policy they describe, and where a partition's
//! leader should be. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use super::state::MetaError;

/// The internal topic of consumer groups' commits (`group::offsets`);
/// clients may not delete it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Upper bound on partitions per topic; each partition is a Raft group.
pub const PARTITIONS_MAX: u32 = 1024;

/// Topic configs this broker understands, with their defaults. Kafka clients
/// and tools ask for these through DescribeConfigs, followed by Kafka's
/// standard ones that have no effect here (`kafka_configs`, [`all_topic_configs`]).
pub const TOPIC_CONFIGS: &[(&str, &str, &str)] = &[
    (
        "retention.ms",
        "604800000",
        "Records whose commit time (HLC) is older than this leave the partition in every region, in whole stored batches; -1 keeps them forever. A topic that sets none follows the node's storage.retention_ms (Kafka's default, 7 days, unless changed).",
    ),
    (
        "retention.bytes",
        "-1",
        "The most a partition keeps in each region, in bytes as stored (every origin log it holds); the oldest batches leave first. -1: no limit. A topic that sets none follows the node's storage.retention_bytes.",
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

/// Every topic config DescribeConfigs lists: name, default, what it means
/// here. Meridian's own and those with an effect first, then Kafka's
/// standard ones accepted for compatibility.
pub fn all_topic_configs() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    TOPIC_CONFIGS.iter().copied().chain(
        super::kafka_configs::KAFKA_TOPIC_CONFIGS
            .iter()
            .map(|c| (c.name, c.default, c.here)),
    )
}

pub const KEY_REGIONS: &str = "meridian.regions";
pub const KEY_WRITERS: &str = "meridian.writers";
pub const KEY_REPLICATION: &str = "meridian.replication";
pub const KEY_SYNC_QUORUM: &str = "meridian.sync.quorum";
pub const KEY_RPO_MAX_MS: &str = "meridian.rpo.max.ms";
pub const KEY_DELAY_MS: &str = "meridian.delay.ms";
pub const KEY_RETRY_NEXT: &str = "meridian.retry.next";
/// Longest `meridian.delay.ms`: a week.
pub const DELAY_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// What a topic keeps: records younger than `ms` (by commit time), and at
/// most `bytes` per partition and region; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub ms: Option<u64>,
    pub bytes: Option<u64>,
}

/// A topic's retention: its `retention.ms` and `retention.bytes`, or the
/// node's defaults (`storage.retention_ms`, `storage.retention_bytes`) for
/// those it does not set. -1 means no limit. The consumer groups' topic
/// keeps every commit until compaction exists (`group::offsets` rebuilds
/// the groups from it).
pub fn retention(
    topic: &str,
    configs: &BTreeMap<String, String>,
    default_ms: i64,
    default_bytes: i64,
) -> Retention {
    if topic == OFFSETS_TOPIC {
        return Retention {
            ms: None,
            bytes: None,
        };
    }
    let get = |key: &str, default: i64| {
        let v = configs
            .get(key)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(default);
        u64::try_from(v).ok()
    };
    Retention {
        ms: get("retention.ms", default_ms),
        bytes: get("retention.bytes", default_bytes),
    }
}

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

pub(super) fn split_regions(v: &str) -> Vec<String> {
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

/// Longest topic config value: every value is stored in the metadata
/// group and copied to every region.
pub const CONFIG_VALUE_LEN_MAX: usize = 1024;

pub fn validate_config(key: &str, value: &str) -> Result<(), MetaError> {
    let bad = |reason: String| MetaError::InvalidConfig {
        key: key.to_string(),
        reason,
    };
    if value.len() > CONFIG_VALUE_LEN_MAX {
        return Err(bad(format!(
            "the value is {} bytes; at most {CONFIG_VALUE_LEN_MAX} are allowed",
            value.len()
        )));
    }
    if let Some(c) = super::kafka_configs::find(key) {
        return super::kafka_configs::check(c.rule, value).map_err(bad);
    }
    match key {
        "retention.ms" | "retention.bytes" => match value.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(()),
            _ => Err(bad(format!(
                "`{value}` is not -1 (no limit) or an integer of 0 or more"
            ))),
        },
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
                "unknown topic config; known keys are {}, and Kafka's standard topic configs that `meridian topic describe` lists",
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
/// The preferred leader of a group: partitions rotate over the region's
/// nodes (sorted by id), so leadership is spread evenly.
pub fn preferred_leader(nodes_sorted: &[u64], topic_seq: u32, partition: u32) -> u64 {
    let i = (topic_seq as usize + partition as usize) % nodes_sorted.len();
    nodes_sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn config_values_are_bounded_in_length() {
        let long = format!("{}1", "0".repeat(CONFIG_VALUE_LEN_MAX));
        let e = validate_config("segment.ms", &long).unwrap_err();
        assert!(e.to_string().contains("at most 1024"), "{e}");
        let pairs = vec!["0:1"; 400].join(",");
        assert!(validate_config("leader.replication.throttled.replicas", &pairs).is_err());
        assert!(validate_config("segment.ms", &"1".repeat(10)).is_ok());
    }
}
