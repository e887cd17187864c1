//! `meridian chaos run|check`.

use super::{init_logging, write_json};
use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ChaosCmd {
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

pub(super) async fn run_chaos(cmd: ChaosCmd) -> Result<()> {
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
