//! Failover (invariant 7): the metadata leader seals the origin logs of a
//! region whose lease has expired, and every partition leader applies the
//! seals to its group, so that the global view goes on without the region.
//!
//! 1. The metadata leader sees a region's lease expired for certain
//!    (`seal::due`: its own clock past the lease plus the clock margin; the
//!    region itself stopped writing a margin before the lease ran out).
//! 2. It asks every node of every other region how far it holds the lost
//!    region's log of each partition (`KIND_HELD`), until two rounds agree,
//!    and takes the furthest (`seal::seal_points`). Every other region must
//!    answer: one that does not may hold records acknowledged as `sync`, so
//!    while a second region is unreachable no region is failed over.
//! 3. It commits `SealRegion`, which the metadata group refuses if the
//!    region renewed its lease since the decision.
//! 4. Each region's partition leaders propose `SealLog` into their groups.
//!    Survivors that hold less than the seal get the rest from the others
//!    over the link; once held, the sealed log stops holding the view back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::seal::{self, Held, Seal, SealEnd};
use crate::config::{ControlConfig, NodeSpec, Topology};
use crate::metrics::Metrics;
use crate::raft::groups::HeldQuery;
use crate::raft::network::KIND_HELD;
use crate::raft::types::{Command, CommandResult, GroupId, META_GROUP};
use crate::raft::Groups;
use crate::storage::{origin_id, EPOCH_FIRST};
use crate::topic::MetaState;
use crate::transport::Transport;
use crate::view::LogRef;

/// Rounds of questions to survivors before a seal is taken anyway.
const ROUNDS_MAX: usize = 5;
/// Time between rounds: copies in flight settle.
const ROUND_GAP: Duration = Duration::from_millis(300);

/// Everything the failover loop needs.
pub struct Failover {
    pub groups: Arc<Groups>,
    pub transport: Arc<Transport>,
    pub topology: Topology,
    pub me: NodeSpec,
    pub cfg: ControlConfig,
    pub margin_ms: u64,
    pub metrics: Arc<Metrics>,
}

