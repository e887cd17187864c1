//! Raft RPCs of every group over the node's QUIC transport.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::command::{entry_bytes, TypeConfig};
use crate::ids::{GroupId, NodeId};
use crate::transport::{Transport, TransportError};

pub const KIND_APPEND: u8 = 1;
pub const KIND_VOTE: u8 = 2;
pub const KIND_SNAPSHOT: u8 = 3;
/// A meta-group write forwarded to the meta leader.
pub const KIND_META_WRITE: u8 = 4;
/// A meta write for the meta leader, relayed by a node of a third region
/// when the leader cannot be reached directly (partial partitions).
pub const KIND_META_RELAY: u8 = 5;
/// How much of a lost region's origin logs this node holds
/// (`meta::seal::Held`), asked by the metadata leader before a seal.
pub const KIND_HELD: u8 = 6;
/// Whether this node hears a live metadata leader (`raft::prevote`).
pub const KIND_PING: u8 = 7;
/// Take over leadership of a partition group, whose leader is handing it
/// over (`raft::balance`).
pub const KIND_CAMPAIGN: u8 = 8;

pub struct NetworkFactory {
    pub transport: Arc<Transport>,
    pub group: GroupId,
    /// `raft.append_bytes_max`.
    pub append_bytes_max: u64,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Network {
        Network {
            transport: self.transport.clone(),
            group: self.group,
            target,
            append_bytes_max: self.append_bytes_max,
        }
    }
}

pub struct Network {
    transport: Arc<Transport>,
    group: GroupId,
    target: NodeId,
    append_bytes_max: u64,
}

/// How many of `sizes` (entry sizes in log order) one AppendEntries may
/// carry within `max` bytes: as many as fit, and always at least one (a
/// single entry is never larger than `raft.entry_bytes_max`, which the
/// config keeps below `max`).
pub fn entries_within(sizes: impl IntoIterator<Item = u64>, max: u64) -> usize {
    let mut total = 0u64;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if total > max && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

type RpcErr<E> = RPCError<NodeId, BasicNode, E>;

impl Network {
    async fn call<Req, Resp, E>(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = bincode::serialize(req).expect("serialize raft rpc");
        let resp = self
            .transport
            .call(self.target, kind, self.group, &payload, option.hard_ttl())
            .await
            .map_err(|e| match e {
                // Openraft backs off from unreachable peers.
                TransportError::Connect { .. } | TransportError::UnknownPeer(_) => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        let r: Result<Resp, E> =
            bincode::deserialize(&resp).map_err(|e| RPCError::Network(NetworkError::new(&*e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        // openraft bounds an AppendEntries by entry count only; bound it by
        // bytes too, so that it fits the transport frame and its deadline
        // (the heartbeat interval). openraft sends fewer entries at once
        // when told how many fit.
        let fit = entries_within(rpc.entries.iter().map(entry_bytes), self.append_bytes_max);
        if fit < rpc.entries.len() {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit as u64),
            ));
        }
        self.call(KIND_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(KIND_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<RaftError<NodeId>>> {
        self.call(KIND_VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::entries_within;

    #[test]
    fn appends_are_cut_by_bytes_and_carry_at_least_one_entry() {
        assert_eq!(entries_within([10, 10, 10], 30), 3);
        assert_eq!(entries_within([10, 10, 10], 29), 2);
        assert_eq!(entries_within([40, 10], 30), 1, "one entry always goes");
        assert_eq!(entries_within([], 30), 0);
        assert_eq!(entries_within([u64::MAX, 1], 30), 1);
    }
}
