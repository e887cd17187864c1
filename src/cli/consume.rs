//! `meridian consume`: one partition from an offset, or as a member of a
//! consumer group (with retry chains and a handler command).

use super::{node::shutdown_signal, Conn, Format};
use anyhow::{Context, Result};
use meridian::client::Client;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(super) async fn run_consume(
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
pub(super) async fn run_consume_group(
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
