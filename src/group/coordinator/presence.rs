//! Announcing where a group meets: this node's presence records of the
//! groups it coordinates, and the meeting rule applied to everyone's
//! (`group::presence`, pure).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::debug;

use super::{Announced, Coordinator, PRESENCE_RETRY_MS};
use crate::group::presence::{self, Meet};
use crate::ids::GroupId;

impl Coordinator {
    /// Writes the presence of the groups with members here when it
    /// changed or is due for renewal, and once more, empty, when a group
    /// went from here (`sizes`: groups coordinated here and their members).
    pub(super) fn announce(self: &Arc<Self>, sizes: &HashMap<String, u32>) {
        let now = self.now();
        let renew = self.cfg.presence_renew_ms;
        let mut due = Vec::new();
        {
            let mut announced = self.announced.lock().expect("announced");
            for group in sizes.keys() {
                if !announced.contains_key(group) {
                    let since = self.anchored_since(group);
                    announced.insert(
                        group.clone(),
                        Announced {
                            since,
                            written: None,
                            at_ms: 0,
                            writing: false,
                        },
                    );
                }
            }
            announced.retain(|group, a| {
                let size = sizes.get(group).copied().unwrap_or(0);
                if a.writing {
                    return true;
                }
                // Gone from here, and nothing (more) to retract.
                if size == 0 && a.written.is_none_or(|w| w == 0) {
                    return false;
                }
                let waited = now.saturating_sub(a.at_ms);
                let changed = a.written != Some(size) && waited >= PRESENCE_RETRY_MS;
                if changed || (size > 0 && waited >= renew) {
                    a.writing = true;
                    a.at_ms = now;
                    due.push((group.clone(), size, a.since));
                }
                true
            });
        }
        for (group, size, since) in due {
            let me = self.clone();
            tokio::spawn(async move {
                let written = me.write_presence(&group, size, since).await;
                let mut announced = me.announced.lock().expect("announced");
                match written {
                    // Another node coordinates the group now; it announces.
                    None => {
                        announced.remove(&group);
                    }
                    Some(ok) => {
                        if let Some(a) = announced.get_mut(&group) {
                            a.writing = false;
                            a.at_ms = me.now();
                            if ok {
                                a.written = Some(size);
                            }
                        }
                    }
                }
            });
        }
    }

    /// Since when `group` has members in this region: from this region's
    /// live presence when the group only changed coordinator here (a
    /// leader change), so it keeps its claim; else now.
    pub(super) fn anchored_since(&self, group: &str) -> u64 {
        self.own_presence_since(group)
            .unwrap_or_else(|| self.router.groups.clock.now())
    }

    /// The `since` of this region's own live presence of `group`, as
    /// folded here (written by this region's coordinator, whichever node
    /// that is now).
    pub(super) fn own_presence_since(&self, group: &str) -> Option<u64> {
        let clock = &self.router.groups.clock;
        let own = self.own_origin();
        let gid = self.partition_of(group)?.1;
        let folded = self.folded.lock().expect("folded");
        folded
            .get(&gid)?
            .presence
            .get(group)?
            .get(&own)
            .copied()
            .filter(|s| {
                s.members > 0
                    && clock.wall_now_ms() - crate::hlc::wall_ms(s.at)
                        <= self.cfg.presence_ttl_ms as i64
            })
            .map(|s| s.since)
    }

    /// Appends one presence record of `group`: whether it committed here,
    /// or None when this node no longer coordinates the group.
    pub(super) async fn write_presence(
        &self,
        group: &str,
        members: u32,
        since: u64,
    ) -> Option<bool> {
        let Ok((p, _)) = self.is_mine(group) else {
            return None;
        };
        let value = presence::Value {
            node: self.router.node_id(),
            members,
            since,
        };
        let submitted = self.submit(p, vec![presence::record(group, &value)]).await;
        let result = match submitted {
            Ok(ticket) => ticket.wait(self.commit_timeout()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => Some(true),
            Err(e) => {
                debug!(group, error = %e, "group presence not written; retrying");
                Some(false)
            }
        }
    }

    /// This region's origin id.
    pub(super) fn own_origin(&self) -> u32 {
        self.router
            .topology
            .node(self.router.node_id())
            .map_or(0, |n| crate::ids::origin_id(&n.region))
    }

    /// Where `group` meets, by the presence records folded here
    /// ([`presence::meeting_place`]).
    pub(super) fn meeting(&self, group: &str, gid: GroupId) -> Meet {
        // This node's claim if it coordinates the group, else this
        // region's as its coordinator announced it: every node of a region
        // sends members to the same place.
        let announced = self
            .announced
            .lock()
            .expect("announced")
            .get(group)
            .map(|a| a.since);
        let own_since = announced.or_else(|| self.own_presence_since(group));
        let seen: Vec<(u32, presence::Seen)> = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .and_then(|f| f.presence.get(group))
            .map(|m| m.iter().map(|(o, s)| (*o, *s)).collect())
            .unwrap_or_default();
        if seen.is_empty() {
            return Meet::Here;
        }
        let meta = self.router.groups.meta_state();
        let regions = self.router.region_names();
        let failed = |origin: u32| {
            regions
                .iter()
                .find(|r| crate::ids::origin_id(r) == origin)
                .is_some_and(|r| meta.seal_of(r).is_some())
        };
        let now = presence::Now {
            own: self.own_origin(),
            own_since,
            now_ms: self.router.groups.clock.wall_now_ms(),
            ttl_ms: self.cfg.presence_ttl_ms,
        };
        match presence::meeting_place(now, seen, failed) {
            // A node this topology does not know (a record written by
            // hand): nowhere to send members.
            Meet::There { node, .. } if self.router.topology.node(node).is_none() => Meet::Here,
            m => m,
        }
    }
}
