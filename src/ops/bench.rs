//! `meridian bench produce|consume`: throughput and latency against any
//! bootstrap, with an HDR histogram of per-record latency.

use std::collections::BTreeMap;
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
    /// Values of random bytes, which no compression shrinks (else every
    /// byte is `x`, which compresses to almost nothing).
    pub random: bool,
    /// Topic configs if the topic must be created.
    pub configs: BTreeMap<String, String>,
}

/// Random bytes that record values are cut from: large enough that no
/// compressor sees the same bytes twice within its window.
const RANDOM_POOL_BYTES: usize = 16 * 1024 * 1024;

/// The value of record `i`: `size` bytes of `x`, or a window of `pool`.
fn value_of(pool: &Bytes, size: usize, i: u64) -> Bytes {
    if pool.len() <= size {
        return pool.slice(..size.min(pool.len()));
    }
    let at = (i as usize).wrapping_mul(size) % (pool.len() - size);
    pool.slice(at..at + size)
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

/// One produce to the partition's cached leader; a failure drops the
/// cached leaders, so the next request asks for metadata again.
async fn produce_cached(
    c: &Client,
    topic: &str,
    part: i32,
    payload: Bytes,
) -> Result<i64, ClientError> {
    let r = match c.leader_cached(topic, part).await {
        Ok(conn) => produce_on(&conn, topic, part, payload, -1).await,
        Err(err) => Err(err),
    };
    if r.is_err() {
        c.forget_leaders(topic).await;
    }
    r
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
                .create_topic(&o.topic, o.partitions, &o.configs)
                .await?
        }
        Err(e) => return Err(e),
    }
    let info = client.topic(&o.topic, false).await?;
    let partitions = info.leaders.len() as u64;
    let pool = if o.random {
        use rand::RngCore;
        let mut v = vec![0u8; RANDOM_POOL_BYTES.max(o.size)];
        rand::thread_rng().fill_bytes(&mut v);
        Bytes::from(v)
    } else {
        Bytes::from(vec![b'x'; o.size])
    };
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
                (key, Some(value_of(&pool, o.size, issued + i as u64)))
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
            let r = produce_cached(&c, &topic, part, payload).await;
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

#[derive(Debug, Clone)]
pub struct LinkOpts {
    pub topic: String,
    pub partitions: i32,
    pub size: usize,
    /// Records per second, one record per produce request.
    pub rate: u64,
    pub duration: Duration,
    pub in_flight: usize,
    /// Topic configs if the topic must be created.
    pub configs: BTreeMap<String, String>,
    /// How long to wait for the last records to arrive after the load.
    pub drain: Duration,
    /// Load before the measured `duration` (new partition groups elect
    /// leaders, connections open); not in the figures.
    pub warmup: Duration,
}

/// Cross-region figures: produce in one region, read in another.
#[derive(Debug, Serialize)]
pub struct LinkReport {
    pub produce: Report,
    /// Records acknowledged in the origin and read in the other region.
    pub arrived: u64,
    /// Acknowledged records that had not arrived when the drain ended.
    pub missing: u64,
    /// From the acknowledgement in the origin to the record's delivery to
    /// a consumer in the other region (long-poll fetches, so delivery
    /// follows the commit there at once).
    pub lag_ms_p50: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_p999: f64,
    pub lag_ms_max: f64,
}

impl std::fmt::Display for LinkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.produce)?;
        writeln!(
            f,
            "arrived in the other region: {} records, {} missing",
            self.arrived, self.missing
        )?;
        write!(
            f,
            "  ack -> readable there, ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.lag_ms_p50, self.lag_ms_p99, self.lag_ms_p999, self.lag_ms_max
        )
    }
}

/// Microseconds since the run started, per record sequence number; 0 =
/// not yet.
type Stamps = Arc<std::sync::Mutex<Vec<u64>>>;

