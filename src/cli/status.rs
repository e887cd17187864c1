//! `meridian status`: every node's `/status`, as a table.

use anyhow::{bail, Context, Result};
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
