//! `meridian topic create|list|describe|alter|delete`, and retry chains
//! created with their topic.

use super::{parse_kv, Conn};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use meridian::client::Client;
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum TopicCmd {
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
        /// Also list Kafka's standard topic configs that are at their
        /// defaults (accepted for compatibility; most have no effect here).
        #[arg(long)]
        all: bool,
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

pub(super) async fn run_topic(cmd: TopicCmd) -> Result<()> {
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
        TopicCmd::Describe { conn, name, all } => {
            let c = Client::new(&conn.bootstrap);
            let t = c.topic(&name, false).await?;
            println!("topic {name}  id {}  partitions {}", t.id, t.leaders.len());
            for (p, l) in t.leaders.iter().enumerate() {
                // -2: the log start (earliest), -1: the high watermark.
                let start = c.list_offset(&name, p as i32, -2).await.map_or(-1, |x| x.0);
                let hw = c.list_offset(&name, p as i32, -1).await.map_or(-1, |x| x.0);
                println!("  partition {p}  leader {l}  log start {start}  high watermark {hw}");
            }
            println!("configs:");
            let mut hidden = 0;
            for (k, v, set) in c.describe_configs(&name).await? {
                // Kafka's compatibility configs at their defaults say
                // nothing about this topic; --all shows them.
                if !set && !all && meridian::meta::kafka_configs::find(&k).is_some() {
                    hidden += 1;
                    continue;
                }
                println!("  {k} = {v}{}", if set { "" } else { "  (default)" });
            }
            if hidden > 0 {
                println!("  ({hidden} more of Kafka's standard configs at their defaults: --all lists them)");
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
