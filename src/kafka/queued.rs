//! What one connection holds while it waits for its turn, outside the
//! listener's byte budget (`kafka.connection_queued_bytes_max`): decoded
//! fetch requests and built responses behind an earlier response of the
//! same connection (a long poll, a JoinGroup). They cannot hold budget
//! bytes: the earlier response may be waiting for budget bytes itself, and
//! bytes held by waiters of every connection could then stop every turn's
//! holder for good (see [`super::admission::ByteBudget`]). Instead the
//! connection stops reading new requests while what it has queued is at
//! or past the limit, whatever the client pipelines (how far one response
//! can take it past: docs/operations.md); queues drain as turns pass,
//! which never depends on the connection's reader, so the wait cannot
//! deadlock.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// One connection's queued bytes.
#[derive(Debug)]
pub struct Queue {
    bytes: watch::Sender<usize>,
    max: usize,
    /// `kafka_queued_bytes`, over all connections.
    gauge: Gauge,
}

/// Bytes counted in a [`Queue`]; dropping it takes them out.
#[derive(Debug)]
pub struct Queued {
    queue: Arc<Queue>,
    bytes: usize,
}

impl Queue {
    pub fn new(max: u64, gauge: Gauge) -> Arc<Self> {
        Arc::new(Queue {
            bytes: watch::Sender::new(0),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            gauge,
        })
    }

    /// Counts `bytes` until the returned guard is dropped.
    pub fn add(self: &Arc<Self>, bytes: usize) -> Queued {
        self.bytes.send_modify(|b| *b = b.saturating_add(bytes));
        self.gauge.inc_by(bytes as i64);
        Queued {
            queue: self.clone(),
            bytes,
        }
    }

    /// Waits until the queue is under its limit.
    pub async fn room(&self) {
        let mut rx = self.bytes.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|b| *b < self.max).await;
    }

    /// What may still be added before the queue is at its limit.
    pub fn room_left(&self) -> usize {
        self.max.saturating_sub(*self.bytes.borrow())
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        *self.bytes.borrow()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.queue
            .bytes
            .send_modify(|b| *b = b.saturating_sub(self.bytes));
        self.queue.gauge.dec_by(self.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn has_room(q: &Queue) -> bool {
        tokio::time::timeout(Duration::from_millis(30), q.room())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_queue_at_its_limit_has_no_room_until_bytes_leave() {
        let gauge = Gauge::default();
        let q = Queue::new(100, gauge.clone());
        assert!(has_room(&q).await);
        let a = q.add(60);
        assert!(has_room(&q).await, "60 of 100");
        assert_eq!(q.room_left(), 40);
        // One item may take the queue past its limit: it is counted, and
        // the reader waits until the queue is under the limit again.
        let b = q.add(500);
        assert_eq!(q.bytes(), 560);
        assert_eq!(gauge.get(), 560);
        assert!(!has_room(&q).await);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.room().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "500 of 100 still");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("room once the queue drained")
            .unwrap();
        assert_eq!((q.bytes(), gauge.get()), (0, 0));
    }

    #[tokio::test]
    async fn exactly_the_limit_is_full() {
        let q = Queue::new(100, Gauge::default());
        let _a = q.add(100);
        assert!(!has_room(&q).await);
    }
}
