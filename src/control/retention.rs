//! Retention and DeleteRecords, on each partition leader: every
//! `storage.retention_check_interval_ms`, and at once when DeleteRecords
//! moved a log start in the metadata group, the leader works out where its
//! partition's log start should be and what each origin log may lose
//! (`log::retention`), and proposes `Command::Trim`; its group applies it on
//! every node of the region (`storage::state_machine::trim`).
//!
//! Each region trims its own copy. The view is the same in every region, so
//! the same `retention.ms` gives the same log start everywhere once the
//! regions have merged that far; removal of a batch also waits until every
//! other region of the topic holds it (docs/replication.md, "What
//! retention keeps").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::command::Command;
use crate::config::StorageConfig;
use crate::ids::{origin_id, LogRef};
use crate::link::Link;
use crate::log::retention::{keep_points, size_cut, target_start};
use crate::metrics::Metrics;
use crate::raft::{Groups, PartitionGroup};
use crate::storage::{read, DbError, LogKey};

fn part_labels(g: &PartitionGroup) -> Vec<(String, String)> {
    vec![
        ("topic".to_string(), g.topic.clone()),
        ("partition".to_string(), g.partition.to_string()),
    ]
}

/// How long a proposed trim may take to commit.
const TRIM_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Retention {
    pub groups: Arc<Groups>,
    pub link: Arc<Link>,
    pub cfg: StorageConfig,
    pub metrics: Arc<Metrics>,
}

/// A trim a leader would propose, and what it found on the way.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    log_start: u64,
    hlc: u64,
    keep: Vec<(LogRef, u64)>,
    /// Records below the log start kept for a region that lacks them.
    pinned: u64,
}

