//! The cross-region control plane. Its state lives in the metadata group,
//! which has voters in every region (losing any one region keeps its
//! quorum when there are three or more): topic configs, and for now the
//! regions' write leases (invariant 6). Seals, epochs and failover build on
//! these (issue 4).
//!
//! [`run_leases`] renews this node's region lease in the background; the
//! router refuses writes while the region holds none ([`Fence`]).

pub mod failover;
mod home;
pub mod retention;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::command::{Command, CommandResult};
use crate::config::{ControlConfig, NodeSpec, Topology};
use crate::meta::lease::{self, Timing};
use crate::metrics::Metrics;
use crate::raft::Groups;

/// Whether this node's region may accept writes now.
#[derive(Clone)]
pub struct Fence {
    groups: Arc<Groups>,
    region: String,
    margin_ms: u64,
    /// One region: nobody else can take over, so no lease is needed.
    single_region: bool,
    /// The lease this node's own last renewal committed, until (Unix ms).
    /// A node cut off from the metadata leader (a cut between two regions)
    /// applies no metadata, but its renewals still commit through a third
    /// region, and their commit is what it needs to know.
    confirmed: Arc<AtomicI64>,
}

impl Fence {
    pub fn new(groups: Arc<Groups>, topology: &Topology, region: &str, margin_ms: u64) -> Fence {
        Fence {
            groups,
            region: region.to_string(),
            margin_ms,
            single_region: topology.regions.len() < 2,
            confirmed: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The region's lease as this node knows it: committed by the metadata
    /// group, seen applied here or confirmed by this node's renewal.
    pub fn lease_until(&self) -> Option<i64> {
        let applied = self.groups.meta_state().leases.get(&self.region).copied();
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        applied
            .into_iter()
            .chain((confirmed > 0).then_some(confirmed))
            .max()
    }

    /// Milliseconds of writing left, `None` when no lease is needed; 0
    /// once the region was failed over (its epoch is sealed).
    pub fn remaining_ms(&self) -> Option<i64> {
        if self.single_region {
            return None;
        }
        if self.sealed() {
            return Some(0);
        }
        let leases: lease::Leases = self
            .lease_until()
            .map(|u| (self.region.clone(), u))
            .into_iter()
            .collect();
        Some(lease::remaining_ms(
            &leases,
            &self.region,
            // The wall clock, not the HLC: a lease is about real time, and
            // the HLC may run ahead after observing a remote clock.
            self.groups.clock.wall_now_ms(),
            self.margin_ms,
        ))
    }

    /// Whether the region may accept writes for a topic held by `regions`:
    /// a topic only this region holds can be taken over by no one, so its
    /// writes need no lease.
    pub fn may_write(&self, regions: &[String]) -> bool {
        if regions.iter().all(|r| *r == self.region) {
            return true;
        }
        self.remaining_ms().is_none_or(|ms| ms > 0)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Whether this region was failed over, as far as this node has heard.
    pub fn sealed(&self) -> bool {
        self.groups.meta_state().seal_of(&self.region).is_some()
    }
}

/// Renews this node's region lease until `shutdown`; publishes every
/// region's lease in metrics and logs when this region loses or regains
/// its lease.
pub async fn run_leases(
    groups: Arc<Groups>,
    topology: Topology,
    me: NodeSpec,
    cfg: ControlConfig,
    fence: Fence,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let margin_ms = fence.margin_ms;
    if topology.regions.len() < 2 {
        // One region needs no lease; wait for shutdown like the others.
        shutdown.cancelled().await;
        return;
    }
    let timing = Timing {
        lease_ms: cfg.lease_ms,
        renew_ms: cfg.renew_ms,
        margin_ms,
    };
    let mut tick = tokio::time::interval(Duration::from_millis((cfg.renew_ms / 4).max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let meta = groups.meta_state();
        let now = groups.clock.wall_now_ms();
        for r in &topology.regions {
            // Its own region's lease as this node acts on it.
            let left = match fence.remaining_ms() {
                Some(ms) if r.name == me.region => ms,
                _ => lease::remaining_ms(&meta.leases, &r.name, now, margin_ms),
            };
            metrics
                .lease_remaining_ms
                .get_or_create(&vec![("lease_region".to_string(), r.name.clone())])
                .set(left);
        }
        let ok = fence.remaining_ms().is_none_or(|ms| ms > 0);
        if held != Some(ok) {
            if ok {
                info!(region = %me.region, "region holds its write lease; accepting writes");
            } else if held.is_some() {
                warn!(region = %me.region, "region lost its write lease (cut off from the other regions?); refusing writes");
            }
            held = Some(ok);
        }
        if !lease::should_renew(fence.lease_until(), now, timing) {
            continue;
        }
        // Every node renews for itself: each needs to know its renewal
        // committed (see `Fence::confirmed`); that is one small metadata
        // commit per node and renewal interval.
        let until = now + cfg.lease_ms as i64;
        let cmd = Command::RenewLease {
            region: me.region.clone(),
            until_ms: until,
            epoch: meta.epoch_of(&me.region),
        };
        match groups
            .meta_commit(cmd, Duration::from_millis(cfg.renew_ms))
            .await
        {
            Ok(CommandResult::Meta(Err(e))) => {
                debug!(error = %e, "lease renewal refused");
            }
            Ok(_) => {
                fence.confirmed.fetch_max(until, Ordering::Relaxed);
                metrics.lease_renewals.inc();
            }
            Err(e) => debug!(error = %e, "lease renewal did not commit; retrying"),
        }
    }
}