impl Failover {
    /// Until `shutdown`: fails regions over when this node leads the
    /// metadata group, and applies committed seals to the partition groups
    /// this node leads. Publishes seals and epochs in metrics.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.topology.regions.len() < 2 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let meta = self.groups.meta_state();
            self.publish(&meta);
            if self.cfg.failover && self.groups.meta_leader() == Some(self.me.id) {
                let now = self.groups.clock.wall_now_ms();
                for r in &self.topology.regions {
                    if r.name != self.me.region
                        && seal::due(&meta.leases, &meta.seals, &r.name, now, self.margin_ms)
                    {
                        self.fail_over(&r.name, now, &meta).await;
                    }
                }
            }
            self.seal_led_groups(&meta).await;
        }
    }

    fn publish(&self, meta: &MetaState) {
        for r in &self.topology.regions {
            let labels = vec![("sealed_region".to_string(), r.name.clone())];
            let sealed = meta.seal_of(&r.name);
            self.metrics
                .region_sealed
                .get_or_create(&labels)
                .set(sealed.is_some() as i64);
            let labels = vec![("epoch_region".to_string(), r.name.clone())];
            self.metrics
                .region_epoch
                .get_or_create(&labels)
                .set(sealed.map_or(EPOCH_FIRST, |s| s.epoch + 1) as i64);
        }
    }

    /// The partition groups in which `region` wrote an origin log.
    fn groups_written_by(&self, region: &str, meta: &MetaState) -> Vec<GroupId> {
        let names: Vec<String> = self
            .topology
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let mut v: Vec<GroupId> = meta
            .topics
            .values()
            .filter(|t| {
                crate::topic::policy(&t.configs, &names)
                    .writer_regions()
                    .iter()
                    .any(|w| w == region)
            })
            .flat_map(|t| (0..t.partitions).map(|p| t.group(p)))
            .collect();
        v.sort_unstable();
        v
    }

    async fn fail_over(&self, region: &str, decided_at_ms: i64, meta: &MetaState) {
        let started = Instant::now();
        let epoch = EPOCH_FIRST;
        let groups = self.groups_written_by(region, meta);
        warn!(
            region,
            partitions = groups.len(),
            "region lease expired; failing it over"
        );
        // Every other region must answer: any of them may hold records
        // acknowledged as `sync` that the others lack. (Right after a
        // metadata leader change, survivors' leases can look expired until
        // their renewals commit again; they are survivors all the same.)
        let survivors: Vec<&crate::config::RegionSpec> = self
            .topology
            .regions
            .iter()
            .filter(|r| r.name != region)
            .collect();
        let query = HeldQuery {
            origin: origin_id(region),
            epoch,
            groups: groups.clone(),
        };
        let payload = bincode::serialize(&query).expect("serialize query");
        let mut last: Option<BTreeMap<GroupId, SealEnd>> = None;
        for round in 0..ROUNDS_MAX {
            let (answers, silent) = self.ask(&survivors, &payload).await;
            if !silent.is_empty() {
                warn!(
                    region,
                    ?silent,
                    "surviving regions did not answer; failover retried later"
                );
                return;
            }
            let ends = seal::seal_points(&groups, &answers);
            if last.as_ref() == Some(&ends) {
                break;
            }
            debug!(region, round, "seal points still moving");
            last = Some(ends);
            tokio::time::sleep(ROUND_GAP).await;
        }
        let Some(ends) = last else { return };
        let records: u64 = ends.values().map(|e| e.end).sum();
        let homes = self.new_homes(region, &survivors, meta);
        let cmd = Command::SealRegion(Seal {
            region: region.to_string(),
            epoch,
            decided_at_ms,
            margin_ms: self.margin_ms,
            ends,
            homes,
        });
        match self
            .groups
            .meta_commit(cmd, Duration::from_millis(self.cfg.lease_ms))
            .await
        {
            Ok(CommandResult::Meta(Ok(()))) => {
                self.metrics.failovers.inc();
                info!(
                    region,
                    epoch,
                    partitions = groups.len(),
                    records_kept = records,
                    took_ms = started.elapsed().as_millis() as u64,
                    "region failed over: its origin logs are sealed"
                );
            }
            Ok(CommandResult::Meta(Err(e))) => info!(region, reason = %e, "failover not needed"),
            Ok(other) => warn!(region, ?other, "unexpected seal result"),
            Err(e) => warn!(region, error = %e, "seal did not commit; failover retried"),
        }
    }

    /// New homes for the topics pinned to `lost`, among `survivors`.
    fn new_homes(
        &self,
        lost: &str,
        survivors: &[&crate::config::RegionSpec],
        meta: &MetaState,
    ) -> BTreeMap<String, String> {
        let names: Vec<String> = self
            .topology
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let up: Vec<&str> = survivors.iter().map(|r| r.name.as_str()).collect();
        let mut homes = BTreeMap::new();
        for t in meta.topics.values() {
            let p = crate::topic::policy(&t.configs, &names);
            if p.writers != crate::topic::Writers::Home(lost.to_string()) {
                continue;
            }
            match seal::new_home(&p.regions, lost, &up) {
                Some(h) => {
                    info!(topic = %t.name, from = lost, to = %h, "moving the topic's home");
                    homes.insert(t.name.clone(), h);
                }
                None => warn!(
                    topic = %t.name,
                    "no region of the topic is up to take over as its home; its writes wait for {lost}"
                ),
            }
        }
        homes
    }

    /// Asks every node of `regions` what it holds; returns the answers and
    /// the regions none of whose nodes answered.
    async fn ask(
        &self,
        regions: &[&crate::config::RegionSpec],
        payload: &[u8],
    ) -> (Vec<Held>, Vec<String>) {
        let timeout = self.transport.rpc_timeout();
        let calls = regions.iter().flat_map(|r| {
            r.nodes.iter().map(move |n| async move {
                let r2 = if n.id == self.me.id {
                    let q: HeldQuery = bincode::deserialize(payload).expect("own query");
                    Ok(self.groups.held(&q))
                } else {
                    self.transport
                        .call(n.id, KIND_HELD, META_GROUP, payload, timeout)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            bincode::deserialize::<Vec<Held>>(&b).map_err(|e| e.to_string())
                        })
                };
                (r.name.clone(), r2)
            })
        });
        let results = futures::future::join_all(calls).await;
        let mut answered = BTreeSet::new();
        let mut held = Vec::new();
        for (region, r) in results {
            match r {
                Ok(h) => {
                    answered.insert(region);
                    held.extend(h);
                }
                Err(e) => debug!(%region, error = %e, "no answer to a seal query"),
            }
        }
        let silent = regions
            .iter()
            .filter(|r| !answered.contains(&r.name))
            .map(|r| r.name.clone())
            .collect();
        (held, silent)
    }

    /// Proposes the committed seals into the partition groups this node
    /// leads whose logs do not carry them yet.
    async fn seal_led_groups(&self, meta: &MetaState) {
        for s in &meta.seals {
            let log = LogRef {
                origin: origin_id(&s.region),
                epoch: s.epoch,
            };
            for (id, end) in &s.ends {
                let Some(g) = self.groups.partition(*id) else {
                    continue;
                };
                if g.leader() != Some(self.me.id) {
                    continue;
                }
                let sealed = g
                    .progress
                    .borrow()
                    .logs
                    .get(&log)
                    .is_some_and(|st| st.sealed.is_some());
                if sealed {
                    continue;
                }
                let cmd = Command::SealLog {
                    origin: log.origin,
                    epoch: log.epoch,
                    end: end.end,
                    last_hlc: end.last_hlc,
                    successor: s.homes.get(&g.topic).map(|h| origin_id(h)),
                };
                match self
                    .groups
                    .write_to(&g, cmd, self.transport.rpc_timeout())
                    .await
                {
                    Ok(_) => {
                        info!(group = id, region = %s.region, end = end.end, "origin log sealed")
                    }
                    Err(e) => debug!(group = id, error = %e, "cannot seal the log yet"),
                }
            }
        }
    }
}