fn stamp(s: &Stamps, seq: u64, at: Instant, started: Instant) {
    let us = at.duration_since(started).as_micros().max(1) as u64;
    if let Some(slot) = s.lock().expect("stamps lock").get_mut(seq as usize) {
        if *slot == 0 {
            *slot = us;
        }
    }
}

/// Produces at a fixed rate through `from` (one record per request, each
/// value starting with its sequence number) while consumers read every
/// partition through `to`; reports produce latency and the time from each
/// acknowledgement to the record's arrival in the other region.
pub async fn link(
    from: Arc<Client>,
    to: Arc<Client>,
    o: LinkOpts,
    progress: bool,
) -> Result<LinkReport, ClientError> {
    let starts = topic_in_both(&from, &to, &o).await?;
    let partitions = starts.len() as i32;
    let warm = (o.rate as f64 * o.warmup.as_secs_f64()).ceil() as u64;
    let total = warm + (o.rate as f64 * o.duration.as_secs_f64()).ceil() as u64;
    let acks: Stamps = Arc::new(std::sync::Mutex::new(vec![0; total as usize]));
    let arrivals: Stamps = Arc::new(std::sync::Mutex::new(vec![0; total as usize]));
    let arrived = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let readers = spawn_readers(&to, &o.topic, starts, &arrivals, &arrived, &stop, started);
    let hist = Arc::new(Mutex::new(histogram()));
    let acked = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(o.in_flight.max(1)));
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    let mut measured_from = started;
    for seq in 0..total {
        if seq == warm {
            measured_from = Instant::now();
        }
        let due = started + Duration::from_secs_f64(seq as f64 / o.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut value = vec![b'x'; o.size.max(8)];
        value[..8].copy_from_slice(&seq.to_be_bytes());
        let payload = encode_batch(&[(None, Some(Bytes::from(value)))], Compression::None);
        let part = (seq % partitions as u64) as i32;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (c, h, a, m, e, acks, topic) = (
            from.clone(),
            hist.clone(),
            acked.clone(),
            measured.clone(),
            errors.clone(),
            acks.clone(),
            o.topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = produce_cached(&c, &topic, part, payload).await;
            let now = Instant::now();
            match r {
                Ok(_) => {
                    stamp(&acks, seq, now, started);
                    a.fetch_add(1, Ordering::Relaxed);
                    if seq >= warm {
                        h.lock()
                            .await
                            .record(now.duration_since(t0).as_micros().max(1) as u64)
                            .ok();
                        m.fetch_add(1, Ordering::Relaxed);
                    }
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
            eprintln!(
                "  {:>6.1} s  {:>8} acked  {:>8} arrived  {} errors",
                started.elapsed().as_secs_f64(),
                acked.load(Ordering::Relaxed),
                arrived.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed)
            );
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = measured_from.elapsed();
    let drain_end = Instant::now() + o.drain;
    while arrived.load(Ordering::Relaxed) < acked.load(Ordering::Relaxed)
        && Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    let (lag, missing) = lag_histogram(
        &acks.lock().expect("stamps lock")[warm as usize..],
        &arrivals.lock().expect("stamps lock")[warm as usize..],
    );
    let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    let records = measured.load(Ordering::Relaxed);
    let produce = report(
        "produce",
        records,
        records * o.size as u64,
        errors.load(Ordering::Relaxed),
        took,
        &*hist.lock().await,
    );
    Ok(LinkReport {
        produce,
        arrived: lag.len(),
        missing,
        lag_ms_p50: ms(0.5),
        lag_ms_p99: ms(0.99),
        lag_ms_p999: ms(0.999),
        lag_ms_max: lag.max() as f64 / 1000.0,
    })
}

/// Creates the link benchmark's topic in `from`'s region unless it
/// exists, and waits (30 s at most) until `to`'s region serves every
/// partition; returns where each partition ends there now.
async fn topic_in_both(from: &Client, to: &Client, o: &LinkOpts) -> Result<Vec<i64>, ClientError> {
    match from.topic(&o.topic, false).await {
        Ok(_) => {}
        Err(ClientError::UnknownTopic(_)) => {
            from.create_topic(&o.topic, o.partitions, &o.configs)
                .await?
        }
        Err(e) => return Err(e),
    }
    let partitions = from.topic(&o.topic, false).await?.leaders.len() as i32;
    // The other region learns of the topic through the control plane and
    // starts its partition groups.
    let ready = Instant::now() + Duration::from_secs(30);
    let mut starts = Vec::new();
    for p in 0..partitions {
        loop {
            match to.list_offset(&o.topic, p, -1).await {
                Ok((end, _)) => {
                    starts.push(end);
                    break;
                }
                Err(e) if Instant::now() < ready => {
                    tracing::debug!(error = %e, "waiting for the topic in the other region");
                    to.forget_leaders(&o.topic).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(starts)
}

/// One reader per partition of `topic` in the other region, from `starts`:
/// stamps when each benchmark record (numbered in its first 8 bytes)
/// arrives, until `stop`.
fn spawn_readers(
    to: &Arc<Client>,
    topic: &str,
    starts: Vec<i64>,
    arrivals: &Stamps,
    arrived: &Arc<AtomicU64>,
    stop: &tokio_util::sync::CancellationToken,
    started: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut readers = Vec::new();
    for (p, start) in starts.into_iter().enumerate() {
        let (to, topic, arrivals, arrived, stop) = (
            to.clone(),
            topic.to_string(),
            arrivals.clone(),
            arrived.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut offset = start;
            while !stop.is_cancelled() {
                let r = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = to.fetch(&topic, p as i32, offset, 500) => r,
                };
                match r {
                    Ok((recs, _)) => {
                        let now = Instant::now();
                        for r in &recs {
                            let seq = r
                                .value
                                .as_deref()
                                .and_then(|v| v.get(..8))
                                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                            if let Some(seq) = seq {
                                stamp(&arrivals, seq, now, started);
                                arrived.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Some(last) = recs.last() {
                            offset = last.offset + 1;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    readers
}

/// Arrival minus acknowledgement per record acknowledged (a record can be
/// read remotely before its ack reaches the producer: that counts as 1 µs),
/// and the acknowledged records that never arrived.
fn lag_histogram(acks: &[u64], arrivals: &[u64]) -> (Histogram<u64>, u64) {
    let mut h = histogram();
    let mut missing = 0;
    for (ack, arrival) in acks.iter().zip(arrivals) {
        match (*ack, *arrival) {
            (0, _) => {}
            (_, 0) => missing += 1,
            (a, r) => {
                h.record(r.saturating_sub(a).max(1)).ok();
            }
        }
    }
    (h, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_acknowledged_records_only() {
        let acks = [1_000, 0, 3_000, 4_000];
        let arrivals = [41_000, 50_000, 0, 3_900];
        let (h, missing) = lag_histogram(&acks, &arrivals);
        assert_eq!(missing, 1, "acked, never arrived");
        assert_eq!(h.len(), 2, "unacknowledged records do not count");
        assert_eq!(h.max(), h.highest_equivalent(40_000));
        assert_eq!(h.min(), 1, "read before the ack came back");
    }

    #[test]
    fn random_values_are_distinct_windows_of_the_pool() {
        let pool = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<_>>());
        let a = value_of(&pool, 1024, 0);
        let b = value_of(&pool, 1024, 1);
        assert_eq!((a.len(), b.len()), (1024, 1024));
        assert_eq!(&b[..], &pool[1024..2048]);
        // Wraps inside the pool, never past its end.
        assert_eq!(value_of(&pool, 1024, 1_000_000).len(), 1024);
        // A pool no larger than a value is the value.
        let x = Bytes::from(vec![b'x'; 100]);
        assert_eq!(value_of(&x, 100, 7), x);
    }
}
