//! Serving the node's Raft requests: AppendEntries, votes, snapshots,
//! pings (pre-vote), forwarded and relayed metadata writes, campaign
//! requests of a handover, and the held-log queries a failover asks
//! (`meta::seal::Held`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use serde::{Deserialize, Serialize};

use super::{Groups, PartitionGroup, WriteError};
use crate::command::{Command, CommandResult, TypeConfig};
use crate::ids::{GroupId, NodeId, META_GROUP};
use crate::raft::network::{
    KIND_APPEND, KIND_CAMPAIGN, KIND_HELD, KIND_META_RELAY, KIND_META_WRITE, KIND_PING,
    KIND_SNAPSHOT, KIND_VOTE,
};
use crate::raft::prevote;
use crate::transport::Handler;

impl Groups {
    /// The groups of `q` this node leads.
    pub(super) fn led_of(&self, q: &HeldQuery) -> Vec<Arc<PartitionGroup>> {
        q.groups
            .iter()
            .filter_map(|id| self.partition(*id))
            .filter(|g| g.leader() == Some(self.node_id))
            .collect()
    }

    /// How far this node holds `q`'s log, for the groups of `q` it leads.
    /// Each answer follows a linearizable read, so it covers every entry
    /// the group committed: everything the region acknowledged holding
    /// (what a `sync` ack waited for) is included. Groups it does not lead,
    /// or that cannot confirm their leadership within `timeout`, are left
    /// out.
    pub async fn held(&self, q: &HeldQuery, timeout: Duration) -> Vec<crate::meta::seal::Held> {
        held_of(self.led_of(q), q, timeout).await
    }
}

fn de<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    bincode::deserialize(payload).map_err(|e| format!("malformed request: {e}"))
}

fn ser<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// Asks a node how much of origin log `(origin, epoch)` it holds, per group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldQuery {
    pub origin: u32,
    pub epoch: u32,
    pub groups: Vec<GroupId>,
}

async fn held_of(
    led: Vec<Arc<PartitionGroup>>,
    q: &HeldQuery,
    timeout: Duration,
) -> Vec<crate::meta::seal::Held> {
    let log = crate::ids::LogRef {
        origin: q.origin,
        epoch: q.epoch,
    };
    let reads = led.into_iter().map(|g| async move {
        let confirmed = tokio::time::timeout(timeout, g.raft.ensure_linearizable())
            .await
            .is_ok_and(|r| r.is_ok());
        confirmed.then(|| {
            let st = g
                .progress
                .borrow()
                .logs
                .get(&log)
                .copied()
                .unwrap_or_default();
            crate::meta::seal::Held {
                group: g.id,
                next_offset: st.next_offset,
                last_hlc: st.last_hlc,
            }
        })
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

impl Handler for Groups {
    fn handle(
        &self,
        kind: u8,
        group: GroupId,
        payload: bytes::Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        if kind == KIND_CAMPAIGN {
            let r = self.campaign(group);
            return Box::pin(async move { r.map(|()| Vec::new()) });
        }
        if kind == KIND_PING {
            let answer = prevote::encode(&self.prevote_answer());
            return Box::pin(async move { Ok(answer) });
        }
        if kind == KIND_HELD {
            let q: Result<HeldQuery, String> = de(&payload);
            let led = q.as_ref().map(|q| self.led_of(q)).unwrap_or_default();
            let timeout = self.transport.rpc_timeout() / 2;
            return Box::pin(async move { ser(&held_of(led, &q?, timeout).await) });
        }
        let raft = self.raft_of(group);
        let meta_timeout = self.transport.rpc_timeout();
        let transport = self.transport.clone();
        let me = self.node_id;
        // Where a metadata AppendEntries this node accepts is noted.
        let heard = (group == META_GROUP && kind == KIND_APPEND)
            .then(|| (self.started, self.meta_heard_ms.clone()));
        Box::pin(async move {
            let raft = raft.ok_or_else(|| format!("group {group} is not running on this node"))?;
            match kind {
                KIND_APPEND => {
                    let req: AppendEntriesRequest<TypeConfig> = de(&payload)?;
                    let resp = raft.append_entries(req).await;
                    if let (Some((started, at)), Ok(r)) = (heard, &resp) {
                        // A leader whose term this node accepts.
                        if !matches!(r, AppendEntriesResponse::HigherVote(_)) {
                            at.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        }
                    }
                    ser(&resp)
                }
                KIND_VOTE => {
                    let req: VoteRequest<NodeId> = de(&payload)?;
                    ser(&raft.vote(req).await)
                }
                KIND_SNAPSHOT => {
                    let req: InstallSnapshotRequest<TypeConfig> = de(&payload)?;
                    ser(&raft.install_snapshot(req).await)
                }
                KIND_META_WRITE if group == META_GROUP => {
                    let cmd: Command = de(&payload)?;
                    // Forwarded once only: a node that is no longer leader answers NotLeader.
                    ser(&Groups::write_local(&raft, cmd, meta_timeout).await)
                }
                KIND_META_RELAY if group == META_GROUP => {
                    // One hop only: to the leader this node knows.
                    let cmd: Command = de(&payload)?;
                    let leader = raft.metrics().borrow().current_leader;
                    match leader {
                        Some(l) if l == me => {
                            ser(&Groups::write_local(&raft, cmd, meta_timeout).await)
                        }
                        Some(l) => transport
                            .call(l, KIND_META_WRITE, META_GROUP, &payload, meta_timeout)
                            .await
                            .map_err(|e| e.to_string()),
                        None => ser(&Err::<(CommandResult, u64), _>(WriteError::NotLeader(None))),
                    }
                }
                _ => Err(format!("unknown request kind {kind} for group {group}")),
            }
        })
    }
}
