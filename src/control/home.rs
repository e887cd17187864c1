//! Moving a pinned topic's home by command (`meridian topic move-home`).
//!
//! The metadata group records the move (`Command::MoveHome`: the topic's
//! `meridian.writers` names the new home from then on, so every router
//! sends its writes there). Then, per partition:
//!
//! 1. The old home's partition leader seals its own log where it ends
//!    (`Command::SealOwn`): every write committed before is in it, every
//!    later one is refused and retried by the client, now at the new home.
//! 2. It reports that point to the metadata group (`HomeSealed`).
//! 3. Every region's partition leader proposes the seal, with the new home
//!    as successor, into its group (`SealLog`): the new home's log joins
//!    the view after the sealed one. The new home's group takes writes once
//!    it has applied it (before that it answers "not the writer", which
//!    clients retry).
//!
//! Each step is idempotent and retried on the failover loop's tick, so a
//! leader change or a lost reply only delays the move.

use tracing::{debug, info};

use super::failover::Failover;
use crate::command::{Command, CommandResult};
use crate::ids::{origin_id, LogRef};

use crate::meta::MetaState;

impl Failover {
    /// Drives the moves of pinned topics' homes in the partition groups this
    /// node leads.
    pub(super) async fn move_homes(&self, meta: &MetaState) {
        let timeout = self.transport.rpc_timeout();
        for m in &meta.moves {
            let Some(t) = meta.topics.get(&m.topic) else {
                continue;
            };
            let from = LogRef {
                origin: origin_id(&m.from),
                epoch: m.from_epoch,
            };
            for p in 0..t.partitions {
                let Some(g) = self.groups.partition(t.group(p)) else {
                    continue;
                };
                if g.leader() != Some(self.me.id) {
                    continue;
                }
                let (home, handed, own) = {
                    let pr = g.progress.borrow();
                    (pr.home, pr.handed.clone(), pr.own())
                };
                // Until the handovers before this one are applied here,
                // this one waits (a region back from a long absence).
                if handed.contains(&from) || home != Some(from.origin) {
                    continue;
                }
                let cmd = match m.seals.get(&p) {
                    Some(e) => Command::SealLog {
                        origin: from.origin,
                        epoch: from.epoch,
                        end: e.end,
                        last_hlc: e.last_hlc,
                        successor: Some(origin_id(&m.to)),
                    },
                    // The old home seals its own log of the epoch the move
                    // began in (after a failover, the failover's seal does).
                    None if own == from => Command::SealOwn,
                    None => continue,
                };
                let sealing_own = matches!(cmd, Command::SealOwn);
                match self.groups.write_to(&g, cmd, timeout).await {
                    Ok(CommandResult::SealedAt { end, last_hlc, .. }) if sealing_own => {
                        let report = Command::HomeSealed {
                            topic: m.topic.clone(),
                            partition: p,
                            end,
                            last_hlc,
                        };
                        match self.groups.meta_write(report, timeout).await {
                            Ok(_) => info!(
                                topic = %m.topic, partition = p, to = %m.to, end,
                                "sealed this home's log for the move"
                            ),
                            Err(e) => debug!(topic = %m.topic, partition = p, error = %e,
                                             "cannot report the home's seal yet"),
                        }
                    }
                    Ok(r) if sealing_own => {
                        debug!(topic = %m.topic, partition = p, result = ?r,
                               "the home's log was not sealed")
                    }
                    Ok(_) => info!(
                        group = g.id, topic = %m.topic, partition = p, from = %m.from,
                        to = %m.to, "home handed over"
                    ),
                    Err(e) => debug!(group = g.id, error = %e, "cannot hand the home over yet"),
                }
            }
        }
    }
}
