//! Topic administration: CreateTopics, DeleteTopics, DescribeConfigs and
//! IncrementalAlterConfigs, on the controller (any node).

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{
    Client, ClientError, V_ALTER_CONFIGS, V_CREATE_TOPICS, V_DELETE_TOPICS, V_DESCRIBE_CONFIGS,
};

impl Client {
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                )])
            .with_timeout_ms(30_000);
        let resp: CreateTopicsResponse = self
            .any()
            .await?
            .call(ApiKey::CreateTopics, V_CREATE_TOPICS, &req)
            .await?;
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("create topic `{name}`"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.to_string()))])
            .with_timeout_ms(30_000);
        let resp: DeleteTopicsResponse = self
            .any()
            .await?
            .call(ApiKey::DeleteTopics, V_DELETE_TOPICS, &req)
            .await?;
        for t in resp.responses {
            if t.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("delete topic `{name}`"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub async fn describe_configs(
        &self,
        name: &str,
    ) -> Result<Vec<(String, String, bool)>, ClientError> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_string()))
                .with_configuration_keys(None),
        ]);
        let resp: DescribeConfigsResponse = self
            .any()
            .await?
            .call(ApiKey::DescribeConfigs, V_DESCRIBE_CONFIGS, &req)
            .await?;
        let mut out = Vec::new();
        for r in resp.results {
            if r.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("describe `{name}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
            for c in r.configs {
                out.push((
                    c.name.to_string(),
                    c.value.map(|v| v.to_string()).unwrap_or_default(),
                    c.config_source == 1,
                ));
            }
        }
        Ok(out)
    }

    pub async fn alter_configs(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), ClientError> {
        let mut configs: Vec<AlterableConfig> = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        configs.extend(delete.iter().map(|k| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_config_operation(1)
                .with_value(None)
        }));
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_string()))
                .with_configs(configs),
        ]);
        let resp: IncrementalAlterConfigsResponse = self
            .any()
            .await?
            .call(ApiKey::IncrementalAlterConfigs, V_ALTER_CONFIGS, &req)
            .await?;
        for r in resp.responses {
            if r.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("alter `{name}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }
}
