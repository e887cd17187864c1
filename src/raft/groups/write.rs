//! Writes: proposing a command to a group this node leads and waiting for
//! its commit, and metadata writes from any node (forwarded to the meta
//! leader, relayed by a node that can reach it).

use std::time::Duration;

use openraft::error::ClientWriteError;

use super::{CommitRx, Groups, PartitionGroup, Raft, WriteError};
use crate::command::{Command, CommandResult};
use crate::ids::{NodeId, META_GROUP};
use crate::raft::network::{KIND_META_RELAY, KIND_META_WRITE};

impl Groups {
    /// Proposes `cmd` to a group on this node, without waiting for the
    /// commit: proposals of one caller enter the log in call order.
    pub async fn submit(raft: &Raft, cmd: Command) -> Result<CommitRx, WriteError> {
        raft.client_write_ff(cmd)
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))
    }

    /// Waits for a submitted proposal's result and its log index.
    pub async fn wait(rx: CommitRx, timeout: Duration) -> Result<(CommandResult, u64), WriteError> {
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(WriteError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(_)) => Err(WriteError::Unavailable("the group stopped".into())),
            Ok(Ok(Ok(resp))) => Ok((resp.data, resp.log_id.index)),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                Err(WriteError::NotLeader(f.leader_id))
            }
            Ok(Ok(Err(e))) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Commits `cmd` in partition group `g`, whose leader must be this node.
    pub async fn write_to(
        &self,
        g: &PartitionGroup,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        Ok(Self::write_local(&g.raft, cmd, timeout).await?.0)
    }

    pub(super) async fn write_local(
        raft: &Raft,
        cmd: Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let rx = Self::submit(raft, cmd).await?;
        Self::wait(rx, timeout).await
    }

    /// Commits a meta command through the meta leader, wherever it is,
    /// retrying with backoff while there is no leader, until `timeout`; then
    /// waits until this node has applied it too, so that whoever asked here
    /// reads their own write.
    pub async fn meta_write(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (result, index) = self.commit_meta(cmd, timeout).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.meta
            .wait(Some(left))
            .applied_index_at_least(Some(index), "meta write applied here")
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
        Ok(result)
    }

    /// Commits a meta command through the meta leader, without waiting for
    /// this node to apply it: for a node that may be cut off from the
    /// leader, and that acts on the commit itself (a region lease).
    pub async fn meta_commit(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<CommandResult, WriteError> {
        Ok(self.commit_meta(cmd, timeout).await?.0)
    }

    /// Commits a meta command through the leader, wherever it is (through a
    /// node of a third region when this node cannot reach it), retrying
    /// with backoff while there is no leader, until `timeout`; returns the
    /// result and the entry's index.
    async fn commit_meta(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WriteError::Timeout(timeout.as_millis() as u64));
            }
            let r = match self.meta_leader() {
                Some(l) if l == self.node_id => {
                    Self::write_local(&self.meta, cmd.clone(), left).await
                }
                Some(l) => self.forward_meta_write(l, &cmd, left).await,
                // Cut off from the leader, a follower loses track of it:
                // another region knows.
                None => self.relay_meta_write("", &cmd, left).await,
            };
            match r {
                Err(WriteError::NotLeader(_)) | Err(WriteError::Unavailable(_)) => {
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Sends a meta command to the leader; if the leader cannot be reached
    /// (a cut between two regions), through a node of a third region.
    async fn forward_meta_write(
        &self,
        leader: NodeId,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let payload = bincode::serialize(cmd).expect("serialize command");
        let direct = self
            .transport
            .call(leader, KIND_META_WRITE, META_GROUP, &payload, timeout)
            .await;
        match direct {
            Ok(resp) => decode_forwarded(&resp),
            Err(_) => {
                // The relays share what is left of the caller's deadline.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let region = self.transport.faults.region_of(leader).unwrap_or("");
                self.relay_meta_write(region, cmd, left).await
            }
        }
    }

    /// Has a node of a region other than this node's and `not` pass a meta
    /// command to the leader it knows; the first that answers wins.
    async fn relay_meta_write(
        &self,
        not: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<(CommandResult, u64), WriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let payload = bincode::serialize(cmd).expect("serialize command");
        let mut last = WriteError::NotLeader(None);
        for relay in self.transport.faults.relays_around(not) {
            // All relays together stay within the caller's deadline.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WriteError::Timeout(timeout.as_millis() as u64));
            }
            match self
                .transport
                .call(relay, KIND_META_RELAY, META_GROUP, &payload, left)
                .await
            {
                Ok(resp) => match decode_forwarded(&resp) {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                },
                Err(e) => last = WriteError::Unavailable(e.to_string()),
            }
        }
        Err(last)
    }
}

fn decode_forwarded(resp: &[u8]) -> Result<(CommandResult, u64), WriteError> {
    bincode::deserialize::<Result<(CommandResult, u64), WriteError>>(resp)
        .map_err(|e| WriteError::Unavailable(format!("bad forwarded response: {e}")))?
}
