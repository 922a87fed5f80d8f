//! Checks chaos-test histories (HISTORY-FORMAT.md) for linearizability, key by key.
//!
//! `kv-check [--ttl-slack-ms 250] FILE...`: prints a verdict per file and the keys that
//! fail; exits 1 when any history is not linearizable, 2 when one cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kv_tests::checker::{check, CheckOptions, DEFAULT_TTL_SLACK_MS};
use kv_tests::history;

#[derive(Parser)]
#[command(about = "Check chaos-test histories for linearizability, per key")]
struct Args {
    /// Expiry may happen this many ms before call+ttl or after return+ttl.
    #[arg(long, default_value_t = DEFAULT_TTL_SLACK_MS)]
    ttl_slack_ms: u64,
    /// History files (JSON lines).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = CheckOptions {
        ttl_slack_ms: args.ttl_slack_ms,
    };
    let mut code = ExitCode::SUCCESS;
    for file in &args.files {
        let ops = match history::read(file) {
            Ok(ops) => ops,
            Err(e) => {
                eprintln!("{}: unreadable: {e:#}", file.display());
                return ExitCode::from(2);
            }
        };
        let verdict = check(&ops, options);
        if verdict.ok() {
            println!(
                "{}: linearizable ({} operations, {} keys)",
                file.display(),
                ops.len(),
                verdict.keys.len()
            );
        } else {
            code = ExitCode::from(1);
            println!("{}: NOT linearizable", file.display());
            for key in verdict.failing_keys() {
                println!("  key {key:?}: no linearization exists");
            }
            for twice in &verdict.reapplied {
                println!("  applied twice: {twice}");
            }
        }
    }
    code
}
