//! Which client connections the Kafka listener keeps: at most
//! `kafka.connections_max` in all and `kafka.connections_per_ip_max` from
//! one address. The listener accepts every connection and asks here; a
//! refused one is closed at once, so that a flood of idle sockets never
//! stops the listener from accepting (and refusing) the next.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{max} client connections are open (kafka.connections_max)")]
    Total { max: usize },
    #[error("{max} client connections from {ip} are open (kafka.connections_per_ip_max)")]
    PerIp { ip: IpAddr, max: usize },
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
pub struct Admission {
    total_max: usize,
    per_ip_max: usize,
    open: Mutex<Open>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(total_max: usize, per_ip_max: usize) -> Arc<Self> {
        Arc::new(Admission {
            total_max,
            per_ip_max,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut open = self.open.lock().expect("admission lock");
        if open.total >= self.total_max {
            return Err(Refusal::Total {
                max: self.total_max,
            });
        }
        let from_ip = open.by_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_ip_max {
            return Err(Refusal::PerIp {
                ip,
                max: self.per_ip_max,
            });
        }
        open.total += 1;
        open.by_ip.insert(ip, from_ip + 1);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Open connections in all, and from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = self.open.lock().expect("admission lock");
        (open.total, open.by_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().expect("admission lock");
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry outlives its address's last connection, so
                // the map is bounded by the open connections.
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits_hold_and_places_come_back() {
        let a = Admission::new(3, 2);
        let x: IpAddr = "127.0.0.1".parse().unwrap();
        let y: IpAddr = "127.0.0.2".parse().unwrap();
        let t1 = a.admit(x).unwrap();
        let _t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::PerIp { ip: x, max: 2 });
        let _t3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refusal::Total { max: 3 });
        drop(t1);
        assert_eq!(a.open(x), (2, 1));
        let _t4 = a.admit(y).unwrap();
        assert_eq!(a.open(y), (3, 2));
    }

    #[test]
    fn addresses_are_forgotten_with_their_last_connection() {
        let a = Admission::new(10, 10);
        for i in 0..5u8 {
            drop(a.admit(IpAddr::from([127, 0, 0, i])).unwrap());
        }
        assert!(a.open.lock().unwrap().by_ip.is_empty());
    }
}

/// The bytes of requests and responses held at once over all connections
/// (`kafka.in_flight_bytes_max`), counted in KiB. A connection takes a
/// request's bytes before it allocates the request, and gives them back
/// once the response is built (a fetch: once it is decoded); a response
/// holds its bytes from its turn (a fetch: from before it reads records,
/// at its size bound) until it is written or the connection is closed.
/// While the budget is spent, connections stop reading new requests and
/// fetches wait to read. Not counted here: what waits for its turn (a
/// decoded fetch, a built response), which holding would let a spent
/// budget stop the turn's holder for good; each connection bounds that on
/// its own ([`super::queued::Queue`]).
///
/// Responses take their bytes in request order on each connection (see
/// [`Turn`]), and nothing waits for bytes while it holds others it took
/// before (waiters queue first come, first served, the first in line
/// collecting what comes free): so every holder gives its bytes back
/// within a bounded time (a request once it is served, a response once
/// the client reads it or `kafka.write_timeout_ms` closes the
/// connection), without waiting for a waiter, and the budget cannot
/// deadlock.
#[derive(Debug)]
pub struct ByteBudget {
    units: Arc<tokio::sync::Semaphore>,
    total: u32,
    /// Bytes held now (`kafka_in_flight_bytes`).
    gauge: Gauge,
}

/// Bytes held from a [`ByteBudget`]; dropping it gives them back.
#[derive(Debug)]
pub struct Held {
    units: tokio::sync::OwnedSemaphorePermit,
    /// `kafka_in_flight_bytes`, which counts what every `Held` holds.
    gauge: Gauge,
}

impl Held {
    fn new(units: tokio::sync::OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc_by(bytes_of(units.num_permits()));
        Held {
            units,
            gauge: gauge.clone(),
        }
    }

    /// The bytes held, in whole KiB.
    pub fn bytes(&self) -> usize {
        bytes_of(self.units.num_permits()) as usize
    }

    /// Gives back `n` of the units held.
    fn release(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(back) = self.units.split(n) {
            self.gauge.dec_by(bytes_of(n));
            drop(back);
        }
    }

    /// Adds units to those held.
    fn add(&mut self, more: tokio::sync::OwnedSemaphorePermit) {
        self.gauge.inc_by(bytes_of(more.num_permits()));
        self.units.merge(more);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(bytes_of(self.units.num_permits()));
    }
}

type Gauge = prometheus_client::metrics::gauge::Gauge;

fn bytes_of(units: usize) -> i64 {
    (units as u64).saturating_mul(UNIT) as i64
}

const UNIT: u64 = 1024;

impl ByteBudget {
    pub fn new(bytes: u64, gauge: Gauge) -> Arc<Self> {
        let total = (bytes / UNIT).clamp(
            1,
            tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64,
        ) as u32;
        Arc::new(ByteBudget {
            units: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
            gauge,
        })
    }

    /// Waits until `bytes` fit (anything larger than the whole budget
    /// takes all of it), and holds them.
    pub async fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        let units = self
            .units
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("budget semaphore is never closed");
        Held::new(units, &self.gauge)
    }

    /// Makes `held` hold `bytes`: gives back what it holds beyond them, or
    /// takes the rest if it is free now; otherwise gives everything back
    /// first and waits in line for all of it (never waiting while holding).
    pub async fn fit(self: &Arc<Self>, held: &mut Held, bytes: usize) {
        if self.try_fit(held, bytes) {
            return;
        }
        let want = self.units_for(bytes);
        held.release(held.units.num_permits());
        let all = self
            .units
            .clone()
            .acquire_many_owned(want)
            .await
            .expect("budget semaphore is never closed");
        held.add(all);
    }

    /// Makes `held` hold `bytes` without waiting: gives back what it holds
    /// beyond them, or takes the rest if it is free now. Returns false,
    /// holding what it held, when the rest is not free.
    pub fn try_fit(self: &Arc<Self>, held: &mut Held, bytes: usize) -> bool {
        let want = self.units_for(bytes) as usize;
        let have = held.units.num_permits();
        if have >= want {
            held.release(have - want);
            return true;
        }
        match self
            .units
            .clone()
            .try_acquire_many_owned((want - have) as u32)
        {
            Ok(more) => {
                held.add(more);
                true
            }
            Err(_) => false,
        }
    }

    fn units_for(&self, bytes: usize) -> u32 {
        (bytes as u64).div_ceil(UNIT).clamp(1, self.total as u64) as u32
    }

    /// Bytes not held now.
    #[cfg(test)]
    fn free_bytes(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[tokio::test]
    async fn holds_wait_for_room_and_oversized_ones_take_everything() {
        let b = ByteBudget::new(10 * UNIT, Gauge::default());
        let a = b.hold(6 * 1024).await;
        assert_eq!(b.free_bytes(), 4 * UNIT);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), b.hold(5 * 1024));
        assert!(waiting.await.is_err(), "5 KiB do not fit in 4 KiB");
        drop(a);
        let all = b.hold(usize::MAX).await;
        assert_eq!(b.free_bytes(), 0);
        drop(all);
        assert_eq!(b.free_bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn fit_shrinks_grows_and_never_waits_holding() {
        let b = ByteBudget::new(10 * UNIT, Gauge::default());
        let mut h = b.hold(4 * 1024).await;
        b.fit(&mut h, 1024).await;
        assert_eq!(b.free_bytes(), 9 * UNIT, "shrunk to 1 KiB");
        b.fit(&mut h, 6 * 1024).await;
        assert_eq!(b.free_bytes(), 4 * UNIT, "grown from what was free");
        // 11 KiB (the whole budget, clamped) do not fit while `other`
        // holds 4 KiB: it gives its 6 KiB back and waits in line for all
        // of it, which comes once `other` is gone.
        let other = b.hold(4 * 1024).await;
        let grow = tokio::spawn({
            let b = b.clone();
            async move {
                b.fit(&mut h, 11 * 1024).await;
                h
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!grow.is_finished());
        drop(other);
        let h = grow.await.unwrap();
        assert_eq!(b.free_bytes(), 0);
        assert_eq!(b.gauge.get(), 10 * 1024, "the gauge counts what is held");
        drop(h);
        assert_eq!(b.free_bytes(), 10 * UNIT);
        assert_eq!(b.gauge.get(), 0);
    }

    #[tokio::test]
    async fn try_fit_grows_only_from_what_is_free_and_keeps_what_it_held() {
        let b = ByteBudget::new(10 * UNIT, Gauge::default());
        let mut h = b.hold(2 * 1024).await;
        assert!(b.try_fit(&mut h, 5 * 1024), "3 KiB more are free");
        assert_eq!(b.free_bytes(), 5 * UNIT);
        assert_eq!(h.bytes(), 5 * 1024);
        let other = b.hold(4 * 1024).await;
        assert!(!b.try_fit(&mut h, 8 * 1024), "3 KiB more are not free");
        assert_eq!(b.free_bytes(), UNIT, "it kept its 5 KiB");
        assert!(b.try_fit(&mut h, 1024), "shrinking always fits");
        assert_eq!(b.free_bytes(), 5 * UNIT);
        drop((h, other));
        assert_eq!(b.gauge.get(), 0);
    }
}

/// One connection's place in line to hold response bytes. Responses take
/// their bytes in request order: a response waits for its turn (the one
/// before it holds its bytes, or has none to hold), takes its bytes, and
/// passes the turn on. So the responses of a connection that hold bytes
/// are always the first ones not yet written, and a response waiting for
/// bytes never waits behind a later one of its own connection that holds
/// them.
#[derive(Debug)]
pub struct Turn {
    mine: tokio::sync::oneshot::Receiver<()>,
    next: tokio::sync::oneshot::Sender<()>,
    /// `mine` was found done (it must not be polled again).
    came: bool,
}

/// The turn, while it is held; dropping it passes it on.
#[derive(Debug)]
pub struct MyTurn(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>);

/// Hands out a connection's turns in request order.
#[derive(Debug)]
pub struct Line {
    last: tokio::sync::oneshot::Receiver<()>,
}

impl Default for Line {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(tx); // the first request's turn has come
        Line { last: rx }
    }
}

impl Line {
    /// The turn of the next request, after every one handed out before.
    pub fn take(&mut self) -> Turn {
        let (next, last) = tokio::sync::oneshot::channel();
        Turn {
            mine: std::mem::replace(&mut self.last, last),
            next,
            came: false,
        }
    }
}

impl Turn {
    /// Waits until every earlier response holds its bytes or is gone. A
    /// request without a response waits for its turn too, and drops it at
    /// once: a turn dropped unawaited would let the next response go
    /// before an earlier one.
    pub async fn wait(self) -> MyTurn {
        if !self.came {
            // Sent or dropped: either way the one before is done with it.
            let _ = self.mine.await;
        }
        MyTurn(self.next)
    }

    /// Whether the turn has come already (every earlier response holds
    /// its bytes or is gone), without waiting.
    pub fn has_come(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        if !self.came {
            self.came = !matches!(self.mine.try_recv(), Err(TryRecvError::Empty));
        }
        self.came
    }
}

#[cfg(test)]
mod turn_tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn turns_come_in_order_whatever_order_they_are_awaited_in() {
        let mut line = Line::default();
        let (a, b, c) = (line.take(), line.take(), line.take());
        let c = tokio::spawn(c.wait());
        let b = tokio::spawn(b.wait());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!b.is_finished() && !c.is_finished(), "a holds the turn");
        let a = a.wait().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!b.is_finished(), "a has not passed it yet");
        drop(a);
        let b = b.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c.is_finished());
        drop(b);
        c.await.unwrap();
    }

    #[tokio::test]
    async fn a_turn_tells_whether_it_has_come_and_can_still_be_waited_for() {
        let mut line = Line::default();
        let (mut a, mut b) = (line.take(), line.take());
        assert!(a.has_come(), "the first turn comes at once");
        assert!(a.has_come(), "and asking again is fine");
        assert!(!b.has_come());
        let a = a.wait().await;
        assert!(!b.has_come(), "a holds it");
        drop(a);
        assert!(b.has_come());
        drop(b.wait().await);
    }
}
