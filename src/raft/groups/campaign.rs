//! The metadata group's pre-vote driver: a voter campaigns only when a
//! majority would vote for it (`raft::prevote`, the pure rule), so a node
//! cut off and back does not depose a healthy leader.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Groups;
use crate::ids::{NodeId, META_GROUP};
use crate::raft::network::KIND_PING;
use crate::raft::prevote;

impl Groups {
    /// How long ago this node last accepted a metadata AppendEntries.
    pub(super) fn meta_heard_ago(&self) -> Option<Duration> {
        let heard = self.meta_heard_ms.load(Ordering::Relaxed);
        (heard > 0).then(|| {
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(heard - 1))
        })
    }

    /// This node's own pre-vote answer (`prevote`).
    /// Answered to every ping, so it reads the one metrics field it needs
    /// rather than cloning openraft's metrics; the last log id (whose term
    /// the metrics lack) comes from RocksDB.
    pub(super) fn prevote_answer(&self) -> prevote::Answer {
        let leader = self.meta.metrics().borrow().current_leader;
        let last_log = match self.meta_log.last_log_id() {
            Ok(id) => id.map_or((0, 0), |id| (id.leader_id.term, id.index)),
            Err(e) => {
                // Vouch for no log at all: this node then never campaigns.
                warn!(error = %e, "cannot read the metadata group's last log id");
                (0, 0)
            }
        };
        prevote::Answer {
            node: self.node_id,
            age: Duration::ZERO,
            hears_leader: prevote::hears_leader(
                leader == Some(self.node_id),
                self.meta_heard_ago(),
                Duration::from_millis(self.meta_timing.meta_election_timeout_ms_min),
            ),
            last_log,
        }
    }

    /// Until `shutdown`: pings every other metadata voter each heartbeat and
    /// lets openraft campaign in the metadata group only while `prevote`
    /// allows it. The node `prevote` picks calls the election itself as soon
    /// as the voters' leader leases (openraft's: `election_timeout_ms_max`
    /// since they last heard the leader) have run out, rather than after a
    /// further random election timeout. After `STALL_ROUNDS` rounds without
    /// a leader, any up-to-date willing node may campaign on openraft's
    /// timers (liveness does not rest on one candidate).
    pub(super) async fn prevote_loop(self: Arc<Self>, shutdown: CancellationToken) {
        /// Election rounds without a leader after which `prevote` stops
        /// insisting on one candidate.
        const STALL_ROUNDS: u32 = 5;
        let t = &self.meta_timing;
        let period = Duration::from_millis(t.meta_heartbeat_ms);
        let lease = Duration::from_millis(t.meta_election_timeout_ms_max);
        let fresh = lease;
        let peers: Vec<NodeId> = self
            .meta_voters
            .iter()
            .copied()
            .filter(|n| *n != self.node_id)
            .collect();
        let answers: Arc<Mutex<HashMap<NodeId, (Instant, prevote::Answer)>>> = Default::default();
        // The pings end with this run of the loop, also when it fails and
        // its supervisor starts another run (with pings of its own).
        let run_stop = shutdown.child_token();
        let _stop_pings = run_stop.clone().drop_guard();
        for peer in peers.clone() {
            let (this, answers, stop) = (self.clone(), answers.clone(), run_stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let r = this
                        .transport
                        .call(peer, KIND_PING, META_GROUP, &[], fresh)
                        .await;
                    if let Some(a) = r.ok().and_then(|b| prevote::decode(peer, &b)) {
                        let mut all = answers.lock().expect("prevote lock");
                        all.insert(peer, (Instant::now(), a));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(period) => {}
                    }
                }
            });
        }
        let mut allowed = None;
        let mut leader = None;
        let mut called: Option<Instant> = None;
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (current, term) = {
                let m = self.meta.metrics();
                let m = m.borrow();
                (m.current_leader, m.current_term)
            };
            if current != leader {
                info!(leader = ?current, term, "metadata group leader changed");
                leader = current;
            }
            let last: Vec<prevote::Answer> = {
                let all = answers.lock().expect("prevote lock");
                all.values()
                    .map(|(at, a)| prevote::Answer {
                        age: at.elapsed(),
                        ..*a
                    })
                    .collect()
            };
            let me = self.prevote_answer();
            let voters = self.meta_voters.len();
            // Without a leader for STALL_ROUNDS election rounds, the one
            // candidate pre-vote picks is not getting elected: let every
            // up-to-date willing voter campaign (`prevote`).
            // (The leader hears no AppendEntries, but never campaigns.)
            let heard_ago = self.meta_heard_ago();
            let silent_for = heard_ago.unwrap_or_else(|| self.started.elapsed());
            let stalled = silent_for > lease * STALL_ROUNDS;
            let chosen = prevote::may_campaign(voters, &me, &last, fresh, false);
            let may = chosen || prevote::may_campaign(voters, &me, &last, fresh, true) && stalled;
            if allowed != Some(may) {
                if may && !chosen {
                    warn!(
                        silent_ms = silent_for.as_millis() as u64,
                        "no metadata group leader for long; any up-to-date node may campaign now"
                    );
                }
                debug!(may_campaign = may, "metadata group pre-vote");
                self.meta.runtime_config().elect(may);
                allowed = Some(may);
            }
            let silent = heard_ago.is_none_or(|ago| ago > lease + period / 2);
            let again = called.is_none_or(|at| at.elapsed() > lease);
            if chosen && silent && again {
                info!(term, "calling a metadata group election");
                let _ = self.meta.trigger().elect().await;
                called = Some(Instant::now());
            }
        }
    }
}
