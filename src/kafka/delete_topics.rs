//! DeleteTopics, by name (v1-v5) or by name or id (v6).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::create_topics::timeout_of;
use super::{text, topic_error_code};
use crate::router::Router;

pub async fn handle(r: &Router, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let timeout = timeout_of(req.timeout_ms);
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::new();
    for (name, id) in wanted {
        let name = name.or_else(|| r.groups.meta_state().by_id(id).map(|t| t.name.clone()));
        let res = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(text(n))))
            .with_topic_id(id);
        let error = match name {
            None => Some((
                ResponseError::UnknownTopicId.code(),
                format!("no topic has id {id}"),
            )),
            Some(n) => r
                .delete_topic(&n, timeout)
                .await
                .err()
                .map(|e| (topic_error_code(&e), e.to_string())),
        };
        responses.push(match error {
            Some((code, msg)) => res
                .with_error_code(code)
                .with_error_message(Some(text(msg))),
            None => res,
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
