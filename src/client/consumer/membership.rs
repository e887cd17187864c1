//! Membership: finding the coordinator, joining (JoinGroup, SyncGroup with
//! the `range` assignor), taking an assignment over (committed offsets,
//! unfinished moves), heartbeats, and leaving.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::chain::{MoveMarker, Position};
use crate::client::Connection;
use crate::group::state::code;

use super::assign;
use super::{
    coordinator_moved, rebalancing, text, ConsumerError, GroupConsumer, JOIN_TRIES_MAX,
    V_FIND_COORDINATOR, V_HEARTBEAT, V_JOIN_GROUP, V_LEAVE_GROUP, V_OFFSET_FETCH, V_SYNC_GROUP,
};

impl GroupConsumer {
    pub(super) async fn coordinator(&self) -> Result<Connection, ConsumerError> {
        let known = self.standing.lock().await.coordinator.clone();
        if let Some(addr) = known {
            return Ok(self.client.connection(&addr).await?);
        }
        let req = FindCoordinatorRequest::default()
            .with_key(text(&self.group))
            .with_key_type(0);
        let resp: FindCoordinatorResponse = self
            .client
            .any()
            .await?
            .call(ApiKey::FindCoordinator, V_FIND_COORDINATOR, &req)
            .await?;
        if resp.error_code != 0 {
            return Err(self.error(
                "FindCoordinator",
                resp.error_code,
                "the region's offsets topic may still be starting; try again",
            ));
        }
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        self.standing.lock().await.coordinator = Some(addr.clone());
        Ok(self.client.connection(&addr).await?)
    }

    pub(super) async fn forget_coordinator(&self) {
        self.standing.lock().await.coordinator = None;
    }

    /// Joins (or rejoins) the group, takes this generation's assignment and
    /// the committed positions of its partitions.
    pub(super) async fn join(&mut self, stop: &CancellationToken) -> Result<(), ConsumerError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        self.rejoin.store(false, Ordering::SeqCst);
        let mut backoff = Duration::from_millis(100);
        for attempt in 0..JOIN_TRIES_MAX {
            if stop.is_cancelled() {
                return Ok(());
            }
            let r = match self.try_join().await {
                Ok(Some(assigned)) => self.take_assignment(assigned).await.map(|()| true),
                Ok(None) => Ok(false), // a rebalance started meanwhile
                Err(e) => Err(e),
            };
            match r {
                Ok(true) if !self.rejoin.load(Ordering::SeqCst) => {
                    self.joined = true;
                    self.start_heartbeat();
                    return Ok(());
                }
                Ok(_) => self.rejoin.store(false, Ordering::SeqCst),
                Err(e) => {
                    let again = match &e {
                        ConsumerError::Client(c) => c.is_retriable(),
                        ConsumerError::Group { code, .. } => {
                            coordinator_moved(*code) || rebalancing(*code)
                        }
                        ConsumerError::Rebalanced => true,
                        _ => false,
                    };
                    if !again {
                        return Err(e);
                    }
                    debug!(error = %e, attempt, "joining again");
                    self.forget_coordinator().await;
                    self.rejoin.store(false, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(self.error(
            "JoinGroup",
            code::COORDINATOR_NOT_AVAILABLE,
            "gave up after repeated tries; is the region up?",
        ))
    }

    /// One JoinGroup and SyncGroup round: the assignment, or None when the
    /// group is rebalancing again.
    pub(super) async fn try_join(&mut self) -> Result<Option<Vec<(String, i32)>>, ConsumerError> {
        let conn = self.coordinator().await?;
        let member_id = self.standing.lock().await.member_id.clone();
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_session_timeout_ms(self.settings.session_timeout_ms)
            .with_rebalance_timeout_ms(self.settings.rebalance_timeout_ms)
            .with_member_id(text(&member_id))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(text(assign::RANGE))
                .with_metadata(assign::encode_subscription(&self.topics))]);
        let resp: JoinGroupResponse = conn.call(ApiKey::JoinGroup, V_JOIN_GROUP, &req).await?;
        match resp.error_code {
            0 => {}
            code::MEMBER_ID_REQUIRED => {
                self.standing.lock().await.member_id = resp.member_id.to_string();
                return Ok(None);
            }
            code::UNKNOWN_MEMBER_ID => {
                self.standing.lock().await.member_id.clear();
                return Ok(None);
            }
            code::REBALANCE_IN_PROGRESS => return Ok(None),
            c => return Err(self.refused("JoinGroup", c)),
        }
        let me = resp.member_id.to_string();
        {
            let mut s = self.standing.lock().await;
            s.member_id = me.clone();
            s.generation = resp.generation_id;
        }
        let mut assignments = Vec::new();
        if resp.leader.as_str() == me {
            let mut members = BTreeMap::new();
            for m in &resp.members {
                let topics = assign::decode_subscription(m.metadata.clone()).unwrap_or_default();
                members.insert(m.member_id.to_string(), topics);
            }
            let mut counts = BTreeMap::new();
            for t in members.values().flatten() {
                if counts.contains_key(t) {
                    continue;
                }
                let n = match self.partitions.get(t) {
                    Some(n) => *n,
                    None => self.client.topic(t, false).await?.leaders.len() as i32,
                };
                counts.insert(t.clone(), n);
            }
            for (m, a) in assign::range(&members, &counts) {
                assignments.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(text(&m))
                        .with_assignment(assign::encode_assignment(&a)),
                );
            }
        }
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_generation_id(resp.generation_id)
            .with_member_id(text(&me))
            .with_protocol_type(Some(text("consumer")))
            .with_protocol_name(Some(text(assign::RANGE)))
            .with_assignments(assignments);
        let sync: SyncGroupResponse = conn.call(ApiKey::SyncGroup, V_SYNC_GROUP, &req).await?;
        match sync.error_code {
            0 => {}
            c if rebalancing(c) => return Ok(None),
            c => return Err(self.refused("SyncGroup", c)),
        }
        let assigned = assign::decode_assignment(sync.assignment).ok_or_else(|| {
            self.error(
                "SyncGroup",
                code::INCONSISTENT_GROUP_PROTOCOL,
                "the leader sent an assignment this member cannot read",
            )
        })?;
        info!(group = %self.group, generation = resp.generation_id, partitions = ?assigned, "joined");
        Ok(Some(assigned))
    }

