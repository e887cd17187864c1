//! Failover (invariant 7): the metadata leader seals the origin logs of a
//! region whose lease has expired, and every partition leader applies the
//! seals to its group, so that the global view goes on without the region.
//!
//! 1. The metadata leader sees a region's lease run out by its own clock.
//!    The region stopped writing a clock margin before that by its clock,
//!    so by now it writes no more (clocks are within the margin).
//! 2. It asks the partition leaders of every other region how far they
//!    hold the lost region's log of each partition (`KIND_HELD`, answered
//!    after a linearizable read, so it covers all they committed), until two
//!    rounds agree and the lease has expired for certain (`seal::due`: its
//!    clock past the lease plus the margin), and takes the furthest
//!    (`seal::seal_points`). Every
//!    partition of every other region must answer: one that does not may
//!    hold records acknowledged as `sync`, so while a second region is
//!    unreachable no region is failed over.
//! 3. It commits `SealRegion`, which the metadata group refuses if the
//!    region renewed its lease since the decision.
//! 4. Each region's partition leaders propose `SealLog` into their groups.
//!    Survivors that hold less than the seal get the rest from the others
//!    over the link; once held, the sealed log stops holding the view back.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::command::{Command, CommandResult};
use crate::config::{ControlConfig, NodeSpec, Topology};
use crate::ids::{origin_id, GroupId, LogRef, META_GROUP};
use crate::link::{FailbackReq, Link};
use crate::log::batch;
use crate::log::RecordIn;
use crate::meta::seal::{self, Held, Seal, SealEnd};
use crate::metrics::Metrics;
use crate::raft::groups::HeldQuery;
use crate::raft::network::KIND_HELD;
use crate::raft::{Groups, PartitionGroup};

use crate::meta::MetaState;
use crate::storage::read;
use crate::transport::Transport;

/// Rounds of questions to survivors before a seal is taken anyway.
const ROUNDS_MAX: usize = 5;
/// Time between rounds: copies in flight settle.
const ROUND_GAP: Duration = Duration::from_millis(300);

/// Everything the failover loop needs.
pub struct Failover {
    pub groups: Arc<Groups>,
    pub link: Arc<Link>,
    pub transport: Arc<Transport>,
    pub topology: Topology,
    pub me: NodeSpec,
    pub cfg: ControlConfig,
    pub margin_ms: u64,
    /// `raft.entry_bytes_max`: a re-injection request stays within it.
    pub entry_bytes_max: u64,
    pub metrics: Arc<Metrics>,
    /// Partitions whose failback runs now.
    pub failing_back: Mutex<HashSet<GroupId>>,
    /// Regions whose failover was announced (a metadata leader cut off
    /// from the others retries every tick, and says so once).
    pub warned: Mutex<HashSet<String>>,
}

