//! Topic administration through the region's metadata group: create
//! (and wait for the partitions' leaders), delete, alter configs, move a
//! pinned topic's home.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Router, TopicError};
use crate::command::{Command, CommandResult};
use crate::meta::{
    validate_config, validate_create, validate_policy, MetaError, TopicMeta, FIXED_AT_CREATION,
    KEY_REGIONS, KEY_WRITERS,
};

impl Router {
    async fn meta(&self, cmd: Command, timeout: Duration) -> Result<(), TopicError> {
        match self.groups.meta_write(cmd, timeout).await {
            Ok(CommandResult::Meta(r)) => Ok(r?),
            Ok(other) => Err(TopicError::Unavailable(format!(
                "unexpected result {other:?}"
            ))),
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    /// Creates a topic and waits (up to `timeout`) until every partition has
    /// a leader, so that a client can produce right after.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i64,
        configs: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<TopicMeta, TopicError> {
        let mut configs = configs;
        validate_create(name, partitions, &configs)?;
        validate_policy(&configs, &self.region_names())?;
        // The regions are fixed at creation: a later topology change must
        // not change which regions hold an existing topic.
        configs
            .entry(KEY_REGIONS.to_string())
            .or_insert_with(|| self.region_names().join(","));
        let cmd = Command::CreateTopic {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions: partitions as u32,
            configs,
        };
        self.meta(cmd, timeout).await?;
        // meta() returns once this node applied the creation; a topic missing
        // now was deleted by someone else in the meantime.
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        self.wait_for_leaders(&t, timeout).await;
        Ok(t)
    }

    async fn wait_for_leaders(&self, t: &TopicMeta, timeout: Duration) {
        let groups: Vec<_> = (0..t.partitions).map(|p| t.group(p)).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.groups.wait_reconciled(&groups, timeout).await {
            return;
        }
        while tokio::time::Instant::now() < deadline {
            let all = groups.iter().all(|g| {
                self.groups
                    .partition(*g)
                    .is_some_and(|g| g.leader().is_some())
            });
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn delete_topic(&self, name: &str, timeout: Duration) -> Result<(), TopicError> {
        if name == crate::meta::OFFSETS_TOPIC {
            return Err(MetaError::InternalTopic(name.to_string()).into());
        }
        self.meta(
            Command::DeleteTopic {
                name: name.to_string(),
            },
            timeout,
        )
        .await
    }

    /// DeleteRecords: moves the log start of `topic`'s partitions to the
    /// given offsets in every region, through the metadata group (checked
    /// against this region's high watermarks by the caller).
    pub async fn delete_records(
        &self,
        topic: &str,
        starts: Vec<(u32, u64)>,
        timeout: Duration,
    ) -> Result<(), TopicError> {
        if topic == crate::meta::OFFSETS_TOPIC {
            return Err(MetaError::InternalTopic(topic.to_string()).into());
        }
        self.meta(
            Command::DeleteRecords {
                topic: topic.to_string(),
                starts,
            },
            timeout,
        )
        .await
    }

    pub async fn alter_topic(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        timeout: Duration,
    ) -> Result<(), TopicError> {
        if let Some(v) = set.get(KEY_WRITERS) {
            if set.len() == 1 && delete.is_empty() {
                if let Some(to) = v.strip_prefix("home:") {
                    return self.move_home(name, to, timeout).await;
                }
            }
        }
        for k in set.keys().chain(delete.iter()) {
            if FIXED_AT_CREATION.contains(&k.as_str()) {
                return Err(MetaError::InvalidConfig {
                    key: k.clone(),
                    reason: "fixed at creation: changing it would renumber the topic's offsets; \
                             create a new topic instead"
                        .into(),
                }
                .into());
            }
        }
        for (k, v) in &set {
            validate_config(k, v)?;
        }
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let mut merged = t.configs.clone();
        for k in &delete {
            merged.remove(k);
        }
        merged.extend(set.clone());
        validate_policy(&merged, &self.region_names())?;
        let cmd = Command::AlterTopic {
            name: name.to_string(),
            set,
            delete,
        };
        self.meta(cmd, timeout).await
    }

    /// Moves pinned topic `name`'s home to region `to` (`control::home`):
    /// `meridian.writers=home:<to>` set alone. Both regions must hold
    /// their write leases: the old home seals its logs, the new one takes
    /// over once it has applied those seals.
    async fn move_home(&self, name: &str, to: &str, timeout: Duration) -> Result<(), TopicError> {
        let refused = |reason: String| MetaError::MoveRefused {
            topic: name.to_string(),
            reason,
        };
        let t = self
            .topic(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let mut configs = t.configs.clone();
        configs.insert(KEY_WRITERS.to_string(), format!("home:{to}"));
        validate_policy(&configs, &self.region_names())?;
        let meta = self.groups.meta_state();
        meta.check_move(name, to).map_err(refused)?;
        let from = t.home().unwrap_or_default();
        if from == to {
            return Ok(());
        }
        let now = self.groups.clock.wall_now_ms();
        for r in [from, to] {
            if !crate::meta::lease::may_write(&meta.leases, r, now, 0) {
                return Err(refused(format!(
                    "region {r} holds no write lease now (cut off, or failing over); \
                     move the home once both regions are healthy"
                ))
                .into());
            }
        }
        tracing::info!(topic = name, from, to, "moving the topic's home");
        self.meta(
            Command::MoveHome {
                topic: name.to_string(),
                to: to.to_string(),
            },
            timeout,
        )
        .await
    }
}
