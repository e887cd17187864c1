//! An idempotent producer's batch at apply: whether it continues the
//! producer's sequence, is a retry of one stored before (here or through
//! another region), or must wait for another region's records first.

use super::rules::settled;
use super::StateMachine;
use crate::command::CommandResult;
use crate::ids::LogRef;
use crate::log::batch;
use crate::log::producers::{self, Producer, Verdict};

impl StateMachine {
    /// Decides an idempotent producer's batch arriving at `now_hlc`: `None`
    /// to append it, or the answer instead (a retry of a stored batch, a
    /// sequence error).
    ///
    /// A producer seen last in another log (it wrote through another
    /// region, or through this region's previous epoch), or one given its id
    /// by another region's node, may have stored batches this region does
    /// not hold yet: its batch waits (a retriable refusal) until every other
    /// writer log is held here up to `settled_at` (the proposal's HLC plus
    /// the clock-drift margin), or up to its seal. Then a retry of a batch
    /// stored anywhere before is recognised.
    pub(super) fn check_producer(
        &self,
        p: Producer,
        count: u32,
        now_hlc: u64,
        settled_at: u64,
    ) -> Option<CommandResult> {
        let own = self.own_ref();
        let moved = match self.producers.get(p.id, now_hlc) {
            Some(st) => st.last().log != own,
            None => {
                let node = crate::ids::allocating_node(p.id);
                self.node_regions.get(&node) != Some(&self.origin_id)
            }
        };
        if moved {
            if let Some(origin) = self.unsettled_writer(settled_at, None) {
                return Some(CommandResult::ProducerRefused(
                    producers::Refusal::Settling { origin },
                ));
            }
        }
        let verdict = self.producers.check(p, count, now_hlc);
        if self.skips_a_sealed_tail(p, verdict, now_hlc) {
            // The gap says the producer wrote elsewhere since: only once
            // every open writer log is held here can it lie in a failed
            // over region's tail alone.
            if !moved {
                if let Some(origin) = self.unsettled_writer(settled_at, None) {
                    return Some(CommandResult::ProducerRefused(
                        producers::Refusal::Settling { origin },
                    ));
                }
            }
            return None;
        }
        let refusal = match verdict {
            Verdict::Append => return None,
            Verdict::Duplicate(d) => {
                return Some(CommandResult::Duplicate {
                    log: d.log,
                    base_offset: d.base_offset,
                    end_offset: d.base_offset + d.count as u64,
                    view_offset: (d.log == own)
                        .then(|| self.view_offset(d.base_offset))
                        .flatten(),
                })
            }
            Verdict::DuplicateOld => producers::Refusal::DuplicateOld,
            Verdict::OutOfOrder { expected } => producers::Refusal::OutOfOrder {
                expected,
                got: p.base_sequence,
            },
            Verdict::UnknownProducer => producers::Refusal::UnknownProducer,
            Verdict::StaleEpoch { current } => producers::Refusal::StaleEpoch { current },
        };
        Some(CommandResult::ProducerRefused(refusal))
    }

    /// Whether a producer's batch is refused only for sequences it may
    /// have stored in a failed-over region past the seal: the batch lies
    /// past the producer's last one here (or the producer is new here and
    /// past sequence 0), and a log here was sealed recently enough to hold
    /// them ([`StateMachine::sealed_near`]). Such records were
    /// acknowledged there (an `async` topic's tail) and come back by
    /// re-injection at failback; answering OUT_OF_ORDER_SEQUENCE_NUMBER or
    /// UNKNOWN_PRODUCER_ID instead is fatal to librdkafka's idempotent
    /// producer, or makes it start a new epoch and send again what may be
    /// stored. So the batch is stored (once every open writer log is held
    /// here, `check_producer`), and the skipped sequences are kept as a
    /// gap, which re-injection does not take for stored.
    pub(super) fn skips_a_sealed_tail(&self, p: Producer, verdict: Verdict, now_hlc: u64) -> bool {
        match verdict {
            Verdict::OutOfOrder { expected } if producers::is_ahead(expected, p.base_sequence) => {
                self.producers
                    .get(p.id, now_hlc)
                    .is_some_and(|st| st.epoch == p.epoch && self.sealed_near(st.last_hlc))
            }
            Verdict::UnknownProducer => self.sealed_near(now_hlc),
            _ => false,
        }
    }

    /// Whether a log other than this region's current one is sealed here,
    /// and its region was heard from (its closed timestamp) within
    /// [`producers::GAP_WINDOW_MS`] of `hlc`: it may hold records written
    /// after `hlc` that no other region holds. A log sealed long before
    /// (an old failover, a pinned topic's planned handover) does not.
    pub(super) fn sealed_near(&self, hlc: u64) -> bool {
        let own = self.own_ref();
        let window = crate::hlc::span_ms(producers::GAP_WINDOW_MS);
        self.applied.logs.iter().any(|(l, s)| {
            *l != own
                && s.sealed.is_some()
                && s.closed.max(s.last_hlc).saturating_add(window) >= hlc
        })
    }

    /// The records of a re-injection (from sealed log `from`) to append:
    /// an idempotent producer's record whose sequence the producer has
    /// stored since (it sent it again elsewhere after the failover) is
    /// dropped. Returns how many are kept and their batch (`None`: none is
    /// left to append). Waits
    /// (refused, the caller retries) until every other writer region's log
    /// is held here up to the proposal, so a retry stored there is seen.
    pub(super) fn not_yet_stored(
        &self,
        from: LogRef,
        proposed_hlc: u64,
        count: u32,
        proposed: &bytes::Bytes,
    ) -> Result<(u32, Option<bytes::Bytes>), CommandResult> {
        let Ok(records) = batch::decode_records(proposed, count) else {
            return Ok((count, Some(proposed.clone())));
        };
        let producer_of = |r: &crate::log::RecordIn| -> Option<(i64, i16, i32)> {
            let (_, v) = r
                .headers
                .iter()
                .find(|(k, _)| k == batch::HEADER_REINJECTED_PRODUCER)?;
            let text = std::str::from_utf8(v.as_deref()?).ok()?;
            let mut it = text.split('/');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        };
        if records.iter().all(|r| producer_of(r).is_none()) {
            return Ok((count, Some(proposed.clone())));
        }
        if let Some(origin) = self.unsettled_writer(proposed_hlc, Some(from.origin)) {
            return Err(CommandResult::ProducerRefused(
                producers::Refusal::Settling { origin },
            ));
        }
        let now = proposed_hlc.max(self.own_state().last_hlc);
        let kept: Vec<_> = records
            .into_iter()
            .filter(|r| match producer_of(r) {
                Some((id, epoch, seq)) => !self.producers.has_stored(id, epoch, seq, now),
                None => true,
            })
            .collect();
        if kept.is_empty() {
            return Ok((0, None));
        }
        let n = kept.len() as u32;
        Ok((
            n,
            Some(batch::propose(proposed_hlc, &self.origin, &kept, None)),
        ))
    }

    /// A writer region, other than this one and `besides`, whose log is not
    /// yet held here up to `hlc` (its closed timestamp) nor up to its seal.
    pub(super) fn unsettled_writer(&self, hlc: u64, besides: Option<u32>) -> Option<u32> {
        let own = self.own_ref().origin;
        // This region's own earlier epochs are sealed and held whole.
        self.view_origins
            .iter()
            .copied()
            .filter(|o| *o != own && Some(*o) != besides)
            .find(|o| !settled(&self.applied.logs, *o, hlc))
    }
}
