//! DescribeConfigs for topics (the keys Meridian understands, with values or
//! defaults) and brokers (none are dynamic; an empty list).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::text;
use crate::meta::all_topic_configs;
use crate::router::Router;

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_STRING: i8 = 2;

fn describe(r: &Router, res: &DescribeConfigsResource, docs: bool) -> DescribeConfigsResult {
    let out = DescribeConfigsResult::default()
        .with_resource_type(res.resource_type)
        .with_resource_name(res.resource_name.clone());
    let fail = |code: i16, msg: String| {
        out.clone()
            .with_error_code(code)
            .with_error_message(Some(text(msg)))
    };
    match res.resource_type {
        RESOURCE_BROKER => out,
        RESOURCE_TOPIC => {
            let Some(t) = r.topic(res.resource_name.as_str()) else {
                return fail(
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("topic `{}` does not exist", res.resource_name.as_str()),
                );
            };
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            let configs = all_topic_configs()
                .filter(|(k, _, _)| wanted(k))
                .map(|(k, default, doc)| {
                    let set = t.configs.get(k);
                    DescribeConfigsResourceResult::default()
                        .with_name(text(k))
                        .with_value(Some(text(set.map_or(default, |v| v.as_str()))))
                        .with_config_source(if set.is_some() {
                            SOURCE_DYNAMIC_TOPIC
                        } else {
                            SOURCE_DEFAULT
                        })
                        .with_config_type(TYPE_STRING)
                        .with_documentation(docs.then(|| text(doc)))
                })
                .collect();
            out.with_configs(configs)
        }
        other => fail(
            ResponseError::InvalidRequest.code(),
            format!("resource type {other} is not supported; use 2 (topic) or 4 (broker)"),
        ),
    }
}

pub fn handle(r: &Router, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|res| describe(r, res, req.include_documentation))
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
