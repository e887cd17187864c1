//! At most so many log lines a second for events a client can cause at
//! will (bad requests, refused connections): a flood of them must not fill
//! the disk with logs. Lines past the limit are counted, and the count is
//! told with the next line logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(per_second: u32) -> Self {
        LogLimit {
            per_second,
            state: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if a line may be logged now (`n` lines were suppressed
    /// since the last one), `None` if it must be dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().expect("log limit lock");
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            w.start = now;
            w.logged = 0;
        }
        if w.logged >= self.per_second {
            w.suppressed += 1;
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_limit_are_counted_and_told_later() {
        let l = LogLimit::new(2);
        let t = Instant::now();
        assert_eq!(l.admit(t), Some(0));
        assert_eq!(l.admit(t), Some(0));
        assert_eq!(l.admit(t), None);
        assert_eq!(l.admit(t + Duration::from_millis(500)), None);
        assert_eq!(l.admit(t + Duration::from_secs(1)), Some(2));
        assert_eq!(l.admit(t + Duration::from_secs(1)), Some(0));
    }
}