impl Retention {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.cfg.retention_check_interval_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut meta = self.groups.meta_watch();
        let mut asked = meta.borrow().log_starts.clone();
        // Partitions whose figures this node reports, to drop their series
        // when it stops leading them: a former leader's would go stale.
        let mut reported: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                r = meta.changed() => {
                    if r.is_err() {
                        shutdown.cancelled().await;
                        return;
                    }
                    // DeleteRecords: act now, not at the next interval.
                    let now = meta.borrow_and_update().log_starts.clone();
                    if now == asked {
                        continue;
                    }
                    asked = now;
                }
            }
            let mut led = std::collections::BTreeSet::new();
            // Trims commit concurrently: a partition whose region lost its
            // quorum does not hold the others up.
            let mut trims = tokio::task::JoinSet::new();
            for g in self.groups.partitions() {
                if shutdown.is_cancelled() {
                    return;
                }
                if g.leader() != Some(self.groups.node_id) || g.releasing() {
                    continue;
                }
                led.insert(g.id);
                reported.insert(g.id, part_labels(&g));
                let span = tracing::info_span!("retention", region = %self.groups.region, node = self.groups.node_id, group = g.id);
                // The plan reads storage: off the async threads.
                let (this, pg) = (self.clone(), g.clone());
                let planned = tokio::task::spawn_blocking(move || this.plan(&pg)).await;
                match planned {
                    Ok(Ok(Some(plan))) => {
                        let this = self.clone();
                        trims.spawn(async move { this.propose(&g, plan).await }.instrument(span));
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => span.in_scope(
                        || warn!(error = %e, "cannot read the partition to apply retention"),
                    ),
                    Err(e) => span.in_scope(|| warn!(error = %e, "retention plan failed")),
                }
            }
            while trims.join_next().await.is_some() {}
            reported.retain(|g, part| {
                let keep = led.contains(g);
                if !keep {
                    self.metrics.log_start_offset.remove(part);
                    self.metrics.removed_records.remove(part);
                    self.metrics.retention_pinned_records.remove(part);
                }
                keep
            });
        }
    }

    /// What retention and DeleteRecords ask of `g` now, if its topic is
    /// known here.
    fn plan(&self, g: &PartitionGroup) -> Result<Option<Plan>, DbError> {
        let meta = self.groups.meta_state();
        let Some(t) = meta.topics.get(&g.topic) else {
            return Ok(None);
        };
        let ret = crate::meta::retention(
            &g.topic,
            &t.configs,
            self.cfg.retention_ms,
            self.cfg.retention_bytes,
        );
        let p = g.progress.borrow().clone();
        let db = self.groups.db();
        // The view position of the first record at or after `hlc`.
        let position = |hlc| -> Result<u64, DbError> {
            Ok(read::view_offset_for_hlc(db, g.id, hlc, p.view_next)?
                .map_or(p.view_next, |(pos, _)| pos))
        };
        let mut cuts = vec![meta.log_start_of(g.id)];
        if let Some(ms) = ret.ms {
            let now = self.groups.clock.wall_now_ms();
            let below =
                crate::hlc::from_wall_ms(now.saturating_sub(ms.min(i64::MAX as u64) as i64));
            cuts.push(position(below)?);
        }
        if let Some(limit) = ret.bytes {
            let logs = p
                .logs
                .keys()
                .map(|l| read::batch_sizes(db, LogKey::new(g.id, *l)))
                .collect();
            if let Some(hlc) = size_cut(logs, limit) {
                cuts.push(position(hlc)?);
            }
        }
        let log_start = target_start(p.log_start, p.view_next, &cuts);
        let hlc = match read::view_hlc_at(db, g.id, log_start)? {
            Some(h) => h,
            None => p.view_last_hlc.saturating_add(1),
        };
        // What the other regions of the topic hold, as this node's
        // copiers heard it.
        let names = self.link.region_names();
        let policy = crate::meta::policy(&t.configs, &names);
        let others: Vec<(u32, BTreeMap<LogRef, u64>)> = policy
            .regions
            .iter()
            .filter(|r| **r != self.groups.region)
            .map(|r| {
                (
                    origin_id(r),
                    self.link.holdings(g.id, r).unwrap_or_default(),
                )
            })
            .collect();
        let keep = keep_points(p.logs.keys(), &others);
        let mut changes = log_start > p.log_start;
        let mut pinned = 0;
        for (log, upto) in &keep {
            let st = p.logs[log];
            let from = p.trimmed.get(log).copied().unwrap_or(0);
            let lk = LogKey::new(g.id, *log);
            let unprotected = read::trim_end(db, lk, st.next_offset, from, hlc, st.merged)?;
            let allowed = read::trim_end(db, lk, st.next_offset, from, hlc, st.merged.min(*upto))?;
            let allowed_end = allowed.as_ref().map_or(from, |a| a.0);
            changes |= allowed.is_some();
            if let Some((end, _)) = unprotected {
                pinned += end.saturating_sub(allowed_end);
            }
        }
        self.report(g, p.log_start, p.removed_records, pinned);
        Ok(changes.then_some(Plan {
            log_start,
            hlc,
            keep,
            pinned,
        }))
    }

    fn report(&self, g: &PartitionGroup, log_start: u64, removed: u64, pinned: u64) {
        let part = part_labels(g);
        let set = |f: &Family<Vec<(String, String)>, Gauge>, v: u64| {
            f.get_or_create(&part).set(v.min(i64::MAX as u64) as i64);
        };
        set(&self.metrics.log_start_offset, log_start);
        set(&self.metrics.removed_records, removed);
        set(&self.metrics.retention_pinned_records, pinned);
    }

    async fn propose(&self, g: &PartitionGroup, plan: Plan) {
        let before = g.progress.borrow().log_start;
        debug!(log_start = plan.log_start, pinned = plan.pinned, "trimming");
        let cmd = Command::Trim {
            log_start: plan.log_start,
            hlc: plan.hlc,
            keep: plan.keep,
        };
        self.metrics.retention_trims.inc();
        match Groups::submit(&g.raft, cmd).await {
            Ok(rx) => match Groups::wait(rx, TRIM_TIMEOUT).await {
                Ok(_) => {
                    let p = g.progress.borrow();
                    if p.log_start > before {
                        info!(
                            topic = %g.topic,
                            partition = g.partition,
                            log_start = p.log_start,
                            removed_records = p.removed_records,
                            "log start moved"
                        );
                    }
                }
                Err(e) => debug!(error = %e, "trim not committed; retried at the next check"),
            },
            Err(e) => debug!(error = %e, "trim not proposed; retried at the next check"),
        }
    }
}
