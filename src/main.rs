//! The `meridian` command line: parses the arguments and runs the
//! subcommand (`cli/`, one file per subcommand).

mod cli;

use clap::Parser;

fn main() {
    if let Err(e) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
