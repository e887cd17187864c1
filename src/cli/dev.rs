//! `meridian dev`: a multi-region cluster on loopback.

use super::{init_logging, node::shutdown_signal};
use anyhow::{Context, Result};
use meridian::config::Topology;
use meridian::ops::dev;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub(super) async fn run_dev(
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
