//! Membership: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, and the
//! groups as DescribeGroups, ListGroups and DeleteGroups see them.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::info;

use super::{Coordinator, Described, Waiting};
use crate::group::offsets::{self, Key};
use crate::group::state::{code, Group, Join, JoinReply, Now, SyncReply};

impl Coordinator {
    /// JoinGroup: applied now, answered when the rebalance completes.
    pub fn join(&self, group: &str, j: Join) -> Waiting<JoinReply> {
        let fail = |error: i16| {
            Waiting::Now(JoinReply {
                error,
                generation: -1,
                member_id: j.member_id.clone(),
                ..Default::default()
            })
        };
        if group.is_empty() {
            return fail(code::INVALID_GROUP_ID);
        }
        if let Err((e, _)) = self.coordinates(group) {
            return fail(e);
        }
        let wait_ms = j.spec.rebalance_timeout_ms.max(j.spec.session_timeout_ms);
        let fresh = format!("{}-{}", j.spec.client_id, uuid::Uuid::new_v4());
        let member = if j.member_id.is_empty() {
            fresh.clone()
        } else {
            j.member_id.clone()
        };
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let delay = self.cfg.initial_rebalance_delay_ms;
        let limits = self.limits();
        let g = inner
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group, delay));
        let (r, outs) = g.join(now, j, || fresh, &limits);
        let w = match r {
            Now::Reply(r) => Waiting::Now(r),
            Now::Wait => {
                let (tx, rx) = oneshot::channel();
                // Registered before the answers go out: this join may be
                // the one that completes the rebalance.
                inner.joins.insert((group.to_string(), member.clone()), tx);
                Waiting::Later {
                    rx,
                    bound: Duration::from_millis(wait_ms + delay) + Duration::from_secs(5),
                    gone: JoinReply {
                        error: code::NOT_COORDINATOR,
                        generation: -1,
                        member_id: member,
                        ..Default::default()
                    },
                }
            }
        };
        self.delivered(inner.deliver(group, outs));
        w
    }

    /// SyncGroup: applied now; a follower's answer waits for the leader's.
    pub fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Waiting<SyncReply> {
        let fail = |error| {
            Waiting::Now(SyncReply {
                error,
                ..Default::default()
            })
        };
        if let Err((e, _)) = self.coordinates(group) {
            return fail(e);
        }
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let Some(g) = inner.groups.get_mut(group) else {
            return fail(code::UNKNOWN_MEMBER_ID);
        };
        let bound = g.members.get(member).map_or(0, |m| {
            m.spec.session_timeout_ms.max(m.spec.rebalance_timeout_ms)
        });
        let (r, outs) = g.sync(now, member, generation, assignments);
        let w = match r {
            Now::Reply(r) => Waiting::Now(r),
            Now::Wait => {
                let (tx, rx) = oneshot::channel();
                inner
                    .syncs
                    .insert((group.to_string(), member.to_string()), tx);
                Waiting::Later {
                    rx,
                    bound: Duration::from_millis(bound) + Duration::from_secs(5),
                    gone: SyncReply {
                        error: code::NOT_COORDINATOR,
                        ..Default::default()
                    },
                }
            }
        };
        self.delivered(inner.deliver(group, outs));
        w
    }

    pub fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        if let Err((e, _)) = self.coordinates(group) {
            return e;
        }
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        match inner.groups.get_mut(group) {
            Some(g) => g.heartbeat(now, member, generation),
            None => code::UNKNOWN_MEMBER_ID,
        }
    }

    /// LeaveGroup: an error code per member.
    pub fn leave(&self, group: &str, members: &[String]) -> Result<Vec<i16>, i16> {
        self.is_mine(group).map_err(|e| e.0)?;
        let mut inner = self.inner.lock().expect("groups");
        let now = self.now();
        let mut codes = Vec::new();
        for m in members {
            let Some(g) = inner.groups.get_mut(group) else {
                codes.push(code::UNKNOWN_MEMBER_ID);
                continue;
            };
            let (c, outs) = g.leave(now, m);
            codes.push(c);
            inner.joins.remove(&(group.to_string(), m.clone()));
            inner.syncs.remove(&(group.to_string(), m.clone()));
            self.delivered(inner.deliver(group, outs));
            if c == code::NONE {
                info!(group, member = %m, "member left the group");
            }
        }
        Ok(codes)
    }

    /// DescribeGroups: a group this node coordinates; "Dead" when it has
    /// neither members nor commits.
    pub async fn describe(&self, group: &str) -> Result<Described, i16> {
        let (_, gid) = self.is_mine(group).map_err(|e| e.0)?;
        let inner = self.inner.lock().expect("groups");
        if let Some(g) = inner.groups.get(group).filter(|g| !g.members.is_empty()) {
            return Ok(Described {
                state: g.state.name(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol: g.protocol.clone().unwrap_or_default(),
                members: g
                    .describe()
                    .into_iter()
                    .map(|(m, meta)| {
                        (
                            m.id.clone(),
                            m.spec.client_id.clone(),
                            m.spec.client_host.clone(),
                            meta,
                            m.assignment.clone(),
                        )
                    })
                    .collect(),
            });
        }
        drop(inner);
        let _ = self.fold(gid);
        let has_commits = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .is_some_and(|f| !f.of_group(group).is_empty());
        Ok(Described {
            state: if has_commits { "Empty" } else { "Dead" },
            protocol_type: if has_commits {
                "consumer".into()
            } else {
                String::new()
            },
            protocol: String::new(),
            members: Vec::new(),
        })
    }

    /// ListGroups: the groups this node coordinates or holds commits of
    /// (offsets partitions it leads), with state and protocol type.
    pub fn list(&self) -> Vec<(String, &'static str, String)> {
        let mut out: std::collections::BTreeMap<String, (&'static str, String)> =
            Default::default();
        let Some(t) = self.router.topic(offsets::TOPIC) else {
            return Vec::new();
        };
        for p in 0..t.partitions {
            let gid = t.group(p);
            let led = self
                .router
                .groups
                .partition(gid)
                .is_some_and(|g| g.leader() == Some(self.router.node_id()));
            if !led {
                continue;
            }
            let _ = self.fold(gid);
            if let Some(f) = self.folded.lock().expect("folded").get(&gid) {
                for g in f.groups() {
                    out.insert(g, ("Empty", "consumer".into()));
                }
            }
        }
        for (id, g) in &self.inner.lock().expect("groups").groups {
            if !g.members.is_empty() {
                out.insert(
                    id.clone(),
                    (g.state.name(), g.protocol_type.clone().unwrap_or_default()),
                );
            }
        }
        out.into_iter().map(|(g, (s, p))| (g, s, p)).collect()
    }

    /// DeleteGroups: a group without members loses its commits (a
    /// deletion record per committed partition, replicated like commits).
    pub async fn delete(&self, group: &str) -> i16 {
        let (p, gid) = match self.is_mine(group) {
            Ok(x) => x,
            Err((c, _)) => return c,
        };
        {
            let inner = self.inner.lock().expect("groups");
            if inner
                .groups
                .get(group)
                .is_some_and(|g| !g.members.is_empty())
            {
                return code::NON_EMPTY_GROUP;
            }
        }
        if let Err(c) = self.load(gid).await {
            return c;
        }
        let keys: Vec<Key> = self
            .folded
            .lock()
            .expect("folded")
            .get(&gid)
            .map(|f| {
                f.of_group(group)
                    .into_iter()
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if keys.is_empty() {
            return code::GROUP_ID_NOT_FOUND;
        }
        let records = keys.iter().map(|k| offsets::record(k, None)).collect();
        let outcome = match self.propose(p, records, None).await {
            Ok(ticket) => self.await_commit(gid, ticket, 0).await,
            Err(c) => Err(c),
        };
        match outcome {
            Ok(()) => {
                info!(group, partitions = keys.len(), "group deleted");
                self.inner.lock().expect("groups").drop_group(group);
                code::NONE
            }
            Err(c) => c,
        }
    }
}