impl Failover {
    /// Until `shutdown`: fails regions over when this node leads the
    /// metadata group, and applies committed seals to the partition groups
    /// this node leads. Publishes seals and epochs in metrics.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.topology.regions.len() < 2 {
            // One region: nothing to fail over to. Returning early would
            // look like a failure to the supervisor.
            shutdown.cancelled().await;
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let meta = self.groups.meta_state();
            self.publish(&meta);
            if self.cfg.failover && self.groups.meta_leader() == Some(self.me.id) {
                let now = self.groups.clock.wall_now_ms();
                self.warned
                    .lock()
                    .expect("warned lock")
                    .retain(|r| seal::due(&meta.leases, &meta.seals, r, now, 0));
                for r in &self.topology.regions {
                    // The region stopped writing (its lease ran out by any
                    // clock within the margin): the survivors can be asked
                    // what they hold while the margin runs out.
                    if r.name != self.me.region
                        && seal::due(&meta.leases, &meta.seals, &r.name, now, 0)
                    {
                        self.fail_over(&r.name, &meta).await;
                    }
                }
            }
            self.seal_led_groups(&meta).await;
            self.seal_new_groups(&meta).await;
            self.move_homes(&meta).await;
            self.fail_back_led_groups(&meta, &shutdown);
        }
    }

    /// Starts failback for the partitions this node leads whose own log is
    /// still in an epoch the region left (it was failed over and is back:
    /// it renewed its lease since the seal).
    fn fail_back_led_groups(self: &Arc<Self>, meta: &MetaState, shutdown: &CancellationToken) {
        let region = &self.me.region;
        let epoch = meta.epoch_of(region);
        if meta.last_seal(region).is_none() || meta.seal_of(region).is_some() {
            return; // never failed over, or not back yet
        }
        for g in self.groups.partitions() {
            if g.leader() != Some(self.me.id) {
                continue;
            }
            let (own, sealed) = {
                let p = g.progress.borrow();
                let own = p.own();
                (own, p.logs.get(&own).is_some_and(|s| s.sealed.is_some()))
            };
            if own.epoch >= epoch {
                continue;
            }
            // A log the seal covers is sealed here first (seal_led_groups).
            let covered = meta
                .seals
                .iter()
                .any(|s| s.region == *region && s.epoch == own.epoch && s.ends.contains_key(&g.id));
            if covered && !sealed {
                continue;
            }
            if !self.failing_back.lock().expect("failing_back").insert(g.id) {
                continue;
            }
            let this = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let id = g.id;
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = this.fail_back(&g, epoch) => {
                        if let Err(e) = r {
                            debug!(group = id, error = %e, "failback paused; retried");
                        }
                    }
                }
                this.failing_back.lock().expect("failing_back").remove(&id);
            });
        }
    }

    /// Fails one partition back (invariant 7): re-injects the records of
    /// its own sealed log past the seal as new records of another region,
    /// has every other region admit its new log, and begins `epoch`.
    async fn fail_back(&self, g: &Arc<PartitionGroup>, epoch: u32) -> Result<(), String> {
        let started = Instant::now();
        let meta = self.groups.meta_state();
        let t = meta
            .topics
            .values()
            .find(|t| t.name == g.topic)
            .ok_or("topic deleted")?;
        let policy = crate::meta::policy(&t.configs, &self.link.region_names());
        let region = self.me.region.clone();
        let timeout = self.transport.rpc_timeout() * 4;
        let leading = || g.leader() == Some(self.me.id);
        let (own, st) = {
            let p = g.progress.borrow();
            (p.own(), p.logs.get(&p.own()).copied().unwrap_or_default())
        };
        let end = st.sealed.unwrap_or(st.next_offset);
        let mut reinjected = 0u64;
        if st.next_offset > end {
            // Writers = all: another region's log takes them; pinned: the
            // topic's (new) home.
            let target = if policy.accepts_writes_in(&region) {
                policy.regions.iter().find(|r| **r != region).cloned()
            } else {
                policy.writer_regions().into_iter().next()
            }
            .ok_or("no region to re-inject into")?;
            info!(group = g.id, topic = %g.topic, partition = g.partition, from = end,
                  to = st.next_offset, %target, "re-injecting records past the seal");
            let key = crate::storage::LogKey {
                group: g.id,
                origin: own.origin,
                epoch: own.epoch,
            };
            let mut pos = end;
            while pos < st.next_offset {
                if !leading() {
                    return Err("no longer the partition leader".into());
                }
                let req = self.reinjection(key, pos, st.next_offset, &target)?;
                match self.link.failback_call(&target, g.id, &req, timeout).await {
                    Ok(upto) => {
                        reinjected += upto.saturating_sub(pos);
                        self.metrics
                            .reinjected_records
                            .inc_by(upto.saturating_sub(pos));
                        pos = upto;
                    }
                    Err(e) => {
                        warn!(group = g.id, %target, error = %e, "re-injection not accepted yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        // The new log joins every other region's view before it is written.
        let new_log = LogRef {
            origin: own.origin,
            epoch,
        };
        let floor = if policy.accepts_writes_in(&region) {
            let mut floor = 0u64;
            for r in policy.regions.iter().filter(|r| **r != region) {
                loop {
                    if !leading() {
                        return Err("no longer the partition leader".into());
                    }
                    let req = FailbackReq::Admit { log: new_log };
                    match self.link.failback_call(r, g.id, &req, timeout).await {
                        Ok(closed) => {
                            floor = floor.max(closed);
                            break;
                        }
                        Err(e) => {
                            warn!(group = g.id, region = %r, error = %e, "region cannot admit the new epoch yet; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            Some(floor)
        } else {
            None
        };
        self.groups
            .write_to(g, Command::BeginEpoch { epoch, floor }, timeout)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            group = g.id,
            topic = %g.topic,
            partition = g.partition,
            epoch,
            reinjected,
            took_ms = started.elapsed().as_millis() as u64,
            "partition failed back"
        );
        Ok(())
    }

    /// The next re-injection request: the stored records of `key` from
    /// `from` (before `to`), flagged with their original id and HLC; as
    /// many as fit `link.batch_bytes_max` and `raft.entry_bytes_max` with
    /// those headers (at least one), so that neither the request nor the
    /// Raft entry it becomes outgrows what the transport and AppendEntries
    /// carry. It may end inside a stored batch; the next one starts there.
    /// `target` is the region that proposes them.
    fn reinjection(
        &self,
        key: crate::storage::LogKey,
        from: u64,
        to: u64,
        target: &str,
    ) -> Result<FailbackReq, String> {
        let budget = (self.link.cfg.batch_bytes_max as usize).min(self.entry_bytes_max as usize);
        let batches =
            read::stored(self.groups.db(), key, from, to, budget).map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        let mut offset = None;
        let mut bytes = batch::BATCH_HEADER_BYTES;
        'batches: for b in &batches {
            let (h, recs) = batch::records_of(b)?;
            let producer = batch::producer_of(&b[batch::HEADER_LEN..]);
            for (i, mut r) in recs.into_iter().enumerate() {
                let at = h.base_offset + i as u64;
                if at < from {
                    continue; // the previous request ended inside this batch
                }
                if at >= to {
                    break 'batches;
                }
                r.headers
                    .retain(|(k, _)| k != batch::HEADER_ORIGIN && k != batch::HEADER_HLC);
                let id = format!("{}/{}/{at}", self.me.region, key.epoch);
                let hlc = h.first_hlc + i as u64;
                r.headers
                    .push((batch::HEADER_REINJECTED_FROM.to_string(), Some(id.into())));
                r.headers.push((
                    batch::HEADER_REINJECTED_HLC.to_string(),
                    Some(hlc.to_string().into()),
                ));
                if let Some(p) = producer {
                    let seq = crate::log::producers::seq_add(p.base_sequence, i as i64);
                    r.headers.push((
                        batch::HEADER_REINJECTED_PRODUCER.to_string(),
                        Some(format!("{}/{}/{seq}", p.id, p.epoch).into()),
                    ));
                }
                let size = record_bytes(&r, target);
                if !records.is_empty() && bytes + size > budget {
                    break 'batches;
                }
                bytes += size;
                offset.get_or_insert(at);
                records.push(r);
            }
        }
        let offset = offset.ok_or_else(|| format!("no stored records at offset {from}"))?;
        Ok(FailbackReq::Reinject {
            from: LogRef {
                origin: key.origin,
                epoch: key.epoch,
            },
            offset,
            records,
            timeout_ms: self.transport.rpc_timeout().as_millis() as u64 * 4,
        })
    }

    fn publish(&self, meta: &MetaState) {
        for r in &self.topology.regions {
            let labels = vec![("sealed_region".to_string(), r.name.clone())];
            let sealed = meta.seal_of(&r.name);
            self.metrics
                .region_sealed
                .get_or_create(&labels)
                .set(sealed.is_some() as i64);
            let labels = vec![("epoch_region".to_string(), r.name.clone())];
            self.metrics
                .region_epoch
                .get_or_create(&labels)
                .set(meta.epoch_of(&r.name) as i64);
        }
    }

    /// The partition groups in which `region` wrote an origin log.
    fn groups_written_by(&self, region: &str, meta: &MetaState) -> Vec<GroupId> {
        let names = self.link.region_names();
        let mut v: Vec<GroupId> = meta
            .topics
            .values()
            .filter(|t| {
                let p = crate::meta::policy(&t.configs, &names);
                // A topic no other region holds is left to wait for it.
                // A home moving away from it: its log is sealed either way.
                let moving = meta.pending_move(&t.name).is_some_and(|m| m.from == region);
                p.regions.iter().any(|r| r != region)
                    && (p.writer_regions().iter().any(|w| w == region) || moving)
            })
            .flat_map(|t| (0..t.partitions).map(|p| t.group(p)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Fails `region` over: asks the survivors what they hold of its logs
    /// from the moment its lease ran out by this node's clock, and commits
    /// the seal once the lease has expired for certain (past the clock
    /// margin) and the answers have settled.
    async fn fail_over(&self, region: &str, meta: &MetaState) {
        let started = Instant::now();
        let epoch = meta.epoch_of(region);
        let groups = self.groups_written_by(region, meta);
        if self
            .warned
            .lock()
            .expect("warned lock")
            .insert(region.to_string())
        {
            warn!(
                region,
                partitions = groups.len(),
                "region lease expired; failing it over"
            );
        } else {
            debug!(region, "region lease expired; failing it over (again)");
        }
        // Every other region must answer: any of them may hold records
        // acknowledged as `sync` that the others lack. (Right after a
        // metadata leader change, survivors' leases can look expired until
        // their renewals commit again; they are survivors all the same.)
        let survivors: Vec<&crate::config::RegionSpec> = self
            .topology
            .regions
            .iter()
            .filter(|r| r.name != region)
            .collect();
        let query = HeldQuery {
            origin: origin_id(region),
            epoch,
            groups: groups.clone(),
        };
        let payload = bincode::serialize(&query).expect("serialize query");
        let mut last: Option<BTreeMap<GroupId, SealEnd>> = None;
        let mut round = 0;
        let decided_at_ms = loop {
            let answers = self.ask(&survivors, &payload).await;
            // Every partition leader of every other region must answer.
            let missing: Vec<(String, GroupId)> = survivors
                .iter()
                .flat_map(|r| groups.iter().map(move |g| (r.name.clone(), *g)))
                .filter(|(r, g)| !answers.iter().any(|(ar, h)| ar == r && h.group == *g))
                .collect();
            if !missing.is_empty() {
                warn!(
                    region,
                    missing = missing.len(),
                    first = ?missing[0],
                    "partition leaders of other regions did not answer; failover retried later"
                );
                return;
            }
            let answers: Vec<Held> = answers.into_iter().map(|(_, h)| h).collect();
            let ends = seal::seal_points(&groups, &answers);
            let settled = last.as_ref() == Some(&ends) || round + 1 >= ROUNDS_MAX;
            last = Some(ends);
            let now_meta = self.groups.meta_state();
            let now = self.groups.clock.wall_now_ms();
            if settled
                && seal::due(
                    &now_meta.leases,
                    &now_meta.seals,
                    region,
                    now,
                    self.margin_ms,
                )
            {
                break now;
            }
            if !seal::due(&now_meta.leases, &now_meta.seals, region, now, 0) {
                info!(region, "the region renewed its lease; no failover");
                return;
            }
            round += 1;
            if settled {
                // Settled before the margin ran out: ask once more then.
                let until = now_meta.leases.get(region).copied().unwrap_or(now);
                let wait = (until + self.margin_ms as i64 + 1 - now)
                    .clamp(1, ROUND_GAP.as_millis() as i64);
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            } else {
                debug!(region, round, "seal points still moving");
                tokio::time::sleep(ROUND_GAP).await;
            }
        };
        let Some(ends) = last else { return };
        let records: u64 = ends.values().map(|e| e.end).sum();
        let homes = self.new_homes(region, &survivors, meta);
        let cmd = Command::SealRegion(Seal {
            region: region.to_string(),
            epoch,
            decided_at_ms,
            margin_ms: self.margin_ms,
            ends,
            homes,
        });
        match self
            .groups
            .meta_commit(cmd, Duration::from_millis(self.cfg.lease_ms))
            .await
        {
            Ok(CommandResult::Meta(Ok(()))) => {
                self.metrics.failovers.inc();
                info!(
                    region,
                    epoch,
                    partitions = groups.len(),
                    records_kept = records,
                    took_ms = started.elapsed().as_millis() as u64,
                    "region failed over: its origin logs are sealed"
                );
            }
            Ok(CommandResult::Meta(Err(e))) => info!(region, reason = %e, "failover not needed"),
            Ok(other) => warn!(region, ?other, "unexpected seal result"),
            Err(e) => warn!(region, error = %e, "seal did not commit; failover retried"),
        }
    }

    /// New homes for the topics pinned to `lost`, among `survivors`.
    fn new_homes(
        &self,
        lost: &str,
        survivors: &[&crate::config::RegionSpec],
        meta: &MetaState,
    ) -> BTreeMap<String, String> {
        let names = self.link.region_names();
        let up: Vec<&str> = survivors.iter().map(|r| r.name.as_str()).collect();
        let mut homes = BTreeMap::new();
        for t in meta.topics.values() {
            let p = crate::meta::policy(&t.configs, &names);
            if p.writers != crate::meta::Writers::Home(lost.to_string()) {
                continue;
            }
            // A region that sealed its log of the topic when the home moved
            // away from it, in its current epoch, cannot write it again.
            let up: Vec<&str> = up
                .iter()
                .copied()
                .filter(|r| !meta.handed_off(&t.name, r))
                .collect();
            match seal::new_home(&p.regions, lost, &up) {
                Some(h) => {
                    info!(topic = %t.name, from = lost, to = %h, "moving the topic's home");
                    homes.insert(t.name.clone(), h);
                }
                None => warn!(
                    topic = %t.name,
                    "no region of the topic is up to take over as its home; its writes wait for {lost}"
                ),
            }
        }
        homes
    }

    /// Asks every node of `regions` what it holds of the lost log, for the
    /// groups it leads; returns the answers with their regions.
    async fn ask(
        &self,
        regions: &[&crate::config::RegionSpec],
        payload: &[u8],
    ) -> Vec<(String, Held)> {
        let timeout = self.transport.rpc_timeout();
        let calls = regions.iter().flat_map(|r| {
            r.nodes.iter().map(move |n| async move {
                let held = if n.id == self.me.id {
                    let q: HeldQuery = bincode::deserialize(payload).expect("own query");
                    Ok(self.groups.held(&q, timeout / 2).await)
                } else {
                    self.transport
                        .call(n.id, KIND_HELD, META_GROUP, payload, timeout)
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            bincode::deserialize::<Vec<Held>>(&b).map_err(|e| e.to_string())
                        })
                };
                match held {
                    Ok(h) => h.into_iter().map(|h| (r.name.clone(), h)).collect(),
                    Err(e) => {
                        debug!(node = n.id, error = %e, "no answer to a seal query");
                        Vec::new()
                    }
                }
            })
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    }

    /// Seals, at 0, the lost region's log of partitions created after its
    /// failover (it could write none of them), so their views do not wait
    /// for it either.
    async fn seal_new_groups(&self, meta: &MetaState) {
        let names = self.link.region_names();
        for s in meta
            .seals
            .iter()
            .filter(|s| meta.seal_of(&s.region) == Some(*s))
        {
            let log = LogRef {
                origin: origin_id(&s.region),
                epoch: s.epoch,
            };
            for g in self.groups.partitions() {
                if s.ends.contains_key(&g.id) || g.leader() != Some(self.me.id) {
                    continue;
                }
                let Some(t) = meta.topics.get(&g.topic) else {
                    continue;
                };
                let p = crate::meta::policy(&t.configs, &names);
                if !p.writer_regions().contains(&s.region) {
                    continue;
                }
                let st = g.progress.borrow().logs.get(&log).copied();
                match st {
                    Some(st) if st.sealed.is_some() => continue,
                    Some(st) if st.next_offset > 0 => {
                        warn!(group = g.id, region = %s.region, "a failed-over region's log of a new partition holds records; left unsealed");
                        continue;
                    }
                    _ => {}
                }
                let cmd = Command::SealLog {
                    origin: log.origin,
                    epoch: log.epoch,
                    end: 0,
                    last_hlc: 0,
                    successor: None,
                };
                if let Err(e) = self
                    .groups
                    .write_to(&g, cmd, self.transport.rpc_timeout())
                    .await
                {
                    debug!(group = g.id, error = %e, "cannot seal the new partition's log yet");
                }
            }
        }
    }

    /// Proposes the committed seals into the partition groups this node
    /// leads whose logs do not carry them yet.
    async fn seal_led_groups(&self, meta: &MetaState) {
        for s in &meta.seals {
            let log = LogRef {
                origin: origin_id(&s.region),
                epoch: s.epoch,
            };
            for (id, end) in &s.ends {
                let Some(g) = self.groups.partition(*id) else {
                    continue;
                };
                if g.leader() != Some(self.me.id) {
                    continue;
                }
                let successor = s.homes.get(&g.topic).map(|h| origin_id(h));
                let (sealed, handed, home) = {
                    let p = g.progress.borrow();
                    let sealed = p.logs.get(&log).is_some_and(|st| st.sealed.is_some());
                    (sealed, p.handed.contains(&log), p.home)
                };
                // A pinned topic's handover applies once the group's home is
                // the sealed region (`control::home`); until then the seal
                // alone is applied and the handover proposed again later.
                let hand_over = successor.is_some() && !handed && home == Some(log.origin);
                if sealed && !hand_over {
                    continue;
                }
                let cmd = Command::SealLog {
                    origin: log.origin,
                    epoch: log.epoch,
                    end: end.end,
                    last_hlc: end.last_hlc,
                    successor,
                };
                match self
                    .groups
                    .write_to(&g, cmd, self.transport.rpc_timeout())
                    .await
                {
                    Ok(_) => {
                        info!(group = id, region = %s.region, end = end.end, "origin log sealed")
                    }
                    Err(e) => debug!(group = id, error = %e, "cannot seal the log yet"),
                }
            }
        }
    }
}

/// An upper bound of the bytes `r` takes in a record batch proposed by
/// region `origin` (`batch::propose`, which adds the origin and HLC
/// headers): its key, value and headers, and the most their lengths and
/// the record's fixed fields take as varints.
pub fn record_bytes(r: &RecordIn, origin: &str) -> usize {
    let len = |b: &Option<bytes::Bytes>| b.as_ref().map_or(0, |b| b.len());
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + len(v) + 10).sum();
    let stamped = batch::HEADER_ORIGIN.len() + origin.len() + batch::HEADER_HLC.len() + 20 + 20;
    len(&r.key) + len(&r.value) + headers + stamped + 5 * 5 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_bounds_what_a_proposed_batch_holds() {
        let records: Vec<RecordIn> = (0..200)
            .map(|i| RecordIn {
                key: (i % 3 == 0).then(|| bytes::Bytes::from(vec![b'k'; i])),
                value: (i % 7 != 0).then(|| bytes::Bytes::from(vec![b'v'; i * 50])),
                headers: (0..i % 4)
                    .map(|h| {
                        (
                            format!("h{h}"),
                            Some(bytes::Bytes::from(vec![b'x'; h * 300])),
                        )
                    })
                    .collect(),
            })
            .collect();
        for n in [1, 2, 50, 200] {
            let got = batch::propose(u64::MAX / 2, "ap-south", &records[..n], None).len();
            let bound: usize = batch::BATCH_HEADER_BYTES
                + records[..n]
                    .iter()
                    .map(|r| record_bytes(r, "ap-south"))
                    .sum::<usize>();
            assert!(got <= bound, "{n} records: {got} bytes, bound {bound}");
            assert!(bound < got * 2 + 200 * n, "a loose bound: {got} vs {bound}");
        }
    }
}
