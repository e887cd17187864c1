//! OffsetFetch: a group's latest commits, folded from every region's
//! origin logs of its offsets partition (`group::offsets`), loaded once
//! per partition and kept up to date.

use std::time::Duration;

use tracing::warn;

use super::{Coordinator, FetchedOffset, FOLD_BYTES, FOLD_ROUNDS_MAX, SPLIT_WINDOW_MS};
use crate::group::offsets::Key;
use crate::group::state::code;
use crate::ids::GroupId;

impl Coordinator {
    /// Folds what `gid`'s logs gained; false while more remains.
    pub(super) fn fold(&self, gid: GroupId) -> Result<bool, i16> {
        let Some(pg) = self.router.groups.partition(gid) else {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        };
        let (logs, own) = {
            let p = pg.progress.borrow();
            (p.logs.clone(), p.log.origin)
        };
        let caught = self
            .folded
            .lock()
            .expect("folded")
            .entry(gid)
            .or_default()
            .catch_up(self.router.groups.db(), gid, &logs, FOLD_BYTES)
            .map_err(|e| {
                warn!(error = %e, "cannot read committed offsets");
                code::COORDINATOR_NOT_AVAILABLE
            })?;
        self.warn_split(own, &caught.groups);
        Ok(caught.done)
    }

    /// Warns when a group with members here also committed recently in
    /// another region: its members connect to two regions, which each
    /// coordinate them as a whole group (docs/consumers.md).
    pub(super) fn warn_split(&self, own: u32, folded: &[(String, u32, u64)]) {
        let now = self.router.groups.clock.wall_now_ms();
        for (group, origin, hlc) in folded {
            if *origin == own || now - crate::hlc::wall_ms(*hlc) > SPLIT_WINDOW_MS {
                continue;
            }
            let active = self
                .inner
                .lock()
                .expect("groups")
                .groups
                .get(group)
                .is_some_and(|g| !g.members.is_empty());
            let mut warned = self.warned.lock().expect("warned");
            let due = warned
                .get(group)
                .is_none_or(|last| now - last > SPLIT_WINDOW_MS);
            if active && due {
                warned.insert(group.clone(), now);
                let region = self
                    .router
                    .region_names()
                    .into_iter()
                    .find(|r| crate::ids::origin_id(r) == *origin)
                    .unwrap_or_else(|| format!("origin {origin}"));
                warn!(group = %group, other_region = %region,
                    "consumer group also commits in another region: two regions claimed it at once, or it just moved here; members connecting to two regions meet in one of them (docs/consumers.md#one-group-across-regions)");
            }
        }
        let mut warned = self.warned.lock().expect("warned");
        warned.retain(|_, at| now - *at <= SPLIT_WINDOW_MS);
    }

    /// Folds `gid` to the end of what this node applied, after making sure
    /// it applied everything its region committed (a new leader may lag).
    pub(super) async fn load(&self, gid: GroupId) -> Result<(), i16> {
        if let Some(pg) = self.router.groups.partition(gid) {
            let read = tokio::time::timeout(Duration::from_secs(5), pg.raft.ensure_linearizable());
            match read.await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(code::NOT_COORDINATOR),
                Err(_) => return Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            }
        }
        for _ in 0..FOLD_ROUNDS_MAX {
            if self.fold(gid)? {
                return Ok(());
            }
        }
        Err(code::COORDINATOR_LOAD_IN_PROGRESS)
    }

    /// OffsetFetch: the group's commits for `topics` (None: every topic
    /// it committed).
    pub async fn fetch(
        &self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, Vec<FetchedOffset>)>, i16> {
        let (_, gid) = self.is_mine(group).map_err(|e| e.0)?;
        self.load(gid).await?;
        let folded = self.folded.lock().expect("folded");
        let f = folded.get(&gid);
        let lookup = |topic: &str, partition: i32| {
            let key = Key {
                group: group.to_string(),
                topic: topic.to_string(),
                partition,
            };
            let c = f.and_then(|f| f.commits.get(&key));
            match c {
                // The commit reached this region before the records it
                // names (they travel by other links): a fetch there would
                // be out of range and the client would reset its position.
                // Retriable; the region catches up in moments.
                Some(c)
                    if self
                        .router
                        .high_watermark(topic, partition)
                        .is_ok_and(|hw| c.value.offset > hw as i64) =>
                {
                    FetchedOffset {
                        partition,
                        offset: -1,
                        leader_epoch: -1,
                        metadata: String::new(),
                        error: code::UNSTABLE_OFFSET_COMMIT,
                    }
                }
                Some(c) if c.value.offset >= 0 => FetchedOffset {
                    partition,
                    offset: c.value.offset,
                    leader_epoch: c.value.leader_epoch,
                    metadata: c.value.metadata.clone(),
                    error: code::NONE,
                },
                _ => FetchedOffset {
                    partition,
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error: code::NONE,
                },
            }
        };
        Ok(match topics {
            Some(ts) => ts
                .into_iter()
                .map(|(t, ps)| {
                    let offs = ps.into_iter().map(|p| lookup(&t, p)).collect();
                    (t, offs)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<String, Vec<FetchedOffset>> =
                    Default::default();
                for (k, _) in f.map(|f| f.of_group(group)).unwrap_or_default() {
                    by_topic
                        .entry(k.topic.clone())
                        .or_default()
                        .push(lookup(&k.topic, k.partition));
                }
                by_topic.into_iter().collect()
            }
        })
    }
}
