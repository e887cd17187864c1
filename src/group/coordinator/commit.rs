//! OffsetCommit: a group's commits are records of its offsets partition,
//! written through the router with the committed topic's ack rule.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::{commit_code, CommitOffset, CommitReq, Coordinator, PartitionCode};
use crate::command::PartitionError;
use crate::group::offsets::{self, Key, Value};
use crate::group::state::code;
use crate::ids::GroupId;
use crate::meta::Policy;
use crate::router::AppendTicket;

impl Coordinator {
    /// OffsetCommit: checks the member and proposes one record per
    /// partition to the group's offsets partition in this region when the
    /// request arrives (so a commit sent before a JoinGroup on the same
    /// connection counts for the generation it names); the returned future
    /// answers once it committed here and, when a committed topic is
    /// `sync`, once as many other regions hold it as that topic's records
    /// need (invariant 8).
    pub async fn commit(
        self: &Arc<Self>,
        req: CommitReq,
    ) -> futures::future::BoxFuture<'static, Vec<PartitionCode>> {
        let all = |code: i16| -> Vec<PartitionCode> {
            req.topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.iter().map(|p| (p.partition, code)).collect()))
                .collect()
        };
        let ready =
            |r: Vec<PartitionCode>| -> futures::future::BoxFuture<'static, Vec<PartitionCode>> {
                Box::pin(async move { r })
            };
        let (p, gid) = match self.coordinates(&req.group) {
            Ok(x) => x,
            Err((c, _)) => return ready(all(c)),
        };
        {
            let mut inner = self.inner.lock().expect("groups");
            let now = self.now();
            let refused = match inner.groups.get_mut(&req.group) {
                Some(g) => g.check_commit(now, &req.member, req.generation),
                None if req.generation < 0 => None,
                None => Some(code::UNKNOWN_MEMBER_ID),
            };
            if let Some(c) = refused {
                debug!(group = %req.group, member = %req.member, generation = req.generation, code = c, "offset commit refused");
                return ready(all(c));
            }
        }
        let mut results: Vec<PartitionCode> = Vec::new();
        let mut records = Vec::new();
        let mut strictest: Option<Policy> = None;
        for (topic, parts) in &req.topics {
            let meta = self.router.topic(topic);
            let mut codes = Vec::new();
            for CommitOffset {
                partition,
                offset,
                leader_epoch: epoch,
                metadata,
            } in parts
            {
                let c = match &meta {
                    None => code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(t) if *partition < 0 || *partition as u32 >= t.partitions => {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    }
                    _ if metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > self.cfg.offset_metadata_bytes_max as usize) =>
                    {
                        code::OFFSET_METADATA_TOO_LARGE
                    }
                    _ if *offset < 0 => code::INVALID_COMMIT_OFFSET_SIZE,
                    _ => {
                        records.push(offsets::record(
                            &Key {
                                group: req.group.clone(),
                                topic: topic.clone(),
                                partition: *partition,
                            },
                            Some(&Value {
                                offset: *offset,
                                metadata: metadata.clone().unwrap_or_default(),
                                leader_epoch: *epoch,
                            }),
                        ));
                        code::NONE
                    }
                };
                codes.push((*partition, c));
            }
            if let Some(t) = &meta {
                let pol = self.router.policy(t);
                if strictest
                    .as_ref()
                    .is_none_or(|s| pol.remote_acks() > s.remote_acks())
                {
                    strictest = Some(pol);
                }
            }
            results.push((topic.clone(), codes));
        }
        if records.is_empty() {
            return ready(results);
        }
        let n = records.len() as u64;
        let proposed = self.propose(p, records, strictest.as_ref()).await;
        let me = self.clone();
        Box::pin(async move {
            let outcome = match proposed {
                Ok(ticket) => me.await_commit(gid, ticket, n).await,
                Err(c) => Err(c),
            };
            if let Err(c) = outcome {
                for (_, codes) in &mut results {
                    for (_, pc) in codes.iter_mut() {
                        if *pc == code::NONE {
                            *pc = c;
                        }
                    }
                }
            }
            results
        })
    }

    pub(super) fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.commit_timeout_ms)
    }

    /// Appends records (commits, presence) to offsets partition `p` in
    /// this region.
    pub(super) async fn submit(
        &self,
        p: u32,
        records: Vec<crate::log::RecordIn>,
    ) -> Result<AppendTicket, PartitionError> {
        self.router
            .submit_append(
                offsets::TOPIC,
                p as i32,
                records,
                None,
                self.commit_timeout(),
            )
            .await
    }

    /// Proposes commit records to offsets partition `p`.
    pub(super) async fn propose(
        &self,
        p: u32,
        records: Vec<crate::log::RecordIn>,
        data_policy: Option<&Policy>,
    ) -> Result<AppendTicket, i16> {
        let ticket = self.submit(p, records).await.map_err(|e| {
            self.router.metrics.offset_commit_errors.inc();
            debug!(error = %e, "offset commit not proposed");
            commit_code(e)
        })?;
        Ok(match data_policy {
            Some(pol) => ticket.requiring(pol),
            None => ticket,
        })
    }

    /// Waits for proposed commit records, then folds them, so that a fetch
    /// right after sees them (they were applied here before the answer).
    pub(super) async fn await_commit(
        &self,
        gid: GroupId,
        ticket: AppendTicket,
        records: u64,
    ) -> Result<(), i16> {
        let m = &self.router.metrics;
        ticket.wait(self.commit_timeout()).await.map_err(|e| {
            m.offset_commit_errors.inc();
            warn!(error = %e, "offset commit not acknowledged");
            commit_code(e)
        })?;
        m.offset_commits.inc_by(records);
        let _ = self.fold(gid);
        Ok(())
    }
}
