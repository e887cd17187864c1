//! The receiving side of the link: copies into the local partition group
//! and high-watermark queries. Forwarded produces and failback requests
//! arrive on the link's kinds too, but are the router's: `rpc` serves them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tracing::warn;

use super::{Held, Link, Reply, Ship};
use super::{KIND_LINK_SHIP, KIND_LINK_STATE};
use crate::command::Command;
use crate::hlc;
use crate::ids::{GroupId, LogRef};
use crate::log::batch;
use crate::raft::groups::WriteError;
use crate::raft::{Groups, PartitionGroup};

fn ser<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// How long a copy that arrived ahead of an earlier one waits for it before
/// the receiver answers with what it holds (and the sender resends).
const GAP_WAIT: Duration = Duration::from_millis(500);

/// Keeps pipelined copies of one origin log in order on their way into the
/// partition's Raft log. Copies travel on separate streams and may arrive
/// out of order; one that starts past what is held or already proposed
/// waits (up to [`GAP_WAIT`]) for the copies before it. This is only for
/// speed: the state machine refuses gaps whatever happens here.
#[derive(Clone, Default)]
pub struct Lanes(Arc<Mutex<LaneMap>>);

type LaneMap = HashMap<(GroupId, LogRef), Arc<Lane>>;

pub struct Lane {
    /// The end of the last copy proposed into Raft.
    proposed: watch::Sender<u64>,
    /// Held while proposing, so that proposals enter Raft in offset order.
    order: tokio::sync::Mutex<()>,
}

impl Lanes {
    fn lane(&self, group: GroupId, log: LogRef) -> Arc<Lane> {
        self.0
            .lock()
            .expect("lanes lock")
            .entry((group, log))
            .or_insert_with(|| {
                Arc::new(Lane {
                    proposed: watch::channel(0).0,
                    order: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Forgets the lanes of partitions no longer on this node.
    pub fn retain(&self, keep: impl Fn(GroupId) -> bool) {
        self.0.lock().expect("lanes lock").retain(|k, _| keep(k.0));
    }
}

/// The origin logs a partition holds here.
pub fn held(g: &PartitionGroup) -> std::collections::BTreeMap<crate::ids::LogRef, Held> {
    super::held_map(&g.progress.borrow().logs)
}

/// How far `hlc` is ahead of the wall clock here, if it is beyond `max_ms`.
pub fn drift_beyond(hlc: u64, now_ms: i64, max_ms: u64) -> Option<i64> {
    let ahead = hlc::wall_ms(hlc) - now_ms;
    (ahead > max_ms as i64).then_some(ahead)
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
    let lanes = link.lanes.clone();
    Box::pin(async move {
        match kind {
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
                if g.releasing() {
                    // Handing leadership over (raft::balance): the sender
                    // finds the new leader and resends.
                    return ser(&Reply::NotLeader(None));
                }
                let ship: Ship = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
                let lane = lanes.lane(g.id, ship.log);
                ser(&copy(&groups, &g, &lane, ship, drift_max, &metrics, timeout).await)
            }
            _ => Err(format!("unknown link request kind {kind}")),
        }
    })
}

/// What `g` holds of `log` here.
fn held_of(g: &PartitionGroup, log: LogRef) -> Held {
    g.progress
        .borrow()
        .logs
        .get(&log)
        .map(|s| Held {
            next_offset: s.next_offset,
            closed: s.closed,
        })
        .unwrap_or_default()
}

/// The batches that end past `proposed`: the others are held here or
/// already in the Raft log.
fn trim_proposed(batches: Vec<Bytes>, proposed: u64) -> Vec<Bytes> {
    batches
        .into_iter()
        .filter(|b| batch::decode(b).map_or(true, |(h, _)| h.end_offset() > proposed))
        .collect()
}

/// Waits until the copies before `start` are held or proposed; false if
/// they do not come within [`GAP_WAIT`].
async fn wait_turn(g: &PartitionGroup, lane: &Lane, log: LogRef, start: u64) -> bool {
    let mut proposed = lane.proposed.subscribe();
    let mut progress = g.progress.clone();
    let deadline = tokio::time::Instant::now() + GAP_WAIT;
    loop {
        let ready = held_of(g, log)
            .next_offset
            .max(*proposed.borrow_and_update());
        if ready >= start {
            return true;
        }
        tokio::select! {
            r = proposed.changed() => if r.is_err() { return false },
            r = progress.changed() => if r.is_err() { return false },
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

async fn copy(
    groups: &Groups,
    g: &Arc<PartitionGroup>,
    lane: &Lane,
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
    if let Some(ahead) = drift_beyond(newest, groups.clock.wall_now_ms(), drift_max) {
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
    let log = ship.log;
    let end = ship.end;
    if !wait_turn(g, lane, log, ship.start()).await {
        // An earlier copy was lost on the way: the sender resends from
        // what this answer says is held.
        return Reply::Logs(held(g));
    }
    let submitted = {
        let _turn = lane.order.lock().await;
        // A resend (after a timeout) of batches still on their way through
        // Raft is not proposed twice: only the closed timestamp, which
        // applies once they are held.
        let proposed = *lane.proposed.borrow();
        let batches = trim_proposed(ship.batches, proposed);
        let cmd = Command::Replicate {
            origin: log.origin,
            epoch: log.epoch,
            closed: ship.closed,
            closed_at: end,
            batches,
        };
        let r = Groups::submit(&g.raft, cmd).await;
        if r.is_ok() {
            lane.proposed.send_modify(|p| *p = (*p).max(end));
        }
        r
    };
    let r = match submitted {
        Ok(rx) => Groups::wait(rx, timeout).await.map(|_| ()),
        Err(e) => Err(e),
    };
    // A copy that did not apply (an earlier one failed, or leadership
    // moved) resets the lane to what is held.
    let now = held_of(g, log).next_offset;
    if r.is_err() || now < end {
        lane.proposed.send_replace(now);
    }
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
    fn resent_batches_already_proposed_are_not_proposed_again() {
        let b = |base: u64| -> Bytes {
            let h = batch::BatchHeader {
                base_offset: base,
                count: 2,
                first_hlc: 1,
            };
            let r = crate::log::RecordIn {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
            };
            batch::encode(h, "eu-west", &[r.clone(), r]).into()
        };
        let base = |v: &[Bytes]| -> Vec<u64> {
            v.iter()
                .map(|x| batch::decode(x).unwrap().0.base_offset)
                .collect()
        };
        assert_eq!(base(&trim_proposed(vec![b(0), b(2), b(4)], 4)), vec![4]);
        assert_eq!(base(&trim_proposed(vec![b(0), b(2)], 0)), vec![0, 2]);
        assert!(trim_proposed(vec![b(0), b(2)], 9).is_empty());
    }

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
