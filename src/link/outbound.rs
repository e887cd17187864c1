//! The sending side of the link, on every partition leader: one copier per
//! remote region that holds the topic, and the closer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::{Held, Link, Reply, Ship, KIND_LINK_SHIP, KIND_LINK_STATE};
use crate::command::Command;
use crate::hlc;
use crate::ids::{origin_id, GroupId, LogRef};
use crate::raft::{Groups, PartitionGroup};

use crate::meta::Policy;
use crate::storage::read;
use crate::storage::state_machine::Progress;

use futures::stream::{FuturesUnordered, StreamExt};

/// What to send a region next: the first origin log it lacks records or a
/// newer closed timestamp of. Pure, for tests.
pub fn next_copy(
    mine: &BTreeMap<LogRef, Held>,
    theirs: &BTreeMap<LogRef, Held>,
    copy: impl Fn(&LogRef) -> bool,
) -> Option<(LogRef, Held, Held)> {
    let mut closed_only = None;
    for (l, m) in mine.iter().filter(|(l, _)| copy(l)) {
        let t = theirs.get(l).copied().unwrap_or_default();
        if m.next_offset > t.next_offset {
            return Some((*l, *m, t));
        }
        if m.next_offset == t.next_offset && m.closed > t.closed && closed_only.is_none() {
            closed_only = Some((*l, *m, t));
        }
    }
    closed_only
}

/// The origin logs (of those held here, but the destination's own) that a
/// region holds less of than this region still stores: copies cannot bring
/// it up to date from here. Pure, for tests.
pub fn unservable(
    mine: &BTreeMap<LogRef, Held>,
    theirs: &BTreeMap<LogRef, Held>,
    stored_from: &BTreeMap<LogRef, u64>,
    dest_origin: u32,
) -> std::collections::BTreeSet<LogRef> {
    mine.keys()
        .filter(|l| l.origin != dest_origin)
        .filter(|l| {
            let held = theirs.get(l).map_or(0, |h| h.next_offset);
            held < stored_from.get(l).copied().unwrap_or(0)
        })
        .copied()
        .collect()
}

/// How long a region must lack removed records before that is logged.
const UNSERVABLE_AFTER: Duration = Duration::from_secs(10);

/// How often an idle copier asks its region what it holds.
const STATE_REFRESH: Duration = Duration::from_secs(30);

/// The node a copier tries after `target` failed or did not lead: the next
/// one in the region's list, so that after its partition leader died each
/// other node is tried before the dead one again (a counter of its own
/// could land on the dead node again, and each try of it costs a connect
/// timeout). Pure, for tests.
pub fn next_node(nodes: &[crate::ids::NodeId], target: crate::ids::NodeId) -> crate::ids::NodeId {
    let i = nodes.iter().position(|n| *n == target).map_or(0, |i| i + 1);
    nodes[i % nodes.len()]
}

/// How often a partition's leader closes its origin log: every
/// `link.close_interval_ms` while records of some origin are waiting for
/// the view here or were written lately; every
/// `link.idle_close_interval_ms` otherwise, as an idle partition's closed
/// timestamps only show in its closed-timestamp age. Each close is a Raft
/// commit here and a copy to every other region, so idle partitions would
/// otherwise cost the most. Pure, for tests.
pub fn close_interval(
    logs: &BTreeMap<LogRef, crate::storage::state_machine::LogState>,
    now_ms: i64,
    cfg: &crate::config::LinkConfig,
) -> u64 {
    let busy = logs.values().any(|s| {
        s.merged < s.next_offset
            || now_ms - hlc::wall_ms(s.last_hlc) < cfg.idle_close_interval_ms as i64
    });
    if busy {
        cfg.close_interval_ms
    } else {
        cfg.idle_close_interval_ms.max(cfg.close_interval_ms)
    }
}

/// Whether records of another origin wait for the view here behind `own`'s
/// closed timestamp: then closing at once (rather than at the next
/// interval) makes them visible sooner, here and wherever the close is
/// copied. Pure, for tests.
pub fn waits_on(
    logs: &BTreeMap<LogRef, crate::storage::state_machine::LogState>,
    own: LogRef,
) -> bool {
    let closed = logs.get(&own).map_or(0, |s| s.closed);
    logs.iter()
        .any(|(l, s)| *l != own && s.merged < s.next_offset && s.last_hlc > closed)
}

