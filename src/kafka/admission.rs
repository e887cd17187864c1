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
/// request's bytes before it allocates the request and a response's bytes
/// before it writes the response, and gives them back once done; while the
/// budget is spent, connections stop reading new requests.
#[derive(Debug)]
pub struct ByteBudget {
    units: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// Bytes held from a [`ByteBudget`]; dropping it gives them back.
pub type Held = tokio::sync::OwnedSemaphorePermit;

const UNIT: u64 = 1024;

impl ByteBudget {
    pub fn new(bytes: u64) -> Arc<Self> {
        let total = (bytes / UNIT).clamp(
            1,
            tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64,
        ) as u32;
        Arc::new(ByteBudget {
            units: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        })
    }

    /// Waits until `bytes` fit (anything larger than the whole budget
    /// takes all of it), and holds them.
    pub async fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.units
            .clone()
            .acquire_many_owned(self.units_for(bytes))
            .await
            .expect("budget semaphore is never closed")
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
        let b = ByteBudget::new(10 * UNIT);
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
}
