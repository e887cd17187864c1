//! Idempotent producers: Kafka's producer state of one partition. For each
//! producer id it keeps the last batches that producer stored, which decide
//! whether a new batch continues the producer's sequence, repeats one
//! already stored (a retry: answered with the original and stored once), or
//! is out of order.
//!
//! The table is built from every origin log a region holds, its own and the
//! copied ones, so the state travels with the records: a producer whose
//! region failed and that retries in another region is recognised there.
//! Every answer is a pure function of the table, the batch and the batch's
//! HLC, taken by the state machine, so every replica answers alike.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::hlc;
use crate::ids::LogRef;

/// Batches remembered per producer, as in Kafka: a client has at most five
/// in flight per partition, so a retry is always one of them.
pub const BATCHES_KEPT: usize = 5;
/// A producer that stored nothing for this long (by the HLCs of the
/// partition's batches) is forgotten, as with Kafka's
/// `producer.id.expiration.ms` default.
pub const EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Producers remembered per partition at most: past it, the one silent the
/// longest is forgotten (it gets UNKNOWN_PRODUCER_ID if it writes again).
pub const PRODUCERS_MAX: usize = 10_000;

/// Why an idempotent producer's batch was not stored; what the Kafka
/// client is answered (`kafka::produce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// See [`Verdict::DuplicateOld`].
    DuplicateOld,
    OutOfOrder {
        expected: i32,
        got: i32,
    },
    UnknownProducer,
    StaleEpoch {
        current: i16,
    },
    /// The producer last wrote elsewhere, and this region does not yet hold
    /// region `origin`'s log far enough to tell a retry from a new batch.
    /// Retriable.
    Settling {
        origin: u32,
    },
}

/// Kafka sequence numbers run from 0 to `i32::MAX`, then wrap to 0.
const SEQ_SPAN: i64 = i32::MAX as i64 + 1;

/// The producer fields of a Kafka record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl Producer {
    /// Sequence of the last of `count` records.
    pub fn last_sequence(&self, count: u32) -> i32 {
        seq_add(self.base_sequence, count.saturating_sub(1) as i64)
    }
}

/// `seq + n` in Kafka's wrapping sequence space.
pub fn seq_add(seq: i32, n: i64) -> i32 {
    (seq as i64 + n).rem_euclid(SEQ_SPAN) as i32
}

/// How far `a` lies behind `b` in the wrapping sequence space (0 when equal).
fn behind(a: i32, b: i32) -> i64 {
    (b as i64 - a as i64).rem_euclid(SEQ_SPAN)
}

/// A batch a producer stored: where, and which sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub log: LogRef,
    pub base_offset: u64,
    pub count: u32,
}

/// Sequences a producer skipped here: it wrote them through a region that
/// was failed over before they were copied (an `async` topic's tail past
/// the seal), and went on after them here. They come back only by
/// re-injection at that region's failback, which must keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl Gap {
    fn holds(&self, epoch: i16, seq: i32) -> bool {
        self.epoch == epoch && behind(self.first_seq, seq) <= behind(self.first_seq, self.last_seq)
    }

    /// Whether sequences `first..=last` lie wholly in the gap.
    fn covers(&self, epoch: i16, first: i32, last: i32) -> bool {
        self.holds(epoch, first)
            && self.holds(epoch, last)
            && behind(self.first_seq, first) <= behind(self.first_seq, last)
    }
}

/// Gaps remembered per producer: one per failover it lived through.
pub const GAPS_KEPT: usize = 8;
/// A producer's batch may skip sequences a failed-over region holds only
/// if that region was heard from this close to the producer's last batch
/// here (or, for a producer new here, to the batch): about a librdkafka
/// producer's default message timeout, the longest it retries.
pub const GAP_WINDOW_MS: u64 = 300_000;

/// What is remembered of one producer in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: i16,
    /// Oldest first; at most [`BATCHES_KEPT`], never empty.
    pub batches: Vec<StoredBatch>,
    /// HLC of the producer's newest batch here.
    pub last_hlc: u64,
    /// Oldest first; at most [`GAPS_KEPT`].
    pub gaps: Vec<Gap>,
}