    /// Positions of the assigned partitions: the committed offsets, each
    /// after finishing a move a crashed member left half done.
    pub(super) async fn take_assignment(
        &mut self,
        assigned: Vec<(String, i32)>,
    ) -> Result<(), ConsumerError> {
        self.positions.clear();
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p) in &assigned {
            by_topic.entry(t.clone()).or_default().push(*p);
        }
        if by_topic.is_empty() {
            return Ok(());
        }
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_topics(Some(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(text(t)))
                            .with_partition_indexes(ps.clone())
                    })
                    .collect(),
            ));
        let resp: OffsetFetchResponse = self
            .coordinator()
            .await?
            .call(ApiKey::OffsetFetch, V_OFFSET_FETCH, &req)
            .await?;
        if resp.error_code != 0 {
            return Err(self.refused("OffsetFetch", resp.error_code));
        }
        for t in resp.topics {
            let topic = t.name.0.to_string();
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(self.refused("OffsetFetch", p.error_code));
                }
                let committed = p.committed_offset.max(0);
                let marker = p
                    .metadata
                    .as_ref()
                    .and_then(|m| MoveMarker::parse(m.as_str()))
                    .filter(|m| m.offset == committed);
                let from = Position {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: committed,
                };
                let start = match marker {
                    Some(m) if self.finish_move(&from, &m).await? => committed + 1,
                    _ => committed,
                };
                self.positions
                    .insert((topic.clone(), p.partition_index), start);
            }
        }
        // Partitions the response left out start at the beginning.
        for (t, p) in assigned {
            self.positions.entry((t, p)).or_insert(0);
        }
        Ok(())
    }

    pub(super) fn start_heartbeat(&mut self) {
        let client = self.client.clone();
        let standing = self.standing.clone();
        let rejoin = self.rejoin.clone();
        let group = self.group.clone();
        let every = Duration::from_millis((self.settings.session_timeout_ms / 3).max(100) as u64);
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let s = standing.lock().await.clone();
                let Some(addr) = s.coordinator.clone() else {
                    rejoin.store(true, Ordering::SeqCst);
                    continue;
                };
                let req = HeartbeatRequest::default()
                    .with_group_id(GroupId(text(&group)))
                    .with_generation_id(s.generation)
                    .with_member_id(text(&s.member_id));
                let r: Result<HeartbeatResponse, _> = match client.connection(&addr).await {
                    Ok(c) => c.call(ApiKey::Heartbeat, V_HEARTBEAT, &req).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(h) if h.error_code == 0 => {}
                    Ok(h) => {
                        debug!(group, code = h.error_code, "heartbeat: rejoin");
                        if coordinator_moved(h.error_code) {
                            standing.lock().await.coordinator = None;
                        }
                        rejoin.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        debug!(group, error = %e, "heartbeat failed");
                        standing.lock().await.coordinator = None;
                        rejoin.store(true, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    /// Leaves the group so that the others take its partitions at once.
    pub(super) async fn leave(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if !self.joined {
            return;
        }
        self.joined = false;
        let s = self.standing.lock().await.clone();
        let req = LeaveGroupRequest::default()
            .with_group_id(GroupId(text(&self.group)))
            .with_member_id(text(&s.member_id));
        if let Ok(c) = self.coordinator().await {
            let r: Result<LeaveGroupResponse, _> =
                c.call(ApiKey::LeaveGroup, V_LEAVE_GROUP, &req).await;
            debug!(group = %self.group, ok = r.is_ok(), "left the group");
        }
    }
}
