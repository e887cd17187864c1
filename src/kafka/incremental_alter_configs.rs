//! IncrementalAlterConfigs for topics: SET (0) and DELETE (1). The topic
//! configs Meridian understands are single values, so APPEND and SUBTRACT are
//! refused with INVALID_CONFIG.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};

use super::alter::{apply, no_such_topic, not_a_topic};
use super::text;
use crate::meta::validate_config;
use crate::router::Router;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// The changes a resource asks for, or why they are refused.
fn changes(res: &AlterConfigsResource) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let mut set = BTreeMap::new();
    let mut delete = Vec::new();
    for c in &res.configs {
        let key = c.name.to_string();
        match (c.config_operation, &c.value) {
            (OP_SET, Some(v)) => {
                validate_config(&key, v.as_str()).map_err(|e| e.to_string())?;
                set.insert(key, v.to_string());
            }
            (OP_SET, None) => return Err(format!("SET of `{key}` needs a value")),
            (OP_DELETE, _) => delete.push(key),
            (op, _) => {
                return Err(format!(
                    "operation {op} on `{key}` is not supported; use SET (0) or DELETE (1)"
                ))
            }
        }
    }
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
    let (set, delete) = match changes(res) {
        Ok(c) => c,
        Err(msg) => return Some((ResponseError::InvalidConfig.code(), msg)),
    };
    let name = res.resource_name.to_string();
    if r.topic(&name).is_none() {
        return Some(no_such_topic(&name));
    }
    apply(r, &name, set, delete, validate_only).await
}

pub async fn handle(
    r: &Router,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
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
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
