//! Opening one group: its log store and state machine over the node's
//! RocksDB, its Raft, and how it gets its first leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tracing::{debug, info, Instrument};

use super::{GroupError, GroupLimits, Raft};
use crate::hlc::Clock;
use crate::ids::{GroupId, NodeId};
use crate::raft::network::NetworkFactory;
use crate::storage::state_machine::{Notify, Origins};
use crate::storage::{Db, LogStore, StateMachine};
use crate::transport::Transport;

/// How a new group gets its first leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstLeader {
    /// Every node initializes the group and campaigns; the preferred node
    /// calls one more election (the metadata group, whose pre-vote gates
    /// later elections).
    Anyone,
    /// Only the preferred node initializes and campaigns (partition
    /// groups: this spreads their leaders over the region's nodes).
    Preferred,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn open_group(
    node_id: NodeId,
    group: GroupId,
    region: &str,
    origins: Origins,
    notify: Notify,
    members: &BTreeMap<NodeId, BasicNode>,
    preferred: bool,
    first: FirstLeader,
    db: &Arc<Db>,
    transport: &Arc<Transport>,
    clock: &Arc<Clock>,
    config: &Arc<openraft::Config>,
    limits: GroupLimits,
) -> Result<Raft, GroupError> {
    let start_err = |reason: String| GroupError::Start { group, reason };
    let mut log = LogStore::new(db.clone(), group, limits.cache);
    let pristine = log
        .is_pristine()
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let sm = StateMachine::open(
        db.clone(),
        group,
        region.to_string(),
        origins,
        clock.clone(),
        notify,
    )
    .map_err(|e| start_err(e.to_string()))?;
    let network = NetworkFactory {
        transport: transport.clone(),
        group,
        append_bytes_max: limits.append_bytes_max,
    };
    let raft = Raft::new(node_id, config.clone(), network, log, sm)
        .instrument(tracing::info_span!("raft", region, node = node_id, group))
        .await
        .map_err(|e| start_err(e.to_string()))?;
    if !pristine {
        return Ok(raft);
    }
    // openraft's initialize() makes the node campaign at once.
    match first {
        FirstLeader::Anyone => {
            // Every node initializes with the same membership, which
            // openraft allows; the preferred one calls another election
            // right after.
            if let Err(e) = raft.initialize(members.clone()).await {
                debug!(group, error = %e, "group already initialized");
            }
            if preferred {
                let _ = raft.trigger().elect().await;
            }
        }
        FirstLeader::Preferred if preferred => {
            if let Err(e) = raft.initialize(members.clone()).await {
                debug!(group, error = %e, "group already initialized");
            }
        }
        FirstLeader::Preferred => {
            // Only the preferred node campaigns, so leaders spread however
            // unevenly the nodes start the group (a node that initialized
            // first used to win every group it started first). Should the
            // preferred node be down, the others initialize once nothing
            // reached them for twice the election timeout.
            let (raft, members) = (raft.clone(), members.clone());
            let wait = Duration::from_millis(config.election_timeout_max * 2);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let untouched = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    m.last_log_index.is_none() && m.current_leader.is_none()
                };
                if untouched {
                    info!(
                        group,
                        "the preferred leader never reached this node; initializing the group here"
                    );
                    if let Err(e) = raft.initialize(members).await {
                        debug!(group, error = %e, "group already initialized");
                    }
                }
            });
        }
    }
    Ok(raft)
}
