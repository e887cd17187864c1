//! The topics file: topics a node creates at start unless they exist
//! (docs/replication.md#topics-file).

use std::path::Path;

use serde::Deserialize;

use super::problems::{parse_toml, ConfigError, Problems};

/// A topic declared in a topics file, as `[[topic]]`: created at start
/// unless it exists. The `meridian.*` keys have short names here; other
/// topic configs go in `configs`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    pub name: String,
    pub partitions: u32,
    /// Regions that hold the topic (default: every region).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// `all` or `home:<region>`.
    #[serde(default)]
    pub writers: Option<String>,
    /// `async` or `sync`.
    #[serde(default)]
    pub replication: Option<String>,
    #[serde(default)]
    pub sync_quorum: Option<u32>,
    #[serde(default)]
    pub rpo_max_ms: Option<u64>,
    /// Any other topic config, by its Kafka name.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(default)]
    topic: Vec<TopicDecl>,
}

impl TopicDecl {
    /// The topic configs this declaration stands for.
    pub fn configs(&self) -> std::collections::BTreeMap<String, String> {
        use crate::meta::{
            KEY_REGIONS, KEY_REPLICATION, KEY_RPO_MAX_MS, KEY_SYNC_QUORUM, KEY_WRITERS,
        };
        let mut c = self.configs.clone();
        if let Some(r) = &self.regions {
            c.insert(KEY_REGIONS.into(), r.join(","));
        }
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                c.insert(k.into(), v);
            }
        };
        put(KEY_WRITERS, self.writers.clone());
        put(KEY_REPLICATION, self.replication.clone());
        put(KEY_SYNC_QUORUM, self.sync_quorum.map(|q| q.to_string()));
        put(KEY_RPO_MAX_MS, self.rpo_max_ms.map(|m| m.to_string()));
        c
    }

    /// Reads and checks a topics file against the topology's regions, with
    /// every problem named by topic and key.
    pub fn load(path: &Path, regions: &[String]) -> Result<Vec<TopicDecl>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                path,
                "",
                format!("cannot read the file: {e}; check the path and its permissions"),
            )
        })?;
        Self::parse(path, &text, regions)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        regions: &[String],
    ) -> Result<Vec<TopicDecl>, ConfigError> {
        let file: TopicsFile = parse_toml(path, text)?;
        let mut p = Problems::new(path);
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in file.topic.iter().enumerate() {
            let at = format!("topic[{i}] ({})", t.name);
            if !seen.insert(t.name.clone()) {
                p.add(at.clone(), "declared twice; keep one [[topic]] per name");
            }
            let configs = t.configs();
            let checked = crate::meta::validate_create(&t.name, t.partitions as i64, &configs)
                .and_then(|_| crate::meta::validate_policy(&configs, regions));
            if let Err(e) = checked {
                p.add(at, e.to_string());
            }
        }
        p.finish()?;
        Ok(file.topic)
    }
}
