//! AlterConfigs, the older API that kafkajs, sarama, aiokafka and
//! confluent-kafka's `alter_configs` use: a topic's configs become exactly
//! the ones given, and every other Kafka config returns to its default.
//! Meridian's own keys (`meridian.*`: replication, sync quorum, retry
//! delays, and those fixed at creation) stay as they are unless the
//! request names them: a Kafka tool that replaces a topic's configs knows
//! nothing of them, and dropping `meridian.replication=sync` would weaken
//! what an acknowledgement promises without anyone asking. Changing a key
//! fixed at creation is refused as by IncrementalAlterConfigs.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::alter::{apply, no_such_topic, not_a_topic};
use super::text;
use crate::meta::{validate_config, FIXED_AT_CREATION};
use crate::router::Router;

/// Whether a key outlives a replacement that does not name it.
fn kept_unless_named(key: &str) -> bool {
    key.starts_with("meridian.")
}

/// What replacing `current` by `given` sets and deletes: keys given with a
/// value are set (a null value means the default, as a key left out; a
/// key given twice takes its last value, as Kafka does); keys set now and
/// not given are deleted, except Meridian's own, which stay unless named.
pub fn replace(
    current: &BTreeMap<String, String>,
    given: &[(String, Option<String>)],
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut set = BTreeMap::new();
    let mut named = std::collections::BTreeSet::new();
    for (key, value) in given {
        named.insert(key.as_str());
        match value {
            Some(v) => set.insert(key.clone(), v.clone()),
            None => set.remove(key),
        };
    }
    // A key fixed at creation given with the value it has changes nothing.
    set.retain(|k, v| !(FIXED_AT_CREATION.contains(&k.as_str()) && current.get(k) == Some(v)));
    for (k, v) in &set {
        validate_config(k, v).map_err(|e| e.to_string())?;
    }
    let delete = current
        .keys()
        .filter(|k| !set.contains_key(*k) && (named.contains(k.as_str()) || !kept_unless_named(k)))
        .filter(|k| !FIXED_AT_CREATION.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok((set, delete))
}

async fn alter(
    r: &Router,
    res: &AlterConfigsResource,
    validate_only: bool,
) -> Option<(i16, String)> {
    if let Some(refused) = not_a_topic(res.resource_type) {
        return Some(refused);
    }
    let name = res.resource_name.to_string();
    let Some(topic) = r.topic(&name) else {
        return Some(no_such_topic(&name));
    };
    let given: Vec<(String, Option<String>)> = res
        .configs
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
        .collect();
    let (set, delete) = match replace(&topic.configs, &given) {
        Ok(c) => c,
        Err(msg) => return Some((ResponseError::InvalidConfig.code(), msg)),
    };
    if set.is_empty() && delete.is_empty() {
        return None;
    }
    apply(r, &name, set, delete, validate_only).await
}

pub async fn handle(r: &Router, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for res in &req.resources {
        let out = AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        responses.push(match alter(r, res, req.validate_only).await {
            Some((code, msg)) => out
                .with_error_code(code)
                .with_error_message(Some(text(msg))),
            None => out,
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{KEY_REGIONS, KEY_REPLICATION};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn given(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect()
    }

    #[test]
    fn the_given_configs_replace_the_others_but_those_fixed_at_creation() {
        let current = map(&[
            (KEY_REGIONS, "us-east,eu-west"),
            (KEY_REPLICATION, "sync"),
            ("max.message.bytes", "1000"),
        ]);
        let (set, delete) = replace(
            &current,
            &given(&[("segment.bytes", Some("1048576")), ("retention.ms", None)]),
        )
        .unwrap();
        assert_eq!(set, map(&[("segment.bytes", "1048576")]));
        // Kafka's keys go back to their defaults; Meridian's stay: a Kafka
        // tool does not turn a sync topic async.
        assert_eq!(delete, vec!["max.message.bytes"]);
        // Named with a null value, a Meridian key goes back to its default.
        let (_, delete) = replace(&current, &given(&[(KEY_REPLICATION, None)])).unwrap();
        assert_eq!(delete, vec!["max.message.bytes", KEY_REPLICATION]);
        // Repeating a fixed key with its value is no change.
        let (set, _) =
            replace(&current, &given(&[(KEY_REGIONS, Some("us-east,eu-west"))])).unwrap();
        assert!(set.is_empty());
        // Changing it goes on to be refused by the router, as any change.
        let (set, _) = replace(&current, &given(&[(KEY_REGIONS, Some("us-east"))])).unwrap();
        assert_eq!(set, map(&[(KEY_REGIONS, "us-east")]));
        let e = replace(&current, &given(&[("segment.bytes", Some("1"))])).unwrap_err();
        assert!(e.contains("segment.bytes"), "{e}");
        let e = replace(&current, &given(&[("no.such.key", Some("1"))])).unwrap_err();
        assert!(e.contains("unknown topic config"), "{e}");
        // A key given twice takes its last value, as in Kafka.
        let (set, _) = replace(
            &current,
            &given(&[("flush.ms", Some("1")), ("flush.ms", Some("2"))]),
        )
        .unwrap();
        assert_eq!(set, map(&[("flush.ms", "2")]));
        let (set, delete) = replace(
            &current,
            &given(&[
                ("max.message.bytes", Some("5")),
                ("max.message.bytes", None),
            ]),
        )
        .unwrap();
        assert!(set.is_empty());
        assert!(delete.contains(&"max.message.bytes".to_string()));
    }
}
