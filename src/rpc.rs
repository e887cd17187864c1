//! Node-to-node request dispatch, wired by the node above everything it
//! calls: Raft's kinds go to the node's groups (`raft/`, which also answer
//! the held-log queries of a failover), copies and high-watermark queries
//! to the link's copier (`link/inbound.rs`), and what arrives for the
//! router, writes forwarded to a pinned topic's home and a returning
//! region's failback steps, to the router. So the link needs no way back up
//! to the router.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::command::{Command, CommandResult, PartitionError};
use crate::ids::GroupId;
use crate::link::{
    is_copy_kind, FailbackReply, FailbackReq, Forward, ForwardReply, Link, KIND_LINK_FAILBACK,
    KIND_LINK_FORWARD,
};
use crate::raft::Groups;
use crate::router::Router;
use crate::transport::Handler;

/// Serves every request kind on the node's transport endpoint.
pub struct Dispatch {
    pub groups: Arc<Groups>,
    pub link: Arc<Link>,
    pub router: Arc<Router>,
}

impl Handler for Dispatch {
    fn handle(
        &self,
        kind: u8,
        group: u64,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        match kind {
            KIND_LINK_FORWARD => Box::pin(forwarded(self.router.clone(), payload)),
            KIND_LINK_FAILBACK => Box::pin(failback(
                self.router.clone(),
                self.groups.clone(),
                self.link.transport.rpc_timeout(),
                group,
                payload,
            )),
            k if is_copy_kind(k) => self.link.handle(kind, group, payload),
            _ => self.groups.handle(kind, group, payload),
        }
    }
}

fn ser<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// A produce another region's node forwarded to this one, its topic's
/// home: submitted here as if a client sent it, with the same timeout cap.
async fn forwarded(router: Arc<Router>, payload: Bytes) -> Result<Vec<u8>, String> {
    let f: Forward = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
    let max = Duration::from_millis(router.kafka.produce_timeout_ms_max);
    let t = Duration::from_millis(f.timeout_ms).min(max);
    let r = async {
        router
            .submit_local(&f.topic, f.partition, f.records, f.producer)
            .await?
            .wait(t)
            .await
    }
    .await;
    ser::<ForwardReply>(&r)
}

/// A returning region's failback step for partition group `group`, served
/// by this region's leader of it.
async fn failback(
    router: Arc<Router>,
    groups: Arc<Groups>,
    timeout: Duration,
    group: GroupId,
    payload: Bytes,
) -> Result<Vec<u8>, String> {
    let req: FailbackReq = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
    let Some(g) = groups.partition(group) else {
        return ser::<FailbackReply>(&Err(PartitionError::LeaderNotAvailable));
    };
    let r: FailbackReply = match req {
        FailbackReq::Reinject {
            from,
            offset,
            records,
            timeout_ms,
        } => {
            let t = Duration::from_millis(timeout_ms).min(timeout);
            router.reinject(group, from, offset, records, t).await
        }
        FailbackReq::Admit { log } => {
            let me = router.me.id;
            if g.leader() != Some(me) {
                Err(PartitionError::NotLeader(g.leader()))
            } else {
                match groups.write_to(&g, Command::Admit { log }, timeout).await {
                    Ok(CommandResult::LogState { closed, .. }) => Ok(closed),
                    Ok(other) => Err(PartitionError::Storage(format!(
                        "unexpected admit result {other:?}"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
        }
    };
    ser(&r)
}
