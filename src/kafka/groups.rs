//! The consumer group APIs: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
//! DescribeGroups, DeleteGroups. They translate between the wire and
//! [`crate::group::coordinator`]; the protocol's rules live there.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as Found;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use std::sync::Arc;

use futures::future::BoxFuture;

use super::text;
use crate::group::coordinator::{CommitOffset, CommitReq, Coordinator, FetchedOffset};
use crate::group::state::{code, Join, MemberSpec};

fn s(b: &StrBytes) -> String {
    b.to_string()
}

fn opt(v: Option<String>) -> Option<StrBytes> {
    v.map(text)
}

/// Key type 1 asks for a transaction coordinator; Meridian has no
/// transactions.
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn find_coordinator(
    c: &Coordinator,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let mut found = Vec::new();
    for key in keys {
        let r = if req.key_type == KEY_TYPE_TRANSACTION {
            Err((
                code::INVALID_GROUP_ID,
                "transactions are not supported by Meridian".to_string(),
            ))
        } else {
            c.locate(&key).await
        };
        found.push(match r {
            Ok(n) => Found::default()
                .with_key(key)
                .with_node_id(BrokerId(n.id as i32))
                .with_host(text(n.kafka.ip().to_string()))
                .with_port(n.kafka.port() as i32),
            Err((e, msg)) => Found::default()
                .with_key(key)
                .with_node_id(BrokerId(-1))
                .with_host(text(""))
                .with_port(-1)
                .with_error_code(e)
                .with_error_message(Some(text(msg))),
        });
    }
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(found);
    }
    let f = found.pop().unwrap_or_default();
    FindCoordinatorResponse::default()
        .with_error_code(f.error_code)
        .with_error_message(f.error_message)
        .with_node_id(f.node_id)
        .with_host(f.host)
        .with_port(f.port)
}

/// Applies a JoinGroup; the response waits for the rebalance.
pub fn join_group(
    c: &Arc<Coordinator>,
    req: JoinGroupRequest,
    version: i16,
    client_id: &str,
    host: &str,
) -> BoxFuture<'static, JoinGroupResponse> {
    let session = req.session_timeout_ms.max(0) as u64;
    let join = Join {
        member_id: s(&req.member_id),
        spec: MemberSpec {
            client_id: client_id.to_string(),
            client_host: host.to_string(),
            protocol_type: s(&req.protocol_type),
            protocols: req
                .protocols
                .into_iter()
                // Copied out of the request's frame, which the group's
                // state must not keep alive (the frame's bytes go back to
                // the listener's budget as soon as this is applied).
                .map(|p| (s(&p.name), bytes::Bytes::copy_from_slice(&p.metadata)))
                .collect(),
            session_timeout_ms: session,
            // v0 has no rebalance timeout: the session timeout serves.
            rebalance_timeout_ms: if req.rebalance_timeout_ms > 0 {
                req.rebalance_timeout_ms as u64
            } else {
                session
            },
        },
        require_known_member_id: version >= 4,
    };
    let w = c.join(&req.group_id, join);
    Box::pin(async move { join_response(w.wait().await) })
}

fn join_response(r: crate::group::state::JoinReply) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(opt(r.protocol_type))
        .with_protocol_name(opt(r.protocol))
        .with_leader(text(r.leader))
        .with_member_id(text(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|(id, meta)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(text(id))
                        .with_metadata(meta)
                })
                .collect(),
        )
}

/// Applies a SyncGroup; a follower's response waits for the leader's.
pub fn sync_group(c: &Coordinator, req: SyncGroupRequest) -> BoxFuture<'static, SyncGroupResponse> {
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| {
            (
                s(&a.member_id),
                bytes::Bytes::copy_from_slice(&a.assignment),
            )
        })
        .collect();
    let w = c.sync(
        &req.group_id,
        &req.member_id,
        req.generation_id,
        assignments,
    );
    Box::pin(async move {
        let r = w.wait().await;
        SyncGroupResponse::default()
            .with_error_code(r.error)
            .with_protocol_type(opt(r.protocol_type))
            .with_protocol_name(opt(r.protocol))
            .with_assignment(r.assignment)
    })
}

pub fn heartbeat(c: &Coordinator, req: HeartbeatRequest) -> HeartbeatResponse {
    HeartbeatResponse::default().with_error_code(c.heartbeat(
        &req.group_id,
        &req.member_id,
        req.generation_id,
    ))
}

