//! Background loops that must not die silently. A supervised loop runs
//! until its stop token is cancelled; if it returns or panics before that,
//! the error is logged with the loop's name, `meridian_loop_restarts_total`
//! counts it, and the loop starts again after a backoff (100 ms doubling to
//! 30 s, reset once a run lasted a minute).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::metrics::Metrics;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff: the loop was healthy meanwhile.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before restart number `n` (0 for the first) of a loop.
pub fn restart_delay(n: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(n.min(20)))
        .min(BACKOFF_MAX)
}

/// Spawns `start()` and supervises it until `stop`; see the module doc.
pub fn spawn<F, Fut>(
    name: impl Into<String>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    start: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(supervise(name.into(), stop, metrics, start))
}

pub async fn supervise<F, Fut>(
    name: String,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut restarts = 0u32;
    loop {
        let began = Instant::now();
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        if began.elapsed() >= HEALTHY_RUN {
            restarts = 0;
        }
        let delay = restart_delay(restarts);
        match ended {
            Ok(()) => error!(
                loop_name = %name,
                ?delay,
                "background loop stopped before shutdown; restarting it"
            ),
            Err(e) => error!(
                loop_name = %name,
                ?delay,
                error = %panic_text(e),
                "background loop failed; restarting it"
            ),
        }
        metrics
            .loop_restarts
            .get_or_create(&vec![("loop".to_string(), name.clone())])
            .inc();
        restarts = restarts.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(restart_delay(0), Duration::from_millis(100));
        assert_eq!(restart_delay(1), Duration::from_millis(200));
        assert_eq!(restart_delay(5), Duration::from_millis(3200));
        assert_eq!(restart_delay(9), BACKOFF_MAX);
        assert_eq!(restart_delay(u32::MAX), BACKOFF_MAX);
    }

    #[tokio::test]
    async fn a_loop_that_panics_or_returns_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, s) = (runs.clone(), stop.clone());
        let h = spawn("flaky", stop.clone(), metrics.clone(), move || {
            let (r, s) = (r.clone(), s.clone());
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    panic!("first run fails");
                }
                if n == 1 {
                    return; // second run returns early
                }
                s.cancelled().await
            }
        });
        // Restarts after 100 and 200 ms; the third run waits for stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let restarts = metrics
            .loop_restarts
            .get_or_create(&vec![("loop".to_string(), "flaky".to_string())])
            .get();
        assert_eq!(restarts, 2);
        stop.cancel();
        h.await.unwrap();
    }
}
