//! `tollgate-load`: streams signed receipts at a Tollgate server and checks every answer.
//! A thin shell over `tollgate_load`; see `tollgate-load --help`.

use std::process::ExitCode;

use clap::Parser;
use tollgate_load::cli::{EXIT_DISAGREEMENT, LoadArgs, run};

#[tokio::main]
async fn main() -> ExitCode {
    match run(LoadArgs::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_DISAGREEMENT),
        Err(error) => {
            // anyhow's `{:#}` prints the error's chain of sources on one line.
            eprintln!("tollgate-load: {:#}", anyhow::Error::from(error));
            ExitCode::FAILURE
        }
    }
}
