//! Metadata: brokers (this region's first, every region's listed, rack =
//! region), topics and partition leaders; a region without its write lease
//! names another region's brokers as leaders, so clients move there. Unknown topics are created when
//! the client allows it and `kafka.auto_create_topics` is on.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{text, topic_error_code};
use crate::meta::TopicMeta;
use crate::router::Router;

const AUTO_CREATE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn handle(r: &Router, req: MetadataRequest) -> MetadataResponse {
    let brokers = r
        .brokers()
        .into_iter()
        .map(|n| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(n.id as i32))
                .with_host(text(n.kafka.ip().to_string()))
                .with_port(n.kafka.port() as i32)
                .with_rack(Some(text(n.region.clone())))
        })
        .collect();
    let topics = match req.topics {
        None => r.topics().iter().map(|t| describe(r, t)).collect(),
        Some(wanted) => {
            let mut out = Vec::new();
            for w in wanted {
                let by_id = r
                    .groups
                    .meta_state()
                    .by_id(w.topic_id)
                    .map(|t| t.name.clone());
                let name = match (&w.name, by_id) {
                    (Some(n), _) => n.0.to_string(),
                    (None, Some(n)) => n,
                    (None, None) => {
                        out.push(
                            MetadataResponseTopic::default()
                                .with_error_code(ResponseError::UnknownTopicId.code())
                                .with_topic_id(w.topic_id),
                        );
                        continue;
                    }
                };
                out.push(topic(r, &name, req.allow_auto_topic_creation).await);
            }
            out
        }
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(text(cluster_id(&r.region_names()))))
        .with_controller_id(BrokerId(r.groups.meta_leader().map_or(-1, |l| l as i32)))
        .with_topics(topics)
}

async fn topic(r: &Router, name: &str, allow_create: bool) -> MetadataResponseTopic {
    if let Some(t) = r.topic(name) {
        return describe(r, &t);
    }
    let unknown = |code: i16| {
        MetadataResponseTopic::default()
            .with_error_code(code)
            .with_name(Some(TopicName(text(name))))
    };
    if !(allow_create && r.kafka.auto_create_topics) {
        return unknown(ResponseError::UnknownTopicOrPartition.code());
    }
    let created = r
        .create_topic(
            name,
            r.kafka.default_partitions as i64,
            BTreeMap::new(),
            AUTO_CREATE_TIMEOUT,
        )
        .await;
    match created {
        Ok(t) => describe(r, &t),
        Err(e) => match r.topic(name) {
            // Another client created it at the same time.
            Some(t) => describe(r, &t),
            None => unknown(topic_error_code(&e)),
        },
    }
}

/// The cluster id every broker of every region reports: the regions form
/// one cluster (one metadata group, one topic namespace, clients sent from
/// one region to another), and librdkafka treats brokers with different
/// ids as a misconfiguration ("a client must not be simultaneously
/// connected to multiple clusters"). Derived from the set of regions, so
/// every node computes the same one without asking.
pub fn cluster_id(regions: &[String]) -> String {
    let mut names = regions.to_vec();
    names.sort();
    format!("meridian-{}", names.join("+"))
}

/// Where a fenced region sends its clients: the first other region that
/// holds the topic, by topology order, with the brokers its placement makes
/// partition leaders. A region cut off from the others cannot know their
/// current leaders; a broker that is not the leader answers
/// NOT_LEADER_OR_FOLLOWER, and the client asks that region for metadata.
fn elsewhere(r: &Router, t: &TopicMeta) -> Option<Vec<u64>> {
    let policy = r.policy(t);
    if r.fence.may_write(&policy.regions) {
        return None;
    }
    // Another region of the topic, one that holds its lease if any does
    // (as far as this node knows), in topology order.
    let meta = r.groups.meta_state();
    let now = r.groups.clock.wall_now_ms();
    let margin = r.link.cfg.clock_drift_ms_max;
    let candidates: Vec<_> = r
        .topology
        .regions
        .iter()
        .filter(|reg| reg.name != r.me.region && policy.regions.contains(&reg.name))
        .collect();
    let other = candidates
        .iter()
        .find(|reg| crate::meta::lease::remaining_ms(&meta.leases, &reg.name, now, margin) > 0)
        .or(candidates.first())?;
    let mut ids: Vec<u64> = other.nodes.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    Some(ids)
}

fn describe(r: &Router, t: &TopicMeta) -> MetadataResponseTopic {
    if let Some(ids) = elsewhere(r, t) {
        let replicas: Vec<BrokerId> = ids.iter().map(|n| BrokerId(*n as i32)).collect();
        let partitions = (0..t.partitions)
            .map(|p| {
                let leader = crate::meta::preferred_leader(&ids, t.seq, p);
                MetadataResponsePartition::default()
                    .with_partition_index(p as i32)
                    .with_leader_id(BrokerId(leader as i32))
                    .with_leader_epoch(-1)
                    .with_replica_nodes(replicas.clone())
                    .with_isr_nodes(replicas.clone())
            })
            .collect();
        return MetadataResponseTopic::default()
            .with_name(Some(TopicName(text(t.name.clone()))))
            .with_topic_id(t.id)
            .with_partitions(partitions)
            .with_is_internal(t.name == crate::group::offsets::TOPIC)
            .with_topic_authorized_operations(i32::MIN);
    }
    let replicas: Vec<BrokerId> = r
        .region_nodes()
        .into_iter()
        .map(|n| BrokerId(n as i32))
        .collect();
    let partitions = (0..t.partitions)
        .map(|p| {
            // No leader epoch (-1): each region's partition group has Raft
            // terms of its own, and a client that moves region would take
            // the new region's lower term for stale metadata and ignore it
            // (librdkafka does, KIP-320), staying with a dead leader.
            let leader = r
                .groups
                .partition(t.group(p))
                .and_then(|g| g.raft.metrics().borrow().current_leader);
            let code = if leader.is_some() {
                0
            } else {
                ResponseError::LeaderNotAvailable.code()
            };
            MetadataResponsePartition::default()
                .with_error_code(code)
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(leader.map_or(-1, |l| l as i32)))
                .with_leader_epoch(-1)
                .with_replica_nodes(replicas.clone())
                .with_isr_nodes(replicas.clone())
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(text(t.name.clone()))))
        .with_topic_id(t.id)
        .with_partitions(partitions)
        .with_is_internal(t.name == crate::group::offsets::TOPIC)
        .with_topic_authorized_operations(i32::MIN)
}

#[cfg(test)]
mod tests {
    use super::cluster_id;

    #[test]
    fn every_region_reports_the_same_cluster_id() {
        let a = cluster_id(&["us-east".into(), "eu-west".into(), "ap-south".into()]);
        let b = cluster_id(&["ap-south".into(), "us-east".into(), "eu-west".into()]);
        assert_eq!(a, b);
        assert_eq!(a, "meridian-ap-south+eu-west+us-east");
    }
}
