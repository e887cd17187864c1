//! The receiving side of the link: copies into the local partition group,
//! high-watermark queries, and forwarded produces.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tracing::warn;

use super::{Forward, ForwardReply, Held, Link, Reply, Ship};
use super::{KIND_LINK_FORWARD, KIND_LINK_SHIP, KIND_LINK_STATE};
use crate::hlc;
use crate::raft::groups::WriteError;
use crate::raft::types::{Command, GroupId};
use crate::raft::{Groups, PartitionGroup};
use crate::router::PartitionError;
use crate::storage::batch;

fn ser<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// The origin logs a partition holds here.
pub fn held(g: &PartitionGroup) -> std::collections::BTreeMap<crate::view::LogRef, Held> {
    super::held_map(&g.progress.borrow().logs)
}

/// How far `hlc` is ahead of the wall clock here, if it is beyond `max_ms`.
pub fn drift_beyond(hlc: u64, now_ms: i64, max_ms: u64) -> Option<i64> {
    let ahead = hlc::wall_ms(hlc) - now_ms;
    (ahead > max_ms as i64).then_some(ahead)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn handle(
    link: &Link,
    kind: u8,
    group: GroupId,
    payload: Bytes,
) -> BoxFuture<'static, Result<Vec<u8>, String>> {
    let g = link.groups.partition(group);
    let groups = link.groups.clone();
    let me = link.me.id;
    let drift_max = link.cfg.clock_drift_ms_max;
    let metrics = link.metrics.clone();
    let timeout = link.transport.rpc_timeout();
    let router = link.router.get().and_then(|w| w.upgrade());
    Box::pin(async move {
        match kind {
            KIND_LINK_FORWARD => {
                let f: Forward = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
                let Some(router) = router else {
                    return ser::<ForwardReply>(&Err(PartitionError::LeaderNotAvailable));
                };
                // The same cap as a produce received here.
                let max = Duration::from_millis(router.kafka.produce_timeout_ms_max);
                let t = Duration::from_millis(f.timeout_ms).min(max);
                let r = async {
                    router
                        .submit_local(&f.topic, f.partition, f.records)
                        .await?
                        .wait(t)
                        .await
                }
                .await;
                ser::<ForwardReply>(&r)
            }
            KIND_LINK_STATE | KIND_LINK_SHIP => {
                let Some(g) = g else {
                    return ser(&Reply::NotLeader(None));
                };
                if g.leader() != Some(me) {
                    return ser(&Reply::NotLeader(g.leader()));
                }
                if kind == KIND_LINK_STATE {
                    return ser(&Reply::Logs(held(&g)));
                }
                let ship: Ship = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
                ser(&copy(&groups, &g, ship, drift_max, &metrics, timeout).await)
            }
            _ => Err(format!("unknown link request kind {kind}")),
        }
    })
}

async fn copy(
    groups: &Groups,
    g: &Arc<PartitionGroup>,
    ship: Ship,
    drift_max: u64,
    metrics: &crate::metrics::Metrics,
    timeout: Duration,
) -> Reply {
    // Invariant 2 across regions: refuse HLCs from a clock too far ahead,
    // instead of dragging this region's clock along.
    let mut newest = ship.closed;
    for b in &ship.batches {
        match batch::decode(b) {
            Ok((h, _)) if h.count > 0 => newest = newest.max(h.last_hlc()),
            _ => return Reply::Refused("undecodable batch".into()),
        }
    }
    if let Some(ahead) = drift_beyond(newest, now_ms(), drift_max) {
        metrics.clock_drift_refusals.inc();
        let msg = format!(
            "records from region {} carry HLCs {ahead} ms ahead of this node's clock \
             (link.clock_drift_ms_max = {drift_max}); check the clocks (NTP) of both regions",
            ship.from_region
        );
        warn!(group = g.id, from = %ship.from_region, ahead_ms = ahead, "refusing a copy: clock drift");
        return Reply::Refused(msg);
    }
    // Causality: what this region commits after reading these records
    // gets larger HLCs.
    groups.clock.observe(newest);
    let cmd = Command::Replicate {
        origin: ship.log.origin,
        epoch: ship.log.epoch,
        closed: ship.closed,
        batches: ship.batches,
    };
    let r = match Groups::submit(&g.raft, cmd).await {
        Ok(rx) => Groups::wait(rx, timeout).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Reply::Logs(held(g)),
        Err(WriteError::NotLeader(l)) => Reply::NotLeader(l),
        Err(e) => Reply::Refused(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_measured_against_the_wall_clock() {
        let now = 1_763_712_000_000i64;
        let at = |ms: i64| hlc::from_wall_ms(ms) + 3;
        assert_eq!(drift_beyond(at(now + 400), now, 500), None);
        assert_eq!(
            drift_beyond(at(now - 10_000), now, 500),
            None,
            "old records are fine"
        );
        assert_eq!(drift_beyond(at(now + 900), now, 500), Some(900));
    }
}
