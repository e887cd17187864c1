//! `meridian status`: every node's `/status`, as a table.

use anyhow::{bail, Context, Result};
use meridian::admin::status::{self, Status};
use meridian::ops::dev;
use std::path::PathBuf;
use std::time::Duration;

pub(super) async fn run_status(cluster: Option<PathBuf>, admin: Option<String>) -> Result<()> {
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
        "{:<6} {:<10} {:<22} {:>8} {:>8} {:>10} {:>12} {:>10}",
        "node", "region", "kafka", "led", "groups", "meta term", "disk free", "lease ms"
    );
    let mut links = Vec::new();
    // Failed-over regions and home moves, as the first node that answers
    // knows them.
    let mut first: Option<Status> = None;
    for a in addrs {
        match dev::http_get(&a, "/status", Duration::from_secs(3)).await {
            Ok((200, body)) => {
                let s = status::parse(&body)
                    .with_context(|| format!("{a}/status is not a node's status: {body}"))?;
                let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
                for p in &s.partitions {
                    let part = format!(
                        "{}-{}",
                        p.topic.as_deref().unwrap_or("?"),
                        opt(p.partition.map(u64::from))
                    );
                    for l in &p.links {
                        links.push(format!(
                            "{:<24} {:<10} {:<10} {:>12} {:>12} {:>10}",
                            part,
                            s.region,
                            l.region,
                            opt(p.high_watermark),
                            l.held,
                            l.lag_records
                        ));
                    }
                }
                // The write lease this node acts on; 0: fenced.
                let lease = match s.lease_ms {
                    Some(0) if s.sealed => "SEALED".to_string(),
                    Some(0) => "FENCED".to_string(),
                    Some(ms) => ms.to_string(),
                    None => "-".to_string(),
                };
                // Free space; FULL: below the reserve, writes refused.
                let gib = s.disk.free_bytes as f64 / (1u64 << 30) as f64;
                let disk = if s.disk.refusing_writes {
                    format!("FULL {gib:.1}G")
                } else {
                    format!("{gib:.1}G")
                };
                println!(
                    "{:<6} {:<10} {:<22} {:>8} {:>8} {:>10} {:>12} {:>10}",
                    s.node,
                    s.region,
                    s.kafka,
                    s.partitions_led,
                    s.partitions.len(),
                    s.meta.term,
                    disk,
                    lease
                );
                first.get_or_insert(s);
            }
            Ok((code, _)) => println!("{a}: HTTP {code}"),
            Err(e) => println!("{a}: unreachable ({e})"),
        }
    }
    let (seals, moves) = first.map_or_else(Default::default, |s| (s.seals, s.moves));
    if !seals.is_empty() {
        println!(
            "\n{:<10} {:>12} {:>10} {:>12} {:>14}",
            "failed over", "sealed epoch", "partitions", "records kept", "decided at ms"
        );
        for s in seals {
            println!(
                "{:<10} {:>12} {:>10} {:>12} {:>14}",
                s.region, s.epoch, s.partitions, s.records, s.decided_at_ms
            );
        }
    }
    if !moves.is_empty() {
        println!(
            "\n{:<24} {:<10} {:<10} {:>16}",
            "home moved", "from", "to", "sealed/partitions"
        );
        for m in moves {
            println!(
                "{:<24} {:<10} {:<10} {:>16}",
                m.topic,
                m.from,
                m.to,
                format!("{}/{}", m.sealed, m.partitions)
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