pub fn leave_group(c: &Coordinator, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<String> = if version >= 3 {
        req.members.iter().map(|m| s(&m.member_id)).collect()
    } else {
        vec![s(&req.member_id)]
    };
    match c.leave(&req.group_id, &members) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e),
        Ok(codes) if version < 3 => LeaveGroupResponse::default().with_error_code(codes[0]),
        Ok(codes) => LeaveGroupResponse::default().with_members(
            req.members
                .into_iter()
                .zip(codes)
                .map(|(m, e)| {
                    MemberResponse::default()
                        .with_member_id(m.member_id)
                        .with_group_instance_id(m.group_instance_id)
                        .with_error_code(e)
                })
                .collect(),
        ),
    }
}

/// Checks and proposes an OffsetCommit; the response waits for the commit.
pub async fn offset_commit(
    c: &Arc<Coordinator>,
    req: OffsetCommitRequest,
) -> BoxFuture<'static, OffsetCommitResponse> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            (
                s(&t.name),
                t.partitions
                    .iter()
                    .map(|p| CommitOffset {
                        partition: p.partition_index,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(s),
                    })
                    .collect(),
            )
        })
        .collect();
    let pending = c
        .commit(CommitReq {
            group: s(&req.group_id),
            member: s(&req.member_id),
            generation: req.generation_id_or_member_epoch,
            topics,
        })
        .await;
    Box::pin(async move { commit_response(pending.await) })
}

fn commit_response(results: Vec<crate::group::coordinator::PartitionCode>) -> OffsetCommitResponse {
    OffsetCommitResponse::default().with_topics(
        results
            .into_iter()
            .map(|(t, ps)| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(text(t)))
                    .with_partitions(
                        ps.into_iter()
                            .map(|(p, e)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn partition_v7(o: FetchedOffset) -> OffsetFetchResponsePartition {
    OffsetFetchResponsePartition::default()
        .with_partition_index(o.partition)
        .with_committed_offset(o.offset)
        .with_committed_leader_epoch(o.leader_epoch)
        .with_metadata(Some(text(o.metadata)))
        .with_error_code(o.error)
}

fn partition_v8(o: FetchedOffset) -> OffsetFetchResponsePartitions {
    OffsetFetchResponsePartitions::default()
        .with_partition_index(o.partition)
        .with_committed_offset(o.offset)
        .with_committed_leader_epoch(o.leader_epoch)
        .with_metadata(Some(text(o.metadata)))
        .with_error_code(o.error)
}

pub async fn offset_fetch(
    c: &Coordinator,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version < 8 {
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (s(&t.name), t.partition_indexes))
                .collect()
        });
        return match c.fetch(&req.group_id, topics).await {
            Ok(found) => OffsetFetchResponse::default().with_topics(
                found
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(text(t)))
                            .with_partitions(ps.into_iter().map(partition_v7).collect())
                    })
                    .collect(),
            ),
            Err(e) => OffsetFetchResponse::default().with_error_code(e),
        };
    }
    let mut groups = Vec::new();
    for g in req.groups {
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (s(&t.name), t.partition_indexes))
                .collect()
        });
        groups.push(match c.fetch(&g.group_id, topics).await {
            Ok(found) => OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id)
                .with_topics(
                    found
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(text(t)))
                                .with_partitions(ps.into_iter().map(partition_v8).collect())
                        })
                        .collect(),
                ),
            Err(e) => OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id)
                .with_error_code(e),
        });
    }
    OffsetFetchResponse::default().with_groups(groups)
}

pub fn list_groups(c: &Coordinator, req: ListGroupsRequest) -> ListGroupsResponse {
    let filter: Vec<String> = req.states_filter.iter().map(s).collect();
    ListGroupsResponse::default().with_groups(
        c.list()
            .into_iter()
            .filter(|(_, state, _)| {
                filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(state))
            })
            .map(|(g, state, proto)| {
                ListedGroup::default()
                    .with_group_id(GroupId(text(g)))
                    .with_group_state(text(state))
                    .with_protocol_type(text(proto))
                    .with_group_type(text("classic"))
            })
            .collect(),
    )
}

pub async fn describe_groups(
    c: &Coordinator,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut out = Vec::new();
    for g in req.groups {
        out.push(match c.describe(&g).await {
            Ok(d) => DescribedGroup::default()
                .with_group_id(g)
                .with_group_state(text(d.state))
                .with_protocol_type(text(d.protocol_type))
                .with_protocol_data(text(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|(id, client, host, meta, assignment)| {
                            DescribedGroupMember::default()
                                .with_member_id(text(id))
                                .with_client_id(text(client))
                                .with_client_host(text(host))
                                .with_member_metadata(meta)
                                .with_member_assignment(assignment)
                        })
                        .collect(),
                ),
            Err(e) => DescribedGroup::default()
                .with_group_id(g)
                .with_error_code(e)
                .with_group_state(text("Dead")),
        });
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn delete_groups(c: &Coordinator, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for g in req.groups_names {
        let e = c.delete(&g).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(e),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
