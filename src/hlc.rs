//! Hybrid logical clock timestamps.
//!
//! A Meridian HLC is hlc-gen's 64-bit value: 42 bits of milliseconds since
//! hlc-gen's epoch (2024-01-01) above 22 bits of logical counter. Comparing the
//! raw `u64` values compares timestamps, so the state machine works on `u64`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use hlc_gen::{HlcGenerator, HlcTimestamp};

const LOGICAL_BITS: u32 = 22;
/// hlc-gen's custom epoch, in Unix milliseconds.
const EPOCH_UNIX_MS: i64 = 1_704_067_200_000;

/// Wall-clock Unix milliseconds of an HLC; this is the Kafka record timestamp.
pub fn wall_ms(hlc: u64) -> i64 {
    (hlc >> LOGICAL_BITS) as i64 + EPOCH_UNIX_MS
}

/// The smallest HLC whose wall-clock part is `unix_ms` (for timestamp look-ups).
pub fn from_wall_ms(unix_ms: i64) -> u64 {
    ((unix_ms - EPOCH_UNIX_MS).max(0) as u64) << LOGICAL_BITS
}

/// The HLC distance of `ms` milliseconds (HLCs that far apart differ by
/// `ms` in their wall-clock part).
pub fn span_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// HLC of the first of `count` records committed after a record with HLC
/// `last`, when the leader proposed `proposed`. The records get `first`,
/// `first + 1`, ... so HLCs strictly increase within an origin log whatever
/// the proposing leader's clock said (invariant 2, across leader changes too).
pub fn assign_first(proposed: u64, last: u64) -> u64 {
    proposed.max(last + 1)
}

/// One node's clock. Leaders read it to propose HLCs; every node advances it
/// past the HLCs it applies, so a new leader never proposes below them.
pub struct Clock {
    gen: HlcGenerator,
    /// Serializes reservations, so that concurrent ones never overlap.
    reserving: Mutex<()>,
    /// Simulated offset of this node's clock (fault layer), in ms.
    skew_ms: AtomicI64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        // Drift is not checked inside a region: committed HLCs are fixed by
        // the state machine, which never lets them go backwards.
        Clock {
            gen: HlcGenerator::new(0),
            reserving: Mutex::new(()),
            skew_ms: AtomicI64::new(0),
        }
    }

    /// Sets the simulated offset of this node's clock (chaos, tests).
    pub fn set_skew_ms(&self, ms: i64) {
        self.skew_ms.store(ms, Ordering::Relaxed);
    }

    /// This node's wall clock in Unix ms, with its simulated skew: what
    /// leases and drift checks read.
    pub fn wall_now_ms(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        real + self.skew_ms.load(Ordering::Relaxed)
    }

    /// A fresh timestamp, larger than every one this clock gave or observed.
    pub fn now(&self) -> u64 {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        if skew > 0 {
            // A clock ahead: the HLC follows the skewed wall clock.
            self.observe(from_wall_ms(self.wall_now_ms()));
        }
        match self.gen.next_timestamp() {
            Some(t) => t.as_u64(),
            // The logical counter overflowed within one millisecond: fall
            // back to one past the last value, which is still strictly larger.
            None => self.gen.timestamp().as_u64() + 1,
        }
    }

    /// `n` consecutive timestamps: the first is returned, and the clock moves
    /// past the last, so the next reservation starts after them.
    pub fn reserve(&self, n: u64) -> u64 {
        let _one_at_a_time = self.reserving.lock().expect("clock lock");
        let first = self.now();
        self.observe(first + n.max(1) - 1);
        first
    }

    /// Advance past an HLC committed elsewhere.
    pub fn observe(&self, hlc: u64) {
        if let Ok(t) = HlcTimestamp::try_from(hlc) {
            let _ = self.gen.update(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wall_ms_matches_hlc_gen() {
        let t = HlcTimestamp::from_parts(1_763_712_000_123, 77).unwrap();
        assert_eq!(wall_ms(t.as_u64()), 1_763_712_000_123);
        assert_eq!(from_wall_ms(1_763_712_000_123), t.as_u64() - 77);
    }

    #[test]
    fn clock_is_close_to_wall_time_and_monotonic() {
        let c = Clock::new();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((wall_ms(a) - now_ms).abs() < 5_000);
        c.observe(b + (1000 << LOGICAL_BITS));
        assert!(c.now() > b + (1000 << LOGICAL_BITS));
        let r = c.reserve(50);
        assert!(c.now() > r + 49, "a reservation is never handed out again");
    }

    #[test]
    fn a_skewed_clock_runs_ahead() {
        let c = Clock::new();
        let real = c.wall_now_ms();
        c.set_skew_ms(3_000);
        assert!(c.wall_now_ms() >= real + 3_000);
        assert!(
            wall_ms(c.now()) >= real + 3_000,
            "HLCs follow the clock ahead"
        );
        c.set_skew_ms(-3_000);
        assert!(c.wall_now_ms() < real);
        let a = c.now();
        assert!(c.now() > a, "behind, the HLC still only grows");
    }

    proptest! {
        // Invariant 2: whatever leaders propose, in whatever order, the
        // assigned HLCs of an origin log strictly increase.
        #[test]
        fn assigned_hlcs_strictly_increase(
            proposals in proptest::collection::vec((0u64..1u64 << 40, 1usize..50), 1..100)
        ) {
            let mut last = 0u64;
            for (proposed, count) in proposals {
                let first = assign_first(proposed, last);
                prop_assert!(first > last);
                prop_assert!(first >= proposed);
                last = first + count as u64 - 1;
            }
        }
    }
}