impl Link {
    /// Keeps one copier per (led partition, remote region) and closes idle
    /// partitions, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut copiers: HashMap<(GroupId, String), CancellationToken> = HashMap::new();
        // Every copier of this run stops with it, also when it fails and
        // its supervisor starts another run (which starts its own copiers).
        let run_stop = shutdown.child_token();
        let _stop_copiers = run_stop.clone().drop_guard();
        let closing: Arc<std::sync::Mutex<HashSet<GroupId>>> = Default::default();
        // Closes are checked four times per close interval, so that a
        // record waiting on this region's closed timestamp waits little;
        // lag figures are updated once per interval.
        // Partitions with a RemoteHeld proposal in flight.
        let holding = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let interval = Duration::from_millis((self.cfg.close_interval_ms / 4).max(5));
        let mut tick = tokio::time::interval(interval);
        let mut ticks = 0u64;
        // Partitions whose lag this node reports, to drop their series when
        // it stops leading them (or they are deleted): stale figures from a
        // former leader would show lag that is not there.
        let mut reported: HashMap<GroupId, (String, u32, Vec<String>)> = HashMap::new();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let names = self.region_names();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            ticks += 1;
            let lag_due = ticks % 4 == 1;
            let meta = self.groups.meta_state();
            let mut wanted = HashSet::new();
            let mut led = HashSet::new();
            let partitions = self.groups.partitions();
            if lag_due {
                // Remote acks and lanes of partitions gone from this node
                // are never used again.
                let here: HashSet<GroupId> = partitions.iter().map(|g| g.id).collect();
                self.acks
                    .lock()
                    .expect("acks lock")
                    .retain(|id, _| here.contains(id));
                self.lanes.retain(|id| here.contains(&id));
            }
            for g in partitions {
                if g.leader() != Some(self.me.id) {
                    continue;
                }
                let Some(t) = meta.topics.get(&g.topic) else {
                    continue;
                };
                let policy = crate::meta::policy(&t.configs, &names);
                led.insert(g.id);
                for r in policy.regions.iter().filter(|r| **r != self.me.region) {
                    wanted.insert((g.id, r.clone()));
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        copiers.entry((g.id, r.clone()))
                    {
                        let stop = run_stop.child_token();
                        e.insert(stop.clone());
                        let span = tracing::info_span!("link", region = %self.me.region, node = self.me.id, group = g.id, to = %r);
                        let (link, g, r) = (self.clone(), g.clone(), r.clone());
                        let name = "link copier";
                        let s = stop.clone();
                        crate::supervise::spawn(name, stop, self.metrics.clone(), move || {
                            link.clone()
                                .copier(g.clone(), r.clone(), s.clone())
                                .instrument(span.clone())
                        });
                    }
                }
                self.close_if_idle(&g, &policy, &closing);
                self.report_remote_held(&g, &policy, &holding);
                if lag_due {
                    self.update_lag(&g, &policy);
                    let remotes = policy
                        .regions
                        .iter()
                        .filter(|r| **r != self.me.region)
                        .cloned()
                        .collect();
                    reported.insert(g.id, (g.topic.clone(), g.partition, remotes));
                }
            }
            if lag_due {
                self.forget_holdings(|g| led.contains(&g));
                reported.retain(|g, (topic, partition, remotes)| {
                    let keep = led.contains(g);
                    if !keep {
                        self.forget_lag(topic, *partition, remotes);
                    }
                    keep
                });
            }
            copiers.retain(|k, stop| {
                let keep = wanted.contains(k);
                if !keep {
                    stop.cancel();
                }
                keep
            });
        }
        for stop in copiers.values() {
            stop.cancel();
        }
    }

    /// Proposes a closed timestamp for a partition this node leads when its
    /// own origin log has been quiet for a close interval, so that the other
    /// origins' records can enter the view (invariant 5 makes it a promise).
    fn close_if_idle(
        &self,
        g: &Arc<PartitionGroup>,
        policy: &Policy,
        closing: &Arc<std::sync::Mutex<HashSet<GroupId>>>,
    ) {
        if policy.single_writer() || !policy.accepts_writes_in(&self.me.region) {
            return;
        }
        // A partition still in an epoch its region left (failback pending)
        // promises nothing for that log: it ends there.
        if g.progress.borrow().log.epoch < self.groups.meta_state().epoch_of(&self.me.region) {
            return;
        }
        let p = g.progress.borrow().clone();
        let closed = p.logs.get(&p.own()).map_or(0, |s| s.closed);
        let now = self.groups.clock.now();
        let age = hlc::wall_ms(now) - hlc::wall_ms(closed);
        let due = age >= close_interval(&p.logs, hlc::wall_ms(now), &self.cfg) as i64
            || waits_on(&p.logs, p.own());
        if !due {
            return;
        }
        if g.releasing() {
            return; // handing leadership over: nothing new to propose
        }
        if !closing.lock().expect("closing lock").insert(g.id) {
            return; // one close in flight per partition
        }
        let (raft, id, closing) = (g.raft.clone(), g.id, closing.clone());
        let timeout = self.transport.rpc_timeout();
        tokio::spawn(async move {
            if let Ok(rx) = Groups::submit(&raft, Command::Close { hlc: now }).await {
                let _ = Groups::wait(rx, timeout).await;
            }
            closing.lock().expect("closing lock").remove(&id);
        });
    }

    /// Tells the partition group how far another region holds this
    /// region's origin log (`Command::RemoteHeld`), as the copiers last
    /// heard: own records enter the view only below that point (see
    /// `StateMachine::own_bound`). One proposal in flight per partition.
    fn report_remote_held(
        &self,
        g: &Arc<PartitionGroup>,
        policy: &Policy,
        holding: &Arc<std::sync::Mutex<HashSet<GroupId>>>,
    ) {
        if policy.regions.len() < 2 {
            return;
        }
        let (own, st) = {
            let p = g.progress.borrow();
            (p.own(), p.logs.get(&p.own()).copied().unwrap_or_default())
        };
        if st.remote_held >= st.next_offset {
            return;
        }
        let best = self
            .acks(g.id)
            .borrow()
            .values()
            .map(|h| h.next_offset)
            .max()
            .unwrap_or(0)
            .min(st.next_offset);
        if best <= st.remote_held {
            return;
        }
        if g.releasing() {
            return;
        }
        if !holding.lock().expect("holding lock").insert(g.id) {
            return;
        }
        let (raft, id, holding) = (g.raft.clone(), g.id, holding.clone());
        let timeout = self.transport.rpc_timeout();
        let cmd = Command::RemoteHeld {
            epoch: own.epoch,
            upto: best,
        };
        tokio::spawn(async move {
            if let Ok(rx) = Groups::submit(&raft, cmd).await {
                let _ = Groups::wait(rx, timeout).await;
            }
            holding.lock().expect("holding lock").remove(&id);
        });
    }

    /// Removes a partition's lag series.
    fn forget_lag(&self, topic: &str, partition: u32, remotes: &[String]) {
        let part = vec![
            ("topic".to_string(), topic.to_string()),
            ("partition".to_string(), partition.to_string()),
        ];
        for r in remotes {
            let mut l = part.clone();
            l.push(("remote_region".to_string(), r.clone()));
            self.metrics.link_lag_records.remove(&l);
            self.metrics.link_lag_bytes.remove(&l);
            self.metrics.link_lag_ms.remove(&l);
        }
        self.metrics.rpo_exposure_records.remove(&part);
        self.metrics.closed_age_ms.remove(&part);
    }

    fn update_lag(&self, g: &Arc<PartitionGroup>, policy: &Policy) {
        let p = g.progress.borrow().clone();
        let own = p.own();
        let labels = |region: &str| {
            vec![
                ("topic".to_string(), g.topic.clone()),
                ("partition".to_string(), g.partition.to_string()),
                ("remote_region".to_string(), region.to_string()),
            ]
        };
        let part_labels = vec![
            ("topic".to_string(), g.topic.clone()),
            ("partition".to_string(), g.partition.to_string()),
        ];
        let mine = p.logs.get(&own).copied().unwrap_or_default();
        let acks = self.acks(g.id).borrow().clone();
        let mut best_remote = 0u64;
        for r in policy.regions.iter().filter(|r| **r != self.me.region) {
            let theirs = acks.get(r).map_or(0, |h| h.next_offset);
            best_remote = best_remote.max(theirs);
            let lag = mine.next_offset.saturating_sub(theirs);
            self.metrics
                .link_lag_records
                .get_or_create(&labels(r))
                .set(lag as i64);
            let (ms, bytes) = if lag == 0 {
                (0, 0)
            } else {
                lag_age_and_bytes(self, g.id, own, theirs, mine.next_offset)
            };
            self.metrics.link_lag_ms.get_or_create(&labels(r)).set(ms);
            self.metrics
                .link_lag_bytes
                .get_or_create(&labels(r))
                .set(bytes);
        }
        if policy.regions.len() > 1 {
            self.metrics
                .rpo_exposure_records
                .get_or_create(&part_labels)
                .set(mine.next_offset.saturating_sub(best_remote) as i64);
        }
        let w = p.watermark;
        // 0: nothing closed yet; MAX: every writer origin is sealed.
        let age = if w == 0 || w == u64::MAX {
            -1
        } else {
            hlc::wall_ms(self.groups.clock.now()) - hlc::wall_ms(w)
        };
        self.metrics
            .closed_age_ms
            .get_or_create(&part_labels)
            .set(age);
    }

    /// The next copy of `log` for a region that holds it up to `from`:
    /// whole batches from there, at most `link.batch_bytes_max`, and the
    /// closed timestamp that holds for their end.
    fn ship(
        &self,
        group: GroupId,
        log: LogRef,
        mine: Held,
        from: Held,
    ) -> Result<Ship, crate::storage::DbError> {
        let key = crate::storage::LogKey {
            group,
            origin: log.origin,
            epoch: log.epoch,
        };
        let batches = read::stored(
            self.groups.db(),
            key,
            from.next_offset,
            mine.next_offset,
            self.cfg.batch_bytes_max as usize,
        )?;
        let last = batches
            .last()
            .and_then(|b| crate::log::batch::decode(b).ok())
            .map(|(h, _)| h);
        let (end, closed) = match last {
            // HLCs grow along the log: what follows the copy is newer than
            // its last record.
            Some(h) if h.end_offset() < mine.next_offset => (h.end_offset(), h.last_hlc()),
            Some(h) => (h.end_offset(), mine.closed),
            None if from.next_offset >= mine.next_offset => (from.next_offset, mine.closed),
            // Nothing readable where records should be: promise nothing.
            None => (from.next_offset, from.closed),
        };
        Ok(Ship {
            from_region: self.me.region.clone(),
            log,
            closed,
            end,
            batches,
        })
    }

    /// Ships `g`'s origin logs to `region` until `stop`. Copies are
    /// pipelined: up to `link.in_flight_requests_max` copies and
    /// `link.in_flight_bytes_max` bytes may await their answers, so a
    /// record committed here leaves at once instead of after the previous
    /// copy's round trip. After any error the copier asks the region what
    /// it holds and resumes from there.
    async fn copier(
        self: Arc<Self>,
        g: Arc<PartitionGroup>,
        region: String,
        stop: CancellationToken,
    ) {
        let nodes = self.region_nodes(&region);
        if nodes.is_empty() {
            // A region without nodes (the topology forbids it): nothing
            // to copy to, until stopped.
            stop.cancelled().await;
            return;
        }
        let backoff_max = Duration::from_millis(self.cfg.retry_backoff_ms_max);
        let max_bytes = self.cfg.in_flight_bytes_max as usize;
        let max_requests = self.cfg.in_flight_requests_max.max(1) as usize;
        let mut backoff = Duration::from_millis(50);
        let mut target = nodes[0];
        // Nodes tried without success since the last answer: the backoff
        // doubles once per round over the region's nodes, not per node.
        let mut tried = 0usize;
        let mut pipe = Pipe::default();
        let mut progress = g.progress.clone();
        let dest_origin = origin_id(&region);
        let mut failing = false;
        debug!("copier started");
        while !stop.is_cancelled() {
            self.fill(
                &mut pipe,
                &g,
                target,
                &mut progress,
                dest_origin,
                (max_requests, max_bytes),
            );
            // Wait for an answer, or for something new to send.
            let room = pipe.theirs.is_some()
                && pipe.calls.len() < max_requests
                && (pipe.calls.is_empty() || pipe.bytes < max_bytes);
            let idle = pipe.calls.is_empty();
            let (sent, result) = tokio::select! {
                _ = stop.cancelled() => return,
                Some(done) = pipe.calls.next(), if !idle => done,
                r = progress.changed(), if room => {
                    if r.is_err() {
                        // The partition is gone; `run` stops this copier
                        // at its next tick (returning now would look like
                        // a failure to the supervisor).
                        stop.cancelled().await;
                        return;
                    }
                    continue;
                }
                // Relays move what the region holds; look again now and then.
                _ = tokio::time::sleep(Duration::from_secs(1)), if idle => continue,
            };
            if let Some(s) = &sent {
                pipe.bytes -= s.bytes;
            }
            let reply = match result {
                Ok(bytes) => bincode::deserialize::<Reply>(&bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match reply {
                Ok(Reply::Logs(m)) => {
                    if failing {
                        info!(node = target, "link to region restored");
                        failing = false;
                    }
                    backoff = Duration::from_millis(50);
                    tried = 0;
                    pipe.answered(&m, sent.as_ref());
                    if let Some(theirs) = &pipe.theirs {
                        self.set_holdings(g.id, &region, theirs);
                    }
                    let own = g.progress.borrow().own();
                    let acked = pipe.theirs.as_ref().and_then(|t| t.get(&own)).copied();
                    self.set_acks(g.id, &region, acked.unwrap_or_default());
                    continue;
                }
                Ok(Reply::NotLeader(Some(l))) if nodes.contains(&l) && l != target => {
                    target = l;
                    pipe = Pipe::default();
                    continue;
                }
                Ok(Reply::NotLeader(_)) => {
                    target = next_node(&nodes, target);
                    tried += 1;
                }
                Ok(Reply::Refused(msg)) => {
                    warn!(node = target, reason = %msg, "region refused a copy");
                    tried = 0; // the same node again, after a doubled backoff
                }
                Err(e) => {
                    if !failing {
                        warn!(node = target, error = %e, "cannot copy to region; retrying");
                        failing = true;
                    }
                    target = next_node(&nodes, target);
                    tried += 1;
                }
            }
            // Start over from what the region says it holds.
            pipe = Pipe::default();
            self.metrics.link_errors.inc();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            if tried % nodes.len() == 0 {
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }

    /// Fills `pipe`: a state query while what the region holds is unknown,
    /// else copies of what it lacks, within `limits` (requests, bytes) in
    /// flight. Every origin log held here is copied but the destination's
    /// own (`dest_origin`): only writer regions have logs (a pinned topic's
    /// home changes when its region fails over), and `run` stops the copier
    /// when the partition goes away.
    fn fill(
        &self,
        pipe: &mut Pipe,
        g: &PartitionGroup,
        target: crate::ids::NodeId,
        progress: &mut watch::Receiver<Progress>,
        dest_origin: u32,
        (max_requests, max_bytes): (usize, usize),
    ) {
        if pipe.theirs.is_none() {
            if pipe.calls.is_empty() {
                pipe.calls
                    .push(self.send(target, KIND_LINK_STATE, g.id, None, Vec::new()));
            }
        } else {
            let p = progress.borrow_and_update().clone();
            let mine = super::held_map(&p.logs);
            // A log the region holds less of than is still stored here (it
            // lost data retention had counted on: a wiped or restored
            // disk) cannot be copied from here: copy the others rather than
            // send the same batches forever, and once that lasts (a new
            // leader there may report a moment late) say so, once.
            let now = unservable(&mine, &pipe.sent, &p.trimmed, dest_origin);
            pipe.unservable.retain(|l, _| now.contains(l));
            for l in &now {
                let (since, said) = pipe
                    .unservable
                    .entry(*l)
                    .or_insert((std::time::Instant::now(), false));
                if !*said && since.elapsed() >= UNSERVABLE_AFTER {
                    *said = true;
                    self.metrics.link_unservable_logs.inc();
                    error!(
                        origin = l.origin,
                        epoch = l.epoch,
                        held = pipe.sent.get(l).map_or(0, |h| h.next_offset),
                        stored_from = p.trimmed.get(l).copied().unwrap_or(0),
                        "the region lacks records this region has already removed (retention): it cannot catch up by copying; rebuild it"
                    );
                }
            }
            let wanted = |l: &LogRef| l.origin != dest_origin && !now.contains(l);
            while pipe.calls.len() < max_requests
                && (pipe.calls.is_empty() || pipe.bytes < max_bytes)
            {
                let Some((log, m, from)) = next_copy(&mine, &pipe.sent, wanted) else {
                    break;
                };
                let ship = match self.ship(g.id, log, m, from) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot read the origin log to copy");
                        break;
                    }
                };
                let payload = bincode::serialize(&ship).expect("serialize ship");
                let sent = Sent {
                    log,
                    held: Held {
                        next_offset: ship.end,
                        closed: ship.closed,
                    },
                    bytes: payload.len(),
                };
                pipe.sent.insert(log, sent.held);
                pipe.bytes += sent.bytes;
                self.metrics.link_batches_sent.inc();
                pipe.calls
                    .push(self.send(target, KIND_LINK_SHIP, g.id, Some(sent), payload));
            }
            // Nothing to send for a while: ask what the region holds, which
            // copies from elsewhere (its own writes, relays) moved on.
            // Retention here keeps what it seems to lack.
            if pipe.calls.is_empty() && pipe.heard.is_none_or(|t| t.elapsed() >= STATE_REFRESH) {
                pipe.heard = Some(std::time::Instant::now());
                pipe.calls
                    .push(self.send(target, KIND_LINK_STATE, g.id, None, Vec::new()));
            }
        }
    }

    fn send(
        &self,
        target: crate::ids::NodeId,
        kind: u8,
        group: GroupId,
        sent: Option<Sent>,
        payload: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Answer> {
        let transport = self.transport.clone();
        let timeout = transport.rpc_timeout();
        Box::pin(async move {
            let r = transport
                .call(target, kind, group, &payload, timeout)
                .await
                .map_err(|e| e.to_string());
            (sent, r)
        })
    }
}

/// A copy awaiting its answer: the log, what the region holds of it once
/// the copy applies, and its size.
#[derive(Debug, Clone, Copy)]
struct Sent {
    log: LogRef,
    held: Held,
    bytes: usize,
}

type Answer = (Option<Sent>, Result<Vec<u8>, String>);

/// A copier's view of one remote region.
#[derive(Default)]
struct Pipe {
    /// What the region said it holds (the newest answer per log); `None`
    /// until it has answered since the last error.
    theirs: Option<BTreeMap<LogRef, Held>>,
    /// What it will hold once the copies in flight apply: where the next
    /// copy of each log starts.
    sent: BTreeMap<LogRef, Held>,
    calls: FuturesUnordered<futures::future::BoxFuture<'static, Answer>>,
    bytes: usize,
    /// When the region last answered (or was last asked while idle).
    heard: Option<std::time::Instant>,
    /// Logs the region lacks records of that are no longer stored here:
    /// since when, and whether that was logged.
    unservable: BTreeMap<LogRef, (std::time::Instant, bool)>,
}

impl Pipe {
    /// Takes in an answer to `sent` (or to a state query): answers can
    /// come out of order, so each log keeps the furthest state heard; a copy
    /// that did not apply (the region missed one before it) moves the
    /// cursor back to what the region holds, and the gap is sent again.
    fn answered(&mut self, m: &BTreeMap<LogRef, Held>, sent: Option<&Sent>) {
        self.heard = Some(std::time::Instant::now());
        let theirs = self.theirs.get_or_insert_with(BTreeMap::new);
        for (l, h) in m {
            let t = theirs.entry(*l).or_default();
            *t = furthest(*t, *h);
            let s = self.sent.entry(*l).or_default();
            *s = furthest(*s, *h);
        }
        if let Some(s) = sent {
            let t = theirs.get(&s.log).copied().unwrap_or_default();
            if t.next_offset < s.held.next_offset || t.closed < s.held.closed {
                self.sent.insert(s.log, t);
            }
        }
    }
}

fn furthest(a: Held, b: Held) -> Held {
    Held {
        next_offset: a.next_offset.max(b.next_offset),
        closed: a.closed.max(b.closed),
    }
}

/// Age of the oldest own record at `from` that a remote lacks, and the
/// stored bytes up to `to`, estimated from that record's batch: one read,
/// as this runs every close interval.
fn lag_age_and_bytes(link: &Link, group: GroupId, own: LogRef, from: u64, to: u64) -> (i64, i64) {
    let key = crate::storage::LogKey {
        group,
        origin: own.origin,
        epoch: own.epoch,
    };
    let Ok(Some((h, size, hlc))) = read::record_at(link.groups.db(), key, from) else {
        return (0, 0);
    };
    let age = hlc::wall_ms(link.groups.clock.now()) - hlc::wall_ms(hlc);
    let bytes = (to - from) * size as u64 / h.count as u64;
    (age.max(0), bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(n: u64, c: u64) -> Held {
        Held {
            next_offset: n,
            closed: c,
        }
    }

    #[test]
    fn a_copier_tries_every_other_node_before_the_one_that_failed() {
        let nodes = [7, 8, 9];
        assert_eq!(next_node(&nodes, 8), 9);
        assert_eq!(next_node(&nodes, 9), 7);
        assert_eq!(next_node(&nodes, 7), 8);
        // A hinted leader outside the list (the topology changed): the first.
        assert_eq!(next_node(&nodes, 4), 7);
        // From any node, a round visits each node once.
        for start in nodes {
            let mut seen = vec![start];
            let mut t = start;
            for _ in 1..nodes.len() {
                t = next_node(&nodes, t);
                seen.push(t);
            }
            seen.sort_unstable();
            assert_eq!(seen, nodes);
        }
    }

    #[test]
    fn idle_partitions_close_less_often() {
        use crate::storage::state_machine::LogState;
        let cfg = crate::config::LinkConfig::default();
        let now = 1_763_712_000_000i64;
        let log = |origin, next, merged, written_ms: i64| {
            (
                LogRef { origin, epoch: 1 },
                LogState {
                    next_offset: next,
                    last_hlc: hlc::from_wall_ms(written_ms),
                    closed: hlc::from_wall_ms(written_ms),
                    merged,
                    sealed: None,
                    remote_held: 0,
                },
            )
        };
        let quiet: BTreeMap<_, _> = [log(1, 5, 5, now - 60_000), log(2, 3, 3, now - 60_000)].into();
        assert_eq!(
            close_interval(&quiet, now, &cfg),
            cfg.idle_close_interval_ms
        );
        let written: BTreeMap<_, _> = [log(1, 5, 5, now - 60_000), log(2, 3, 3, now - 20)].into();
        assert_eq!(close_interval(&written, now, &cfg), cfg.close_interval_ms);
        let waiting: BTreeMap<_, _> =
            [log(1, 5, 5, now - 60_000), log(2, 3, 2, now - 60_000)].into();
        assert_eq!(
            close_interval(&waiting, now, &cfg),
            cfg.close_interval_ms,
            "a record waits for the view"
        );
        assert_eq!(
            close_interval(&BTreeMap::new(), now, &cfg),
            cfg.idle_close_interval_ms
        );
        // Another origin's record above our closed timestamp waits on us.
        let own = LogRef {
            origin: 1,
            epoch: 1,
        };
        let newer: BTreeMap<_, _> = [log(1, 5, 5, now - 60_000), log(2, 3, 2, now - 50_000)].into();
        assert!(waits_on(&newer, own));
        assert!(!waits_on(&written, own), "all merged");
        let behind: BTreeMap<_, _> = [log(1, 5, 5, now), log(2, 3, 2, now - 60_000)].into();
        assert!(!waits_on(&behind, own), "our closed timestamp is past it");
    }

    #[test]
    fn answers_out_of_order_keep_the_furthest_state_and_gaps_are_resent() {
        let a = LogRef {
            origin: 1,
            epoch: 1,
        };
        let sent = |n, c| Sent {
            log: a,
            held: held(n, c),
            bytes: 10,
        };
        let mut p = Pipe::default();
        p.answered(&[(a, held(10, 100))].into(), None);
        // Three copies in flight: 10..20, 20..30, 30..40.
        p.sent.insert(a, held(40, 400));
        // The second copy's answer comes first and shows it applied.
        p.answered(&[(a, held(30, 300))].into(), Some(&sent(30, 300)));
        assert_eq!(p.sent[&a], held(40, 400), "nothing to resend");
        // The first copy's answer is older: it does not move anything back.
        p.answered(&[(a, held(20, 200))].into(), Some(&sent(20, 200)));
        assert_eq!(p.theirs.as_ref().unwrap()[&a], held(30, 300));
        assert_eq!(p.sent[&a], held(40, 400));
        // The third copy did not apply (the region missed something):
        // resend from what the region holds.
        p.answered(&[(a, held(30, 300))].into(), Some(&sent(40, 400)));
        assert_eq!(p.sent[&a], held(30, 300));
        // A closed timestamp that did not apply is sent again too.
        p.sent.insert(a, held(30, 350));
        p.answered(&[(a, held(30, 300))].into(), Some(&sent(30, 350)));
        assert_eq!(p.sent[&a], held(30, 300));
    }

    #[test]
    fn a_log_the_region_lacks_removed_records_of_is_not_copied() {
        let (a, b, own) = (
            LogRef {
                origin: 1,
                epoch: 1,
            },
            LogRef {
                origin: 2,
                epoch: 1,
            },
            LogRef {
                origin: 9,
                epoch: 1,
            },
        );
        let mine: BTreeMap<_, _> = [(a, held(50, 0)), (b, held(50, 0)), (own, held(50, 0))].into();
        let stored_from: BTreeMap<_, _> = [(a, 20), (b, 20), (own, 20)].into();
        // The region holds 30 of a, nothing of b, and is `own`'s origin.
        let theirs: BTreeMap<_, _> = [(a, held(30, 0)), (own, held(0, 0))].into();
        let u = unservable(&mine, &theirs, &stored_from, 9);
        assert_eq!(u.into_iter().collect::<Vec<_>>(), [b]);
        // Exactly at the first stored offset: servable.
        let theirs: BTreeMap<_, _> = [(a, held(20, 0)), (b, held(20, 0))].into();
        assert!(unservable(&mine, &theirs, &stored_from, 9).is_empty());
        // Nothing removed here: everything is servable.
        assert!(unservable(&mine, &BTreeMap::new(), &BTreeMap::new(), 9).is_empty());
    }

    #[test]
    fn sends_missing_records_first_then_closed_timestamps() {
        let a = LogRef {
            origin: 1,
            epoch: 1,
        };
        let b = LogRef {
            origin: 2,
            epoch: 1,
        };
        let mine: BTreeMap<_, _> = [(a, held(5, 50)), (b, held(3, 90))].into();
        let theirs: BTreeMap<_, _> = [(a, held(5, 40)), (b, held(1, 20))].into();
        assert_eq!(next_copy(&mine, &theirs, |_| true).map(|x| x.0), Some(b));
        let theirs: BTreeMap<_, _> = [(a, held(5, 40)), (b, held(3, 90))].into();
        assert_eq!(
            next_copy(&mine, &theirs, |_| true).map(|x| x.0),
            Some(a),
            "closed only"
        );
        assert_eq!(
            next_copy(&mine, &theirs, |l| l.origin != 1),
            None,
            "not the receiver's own log"
        );
        let theirs: BTreeMap<_, _> = [(a, held(7, 70)), (b, held(3, 90))].into();
        assert_eq!(
            next_copy(&mine, &theirs, |_| true),
            None,
            "they are ahead (relayed)"
        );
    }
}
