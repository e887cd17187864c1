//! Which node coordinates a group: the leader of the offsets partition it
//! hashes to, in the region where the group meets (FindCoordinator).

use std::time::Duration;

use tracing::{debug, info};

use super::{err, Coordinator, Located};
use crate::group::offsets::{self};
use crate::group::presence::Meet;
use crate::group::state::code;
use crate::ids::GroupId;
use crate::meta::MetaError;
use crate::router::TopicError;

impl Coordinator {
    /// Ok when this node coordinates `group` now and the group meets in
    /// this region: NOT_COORDINATOR when it meets in another (the member
    /// looks the coordinator up again and is sent there).
    pub(super) fn coordinates(&self, group: &str) -> Result<(u32, GroupId), (i16, String)> {
        let (p, gid) = self.is_mine(group)?;
        let _ = self.fold(gid);
        match self.meeting(group, gid) {
            Meet::Here => Ok((p, gid)),
            Meet::There { node, .. } => {
                // Members here (joined before the other region's presence
                // arrived) go there; the group here empties at once, so
                // its presence no longer claims the group.
                let mut inner = self.inner.lock().expect("groups");
                if inner.groups.contains_key(group) {
                    info!(
                        group,
                        node, "the group meets in another region; its members here are sent there"
                    );
                    inner.drop_group(group);
                }
                drop(inner);
                debug!(group, node, "group meets in another region");
                Err(err(
                    code::NOT_COORDINATOR,
                    "the group meets in another region",
                ))
            }
        }
    }

    /// The internal topic, created on first use.
    pub(super) async fn offsets_topic(&self) -> Result<crate::meta::TopicMeta, (i16, String)> {
        if let Some(t) = self.router.topic(offsets::TOPIC) {
            return Ok(t);
        }
        let _one = self.creating.lock().await;
        if let Some(t) = self.router.topic(offsets::TOPIC) {
            return Ok(t);
        }
        info!(
            partitions = self.cfg.offsets_partitions,
            "creating {} for consumer groups",
            offsets::TOPIC
        );
        match self
            .router
            .create_topic(
                offsets::TOPIC,
                self.cfg.offsets_partitions as i64,
                Default::default(),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(t) => Ok(t),
            Err(TopicError::Meta(MetaError::TopicExists(_))) => self
                .router
                .topic(offsets::TOPIC)
                .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "offsets topic deleted")),
            Err(e) => Err(err(
                code::COORDINATOR_NOT_AVAILABLE,
                format!("cannot create {}: {e}", offsets::TOPIC),
            )),
        }
    }

    /// The offsets partition of `group` and its group id.
    pub(super) fn partition_of(&self, group: &str) -> Option<(u32, GroupId)> {
        let t = self.router.topic(offsets::TOPIC)?;
        let p = offsets::partition_for(group, t.partitions);
        Some((p, t.group(p)))
    }

    /// Ok when this node coordinates `group` now.
    pub(super) fn is_mine(&self, group: &str) -> Result<(u32, GroupId), (i16, String)> {
        let (p, gid) = self
            .partition_of(group)
            .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic yet"))?;
        let pg = self.router.groups.partition(gid).ok_or_else(|| {
            err(
                code::COORDINATOR_NOT_AVAILABLE,
                "offsets partition not started here yet",
            )
        })?;
        match pg.leader() {
            Some(l) if l == self.router.node_id() => Ok((p, gid)),
            Some(_) => Err(err(
                code::NOT_COORDINATOR,
                "another node coordinates this group",
            )),
            None => Err(err(
                code::COORDINATOR_NOT_AVAILABLE,
                "the group's offsets partition has no leader yet",
            )),
        }
    }

    /// FindCoordinator: the node of this region that leads the group's
    /// offsets partition.
    pub async fn locate(&self, group: &str) -> Located {
        if group.is_empty() {
            return Err(err(code::INVALID_GROUP_ID, "empty group id"));
        }
        self.offsets_topic().await?;
        let (_, gid) = self
            .partition_of(group)
            .ok_or_else(|| err(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic yet"))?;
        // A group with members in another region meets there.
        let _ = self.fold(gid);
        if let Meet::There { node, .. } = self.meeting(group, gid) {
            if let Some(n) = self.router.topology.node(node) {
                debug!(
                    group,
                    node, "group meets in another region; sending the member there"
                );
                return Ok(n.clone());
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let leader = self.router.groups.partition(gid).and_then(|g| g.leader());
            if let Some(n) = leader.and_then(|l| self.router.topology.node(l)) {
                return Ok(n.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err(
                    code::COORDINATOR_NOT_AVAILABLE,
                    "the group's offsets partition has no leader in this region yet",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
