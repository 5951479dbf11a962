//! Runs `tollgate bench verify` without the CLI:
//! `cargo run --release -p tollgate-tools --example bench_verify -- --receipts 200000 --json`.

use clap::Parser;
use tollgate_tools::bench_verify::{BenchVerifyArgs, run};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: BenchVerifyArgs,
}

fn main() -> anyhow::Result<()> {
    run(&Cli::parse().args)
}