/// [`ProducerState`] as stored before gaps were kept.
#[derive(Deserialize)]
struct ProducerStateV1 {
    epoch: i16,
    batches: Vec<StoredBatch>,
    last_hlc: u64,
}

impl ProducerState {
    /// Decodes a stored state, also one written before gaps were kept
    /// (shorter: it ends where `gaps` begins).
    pub fn decode(bytes: &[u8]) -> Result<ProducerState, bincode::Error> {
        bincode::deserialize::<ProducerState>(bytes).or_else(|e| {
            let old: ProducerStateV1 = bincode::deserialize(bytes).map_err(|_| e)?;
            Ok(ProducerState {
                epoch: old.epoch,
                batches: old.batches,
                last_hlc: old.last_hlc,
                gaps: Vec::new(),
            })
        })
    }
}

/// Whether `got` lies past `expected` (a gap), not before it (an overlap).
pub fn is_ahead(expected: i32, got: i32) -> bool {
    (1..=SEQ_SPAN / 2).contains(&behind(expected, got))
}

impl ProducerState {
    pub fn last(&self) -> &StoredBatch {
        self.batches.last().expect("a producer state holds a batch")
    }
}

/// The answer to a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Continues the producer's sequence, or starts it: store it.
    Append,
    /// The same batch as one already stored: answer with that one.
    Duplicate(StoredBatch),
    /// Wholly at or below the producer's last stored sequence, but older
    /// than the batches remembered: stored before (DUPLICATE_SEQUENCE_NUMBER,
    /// which clients count as delivered).
    DuplicateOld,
    /// Leaves a gap after, or overlaps, what is stored.
    OutOfOrder { expected: i32 },
    /// A sequence other than 0 from a producer not known here (never seen,
    /// or forgotten after [`EXPIRY_MS`]).
    UnknownProducer,
    /// An epoch older than the producer's current one: a fenced instance.
    StaleEpoch { current: i16 },
}

/// The producer state of one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
    /// Ids changed since the last [`ProducerTable::take_changes`].
    changed: BTreeSet<i64>,
}

fn expired(st: &ProducerState, now_hlc: u64) -> bool {
    hlc::wall_ms(now_hlc) - hlc::wall_ms(st.last_hlc) > EXPIRY_MS
}

