//! The `meridian` command line. It only parses arguments and calls the
//! library.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};
use meridian::config::{NodeConfig, Topology};
use meridian::ops::{bench, dev};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "A geo-replicated, Kafka-compatible message broker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node.
    Node {
        /// Node configuration file (see config/).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a cluster on loopback, one process per node, until Ctrl-C.
    Dev {
        /// Topology file.
        #[arg(long, default_value = "regions/dev.toml")]
        topology: PathBuf,
        /// Data directory (default: a fresh temporary one, removed at exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Renumber ports from here: node i gets base+3i (Kafka), +1 (QUIC), +2 (admin).
        #[arg(long)]
        port_base: Option<u16>,
        /// Topics file ([[topic]] tables) the nodes create at start.
        #[arg(long)]
        topics: Option<PathBuf>,
        /// A node setting for every node, SECTION.KEY=VALUE (keys of
        /// config/node.example.toml); repeatable, e.g. --set control.lease_ms=8000.
        #[arg(long = "set", value_parser = parse_kv)]
        settings: Vec<(String, String)>,
    },
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        cmd: TopicCmd,
    },
    /// Write records: the arguments, or one per line of standard input.
    Produce {
        #[command(flatten)]
        conn: Conn,
        #[arg(short, long)]
        topic: String,
        #[arg(short, long, default_value_t = 0)]
        partition: i32,
        /// Key for every record.
        #[arg(short, long)]
        key: Option<String>,
        values: Vec<String>,
    },
    /// Read records of one partition; or, with --group, read a topic and
    /// its retry chain as a member of a consumer group, accepting or
    /// rejecting each record (docs/consumers.md#retries-and-dead-letters).
    Consume {
        #[command(flatten)]
        conn: Conn,
        #[arg(short, long)]
        topic: String,
        /// Consumer group to join: read from its committed offsets, commit
        /// each record as it is settled, until Ctrl-C (or -n records).
        #[arg(short, long)]
        group: Option<String>,
        /// With --group: a shell command run for each record (its value on
        /// stdin; MERIDIAN_TOPIC, _PARTITION, _OFFSET, _ATTEMPT, _KEY set).
        /// Exit 0 accepts the record; any other status rejects it, with the
        /// last line of stderr as the reason, to the chain's next topic.
        /// Without it every record is accepted.
        #[arg(long, requires = "group")]
        exec: Option<String>,
        /// With --exec: kill the command and reject the record after this long.
        #[arg(long, default_value_t = 30_000, requires = "exec")]
        exec_timeout_ms: u64,
        #[arg(short, long, default_value_t = 0, conflicts_with = "group")]
        partition: i32,
        /// First offset (default: the beginning).
        #[arg(short, long, default_value_t = 0, conflicts_with = "group")]
        offset: i64,
        /// Stop after this many records (with --group: accepted ones).
        #[arg(short = 'n', long)]
        count: Option<u64>,
        /// Stop when no record arrived for this long (0: wait forever).
        #[arg(long, default_value_t = 2000, conflicts_with = "group")]
        idle_ms: u64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Node status (JSON from every node's admin endpoint) as a table.
    Status {
        /// cluster.json written by `meridian dev`.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Admin addresses, comma-separated.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Fault scenarios (chaos/*.toml) against a fresh dev cluster.
    Chaos {
        #[command(subcommand)]
        cmd: ChaosCmd,
    },
    /// Fail a whole region of a running cluster under a verification
    /// workload, fail it back, and report RTO, RPO, re-injections and
    /// duplicates (docs/disaster-recovery.md#drills).
    Drill {
        /// cluster.json written by `meridian dev`.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        cluster: Option<PathBuf>,
        /// Instead of --cluster: admin addresses of any of the cluster's
        /// nodes, comma-separated (it finds the rest; --mode isolate only).
        #[arg(long, value_delimiter = ',')]
        admin: Vec<String>,
        /// The region to fail.
        #[arg(long)]
        fail_region: String,
        /// kill: SIGKILL its nodes and restart them; isolate: cut it off at
        /// the transport and reconnect it.
        #[arg(long, value_enum, default_value = "kill")]
        mode: meridian::ops::drill::Mode,
        /// Seconds the region stays failed (at least until failed over),
        /// at most an hour: the drill keeps every write it makes.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        down_s: u64,
        /// Records per second of each writer (one per region and topic), 1 to 1000.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        rate: u32,
        /// Write the report as JSON to this file ("-": stdout).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the report as Markdown, with a timeline chart, to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The nodes' `admin.token`, for `--mode isolate` (which sets
        /// faults); a `meridian dev` cluster.json carries its own.
        #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
}

#[derive(Subcommand)]
enum ChaosCmd {
    /// Start a dev cluster, run a workload, inject the scenario's faults,
    /// heal them, and check its invariants; exits 1 if any check fails.
    Run {
        /// The scenario file, e.g. chaos/region-loss.toml.
        scenario: PathBuf,
        /// Topology of the dev cluster.
        #[arg(long, default_value = "regions/dev.toml")]
        topology: PathBuf,
        /// Renumber ports from here (as `meridian dev --port-base`).
        #[arg(long)]
        port_base: Option<u16>,
        /// Keep the cluster's directory (data and node logs) after a
        /// passing run; a failing run always keeps it.
        #[arg(long)]
        keep: bool,
        /// Write the report as JSON to this file ("-": stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Check scenario files without running them.
    Check {
        scenarios: Vec<PathBuf>,
        #[arg(long, default_value = "regions/dev.toml")]
        topology: PathBuf,
    },
}

#[derive(Args, Clone)]
struct Conn {
    /// Bootstrap brokers, comma-separated.
    #[arg(
        short,
        long,
        env = "MERIDIAN_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum TopicCmd {
    /// Create a topic; or, with --retry-chain, a topic and its retry chain.
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(
            required_unless_present = "retry_chain",
            conflicts_with = "retry_chain"
        )]
        name: Option<String>,
        #[arg(short, long, default_value_t = 1)]
        partitions: i32,
        /// Topic config, KEY=VALUE; repeatable (with --retry-chain: for
        /// every topic of the chain).
        #[arg(short, long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Create (or complete) the retry chain of this topic: the topic,
        /// BASE.retry.1 .. BASE.retry.{attempts-1} and BASE.dlq.
        #[arg(long, value_name = "BASE")]
        retry_chain: Option<String>,
        /// Delivery attempts before a record goes to the dead-letter topic
        /// [default: 3].
        #[arg(long)]
        attempts: Option<u32>,
        /// Delay of the first retry topic; each next one doubles it
        /// [default: 1000].
        #[arg(long)]
        backoff_ms: Option<u64>,
        /// Cap on a retry topic's delay [default: 300000].
        #[arg(long)]
        backoff_max_ms: Option<u64>,
    },
    List {
        #[command(flatten)]
        conn: Conn,
    },
    Describe {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    Alter {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// KEY=VALUE to set; repeatable.
        #[arg(long = "set", value_parser = parse_kv)]
        set: Vec<(String, String)>,
        /// KEY to reset to its default; repeatable.
        #[arg(long = "delete")]
        delete: Vec<String>,
    },
    Delete {
        #[command(flatten)]
        conn: Conn,
        name: String,
    },
    /// Moves a pinned topic's home (`meridian.writers=home:<region>`) to
    /// another region that holds it, e.g. back after a failback. The old
    /// home seals its logs; writes continue at the new one.
    MoveHome {
        #[command(flatten)]
        conn: Conn,
        name: String,
        /// The region to become the topic's home.
        #[arg(long)]
        to: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Subcommand)]
enum BenchCmd {
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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn init_logging(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(level.unwrap_or("info,openraft=error"))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Node { config } => run_node(config),
        cmd => runtime(0).and_then(|rt| rt.block_on(run(cmd))),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A multi-threaded runtime with `workers` threads (0: one per core).
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_node(config: PathBuf) -> Result<()> {
    // Configuration errors are printed whole, one problem per line.
    let config = match NodeConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            std::process::exit(2);
        }
    };
    init_logging(config.log.as_deref());
    runtime(config.runtime.worker_threads)?.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            s.cancel();
        });
        meridian::node::run(config, shutdown).await?;
        Ok(())
    })
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Node { .. } => unreachable!("nodes run in run_node"),
        Cmd::Dev {
            topology,
            data_dir,
            port_base,
            topics,
            settings,
        } => run_dev(topology, data_dir, port_base, topics, settings).await,
        Cmd::Topic { cmd } => {
            init_logging(Some("warn"));
            run_topic(cmd).await
        }
        Cmd::Produce {
            conn,
            topic,
            partition,
            key,
            values,
        } => {
            init_logging(Some("warn"));
            run_produce(conn, topic, partition, key, values).await
        }
        Cmd::Consume {
            conn,
            topic,
            group: Some(group),
            exec,
            exec_timeout_ms,
            count,
            format,
            ..
        } => {
            init_logging(Some(
                "info,meridian::client=warn,meridian::client::consumer=info",
            ));
            let exec = exec.map(|c| (c, Duration::from_millis(exec_timeout_ms)));
            run_consume_group(conn, topic, group, exec, count, format).await
        }
        Cmd::Consume {
            conn,
            topic,
            partition,
            offset,
            count,
            idle_ms,
            format,
            ..
        } => {
            init_logging(Some("warn"));
            run_consume(conn, topic, partition, offset, count, idle_ms, format).await
        }
        Cmd::Status { cluster, admin } => run_status(cluster, admin).await,
        Cmd::Bench { cmd } => {
            init_logging(Some("warn"));
            run_bench(cmd).await
        }
        Cmd::Chaos { cmd } => run_chaos(cmd).await,
        Cmd::Drill {
            cluster,
            admin,
            fail_region,
            mode,
            down_s,
            rate,
            json,
            report,
            admin_token,
        } => {
            init_logging(Some("warn"));
            run_drill(
                meridian::ops::drill::Plan {
                    cluster: match cluster {
                        Some(path) => meridian::ops::drill::Source::File(path),
                        None => meridian::ops::drill::Source::Admin(admin),
                    },
                    region: fail_region,
                    mode,
                    down: Duration::from_secs(down_s),
                    rate,
                    partitions: 2,
                    admin_token,
                },
                json,
                report,
            )
            .await
        }
    }
}

