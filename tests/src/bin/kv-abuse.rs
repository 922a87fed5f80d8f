//! Runs the hostile-traffic suite against fresh local clusters and prints its table.
//!
//! `kv-abuse [--short]`: the full sizes by default (the README's table), the small ones
//! CI runs with `--short`. Exits 1 when a check fails; the node logs are kept then.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use kv_tests::abuse::{run, Scale};

#[derive(Parser)]
#[command(
    about = "Hostile traffic against a local quorum-kv cluster, with memory and latency bounds"
)]
struct Args {
    /// The small sizes CI runs.
    #[arg(long)]
    short: bool,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let scale = if args.short {
        Scale::Short
    } else {
        Scale::Full
    };
    match run(scale).await {
        Ok(report) => {
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}
