//! `meridian bench produce|link|consume`.

use super::{parse_kv, show, Conn};
use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};
use kafka_protocol::records::Compression;
use meridian::client::Client;
use meridian::ops::bench;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[arg(short, long, default_value = "bench")]
        topic: String,
        /// Partitions if the topic must be created.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Record value size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Records to send (default 100000 unless --duration-s is given).
        #[arg(long)]
        count: Option<u64>,
        #[arg(long)]
        duration_s: Option<u64>,
        /// Records per produce request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Produce requests in flight at once.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        /// Distinct keys (0: no keys).
        #[arg(long, default_value_t = 0)]
        keys: u64,
        /// Fixed rate in records/s (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, value_enum, default_value_t = Codec::None)]
        compression: Codec,
        /// Values of random bytes, which no compression shrinks (default:
        /// every byte `x`, which compresses to almost nothing).
        #[arg(long)]
        random: bool,
        /// Topic config if the topic must be created, KEY=VALUE; repeatable
        /// (e.g. -c meridian.replication=sync).
        #[arg(short, long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cross-region: produce at a fixed rate in one region, read in another,
    /// and report the time from each acknowledgement to the record's
    /// arrival there (replication lag, or visibility in the global view for
    /// topics with several writer regions).
    Link {
        /// Bootstrap of the region to produce in.
        #[arg(long)]
        from: String,
        /// Bootstrap of the region to read in.
        #[arg(long)]
        to: String,
        #[arg(short, long, default_value = "bench-link")]
        topic: String,
        /// Partitions if the topic must be created.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Record value size in bytes (at least 8: the sequence number).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Records per second, one record per produce request.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Measured load, after the warm-up.
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        /// Load before the measured part (leaders of new partitions settle).
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
        /// Produce requests in flight at once.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Topic config if the topic must be created, KEY=VALUE; repeatable
        /// (e.g. -c meridian.writers=home:us-east).
        #[arg(short, long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[arg(short, long, default_value = "bench")]
        topic: String,
        #[arg(long)]
        count: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run_bench(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Produce {
            conn,
            topic,
            partitions,
            size,
            count,
            duration_s,
            batch,
            in_flight,
            keys,
            rate,
            compression,
            random,
            configs,
            json,
        } => {
            let compression = match compression {
                Codec::None => Compression::None,
                Codec::Gzip => Compression::Gzip,
                Codec::Snappy => Compression::Snappy,
                Codec::Lz4 => Compression::Lz4,
                Codec::Zstd => Compression::Zstd,
            };
            let duration = duration_s.map(Duration::from_secs);
            let opts = bench::ProduceOpts {
                topic,
                partitions,
                size,
                count: count.or(if duration.is_none() {
                    Some(100_000)
                } else {
                    None
                }),
                duration,
                batch,
                in_flight,
                keys,
                rate,
                compression,
                random,
                configs: configs.into_iter().collect(),
            };
            let client = Arc::new(Client::new(&conn.bootstrap));
            show(bench::produce(client, opts, !json).await?, json)
        }
        BenchCmd::Link {
            from,
            to,
            topic,
            partitions,
            size,
            rate,
            duration_s,
            warmup_s,
            in_flight,
            configs,
            json,
        } => {
            if rate == 0 || duration_s == 0 {
                bail!("--rate and --duration-s must be at least 1");
            }
            if rate.saturating_mul(duration_s + warmup_s) > 50_000_000 {
                bail!("--rate x --duration-s is over 50,000,000 records; the benchmark keeps two timestamps per record");
            }
            let opts = bench::LinkOpts {
                topic,
                partitions,
                size,
                rate,
                duration: Duration::from_secs(duration_s),
                in_flight,
                configs: configs.into_iter().collect(),
                drain: Duration::from_secs(30),
                warmup: Duration::from_secs(warmup_s),
            };
            let (from, to) = (Arc::new(Client::new(&from)), Arc::new(Client::new(&to)));
            show(bench::link(from, to, opts, !json).await?, json)
        }
        BenchCmd::Consume {
            conn,
            topic,
            count,
            json,
        } => {
            let client = Arc::new(Client::new(&conn.bootstrap));
            show(bench::consume(client, &topic, count, !json).await?, json)
        }
    }
}
