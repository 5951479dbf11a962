//! `tollgate`: the operator's command. A thin shell over `tollgate_tools`.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_engine::verify::{Verifier, VerifyConfig};
use tollgate_load::cli::DomainArgs;
use tollgate_tools::audit::AuditArgs;
use tollgate_tools::audit::watch::WatchArgs;
use tollgate_tools::bench_abuse::BenchAbuseArgs;
use tollgate_tools::bench_e2e::BenchE2eArgs;
use tollgate_tools::bench_verify::BenchVerifyArgs;
use tollgate_tools::bench_x402::BenchX402Args;
use tollgate_tools::demo::DemoArgs;
use tollgate_tools::deploy::DeployArgs;
use tollgate_tools::deposit::DepositArgs;
use tollgate_tools::grant::{GrantArgs, GrantBook};
use tollgate_tools::query::QueryCommand;
use tollgate_tools::receipts_json::VerdictFormat;
use tollgate_tools::serve::ServeArgs;
use tollgate_tools::{
    audit, bench_abuse, bench_e2e, bench_verify, bench_x402, demo, deploy, deposit, grant, keys,
    query, receipts_json,
};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Offchain metering and onchain settlement for signed usage receipts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system end to end on a local anvil chain, checked against the chain.
    Demo(Box<DemoArgs>),
    /// Run the engine: fleet protocol, HTTP API, and settlement when a chain is configured.
    Serve(Box<ServeArgs>),
    /// Make a new ed25519 key (a payer's, or a fleet client's).
    Keygen {
        /// Write the secret key to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Sign and verify receipts as JSON lines.
    #[command(subcommand)]
    Receipts(ReceiptsCommand),
    /// Sign a session grant with a payer's key (one JSON line); `revoke` signs a revocation,
    /// `submit` posts them to a server.
    Grant(Box<GrantArgs>),
    /// Measure: figures for docs/BENCHMARKS.md, baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    #[command(flatten)]
    Query(QueryCommand),
    /// Deploy the Settlement contract (and, on a dev chain without --token, a test token) and
    /// print the addresses and deployment block `tollgate serve` needs.
    Deploy(DeployArgs),
    /// Deposit for payer keys from one EVM account (minting first with --mint on a dev chain).
    Deposit(DepositArgs),
    /// Recompute epochs from their archived receipts and compare every figure with the API
    /// and the contract; exit 0 only when everything agrees.
    Audit(Box<AuditArgs>),
    /// The arbiter as a service: audit each epoch as its commit lands and dispute a wrong one
    /// inside the challenge window.
    Watch(Box<WatchArgs>),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Tollgate's verifier against ed25519-dalek's verify_batch over the same presigned receipts.
    Verify(BenchVerifyArgs),
    /// The durable end-to-end rate through `tollgate serve` next to the verify-only ceiling.
    E2e(BenchE2eArgs),
    /// The x402 facilitator's POST /settle rate on its own, with the same run's POST /verify
    /// and fleet-protocol rates for the same receipts.
    X402(BenchX402Args),
    /// Eight clients, one of them sending bad signatures: the seven good clients' rate against
    /// the same run's rate with the eighth clean, every verdict checked.
    Abuse(BenchAbuseArgs),
}

#[derive(Debug, Subcommand)]
enum ReceiptsCommand {
    /// Read unsigned receipts (JSON lines) on stdin, write them signed on stdout.
    Sign {
        /// The payer's secret key: 64 hex digits, or a file holding them.
        #[arg(long, env = "TOLLGATE_PAYER_KEY", hide_env_values = true)]
        key: String,
        #[command(flatten)]
        domain: DomainArgs,
    },
    /// Read signed receipts (JSON lines) on stdin, print one verdict per line with its reason
    /// code, judged by the engine's own single-receipt rule.
    Verify {
        #[command(flatten)]
        domain: DomainArgs,
        /// One JSON object per verdict.
        #[arg(long)]
        json: bool,
        /// Session grants (JSON lines of `tollgate grant`): a session-signed receipt is also
        /// judged by its grant, at its own timestamp, its amount alone against the cap and
        /// allowance.
        #[arg(long, value_name = "FILE")]
        grant: Option<PathBuf>,
    },
}

/// Exit codes scripts can rely on: 0 everything fine, 1 some line failed, 2 the command failed.
const EXIT_SOME_FAILED: u8 = 1;
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => Ok(if demo::run(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_SOME_FAILED)
        }),
        Command::Serve(args) => {
            tollgate_tools::serve::run_command(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, json } => {
            let key = keys::generate();
            let public = hex::encode(key.verifying_key().to_bytes());
            let secret = match &out {
                Some(path) => {
                    keys::write_new(path, &key)?;
                    None
                }
                None => Some(hex::encode(key.to_bytes())),
            };
            if json {
                let mut object = serde_json::json!({ "public_key": public });
                if let Some(secret) = &secret {
                    object["secret_key"] = secret.clone().into();
                }
                if let Some(path) = &out {
                    object["secret_key_file"] = path.display().to_string().into();
                }
                println!("{object}");
            } else {
                println!("public key: {public}");
                match (&secret, &out) {
                    (Some(secret), _) => println!("secret key: {secret}"),
                    (None, Some(path)) => println!("secret key written to {}", path.display()),
                    (None, None) => {}
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Receipts(ReceiptsCommand::Sign { key, domain }) => {
            let key = keys::load(&key)?;
            let summary = receipts_json::sign_stream(
                &key,
                &domain.domain(),
                BufReader::new(std::io::stdin().lock()),
                BufWriter::new(std::io::stdout().lock()),
                std::io::stderr().lock(),
            )?;
            Ok(stream_exit(&summary))
        }
        Command::Receipts(ReceiptsCommand::Verify {
            domain,
            json,
            grant,
        }) => {
            let verifier = Verifier::new(domain.domain(), VerifyConfig::default());
            let grants = match &grant {
                Some(path) => GrantBook::load(path, &domain.domain())?,
                None => GrantBook::default(),
            };
            let format = if json {
                VerdictFormat::Json
            } else {
                VerdictFormat::Text
            };
            let summary = receipts_json::verify_stream(
                |receipt| {
                    verifier.verify_one(receipt)?;
                    if grant.is_some() {
                        grants.judge(receipt)?;
                    }
                    Ok(())
                },
                BufReader::new(std::io::stdin().lock()),
                BufWriter::new(std::io::stdout().lock()),
                format,
            )?;
            Ok(stream_exit(&summary))
        }
        Command::Grant(args) => Ok(ExitCode::from(grant::run(&args)?)),
        Command::Query(query) => Ok(query::run(&query)),
        Command::Audit(args) => Ok(audit::run(&args)),
        Command::Watch(args) => {
            audit::watch::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(args) => {
            deploy::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deposit(args) => {
            deposit::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Verify(args)) => {
            bench_verify::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::E2e(args)) => {
            bench_e2e::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::X402(args)) => {
            bench_x402::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Abuse(args)) => {
            bench_abuse::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stream_exit(summary: &receipts_json::StreamSummary) -> ExitCode {
    if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SOME_FAILED)
    }
}
