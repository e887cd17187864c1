//! The verification workload shared by `meridian drill` and `meridian chaos
//! run`: a `sync` and an `async` topic, each written from every region by a
//! writer that knows every region's brokers and never retries, readers per
//! region that note when each record first became readable, and the final
//! reading of every region's view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::Compression;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::report::{Ack, Event, Rec, Reinjected, Views};
use super::{ClusterFile, DrillError};
use crate::client::{encode_batch, Client, ClientError};
use crate::log::batch;

/// What the workload saw.
#[derive(Default)]
pub struct Log {
    pub acks: Vec<Ack>,
    /// Per reader: value of the `sync` topic -> ms since the start when
    /// first read.
    pub seen: BTreeMap<String, BTreeMap<String, u64>>,
    pub events: Vec<Event>,
}

pub struct Workload {
    pub cluster: ClusterFile,
    /// The `sync` topic, then the `async` one.
    pub topics: [String; 2],
    /// Records per second per writer (one per region and topic).
    pub rate: u32,
    pub partitions: u32,
    start: Instant,
    log: Mutex<Log>,
    stop_writers: CancellationToken,
    stop_readers: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Workload {
    /// A workload over `cluster` whose topics are named `{prefix}-sync-N`
    /// and `{prefix}-async-N` (N: seconds since the epoch, so that runs
    /// against one cluster do not share topics).
    pub fn new(cluster: ClusterFile, prefix: &str, rate: u32, partitions: u32) -> Workload {
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Workload {
            cluster,
            topics: [
                format!("{prefix}-sync-{suffix}"),
                format!("{prefix}-async-{suffix}"),
            ],
            rate,
            partitions,
            start: Instant::now(),
            log: Mutex::new(Log::default()),
            stop_writers: CancellationToken::new(),
            stop_readers: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the workload was made.
    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Prints a timeline line and keeps it for the report.
    pub fn event(&self, what: impl Into<String>) {
        let what = what.into();
        let t_ms = self.ms();
        println!("[{:>7.1} s] {what}", t_ms as f64 / 1000.0);
        self.log
            .lock()
            .expect("workload log")
            .events
            .push(Event { t_ms, what });
    }

    pub async fn create_topics(&self) -> Result<(), DrillError> {
        let any = self.cluster.bootstrap_from(&self.cluster.regions[0].name);
        let c = Client::new(&any);
        for (t, repl) in self.topics.iter().zip(["sync", "async"]) {
            let mut configs = BTreeMap::new();
            configs.insert("meridian.replication".to_string(), repl.to_string());
            c.create_topic(t, self.partitions as i32, &configs)
                .await
                .map_err(|e| DrillError::Step(format!("cannot create topic {t}: {e}")))?;
        }
        // Every region learns of the topics before the workload starts.
        for r in &self.cluster.regions {
            let c = Client::new(&self.cluster.region_bootstrap(&r.name));
            for t in &self.topics {
                let deadline = Instant::now() + Duration::from_secs(30);
                while c.topic(t, false).await.is_err() {
                    if Instant::now() > deadline {
                        return Err(DrillError::Step(format!(
                            "region {} never learned of topic {t}",
                            r.name
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.event(format!(
            "created topics {} (sync) and {} (async)",
            self.topics[0], self.topics[1]
        ));
        Ok(())
    }

    /// Starts a writer per region and topic and a reader per region, plus
    /// readers `(label, bootstrap)` in `extra_readers`.
    pub fn start(self: &Arc<Self>, extra_readers: Vec<(String, String)>) {
        let mut tasks = self.tasks.lock().expect("workload tasks");
        for r in &self.cluster.regions {
            for t in &self.topics {
                tasks.push(tokio::spawn(self.clone().writer(r.name.clone(), t.clone())));
            }
            tasks.push(tokio::spawn(
                self.clone()
                    .reader(r.name.clone(), self.cluster.region_bootstrap(&r.name)),
            ));
        }
        for (label, bootstrap) in extra_readers {
            tasks.push(tokio::spawn(self.clone().reader(label, bootstrap)));
        }
    }

    pub fn stop_writing(&self) {
        self.stop_writers.cancel();
    }

    /// Stops every writer and reader and hands over what they saw.
    pub async fn finish(&self) -> Log {
        self.stop_writers.cancel();
        self.stop_readers.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("workload tasks"));
        for t in tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.log.lock().expect("workload log"))
    }

    /// Writes `topic` from `region` (its brokers first, then the others'),
    /// one record per tick, recording each ack.
    async fn writer(self: Arc<Self>, region: String, topic: String) {
        let stop = self.stop_writers.clone();
        let mut c = Client::new(&self.cluster.bootstrap_from(&region));
        c.timeout = Duration::from_secs(5);
        // No retries: a retried write that had in fact been stored would be
        // stored twice (idempotent producers are not there yet), and
        // duplicates count as broken invariants. A failed write is reported
        // as failed; the next one is a new record.
        c.retries_max = 0;
        let every = Duration::from_millis(1000 / self.rate.max(1) as u64);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let value = format!("{region}-{seq}");
            let partition = (seq % self.partitions as u64) as i32;
            seq += 1;
            let batch = encode_batch(
                &[(None, Some(Bytes::from(value.clone())))],
                Compression::None,
            );
            let sent = self.ms();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = c.produce(&topic, partition, batch) => r,
            };
            if r.is_err() {
                // As a client does after an error: ask for metadata again.
                c.forget_leaders(&topic).await;
            }
            let ack = Ack {
                topic: topic.clone(),
                writer: region.clone(),
                value,
                sent_ms: sent,
                acked_ms: r.is_ok().then(|| self.ms()),
                error: r.err().map(|e: ClientError| e.to_string()),
            };
            self.log.lock().expect("workload log").acks.push(ack);
        }
    }

    /// Reads the sync topic through `bootstrap`, recording under `label`
    /// when each record was first readable.
    async fn reader(self: Arc<Self>, label: String, bootstrap: String) {
        let stop = self.stop_readers.clone();
        let mut c = Client::new(&bootstrap);
        c.timeout = Duration::from_secs(3);
        c.retries_max = 1;
        let topic = self.topics[0].clone();
        let mut next = vec![0i64; self.partitions as usize];
        while !stop.is_cancelled() {
            for (p, off) in next.iter_mut().enumerate() {
                let r = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = c.fetch(&topic, p as i32, *off, 200) => r,
                };
                let Ok((recs, _)) = r else {
                    c.forget_leaders(&topic).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let now = self.ms();
                let mut log = self.log.lock().expect("workload log");
                let seen = log.seen.entry(label.clone()).or_default();
                for rec in recs {
                    *off = (*off).max(rec.offset + 1);
                    if let Some(v) = rec.value {
                        seen.entry(String::from_utf8_lossy(&v).into_owned())
                            .or_insert(now);
                    }
                }
            }
        }
    }

    /// Every record of both topics, as `region` serves it; `None` if the
    /// region cannot serve all of it now.
    pub async fn view(&self, region: &str) -> Option<BTreeMap<String, Vec<Vec<Rec>>>> {
        let mut c = Client::new(&self.cluster.region_bootstrap(region));
        c.timeout = Duration::from_secs(3);
        c.retries_max = 3;
        let mut out = BTreeMap::new();
        for t in &self.topics {
            let mut parts = Vec::new();
            for p in 0..self.partitions as i32 {
                let mut values = Vec::new();
                let mut off = 0i64;
                loop {
                    let (recs, hw) = c.fetch(t, p, off, 0).await.ok()?;
                    for rec in &recs {
                        off = off.max(rec.offset + 1);
                        values.push(rec_of(rec));
                    }
                    if off >= hw || recs.is_empty() {
                        break;
                    }
                }
                parts.push(values);
            }
            out.insert(t.clone(), parts);
        }
        Some(out)
    }

    /// The views of every region but `except`.
    pub async fn views_except(&self, except: &str) -> Views {
        let mut out = BTreeMap::new();
        for r in self.cluster.regions.iter().filter(|r| r.name != except) {
            if let Some(v) = self.view(&r.name).await {
                out.insert(r.name.clone(), v);
            }
        }
        out
    }

    /// Reads every region's view until they agree and stop growing (at most
    /// `patience`); returns the last reading.
    pub async fn settled_views(&self, patience: Duration) -> Views {
        let deadline = Instant::now() + patience;
        let mut last = BTreeMap::new();
        loop {
            let now = self.views_except("").await;
            let agree = now.len() == self.cluster.regions.len()
                && now.values().collect::<BTreeSet<_>>().len() == 1;
            if (agree && now == last) || Instant::now() > deadline {
                self.event(if agree {
                    "every region serves the same view".to_string()
                } else {
                    format!("regions still disagree after {} s", patience.as_secs())
                });
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A fetched record as the checks see it.
fn rec_of(rec: &crate::client::Consumed) -> Rec {
    let header = |name: &str| {
        rec.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Rec {
        value: rec
            .value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
        reinjected: header(batch::HEADER_REINJECTED_FROM).map(|from| Reinjected {
            from,
            hlc: header(batch::HEADER_REINJECTED_HLC)
                .and_then(|h| h.parse().ok())
                .unwrap_or(0),
        }),
        origin: rec.origin.clone().unwrap_or_default(),
        hlc: rec.hlc.unwrap_or(0),
    }
}
