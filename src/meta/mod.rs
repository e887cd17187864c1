//! The metadata group's vocabulary and pure rules, below everything that
//! stores or replicates them: the region's topics and their state
//! ([`state`]), topic configs and policy ([`policy`]), write leases
//! ([`lease`]) and the seals of failed-over regions ([`seal`]). No I/O, no
//! clock: the drivers that act on these live in `control/`, and the state
//! machine that applies commands to [`MetaState`] in `storage/`.

pub mod kafka_configs;
pub mod lease;
pub mod policy;
pub mod seal;
pub mod state;

pub use policy::{
    all_topic_configs, delay_ms, due_below, policy, preferred_leader, retention, validate_config,
    validate_create, validate_policy, validate_topic_name, Policy, Retention, Writers,
    DELAY_MS_MAX, FIXED_AT_CREATION, KEY_DELAY_MS, KEY_REGIONS, KEY_REPLICATION, KEY_RETRY_NEXT,
    KEY_RPO_MAX_MS, KEY_SYNC_QUORUM, KEY_WRITERS, OFFSETS_TOPIC, PARTITIONS_MAX, TOPIC_CONFIGS,
};
pub use state::{HomeMove, MetaError, MetaState, TopicMeta};
