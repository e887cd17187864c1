//! `meridian node --config FILE`: one broker process.

use super::{init_logging, runtime};
use anyhow::Result;
use meridian::config::NodeConfig;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

pub(super) fn run_node(config: PathBuf) -> Result<()> {
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

pub(super) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
