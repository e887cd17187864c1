//! Region leases (invariant 6), as pure functions of the leases the
//! metadata group committed and a wall clock.
//!
//! A region holds a lease until a wall-clock time committed by the
//! cross-region metadata group. It accepts writes only while its own clock
//! is `margin` before that time; every other region treats it as expired
//! only once its clock is `margin` past it. With clocks within `margin` of
//! each other (the link refuses records from clocks further off), the two
//! never overlap: no region is written while another takes over its role.

use std::collections::BTreeMap;

/// Lease expiry per region, in Unix milliseconds.
pub type Leases = BTreeMap<String, i64>;

/// Lease timing: `lease_ms` per renewal, tried every `renew_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_ms: u64,
    pub renew_ms: u64,
    /// Largest clock difference between regions tolerated.
    pub margin_ms: u64,
}

/// May `region` accept writes at `now_ms` by its own clock?
pub fn may_write(leases: &Leases, region: &str, now_ms: i64, margin_ms: u64) -> bool {
    leases
        .get(region)
        .is_some_and(|until| now_ms < until - margin_ms as i64)
}

/// Milliseconds of writing left to `region` (0 when fenced).
pub fn remaining_ms(leases: &Leases, region: &str, now_ms: i64, margin_ms: u64) -> i64 {
    leases
        .get(region)
        .map_or(0, |until| (until - margin_ms as i64 - now_ms).max(0))
}

/// Has `region`'s lease expired for certain, as another region sees it at
/// `now_ms` by its clock? (A region without any lease never had one.)
pub fn expired_for_others(leases: &Leases, region: &str, now_ms: i64, margin_ms: u64) -> bool {
    leases
        .get(region)
        .is_some_and(|until| now_ms > until + margin_ms as i64)
}

/// Should a node renew a lease that runs `until` (Unix ms), at `now_ms`?
/// Once per `renew_ms`: when less than `lease_ms - renew_ms` is left.
pub fn should_renew(until: Option<i64>, now_ms: i64, t: Timing) -> bool {
    until.is_none_or(|until| until - now_ms < t.lease_ms as i64 - t.renew_ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Timing = Timing {
        lease_ms: 4_000,
        renew_ms: 1_000,
        margin_ms: 500,
    };

    fn leases(until: i64) -> Leases {
        [("us-east".to_string(), until)].into()
    }

    #[test]
    fn writes_stop_before_others_see_the_lease_expire() {
        let l = leases(10_000);
        assert!(may_write(&l, "us-east", 9_499, 500));
        assert!(!may_write(&l, "us-east", 9_500, 500));
        assert!(!may_write(&l, "eu-west", 0, 500), "no lease, no writes");
        assert!(!expired_for_others(&l, "us-east", 10_500, 500));
        assert!(expired_for_others(&l, "us-east", 10_501, 500));
        assert_eq!(remaining_ms(&l, "us-east", 9_000, 500), 500);
        assert_eq!(remaining_ms(&l, "us-east", 9_900, 500), 0);
    }

    #[test]
    fn renewals_come_once_per_interval() {
        assert!(!should_renew(Some(10_000), 6_500, T), "3.5 s left");
        assert!(should_renew(Some(10_000), 7_001, T), "under 3 s left");
        assert!(should_renew(None, 0, T), "no lease yet");
    }

    proptest! {
        /// Invariant 6: for clocks at most `margin` apart, the region stops
        /// writing before any other region sees its lease as expired.
        #[test]
        fn no_overlap_between_writing_and_taken_over(
            until in 0i64..1_000_000,
            t in 0i64..1_000_000,
            skew in -500i64..=500,
        ) {
            let l = leases(until);
            let writes = may_write(&l, "us-east", t, 500);
            let taken = expired_for_others(&l, "us-east", t + skew, 500);
            prop_assert!(!(writes && taken));
        }
    }
}
