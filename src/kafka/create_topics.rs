//! CreateTopics. Replication inside a region is the region's Raft group, so
//! the replication factor is the region's node count; manual replica
//! assignments are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{text, topic_error_code};
use crate::meta::{validate_create, TopicMeta};
use crate::router::{Router, TopicError};

pub fn timeout_of(ms: i32) -> Duration {
    Duration::from_millis(ms.clamp(1_000, 60_000) as u64)
}

/// Problems Kafka's request shape allows but Meridian refuses.
fn refusal(t: &CreatableTopic, replication: i16) -> Option<(i16, String)> {
    if let Some(c) = t.configs.iter().find(|c| c.value.is_none()) {
        return Some((
            ResponseError::InvalidConfig.code(),
            format!("config `{}` has no value", c.name),
        ));
    }
    if !t.assignments.is_empty() {
        return Some((
            ResponseError::InvalidRequest.code(),
            "manual replica assignments are not supported: every node of the region replicates every partition".into(),
        ));
    }
    if t.replication_factor != -1
        && (t.replication_factor < 1 || t.replication_factor > replication)
    {
        return Some((
            ResponseError::InvalidReplicationFactor.code(),
            format!(
                "replication factor {} is not possible: this region has {replication} nodes, and all of them replicate every partition (use -1)",
                t.replication_factor
            ),
        ));
    }
    None
}

pub async fn handle(r: &Router, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let timeout = timeout_of(req.timeout_ms);
    let replication = r.region_nodes().len() as i16;
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let partitions = if t.num_partitions == -1 {
            r.kafka.default_partitions as i64
        } else {
            t.num_partitions as i64
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let outcome: Result<Option<TopicMeta>, (i16, String)> = match refusal(&t, replication) {
            Some(e) => Err(e),
            None if req.validate_only => validate_create(&name, partitions, &configs)
                .map(|_| None)
                .map_err(|e| {
                    let e = TopicError::from(e);
                    (topic_error_code(&e), e.to_string())
                }),
            None => r
                .create_topic(&name, partitions, configs, timeout)
                .await
                .map(Some)
                .map_err(|e| (topic_error_code(&e), e.to_string())),
        };
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        topics.push(match outcome {
            Ok(meta) => result
                .with_num_partitions(partitions as i32)
                .with_replication_factor(replication)
                .with_topic_id(meta.map_or(uuid::Uuid::nil(), |m| m.id)),
            Err((code, msg)) => result
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_error_code(code)
                .with_error_message(Some(text(msg))),
        });
    }
    CreateTopicsResponse::default().with_topics(topics)
}
