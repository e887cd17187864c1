//! `meridian bench produce|consume`: throughput and latency against any
//! bootstrap, with an HDR histogram of per-record latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::records::Compression;
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use crate::client::{encode_batch, produce_on, Client, ClientError};

#[derive(Debug, Clone)]
pub struct ProduceOpts {
    pub topic: String,
    pub partitions: i32,
    pub size: usize,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub batch: usize,
    pub in_flight: usize,
    pub keys: u64,
    /// Records per second; `None`: as fast as possible.
    pub rate: Option<u64>,
    pub compression: Compression,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} records ({:.1} MB) in {:.2} s, {} errors",
            self.kind,
            self.records,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.errors
        )?;
        writeln!(
            f,
            "  throughput: {:.0} records/s, {:.1} MB/s",
            self.records_per_sec, self.mb_per_sec
        )?;
        write!(
            f,
            "  latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.latency_ms_p50, self.latency_ms_p99, self.latency_ms_p999, self.latency_ms_max
        )
    }
}

fn report(
    kind: &'static str,
    records: u64,
    bytes: u64,
    errors: u64,
    took: Duration,
    h: &Histogram<u64>,
) -> Report {
    let s = took.as_secs_f64().max(1e-9);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Report {
        kind,
        records,
        bytes,
        errors,
        seconds: s,
        records_per_sec: records as f64 / s,
        mb_per_sec: bytes as f64 / s / 1e6,
        latency_ms_p50: ms(0.5),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: h.max() as f64 / 1000.0,
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits: valid bounds, cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Produces with `acks = all`; latency is from send to acknowledgement.
pub async fn produce(
    client: Arc<Client>,
    o: ProduceOpts,
    progress: bool,
) -> Result<Report, ClientError> {
    match client.topic(&o.topic, false).await {
        Ok(_) => {}
        Err(ClientError::UnknownTopic(_)) => {
            client
                .create_topic(&o.topic, o.partitions, &Default::default())
                .await?
        }
        Err(e) => return Err(e),
    }
    let info = client.topic(&o.topic, false).await?;
    let partitions = info.leaders.len() as u64;
    let value = Bytes::from(vec![b'x'; o.size]);
    let hist = Arc::new(Mutex::new(histogram()));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(o.in_flight.max(1)));
    let started = Instant::now();
    let total = o.count.unwrap_or(u64::MAX);
    let deadline = o.duration.map(|d| started + d);
    let batch = o.batch.max(1);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut issued = 0u64;
    let mut seq = 0u64;
    let mut tasks = Vec::new();
    while issued < total && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(rate) = o.rate {
            // Pace: record i is due at i / rate seconds.
            let due = started + Duration::from_secs_f64(issued as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let n = batch.min((total - issued) as usize);
        let records: Vec<_> = (0..n)
            .map(|i| {
                let key = (o.keys > 0)
                    .then(|| Bytes::from(format!("key-{}", (issued + i as u64) % o.keys)));
                (key, Some(value.clone()))
            })
            .collect();
        let part = (seq % partitions) as i32;
        seq += 1;
        issued += n as u64;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let payload = encode_batch(&records, o.compression);
        let (c, h, a, e, topic) = (
            client.clone(),
            hist.clone(),
            acked.clone(),
            errors.clone(),
            o.topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = match c.leader_cached(&topic, part).await {
                Ok(conn) => produce_on(&conn, &topic, part, payload, -1).await,
                Err(err) => Err(err),
            };
            if r.is_err() {
                c.forget_leaders(&topic).await;
            }
            let us = t0.elapsed().as_micros() as u64;
            match r {
                Ok(_) => {
                    h.lock().await.record_n(us.max(1), n as u64).ok();
                    a.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "produce failed");
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
        tasks.retain(|t| !t.is_finished());
        if progress && Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let s = started.elapsed().as_secs_f64();
            let done = acked.load(Ordering::Relaxed);
            eprintln!(
                "  {s:>6.1} s  {done:>10} acked  {:>9.0} records/s  {} errors",
                done as f64 / s,
                errors.load(Ordering::Relaxed)
            );
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = started.elapsed();
    let records = acked.load(Ordering::Relaxed);
    let h = hist.lock().await;
    Ok(report(
        "produce",
        records,
        records * o.size as u64,
        errors.load(Ordering::Relaxed),
        took,
        &h,
    ))
}

/// Reads every partition from offset 0 until `count` records were read (or
/// the topic's end, with `count = None`); latency is per fetch.
pub async fn consume(
    client: Arc<Client>,
    topic: &str,
    count: Option<u64>,
    progress: bool,
) -> Result<Report, ClientError> {
    let info = client.topic(topic, false).await?;
    let started = Instant::now();
    let mut hist = histogram();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut offsets = vec![0i64; info.leaders.len()];
    let mut done = vec![false; info.leaders.len()];
    let mut next_report = Instant::now() + Duration::from_secs(1);
    while !done.iter().all(|d| *d) && count.is_none_or(|c| records < c) {
        for p in 0..offsets.len() {
            if done[p] {
                continue;
            }
            let t0 = Instant::now();
            let (recs, hw) = client.fetch(topic, p as i32, offsets[p], 100).await?;
            hist.record(t0.elapsed().as_micros().max(1) as u64).ok();
            for r in &recs {
                bytes += r.value.as_ref().map_or(0, |v| v.len()) as u64;
            }
            records += recs.len() as u64;
            if let Some(last) = recs.last() {
                offsets[p] = last.offset + 1;
            }
            if count.is_none() && offsets[p] >= hw {
                done[p] = true;
            }
        }
        if progress && Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            eprintln!(
                "  {:>6.1} s  {:>10} records",
                started.elapsed().as_secs_f64(),
                records
            );
        }
    }
    Ok(report(
        "consume",
        records,
        bytes,
        0,
        started.elapsed(),
        &hist,
    ))
}
