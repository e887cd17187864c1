//! What the two config-altering APIs (IncrementalAlterConfigs and the older
//! AlterConfigs) share: only topics may be altered, the topic must exist,
//! and the change goes through the metadata group with a deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;

use super::describe_configs::RESOURCE_TOPIC;
use super::topic_error_code;
use crate::router::Router;

/// How long an alter waits for the metadata group to commit it.
const ALTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a resource that is not a topic; None for a topic.
pub fn not_a_topic(resource_type: i8) -> Option<(i16, String)> {
    (resource_type != RESOURCE_TOPIC).then(|| {
        (
            ResponseError::InvalidRequest.code(),
            format!("resource type {resource_type} cannot be altered; only topics (2) can"),
        )
    })
}

/// The answer to an alter of a topic that does not exist.
pub fn no_such_topic(name: &str) -> (i16, String) {
    (
        ResponseError::UnknownTopicOrPartition.code(),
        format!("topic `{name}` does not exist"),
    )
}

/// Sets and deletes `name`'s configs unless the request only validates;
/// the error to answer, if any.
pub async fn apply(
    r: &Router,
    name: &str,
    set: BTreeMap<String, String>,
    delete: Vec<String>,
    validate_only: bool,
) -> Option<(i16, String)> {
    if validate_only {
        return None;
    }
    r.alter_topic(name, set, delete, ALTER_TIMEOUT)
        .await
        .err()
        .map(|e| (topic_error_code(&e), e.to_string()))
}
