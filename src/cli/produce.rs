//! `meridian produce`: records from arguments or stdin.

use super::Conn;
use anyhow::{Context, Result};
use bytes::Bytes;
use kafka_protocol::records::Compression;
use meridian::client::{encode_batch, Client};
use std::io::BufRead;

pub(super) async fn run_produce(
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
