//! Waiting for a produce's acknowledgement: the local commit, then the
//! topic's ack policy, `sync` (enough remote regions hold the write) or
//! `async` under `meridian.rpo.max.ms` (the unreplicated window stays
//! bounded).

use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, CommandResult, PartitionError};
use crate::ids::GroupId;
use crate::link::Link;
use crate::log::producers::Refusal;
use crate::meta::Policy;
use crate::raft::groups::CommitRx;
use crate::raft::Groups;
use crate::storage::read;

/// A proposed append, waiting for its commit.
pub enum AppendTicket {
    Local {
        rx: CommitRx,
        group: GroupId,
        policy: Policy,
        link: Arc<Link>,
        /// An idempotent producer's append, proposed again if it was held
        /// while the producer's previous region's records arrive.
        again: Option<Command>,
    },
    /// Sent to the topic's home region, which answers once it committed.
    Forwarded(futures::future::BoxFuture<'static, Result<i64, PartitionError>>),
}

impl AppendTicket {
    /// Makes the ack wait as `data`'s policy would, too: an offset commit
    /// (a record of `__consumer_offsets`) of a `sync` topic is held by as
    /// many other regions as that topic's records are (invariant 8).
    pub fn requiring(self, data: &Policy) -> Self {
        match self {
            AppendTicket::Local {
                rx,
                group,
                policy,
                link,
                again,
            } => AppendTicket::Local {
                rx,
                group,
                policy: policy.as_strict_as(data),
                link,
                again,
            },
            forwarded => forwarded,
        }
    }

    /// Waits for the commit (a Raft majority, fsynced: invariant 1), for a
    /// `sync` topic also for `sync.quorum - 1` other regions to commit it,
    /// and for an `async` topic with `rpo.max.ms` until the unreplicated
    /// window is within the bound. Returns the batch's Kafka offset, or -1
    /// when it is not known yet (topics with several writer regions: the
    /// record's position in the view is fixed once every origin closed past
    /// its HLC).
    pub async fn wait(self, timeout: Duration) -> Result<i64, PartitionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (rx, group, policy, link, again) = match self {
            AppendTicket::Forwarded(f) => {
                return tokio::time::timeout(timeout, f)
                    .await
                    .unwrap_or(Err(PartitionError::Timeout))
            }
            AppendTicket::Local {
                rx,
                group,
                policy,
                link,
                again,
            } => (rx, group, policy, link, again),
        };
        let mut result = Groups::wait(rx, timeout).await?.0;
        // A producer that moved here: wait (within the request's time)
        // until the region it came from is held far enough, then propose
        // the same append again. Its settle point stays fixed, so this ends
        // however far behind that region's copies run.
        while let (
            CommandResult::ProducerRefused(Refusal::Settling { origin }),
            Some(cmd @ Command::AppendIdempotent { settled_at, .. }),
        ) = (&result, &again)
        {
            let g = link
                .groups
                .partition(group)
                .ok_or(PartitionError::LeaderNotAvailable)?;
            let mut progress = g.progress.clone();
            let reached = matches!(
                tokio::time::timeout_at(
                    deadline,
                    progress.wait_for(|p| {
                        crate::storage::state_machine::settled(&p.logs, *origin, *settled_at)
                    }),
                )
                .await,
                Ok(Ok(_))
            );
            if !reached {
                break;
            }
            let rx = Groups::submit(&g.raft, cmd.clone()).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            result = Groups::wait(rx, left).await?.0;
        }
        let (view_offset, end) = match result {
            CommandResult::Appended {
                base_offset,
                first_hlc,
                last_hlc,
                view_offset,
            } => (view_offset, base_offset + (last_hlc - first_hlc) + 1),
            // A retry: acknowledged as the original is. A copy of another
            // region's log is held by two regions already (that one and
            // this one).
            CommandResult::Duplicate {
                log,
                end_offset,
                view_offset,
                ..
            } => {
                link.metrics.idempotent_duplicates.inc();
                let own = link
                    .groups
                    .partition(group)
                    .map(|g| g.progress.borrow().own());
                if own != Some(log) {
                    return Ok(view_offset.map_or(-1, |o| o as i64));
                }
                (view_offset, end_offset)
            }
            CommandResult::ProducerRefused(r) => {
                link.metrics.idempotent_refusals.inc();
                tracing::debug!(group, refusal = ?r, "idempotent batch refused");
                return Err(PartitionError::Producer(r));
            }
            CommandResult::NotWriter => return Err(PartitionError::NotLeader(None)),
            CommandResult::Sealed => {
                return Err(PartitionError::Fenced(link.groups.region.clone()))
            }
            other => {
                return Err(PartitionError::Storage(format!(
                    "unexpected apply result {other:?}"
                )))
            }
        };
        let need = policy.remote_acks();
        if need > 0 {
            let mut acks = link.acks(group);
            let held =
                |a: &crate::link::RemoteAcks| a.values().filter(|h| h.next_offset >= end).count();
            let reached = tokio::time::timeout_at(deadline, async {
                loop {
                    if held(&acks.borrow_and_update()) >= need {
                        return true;
                    }
                    if acks.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await
            .unwrap_or(false);
            if !reached {
                link.metrics.sync_ack_timeouts.inc();
                return Err(PartitionError::NotEnoughReplicas(format!(
                    "committed in this region, but fewer than {need} other region(s) held it within {} ms; not acknowledged",
                    timeout.as_millis()
                )));
            }
        } else if let Some(bound) = policy.rpo_max_ms.filter(|_| policy.regions.len() > 1) {
            rpo_backpressure(&link, group, bound, deadline).await?;
        }
        Ok(view_offset.map_or(-1, |o| o as i64))
    }
}

/// Holds an `async` produce's ack while the oldest record of this region's
/// origin log that no other region holds is older than `bound_ms`.
async fn rpo_backpressure(
    link: &Link,
    group: GroupId,
    bound_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<(), PartitionError> {
    let Some(g) = link.groups.partition(group) else {
        return Ok(());
    };
    let mut acks = link.acks(group);
    let mut waited = false;
    loop {
        let own = g.progress.borrow().log;
        let best = acks
            .borrow_and_update()
            .values()
            .map(|h| h.next_offset)
            .max()
            .unwrap_or(0);
        let oldest = read::record_at(link.groups.db(), own, best)
            .ok()
            .flatten()
            .map(|(_, _, hlc)| hlc);
        let age = oldest.map_or(0, |hlc| {
            crate::hlc::wall_ms(link.groups.clock.now()) - crate::hlc::wall_ms(hlc)
        });
        if age <= bound_ms as i64 {
            if waited {
                link.metrics.rpo_waits.inc();
            }
            return Ok(());
        }
        waited = true;
        let tick = tokio::time::sleep(Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Err(PartitionError::NotEnoughReplicas(format!(
                    "the unreplicated window ({age} ms) exceeds meridian.rpo.max.ms ({bound_ms}) and did not shrink in time"
                )));
            }
            _ = acks.changed() => {}
            _ = tick => {}
        }
    }
}