impl ProducerTable {
    /// A table holding `states`, as stored.
    pub fn from_states(states: impl IntoIterator<Item = (i64, ProducerState)>) -> Self {
        ProducerTable {
            producers: states.into_iter().collect(),
            changed: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Producer `id`'s state as of `now_hlc` (`None` once expired).
    pub fn get(&self, id: i64, now_hlc: u64) -> Option<&ProducerState> {
        self.producers.get(&id).filter(|st| !expired(st, now_hlc))
    }

    /// Whether producer `id` stored sequence `seq` of `epoch` here: it is
    /// at or below the producer's last stored sequence of that epoch.
    /// A sequence in one of its gaps was not stored here.
    pub fn has_stored(&self, id: i64, epoch: i16, seq: i32, now_hlc: u64) -> bool {
        self.get(id, now_hlc).is_some_and(|st| {
            st.epoch == epoch
                && behind(seq, st.last().last_seq) <= SEQ_SPAN / 2
                && !st.gaps.iter().any(|g| g.holds(epoch, seq))
        })
    }

    /// The answer to a batch of `count` records from `p`, arriving at `now_hlc`.
    pub fn check(&self, p: Producer, count: u32, now_hlc: u64) -> Verdict {
        let Some(st) = self.get(p.id, now_hlc) else {
            return if p.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::UnknownProducer
            };
        };
        if p.epoch < st.epoch {
            return Verdict::StaleEpoch { current: st.epoch };
        }
        if p.epoch > st.epoch {
            // A bumped epoch starts its sequence again.
            return if p.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0 }
            };
        }
        let last = p.last_sequence(count);
        if let Some(b) = st
            .batches
            .iter()
            .find(|b| b.first_seq == p.base_sequence && b.last_seq == last)
        {
            return Verdict::Duplicate(*b);
        }
        // Sequences skipped past a failed-over region's tail, sent now
        // (a batch refused as settling while a later one was stored): they
        // were never stored here.
        if st
            .gaps
            .iter()
            .any(|g| g.covers(p.epoch, p.base_sequence, last))
        {
            return Verdict::Append;
        }
        let expected = seq_add(st.last().last_seq, 1);
        if p.base_sequence == expected {
            return Verdict::Append;
        }
        // Wholly before `expected` (within half the sequence space): stored
        // before, longer ago than the remembered batches.
        let d = behind(last, expected);
        if (1..=SEQ_SPAN / 2).contains(&d) && behind(p.base_sequence, expected) >= d {
            Verdict::DuplicateOld
        } else {
            Verdict::OutOfOrder { expected }
        }
    }

    /// Remembers batch `b` of producer `p` with HLCs from `first_hlc`:
    /// after an `Append` verdict, and for every batch of a copied log.
    /// A batch of an older epoch, or one already remembered, changes
    /// nothing.
    pub fn record(&mut self, p: Producer, b: StoredBatch, last_hlc: u64) {
        let fresh = match self.producers.get(&p.id) {
            None => true,
            Some(st) => expired(st, last_hlc) || p.epoch > st.epoch,
        };
        if fresh {
            if !self.producers.contains_key(&p.id) {
                self.make_room(last_hlc);
            }
            // A producer first seen past sequence 0 (accepted only after
            // its region was failed over): what came before is a gap.
            let gaps = if b.first_seq != 0 && is_ahead(0, b.first_seq) {
                vec![Gap {
                    epoch: p.epoch,
                    first_seq: 0,
                    last_seq: seq_add(b.first_seq, -1),
                }]
            } else {
                Vec::new()
            };
            self.producers.insert(
                p.id,
                ProducerState {
                    epoch: p.epoch,
                    batches: vec![b],
                    last_hlc,
                    gaps,
                },
            );
            self.changed.insert(p.id);
            return;
        }
        let st = self.producers.get_mut(&p.id).expect("checked above");
        if p.epoch < st.epoch || st.batches.iter().any(|x| x.first_seq == b.first_seq) {
            return;
        }
        if let Some(i) = st
            .gaps
            .iter()
            .position(|g| g.covers(p.epoch, b.first_seq, b.last_seq))
        {
            // Fills (part of) a gap: what is left of it stays, and the
            // batch takes its place in sequence order, so the last batch
            // stays the one with the highest sequence.
            let g = st.gaps.remove(i);
            if b.last_seq != g.last_seq {
                st.gaps.insert(
                    i,
                    Gap {
                        first_seq: seq_add(b.last_seq, 1),
                        ..g
                    },
                );
            }
            if b.first_seq != g.first_seq {
                st.gaps.insert(
                    i,
                    Gap {
                        last_seq: seq_add(b.first_seq, -1),
                        ..g
                    },
                );
            }
            let at = st
                .batches
                .iter()
                .position(|x| is_ahead(b.first_seq, x.first_seq))
                .unwrap_or(st.batches.len());
            st.batches.insert(at, b);
        } else {
            let expected = seq_add(st.last().last_seq, 1);
            if b.first_seq != expected && is_ahead(expected, b.first_seq) {
                st.gaps.push(Gap {
                    epoch: p.epoch,
                    first_seq: expected,
                    last_seq: seq_add(b.first_seq, -1),
                });
                if st.gaps.len() > GAPS_KEPT {
                    st.gaps.remove(0);
                }
            }
            // A batch that overlaps a gap only in part (copies of two logs
            // in another order): the gap is no longer known.
            st.gaps
                .retain(|g| !(g.holds(p.epoch, b.first_seq) || g.holds(p.epoch, b.last_seq)));
            st.batches.push(b);
        }
        if st.batches.len() > BATCHES_KEPT {
            st.batches.remove(0);
        }
        st.last_hlc = st.last_hlc.max(last_hlc);
        self.changed.insert(p.id);
    }

    /// Before a new producer is added: drops the expired ones, and if the
    /// table is still full, the one silent the longest (ties: lowest id).
    fn make_room(&mut self, now_hlc: u64) {
        if self.producers.len() < PRODUCERS_MAX {
            return;
        }
        let gone: Vec<i64> = self
            .producers
            .iter()
            .filter(|(_, st)| expired(st, now_hlc))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.producers.remove(&id);
            self.changed.insert(id);
        }
        if self.producers.len() >= PRODUCERS_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(id, st)| (st.last_hlc, **id))
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.producers.remove(&id);
                self.changed.insert(id);
            }
        }
    }

    /// The ids changed since the last call, with their state now (`None`:
    /// forgotten), for the state machine to store.
    pub fn take_changes(&mut self) -> Vec<(i64, Option<ProducerState>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|id| (id, self.producers.get(&id).cloned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOG: LogRef = LogRef {
        origin: 7,
        epoch: 1,
    };
    const T0: u64 = 1 << 40;

    fn p(id: i64, epoch: i16, seq: i32) -> Producer {
        Producer {
            id,
            epoch,
            base_sequence: seq,
        }
    }

    fn stored(p: Producer, count: u32, base_offset: u64) -> StoredBatch {
        StoredBatch {
            first_seq: p.base_sequence,
            last_seq: p.last_sequence(count),
            log: LOG,
            base_offset,
            count,
        }
    }

    #[test]
    fn a_state_stored_before_gaps_were_kept_still_loads() {
        #[derive(Serialize)]
        struct V1 {
            epoch: i16,
            batches: Vec<StoredBatch>,
            last_hlc: u64,
        }
        let b = stored(p(1, 2, 0), 3, 10);
        let old = bincode::serialize(&V1 {
            epoch: 2,
            batches: vec![b],
            last_hlc: 77,
        })
        .unwrap();
        let st = ProducerState::decode(&old).unwrap();
        assert_eq!(
            (st.epoch, st.batches.clone(), st.last_hlc),
            (2, vec![b], 77)
        );
        assert!(st.gaps.is_empty());
        let mut new = st.clone();
        new.gaps.push(Gap {
            epoch: 2,
            first_seq: 3,
            last_seq: 5,
        });
        assert_eq!(
            ProducerState::decode(&bincode::serialize(&new).unwrap()).unwrap(),
            new
        );
        assert!(ProducerState::decode(&old[..old.len() - 1]).is_err());
    }

    #[test]
    fn skipped_sequences_are_a_gap_that_counts_as_not_stored() {
        let mut t = ProducerTable::default();
        t.record(p(1, 0, 0), stored(p(1, 0, 0), 2, 0), T0);
        // 2 and 3 skipped (a failed-over region's tail).
        t.record(p(1, 0, 4), stored(p(1, 0, 4), 2, 2), T0 + 1);
        let has = |t: &ProducerTable, seq| t.has_stored(1, 0, seq, T0 + 2);
        assert_eq!(
            (0..7).map(|s| has(&t, s)).collect::<Vec<_>>(),
            [true, true, false, false, true, true, false]
        );
        // A producer first seen past 0: everything before is a gap.
        t.record(p(2, 0, 3), stored(p(2, 0, 3), 1, 4), T0);
        assert!(!t.has_stored(2, 0, 0, T0) && !t.has_stored(2, 0, 2, T0));
        assert!(t.has_stored(2, 0, 3, T0));
        // A batch inside a gap (one refused as settling while a later one
        // was stored) is stored, not taken for an old duplicate.
        assert_eq!(t.check(p(1, 0, 3), 1, T0 + 2), Verdict::Append);
        t.record(p(1, 0, 3), stored(p(1, 0, 3), 1, 9), T0 + 3);
        assert!(has(&t, 3) && !has(&t, 2), "the gap is split");
        assert_eq!(
            t.check(p(1, 0, 3), 1, T0 + 3),
            Verdict::Duplicate(stored(p(1, 0, 3), 1, 9))
        );
        assert_eq!(
            t.check(p(1, 0, 6), 1, T0 + 3),
            Verdict::Append,
            "the sequence goes on after 5"
        );
        // A copy that arrives late fills its gap.
        t.record(p(1, 0, 2), stored(p(1, 0, 2), 1, 9), T0 + 3);
        assert!(has(&t, 2) && has(&t, 3));
        assert_eq!(t.check(p(1, 0, 6), 1, T0 + 3), Verdict::Append);
        assert!(is_ahead(2, 4) && !is_ahead(4, 2) && !is_ahead(4, 4));
    }

    /// Checks and, when new, stores: what the state machine does.
    fn offer(t: &mut ProducerTable, pr: Producer, count: u32, offset: u64, at: u64) -> Verdict {
        let v = t.check(pr, count, at);
        if v == Verdict::Append {
            t.record(pr, stored(pr, count, offset), at);
        }
        v
    }

    #[test]
    fn a_sequence_continues_and_a_retry_is_answered_with_the_original() {
        let mut t = ProducerTable::default();
        assert_eq!(offer(&mut t, p(1, 0, 0), 3, 0, T0), Verdict::Append);
        assert_eq!(offer(&mut t, p(1, 0, 3), 2, 3, T0), Verdict::Append);
        assert_eq!(
            offer(&mut t, p(1, 0, 0), 3, 99, T0),
            Verdict::Duplicate(stored(p(1, 0, 0), 3, 0))
        );
        assert_eq!(
            offer(&mut t, p(1, 0, 3), 2, 99, T0),
            Verdict::Duplicate(stored(p(1, 0, 3), 2, 3))
        );
        assert_eq!(offer(&mut t, p(1, 0, 5), 1, 5, T0), Verdict::Append);
    }

    #[test]
    fn gaps_overlaps_and_unknown_producers_are_refused() {
        let mut t = ProducerTable::default();
        assert_eq!(
            offer(&mut t, p(1, 0, 4), 1, 0, T0),
            Verdict::UnknownProducer
        );
        offer(&mut t, p(1, 0, 0), 3, 0, T0);
        assert_eq!(
            offer(&mut t, p(1, 0, 5), 1, 3, T0),
            Verdict::OutOfOrder { expected: 3 }
        );
        // Overlapping the last batch without being it.
        assert_eq!(
            offer(&mut t, p(1, 0, 1), 4, 3, T0),
            Verdict::OutOfOrder { expected: 3 }
        );
        assert_eq!(t.get(1, T0).unwrap().batches.len(), 1, "nothing stored");
    }

    #[test]
    fn only_five_batches_are_remembered_and_older_retries_are_old_duplicates() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            offer(&mut t, p(1, 0, i * 2), 2, i as u64 * 2, T0);
        }
        assert_eq!(t.get(1, T0).unwrap().batches.len(), BATCHES_KEPT);
        assert_eq!(offer(&mut t, p(1, 0, 0), 2, 0, T0), Verdict::DuplicateOld);
        assert!(matches!(
            offer(&mut t, p(1, 0, 4), 2, 0, T0),
            Verdict::Duplicate(_)
        ));
    }

    #[test]
    fn epochs_fence_old_instances_and_restart_the_sequence() {
        let mut t = ProducerTable::default();
        offer(&mut t, p(1, 0, 0), 3, 0, T0);
        assert_eq!(
            offer(&mut t, p(1, 1, 3), 1, 3, T0),
            Verdict::OutOfOrder { expected: 0 }
        );
        assert_eq!(offer(&mut t, p(1, 1, 0), 1, 3, T0), Verdict::Append);
        assert_eq!(
            offer(&mut t, p(1, 0, 3), 1, 4, T0),
            Verdict::StaleEpoch { current: 1 }
        );
        // A copied batch of the old epoch changes nothing.
        t.record(p(1, 0, 3), stored(p(1, 0, 3), 1, 9), T0);
        assert_eq!(t.get(1, T0).unwrap().epoch, 1);
    }

    #[test]
    fn sequences_wrap_after_the_largest() {
        let mut t = ProducerTable::default();
        // A fresh state as copied from elsewhere, ending at i32::MAX - 1.
        let start = p(1, 0, i32::MAX - 2);
        t.record(start, stored(start, 2, 0), T0);
        assert_eq!(
            offer(&mut t, p(1, 0, i32::MAX), 3, 2, T0),
            Verdict::Append,
            "MAX, 0, 1"
        );
        assert_eq!(offer(&mut t, p(1, 0, 2), 1, 5, T0), Verdict::Append);
        assert_eq!(
            offer(&mut t, p(1, 0, i32::MAX - 2), 2, 0, T0),
            Verdict::Duplicate(stored(start, 2, 0))
        );
    }

    #[test]
    fn silent_producers_expire_by_the_partitions_clock() {
        let mut t = ProducerTable::default();
        offer(&mut t, p(1, 0, 0), 1, 0, T0);
        let later = T0 + hlc::span_ms(EXPIRY_MS as u64 + 1);
        assert!(t.get(1, T0 + 1).is_some());
        assert!(t.get(1, later).is_none());
        assert_eq!(
            offer(&mut t, p(1, 0, 1), 1, 1, later),
            Verdict::UnknownProducer
        );
        assert_eq!(offer(&mut t, p(1, 0, 0), 1, 1, later), Verdict::Append);
    }

    #[test]
    fn a_full_table_forgets_the_longest_silent_producer() {
        let mut t = ProducerTable::default();
        for id in 0..PRODUCERS_MAX as i64 {
            offer(&mut t, p(id, 0, 0), 1, 0, T0 + id as u64);
        }
        t.take_changes();
        offer(&mut t, p(-5, 0, 0), 1, 0, T0 + PRODUCERS_MAX as u64);
        assert_eq!(t.len(), PRODUCERS_MAX);
        assert!(t.get(0, T0).is_none(), "the oldest went");
        let changes = t.take_changes();
        assert_eq!(changes.len(), 2);
        assert!(changes.contains(&(0, None)));
    }

    proptest! {
        /// Whatever order retries, duplicates and gaps arrive in, what is
        /// stored is each sequence once, in order, with no gap: what an
        /// idempotent producer promises.
        #[test]
        fn stored_sequences_are_gapless_and_each_once(
            sends in proptest::collection::vec((0i32..12, 1u32..4), 1..60)
        ) {
            let mut t = ProducerTable::default();
            let mut log: Vec<i32> = Vec::new();
            for (seq, count) in sends {
                let pr = p(1, 0, seq);
                let v = t.check(pr, count, T0);
                match v {
                    Verdict::Append => {
                        let expected = log.last().map_or(0, |l| l + 1);
                        prop_assert_eq!(seq, expected);
                        t.record(pr, stored(pr, count, log.len() as u64), T0);
                        log.extend(seq..seq + count as i32);
                    }
                    Verdict::Duplicate(b) => {
                        prop_assert_eq!(b.first_seq, seq);
                        prop_assert_eq!(&log[b.base_offset as usize], &seq);
                    }
                    Verdict::DuplicateOld => {
                        prop_assert!(seq + (count as i32) <= log.len() as i32);
                    }
                    Verdict::UnknownProducer => prop_assert!(log.is_empty() && seq != 0),
                    Verdict::OutOfOrder { expected } => {
                        prop_assert_eq!(expected, log.len() as i32)
                    }
                    Verdict::StaleEpoch { .. } => prop_assert!(false, "one epoch only"),
                }
            }
            let want: Vec<i32> = (0..log.len() as i32).collect();
            prop_assert_eq!(log, want);
        }
    }
}
