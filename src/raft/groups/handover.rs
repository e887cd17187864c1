//! Leadership balance, the driver: every `raft.balance_interval_ms` this
//! node hands at most one group it leads to another node, which campaigns
//! for it when asked. Which group and to whom is pure, in `raft::balance`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Groups;
use crate::ids::{GroupId, NodeId};
use crate::meta::preferred_leader;
use crate::raft::balance;
use crate::raft::network::KIND_CAMPAIGN;

impl Groups {
    /// Every `raft.balance_interval_ms`, hands at most one group this node
    /// leads to another node (`raft::balance`).
    pub(super) async fn balance_loop(self: Arc<Self>, shutdown: CancellationToken) {
        if self.balance_interval.is_zero() {
            shutdown.cancelled().await;
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.balance_interval) => {}
            }
            if let Some((group, to)) = self.balance_plan() {
                self.hand_over(group, to).await;
            }
        }
    }

    /// The region's leadership as this node's replicas see it: groups led
    /// per node.
    pub fn leadership(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes_sorted.iter().map(|n| (*n, 0)).collect();
        for g in self.partitions() {
            if let Some(l) = g.leader() {
                *load.entry(l).or_default() += 1;
            }
        }
        load
    }

    pub(super) fn balance_plan(&self) -> Option<(GroupId, NodeId)> {
        let load = self.leadership();
        let led: Vec<balance::Led> = self
            .partitions()
            .iter()
            .filter_map(|g| {
                let m = g.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.node_id) || g.releasing() {
                    return None;
                }
                let last = m.last_log_index;
                let ready = m
                    .replication
                    .as_ref()?
                    .iter()
                    .filter(|(n, matched)| **n != self.node_id && matched.map(|l| l.index) == last)
                    .map(|(n, _)| *n)
                    .collect();
                Some(balance::Led {
                    group: g.id,
                    preferred: preferred_leader(
                        &self.nodes_sorted,
                        (g.id >> 32) as u32,
                        g.partition,
                    ),
                    ready,
                })
            })
            .collect();
        balance::plan(self.node_id, &led, &load)
    }

    /// Hands `group`, which this node leads, to `to` (see `raft::balance`).
    pub(super) async fn hand_over(&self, group: GroupId, to: NodeId) {
        let Some(g) = self.partition(group) else {
            return;
        };
        let ask = self
            .transport
            .call(to, KIND_CAMPAIGN, group, &[], self.transport.rpc_timeout())
            .await;
        if let Err(e) = ask {
            debug!(group, to, error = %e, "the node to hand leadership to did not answer");
            return;
        }
        g.releasing.store(true, Ordering::Relaxed);
        g.raft.runtime_config().heartbeat(false);
        let started = Instant::now();
        let limit = Duration::from_millis(2 * self.raft_config.election_timeout_max);
        while started.elapsed() < limit && g.leader() == Some(self.node_id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        g.raft.runtime_config().heartbeat(true);
        g.releasing.store(false, Ordering::Relaxed);
        let now = g.leader();
        if now == Some(to) {
            info!(group, topic = %g.topic, partition = g.partition, from = self.node_id, to,
                  took_ms = started.elapsed().as_millis() as u64, "partition leadership handed over");
        } else {
            info!(group, to, leader = ?now, "leadership handover did not complete; leading again if still leader");
        }
    }

    /// Asked to take over `group`: campaign until leader, for at most
    /// twice the election timeout (the old leader has stopped its
    /// heartbeats; followers vote once its lease ran out).
    pub(super) fn campaign(&self, group: GroupId) -> Result<(), String> {
        let g = self
            .partition(group)
            .ok_or_else(|| format!("group {group} is not running on this node"))?;
        let me = self.node_id;
        let limit = Duration::from_millis(2 * self.raft_config.election_timeout_max);
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < limit && g.leader() != Some(me) {
                let _ = g.raft.trigger().elect().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(())
    }
}
