//! Reconciling: the partition groups this node runs follow the metadata
//! group's topics (opened when a topic is created, stopped when deleted).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::open::{open_group, FirstLeader};
use super::{Groups, PartitionGroup};
use crate::ids::GroupId;
use crate::meta::{preferred_leader, MetaState};
use crate::storage::state_machine::{Notify, Progress};

impl Groups {
    pub(super) async fn reconcile_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut rx = self.meta_state.clone();
        loop {
            let meta = rx.borrow_and_update().clone();
            self.reconcile(&meta).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    pub(super) async fn reconcile(&self, meta: &MetaState) {
        let mut wanted = HashMap::new();
        for t in meta.topics.values() {
            let policy = crate::meta::policy(&t.configs, &self.region_names);
            if !policy.regions.contains(&self.region) {
                continue; // the topic does not live in this region
            }
            let ids = |v: &[String]| v.iter().map(|r| crate::ids::origin_id(r)).collect();
            // A pinned topic's groups start from its first home and follow
            // the moves their logs apply (`TopicMeta::first_home`).
            let writers = match &t.first_home {
                Some(home) => vec![home.clone()],
                None => policy.writer_regions(),
            };
            let writers = crate::storage::state_machine::Origins {
                writers: ids(&writers),
                regions: ids(&policy.regions),
                node_regions: self.node_regions.clone(),
            };
            for p in 0..t.partitions {
                wanted.insert(t.group(p), (t.name.clone(), t.seq, p, writers.clone()));
            }
        }
        let present: Vec<GroupId> = self
            .partitions
            .read()
            .expect("partitions lock")
            .keys()
            .copied()
            .collect();
        for id in present.iter().filter(|id| !wanted.contains_key(id)) {
            let g = self.partitions.write().expect("partitions lock").remove(id);
            if let Some(g) = g {
                info!(group = id, topic = %g.topic, partition = g.partition, "stopping deleted partition group");
                let _ = g.raft.shutdown().await;
                self.metrics.remove_group(&g.label());
                if let Err(e) = self.db.delete_group(*id) {
                    warn!(group = id, error = %e, "cannot delete partition data");
                }
            }
        }
        let mut to_start: Vec<_> = wanted
            .into_iter()
            .filter(|(id, _)| !present.contains(id))
            .collect();
        to_start.sort_by_key(|(id, _)| *id);
        for (id, (topic, seq, p, writers)) in to_start {
            let (tx, progress) = watch::channel(Progress::default());
            let preferred = preferred_leader(&self.nodes_sorted, seq, p) == self.node_id;
            match open_group(
                self.node_id,
                id,
                &self.region,
                writers,
                Notify::Partition(tx),
                &self.members,
                preferred,
                FirstLeader::Preferred,
                &self.db,
                &self.transport,
                &self.clock,
                &self.raft_config,
                self.limits,
            )
            .await
            {
                Ok(raft) => {
                    debug!(group = id, %topic, partition = p, "partition group started");
                    let g = Arc::new(PartitionGroup {
                        id,
                        topic,
                        partition: p,
                        raft,
                        progress,
                        releasing: AtomicBool::new(false),
                    });
                    self.partitions
                        .write()
                        .expect("partitions lock")
                        .insert(id, g);
                }
                Err(e) => warn!(group = id, error = %e, "cannot start partition group"),
            }
        }
        self.reconciled.send_modify(|n| *n += 1);
    }
}
