//! The `meridian` command line: its arguments (clap), shared options and
//! helpers, and the dispatch to one file per subcommand, each of which
//! only calls the library.

mod bench;
mod chaos;
mod consume;
mod dev;
mod drill;
mod node;
mod produce;
mod status;
mod topic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use bench::BenchCmd;
use chaos::ChaosCmd;
use topic::TopicCmd;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "A geo-replicated, Kafka-compatible message broker"
)]
pub struct Cli {
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

/// Runs the parsed command line. A node runs on a runtime sized by its
/// config; every other subcommand on one with a thread per core.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Node { config } => node::run_node(config),
        cmd => runtime(0).and_then(|rt| rt.block_on(dispatch(cmd))),
    }
}

async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Node { .. } => unreachable!("nodes run in run_node"),
        Cmd::Dev {
            topology,
            data_dir,
            port_base,
            topics,
            settings,
        } => dev::run_dev(topology, data_dir, port_base, topics, settings).await,
        Cmd::Topic { cmd } => {
            init_logging(Some("warn"));
            topic::run_topic(cmd).await
        }
        Cmd::Produce {
            conn,
            topic,
            partition,
            key,
            values,
        } => {
            init_logging(Some("warn"));
            produce::run_produce(conn, topic, partition, key, values).await
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
            consume::run_consume_group(conn, topic, group, exec, count, format).await
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
            consume::run_consume(conn, topic, partition, offset, count, idle_ms, format).await
        }
        Cmd::Status { cluster, admin } => status::run_status(cluster, admin).await,
        Cmd::Bench { cmd } => {
            init_logging(Some("warn"));
            bench::run_bench(cmd).await
        }
        Cmd::Chaos { cmd } => chaos::run_chaos(cmd).await,
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
            drill::run_drill(
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

fn show<R: serde::Serialize + std::fmt::Display>(report: R, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