async fn run_chaos(cmd: ChaosCmd) -> Result<()> {
    match cmd {
        ChaosCmd::Check {
            scenarios,
            topology,
        } => {
            if scenarios.is_empty() {
                bail!("name at least one scenario file, e.g. chaos/*.toml");
            }
            let mut bad = 0;
            for path in &scenarios {
                match meridian::ops::chaos::check_file(path, &topology) {
                    Ok(s) => println!(
                        "{}: ok ({}: {} faults over {:.0} s)",
                        path.display(),
                        s.name,
                        s.faults.len(),
                        s.span().as_secs_f64()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        ChaosCmd::Run {
            scenario,
            topology,
            port_base,
            keep,
            json,
        } => {
            init_logging(Some("warn"));
            let r = match meridian::ops::chaos::run(meridian::ops::chaos::Plan {
                scenario,
                topology,
                port_base,
                keep,
            })
            .await
            {
                Ok(r) => r,
                Err(e @ meridian::ops::chaos::ChaosError::Scenario(_)) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
                Err(e) => return Err(e.into()),
            };
            print!("{}", r.text());
            if let Some(path) = json {
                write_json(&path, &r)?;
            }
            if !r.passed {
                bail!("the chaos scenario found broken invariants (see above)");
            }
            Ok(())
        }
    }
}

/// Writes a report as pretty JSON to `path`, or to stdout for `-`.
fn write_json(path: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn run_drill(
    plan: meridian::ops::drill::Plan,
    json: Option<PathBuf>,
    md: Option<PathBuf>,
) -> Result<()> {
    use meridian::ops::drill::report;
    let r = meridian::ops::drill::run(plan).await?;
    print!("{}", report::text(&r));
    if let Some(path) = json {
        write_json(&path, &r)?;
    }
    if let Some(path) = md {
        std::fs::write(&path, report::markdown(&r))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !r.passed() {
        bail!("the drill found broken invariants (see above)");
    }
    Ok(())
}

async fn run_produce(
    conn: Conn,
    topic: String,
    partition: i32,
    key: Option<String>,
    values: Vec<String>,
) -> Result<()> {
    let client = Client::new(&conn.bootstrap);
    client
        .topic(&topic, true)
        .await
        .with_context(|| format!("topic `{topic}`"))?;
    let key = key.map(Bytes::from);
    let batch_of = |vals: Vec<String>| {
        let batch: Vec<_> = vals
            .into_iter()
            .map(|v| (key.clone(), Some(Bytes::from(v))))
            .collect();
        encode_batch(&batch, Compression::None)
    };
    if !values.is_empty() {
        let n = values.len();
        let base = client.produce(&topic, partition, batch_of(values)).await?;
        eprintln!(
            "wrote {n} record(s) to {topic}-{partition} at offsets {base}..{}",
            base + n as i64
        );
        return Ok(());
    }
    let mut lines = Vec::new();
    let mut written = 0usize;
    for line in std::io::stdin().lock().lines() {
        lines.push(line?);
        if lines.len() == 500 {
            written += lines.len();
            client
                .produce(&topic, partition, batch_of(std::mem::take(&mut lines)))
                .await?;
        }
    }
    if !lines.is_empty() {
        written += lines.len();
        client.produce(&topic, partition, batch_of(lines)).await?;
    }
    eprintln!("wrote {written} record(s) to {topic}-{partition}");
    Ok(())
}

/// Creates the topics of a retry chain, or completes them: a topic that
/// exists already keeps its partitions and gets the chain's configs.
async fn create_chain(
    c: &Client,
    plan: &[meridian::client::consumer::chain::ChainTopic],
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    for t in plan {
        let own: BTreeMap<String, String> = t.configs().into_iter().collect();
        let what = match (&t.next, t.delay_ms) {
            (None, _) => "dead-letter topic".to_string(),
            (Some(_), 0) => "first topic".to_string(),
            (Some(_), d) => format!("retry topic, delay {d} ms"),
        };
        match c.topic(&t.name, false).await {
            Ok(info) => {
                if !own.is_empty() {
                    c.alter_configs(&t.name, &own, &[]).await?;
                }
                if info.leaders.len() as i32 != partitions {
                    eprintln!(
                        "note: {} has {} partition(s), not {partitions}; a rejected record moves to the same partition index, wrapped",
                        t.name,
                        info.leaders.len()
                    );
                }
                println!("{}: exists; set as the chain's {what}", t.name);
            }
            Err(meridian::client::ClientError::UnknownTopic(_)) => {
                let mut all = configs.clone();
                all.extend(own);
                c.create_topic(&t.name, partitions, &all)
                    .await
                    .with_context(|| format!("creating {}", t.name))?;
                println!("{}: created, {partitions} partition(s), {what}", t.name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn run_consume(
    conn: Conn,
    topic: String,
    partition: i32,
    offset: i64,
    count: Option<u64>,
    idle_ms: u64,
    format: Format,
) -> Result<()> {
    let client = Client::new(&conn.bootstrap);
    let mut next = offset;
    let mut seen = 0u64;
    let mut idle = Duration::ZERO;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| seen < c) {
        let t0 = std::time::Instant::now();
        let (recs, _) = client.fetch(&topic, partition, next, 500).await?;
        if recs.is_empty() {
            idle += t0.elapsed();
            if idle_ms > 0 && idle >= Duration::from_millis(idle_ms) {
                break;
            }
            continue;
        }
        idle = Duration::ZERO;
        for r in recs {
            if count.is_some_and(|c| seen >= c) {
                break;
            }
            next = r.offset + 1;
            seen += 1;
            match format {
                Format::Text => writeln!(
                    out,
                    "{}",
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                )?,
                Format::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
                        "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                        "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                        "origin": r.origin, "hlc": r.hlc,
                    })
                )?,
            }
        }
    }
    Ok(())
}

/// `meridian consume --group`: one member of `group` over `topic` and its
/// retry chain, until Ctrl-C or `count` accepted records.
async fn run_consume_group(
    conn: Conn,
    topic: String,
    group: String,
    exec: Option<(String, Duration)>,
    count: Option<u64>,
    format: Format,
) -> Result<()> {
    use meridian::client::consumer::{exec::verdict, GroupConsumer, Settings, Verdict};
    let client = Arc::new(Client::new(&conn.bootstrap));
    let mut settings = Settings::default();
    if let Some((_, timeout)) = &exec {
        // A rebalance waits for the record in hand: give the command time.
        let ms = timeout.as_millis() as i64 + 30_000;
        settings.rebalance_timeout_ms = ms.clamp(60_000, i32::MAX as i64) as i32;
    }
    let mut member =
        GroupConsumer::subscribe(client, &group, std::slice::from_ref(&topic), settings)
            .await
            .context("cannot subscribe")?;
    if exec.is_some() && member.next_topic(&topic).is_none() {
        eprintln!(
            "note: {topic} has no retry chain (meridian.retry.next), so a rejected record \
             stops this consumer before it is committed; give it one with \
             `meridian topic create --retry-chain {topic}`"
        );
    }
    eprintln!(
        "group {group}: reading {} (Ctrl-C to stop)",
        member.topics().join(", ")
    );
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = stop.clone();
    let stats = member
        .run(
            |d| {
                let exec = exec.clone();
                let done = done.clone();
                let accepted = accepted.clone();
                async move {
                    let v = match &exec {
                        Some((cmd, timeout)) => verdict(cmd, &d, *timeout).await,
                        None => Verdict::Accept,
                    };
                    if v == Verdict::Accept {
                        print_accepted(&d, format);
                        let n = accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if count.is_some_and(|c| n >= c) {
                            done.cancel();
                        }
                    }
                    v
                }
            },
            &stop,
        )
        .await?;
    eprintln!(
        "group {group}: {} accepted, {} moved to retry topics, {} to dead-letter topics",
        stats.accepted, stats.retried, stats.dead
    );
    Ok(())
}

fn print_accepted(d: &meridian::client::consumer::Delivery, format: Format) {
    let r = &d.record;
    let text = |b: &Option<Vec<u8>>| b.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
    let line = match format {
        Format::Text => text(&r.value).unwrap_or_default(),
        Format::Json => serde_json::json!({
            "topic": d.topic, "partition": r.partition, "offset": r.offset,
            "attempt": d.attempt, "timestamp": r.timestamp,
            "key": text(&r.key), "value": text(&r.value),
            "headers": r.headers.iter().map(|(k, v)| (k.clone(), text(v))).collect::<BTreeMap<_, _>>(),
            "origin": r.origin, "hlc": r.hlc,
        })
        .to_string(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run_dev(
    topology: PathBuf,
    data_dir: Option<PathBuf>,
    port_base: Option<u16>,
    topics: Option<PathBuf>,
    settings: Vec<(String, String)>,
) -> Result<()> {
    init_logging(Some("info"));
    let topo = match Topology::load(&topology) {
        Ok(t) => t,
        Err(e) => {
            eprint!("{e}");
            std::process::exit(2);
        }
    };
    // Check the topics file here, once, rather than in nine node logs.
    let topics = topics.map(|t| meridian::config::absolute(&t));
    let declared = match &topics {
        Some(path) => {
            let names: Vec<String> = topo.regions.iter().map(|r| r.name.clone()).collect();
            match meridian::config::TopicDecl::load(path, &names) {
                Ok(list) => list.into_iter().map(|t| t.name).collect(),
                Err(e) => {
                    eprint!("{e}");
                    std::process::exit(2);
                }
            }
        }
        None => Vec::new(),
    };
    let topo = match port_base {
        Some(b) => dev::with_port_base(&topo, b)?,
        None => topo,
    };
    let exe = std::env::current_exe().context("cannot find the meridian executable")?;
    let nodes: usize = topo.regions.iter().map(|r| r.nodes.len()).sum();
    eprintln!(
        "starting {} region(s), {nodes} node(s) ...",
        topo.regions.len()
    );
    let mut cluster = dev::DevCluster::start(
        &exe,
        topo,
        data_dir,
        topics.as_deref(),
        &settings,
        Duration::from_secs(60),
    )
    .await?;
    println!(
        "Meridian dev cluster is up; data in {}",
        cluster.dir.display()
    );
    for r in &cluster.topology.regions {
        let bootstrap: Vec<String> = r.nodes.iter().map(|n| n.kafka.to_string()).collect();
        let admin: Vec<String> = r.nodes.iter().map(|n| n.admin.to_string()).collect();
        println!(
            "  region {}: bootstrap {}  admin {}",
            r.name,
            bootstrap.join(","),
            admin.join(",")
        );
    }
    if !declared.is_empty() {
        println!("  topics from the topics file: {}", declared.join(", "));
    }
    println!(
        "  cluster file: {}",
        cluster.dir.join("cluster.json").display()
    );
    println!("  node logs:    {}/node-*.log", cluster.dir.display());
    println!(
        "Try: kcat -b {} -P -t hello   (Ctrl-C stops the cluster)",
        cluster.topology.regions[0].nodes[0].kafka
    );
    let _ = std::io::stdout().flush();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for (id, status) in cluster.reap() {
                    eprintln!("node {id} exited ({status}); restart it with: meridian node --config {}", cluster.dir.join(format!("node-{id}.toml")).display());
                }
            }
        }
    }
    eprintln!("stopping ...");
    cluster.stop(Duration::from_secs(10));
    Ok(())
}

async fn run_topic(cmd: TopicCmd) -> Result<()> {
    match cmd {
        TopicCmd::Create {
            conn,
            name,
            partitions,
            configs,
            retry_chain,
            attempts,
            backoff_ms,
            backoff_max_ms,
        } => {
            let c = Client::new(&conn.bootstrap);
            let configs: BTreeMap<_, _> = configs.into_iter().collect();
            match (name, retry_chain) {
                (_, Some(base)) => {
                    let plan = meridian::client::consumer::chain::plan(
                        &base,
                        attempts.unwrap_or(3),
                        backoff_ms.unwrap_or(1000),
                        backoff_max_ms.unwrap_or(300_000),
                    )?;
                    create_chain(&c, &plan, partitions, &configs).await?;
                }
                (Some(_), None)
                    if attempts.is_some() || backoff_ms.is_some() || backoff_max_ms.is_some() =>
                {
                    bail!(
                        "--attempts, --backoff-ms and --backoff-max-ms shape a retry chain: \
                         give --retry-chain BASE instead of a topic name"
                    )
                }
                (Some(name), None) => {
                    c.create_topic(&name, partitions, &configs).await?;
                    println!("created topic {name} with {partitions} partition(s)");
                }
                (None, None) => bail!("name the topic to create, or give --retry-chain BASE"),
            }
        }
        TopicCmd::List { conn } => {
            let c = Client::new(&conn.bootstrap);
            let md = c.metadata(None, false).await?;
            for t in md.topics {
                println!(
                    "{}\t{} partition(s)",
                    t.name.map(|n| n.0.to_string()).unwrap_or_default(),
                    t.partitions.len()
                );
            }
        }
        TopicCmd::Describe { conn, name } => {
            let c = Client::new(&conn.bootstrap);
            let t = c.topic(&name, false).await?;
            println!("topic {name}  id {}  partitions {}", t.id, t.leaders.len());
            for (p, l) in t.leaders.iter().enumerate() {
                let hw = c
                    .list_offset(&name, p as i32, -1)
                    .await
                    .map(|x| x.0)
                    .unwrap_or(-1);
                println!("  partition {p}  leader {l}  high watermark {hw}");
            }
            println!("configs:");
            for (k, v, set) in c.describe_configs(&name).await? {
                println!("  {k} = {v}{}", if set { "" } else { "  (default)" });
            }
        }
        TopicCmd::Alter {
            conn,
            name,
            set,
            delete,
        } => {
            if set.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --set KEY=VALUE or --delete KEY");
            }
            let c = Client::new(&conn.bootstrap);
            c.alter_configs(&name, &set.into_iter().collect(), &delete)
                .await?;
            println!("altered topic {name}");
        }
        TopicCmd::MoveHome { conn, name, to } => {
            let c = Client::new(&conn.bootstrap);
            let set = BTreeMap::from([("meridian.writers".to_string(), format!("home:{to}"))]);
            c.alter_configs(&name, &set, &[]).await?;
            println!(
                "the home of topic {name} moves to {to}: its partitions hand over as their logs are sealed \
                 (`meridian status` shows the move); clients' retried writes follow"
            );
        }
        TopicCmd::Delete { conn, name } => {
            let c = Client::new(&conn.bootstrap);
            c.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

async fn run_status(cluster: Option<PathBuf>, admin: Option<String>) -> Result<()> {
    let addrs: Vec<String> = match (cluster, admin) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            v["regions"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["nodes"].as_array().into_iter().flatten())
                .filter_map(|n| n["admin"].as_str().map(String::from))
                .collect()
        }
        (None, Some(a)) => a.split(',').map(|s| s.trim().to_string()).collect(),
        (None, None) => bail!("give --cluster DIR/cluster.json or --admin HOST:PORT[,...]"),
    };
    println!(
        "{:<6} {:<10} {:<22} {:>8} {:>8} {:>10} {:>10}",
        "node", "region", "kafka", "led", "groups", "meta term", "lease ms"
    );
    let mut links = Vec::new();
    let mut seals: Option<serde_json::Value> = None;
    let mut moves: Option<serde_json::Value> = None;
    for a in addrs {
        match dev::http_get(&a, "/status", Duration::from_secs(3)).await {
            Ok((200, body)) => {
                let s: serde_json::Value = serde_json::from_str(&body)?;
                let region = s["region"].as_str().unwrap_or("?").to_string();
                // Failed-over regions, as the first node that answers knows them.
                if moves.is_none() {
                    moves = Some(s["moves"].clone());
                }
                if seals.is_none() {
                    seals = Some(s["seals"].clone());
                }
                for p in s["partitions"].as_array().into_iter().flatten() {
                    let part = format!("{}-{}", p["topic"].as_str().unwrap_or("?"), p["partition"]);
                    for l in p["links"].as_array().into_iter().flatten() {
                        links.push(format!(
                            "{:<24} {:<10} {:<10} {:>12} {:>12} {:>10}",
                            part,
                            region,
                            l["region"].as_str().unwrap_or("?"),
                            p["high_watermark"].to_string(),
                            l["held"].to_string(),
                            l["lag_records"].to_string()
                        ));
                    }
                }
                // The write lease this node acts on; 0: fenced.
                let lease = match s["lease_ms"].as_i64() {
                    Some(0) if s["sealed"] == true => "SEALED".to_string(),
                    Some(0) => "FENCED".to_string(),
                    Some(ms) => ms.to_string(),
                    None => "-".to_string(),
                };
                println!(
                    "{:<6} {:<10} {:<22} {:>8} {:>8} {:>10} {:>10}",
                    s["node"].to_string(),
                    s["region"].as_str().unwrap_or("?"),
                    s["kafka"].as_str().unwrap_or("?"),
                    s["partitions_led"].to_string(),
                    s["partitions"].as_array().map_or(0, |p| p.len()),
                    s["meta"]["term"].to_string(),
                    lease
                );
            }
            Ok((code, _)) => println!("{a}: HTTP {code}"),
            Err(e) => println!("{a}: unreachable ({e})"),
        }
    }
    let seals: Vec<serde_json::Value> = seals
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    if !seals.is_empty() {
        println!(
            "\n{:<10} {:>12} {:>10} {:>12} {:>14}",
            "failed over", "sealed epoch", "partitions", "records kept", "decided at ms"
        );
        for s in seals {
            println!(
                "{:<10} {:>12} {:>10} {:>12} {:>14}",
                s["region"].as_str().unwrap_or("?"),
                s["epoch"].to_string(),
                s["partitions"].to_string(),
                s["records"].to_string(),
                s["decided_at_ms"].to_string()
            );
        }
    }
    let moves: Vec<serde_json::Value> = moves
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    if !moves.is_empty() {
        println!(
            "\n{:<24} {:<10} {:<10} {:>16}",
            "home moved", "from", "to", "sealed/partitions"
        );
        for m in moves {
            println!(
                "{:<24} {:<10} {:<10} {:>16}",
                m["topic"].as_str().unwrap_or("?"),
                m["from"].as_str().unwrap_or("?"),
                m["to"].as_str().unwrap_or("?"),
                format!("{}/{}", m["sealed"], m["partitions"])
            );
        }
    }
    if !links.is_empty() {
        println!(
            "\n{:<24} {:<10} {:<10} {:>12} {:>12} {:>10}",
            "partition", "from", "to", "view hw", "held there", "lag"
        );
        links.sort();
        for l in links {
            println!("{l}");
        }
    }
    Ok(())
}

async fn run_bench(cmd: BenchCmd) -> Result<()> {
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

fn show<R: serde::Serialize + std::fmt::Display>(report: R, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
