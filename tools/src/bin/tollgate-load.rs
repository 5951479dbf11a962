//! `tollgate-load`: streams signed receipts at a Tollgate server and checks every answer.
//! A thin shell over `tollgate_tools::load`; see `tollgate-load --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::SigningKey;
use tollgate_tools::cli::DomainArgs;
use tollgate_tools::load::check::{self, PayerBalance};
use tollgate_tools::load::client::{ClientTransportConfig, connect};
use tollgate_tools::load::driver::{Options, unix_ms};
use tollgate_tools::load::{Funds, Planner, Workload, report, run_with, workload};

/// Exit code when the run completed but something did not add up: verdict mismatches, failed
/// receipts, or a `--check` difference.
const EXIT_DISAGREEMENT: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load generator for Tollgate: streams signed receipts and checks every verdict",
    after_help = "Exit codes: 0 everything agreed; 1 the run could not be carried out; \
                  2 bad usage; 3 verdict mismatches, failed receipts or --check differences."
)]
struct Args {
    /// Server address (the ingest port).
    #[arg(long, default_value = "127.0.0.1:7402")]
    addr: String,
    /// Receipts to send (default 100000 unless --duration is given).
    #[arg(long)]
    receipts: Option<u64>,
    /// Stop sending after this long: `30s`, `500ms`, `2m` or plain seconds.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Number of payers; their keys are derived from --seed.
    #[arg(long, default_value_t = 1000)]
    payers: u32,
    /// Seed for payer keys, payee addresses and every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of payees.
    #[arg(long, default_value_t = 16)]
    payees: u32,
    /// Zipf exponent of payer popularity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// TCP connections (one client each); a channel always uses the same one.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Receipts per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Batches in flight per connection.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Offered receipts per second over all connections (0 = as fast as the engine acks).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Sign every receipt before the clock starts, so the generator does not compete with the
    /// engine for CPU during the run.
    #[arg(long)]
    presign: bool,
    /// Percent of receipts with a bad signature (expected: bad_signature).
    #[arg(long, default_value_t = 0.0)]
    bad_sig_pct: f64,
    /// Percent of receipts that replay an accepted one (expected: duplicate).
    #[arg(long, default_value_t = 0.0)]
    replay_pct: f64,
    /// Percent of receipts with a nonce far below the window (expected: stale).
    #[arg(long, default_value_t = 0.0)]
    stale_pct: f64,
    /// Percent of receipts for more than the payer's deposit (expected: insufficient_funds).
    /// Needs --deposit.
    #[arg(long, default_value_t = 0.0)]
    overdraft_pct: f64,
    /// Each payer's available balance at the start: an amount, `api` to read it from --check's
    /// server, or `unlimited` for a chainless server (no funds check).
    #[arg(long, default_value = "unlimited")]
    deposit: String,
    /// Amount of each receipt, smallest token unit.
    #[arg(long, default_value_t = 1)]
    amount: u64,
    /// The server's anti-replay window in nonces (an upper bound is enough); stale receipts go two
    /// windows below the channel's highest nonce.
    #[arg(long, default_value_t = 4096)]
    window_nonces: u64,
    /// First nonce of every channel (default: unix ms × 2^20, so later runs use higher nonces).
    #[arg(long)]
    nonce_base: Option<u64>,
    #[command(flatten)]
    domain: DomainArgs,
    /// Client id for the server's HELLO (any value for a server in open mode).
    #[arg(long, env = "TOLLGATE_CLIENT_ID", default_value_t = 0)]
    client_id: u64,
    /// The client's ed25519 secret key, 32 bytes of hex (default: derived from --seed, enough
    /// for a server in open mode).
    #[arg(long, env = "TOLLGATE_CLIENT_KEY", hide_env_values = true)]
    client_key: Option<String>,
    /// Write one JSON line per acked receipt to FILE.
    #[arg(long, value_name = "FILE")]
    acked_log: Option<PathBuf>,
    /// After the run, compare every payer's totals from this HTTP API (e.g.
    /// http://127.0.0.1:7403) with the acks; differences make the exit code 3.
    #[arg(long, value_name = "URL")]
    check: Option<String>,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Write a self-contained HTML page with throughput and latency plots.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else if let Some(h) = text.strip_suffix('h') {
        (h, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text} (try 30s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text}: {e}"))
}

enum DepositFlag {
    Unlimited,
    Amount(u128),
    Api,
}

fn parse_deposit(text: &str) -> anyhow::Result<DepositFlag> {
    Ok(match text {
        "unlimited" => DepositFlag::Unlimited,
        "api" => DepositFlag::Api,
        amount => {
            DepositFlag::Amount(amount.parse().with_context(|| {
                format!("--deposit {amount}: not an amount, `api` or `unlimited`")
            })?)
        }
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_DISAGREEMENT),
        Err(error) => {
            eprintln!("tollgate-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs, reports, and says whether everything agreed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let domain = args.domain.domain();
    let deposit = parse_deposit(&args.deposit)?;
    if matches!(deposit, DepositFlag::Api) && args.check.is_none() {
        bail!("--deposit api reads balances from --check URL: give --check too");
    }
    let receipts = match (args.receipts, args.duration) {
        (Some(n), _) => Some(n),
        (None, None) => Some(100_000),
        (None, Some(_)) => None,
    };
    let payer_keys: Vec<_> = workload::payer_keys(args.seed, args.payers)
        .iter()
        .map(|key| tollgate_engine::PayerKey(key.verifying_key().to_bytes()))
        .collect();
    let before: Option<Vec<PayerBalance>> = match &args.check {
        Some(url) => Some(
            check::fetch_balances(url, &payer_keys)
                .await
                .context("reading balances before the run")?,
        ),
        None => None,
    };
    let funds = match deposit {
        DepositFlag::Unlimited => Funds::Unlimited,
        DepositFlag::Amount(amount) => Funds::Available(vec![amount; args.payers as usize]),
        DepositFlag::Api => Funds::Available(
            before
                .iter()
                .flatten()
                .map(|balance| balance.available)
                .collect(),
        ),
    };
    let timestamp_ms = unix_ms();
    let planner = Planner::new(Workload {
        seed: args.seed,
        receipts,
        payers: args.payers,
        payees: args.payees,
        zipf_exponent: args.zipf,
        amount: args.amount,
        bad_signature_pct: args.bad_sig_pct,
        replay_pct: args.replay_pct,
        stale_pct: args.stale_pct,
        overdraft_pct: args.overdraft_pct,
        window_nonces: args.window_nonces,
        nonce_base: args.nonce_base.unwrap_or(timestamp_ms << 20),
        timestamp_ms,
        domain,
        connections: args.connections,
        funds,
    })?;
    let options = Options {
        batch_receipts: args.batch,
        rate_per_s: args.rate,
        duration: args.duration,
        presign: args.presign,
        batches_in_flight_max: args.in_flight,
        progress: true,
        acked_log: args.acked_log.clone(),
    };
    let client_key = match &args.client_key {
        Some(hex) => SigningKey::from_bytes(
            &tollgate_engine::receipt::parse_hex::<32>(hex).context("--client-key")?,
        ),
        None => SigningKey::from_bytes(&blake3::derive_key(
            "tollgate-load v1 client key",
            &args.seed.to_le_bytes(),
        )),
    };
    let client = ClientTransportConfig {
        addr: args.addr.clone(),
        client_id: args.client_id,
        client_key,
        domain,
        batch_receipts_max: u32::try_from(args.batch).context("--batch")?,
        batches_in_flight_max: u32::try_from(args.in_flight).context("--in-flight")?,
        // Unique per run, so the server's client sessions never mistake this run's batches for a
        // retry of an earlier run's.
        producer_id_base: timestamp_ms << 16,
    };
    let outcome = run_with(planner, &options, |connection| {
        connect(client.clone(), connection)
    })
    .await
    .context("load run")?;

    let mut agreed = outcome.summary.verdict_mismatches == 0 && outcome.summary.failed == 0;
    let mut human = format!(
        "sent {} acked {} failed {} accepted {} rejected {:?}\n\
         {:.0} receipts/s over {:.2} s (presign {:.2} s); ack latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}\n\
         verdict mismatches {}\n",
        outcome.summary.sent,
        outcome.summary.acked,
        outcome.summary.failed,
        outcome.summary.accepted,
        outcome.summary.rejected,
        outcome.summary.receipts_per_s,
        outcome.summary.elapsed_s,
        outcome.presign_s,
        outcome.summary.ack_latency_ms.p50,
        outcome.summary.ack_latency_ms.p99,
        outcome.summary.ack_latency_ms.p999,
        outcome.summary.ack_latency_ms.max,
        outcome.summary.verdict_mismatches,
    );
    for example in &outcome.stats.mismatch_examples {
        human.push_str(&format!("  mismatch: {example}\n"));
    }
    for error in &outcome.stats.errors {
        human.push_str(&format!("  error: {error}\n"));
    }
    if let (Some(url), Some(before)) = (&args.check, &before) {
        let after = check::fetch_balances(url, &outcome.payers)
            .await
            .context("reading balances after the run")?;
        let differences = check::compare(&outcome.payers, before, &after, |index| {
            outcome
                .stats
                .payers
                .get(&index)
                .copied()
                .unwrap_or_default()
        });
        human.push_str(&format!(
            "check against {url}: {} payers, {} differences\n",
            outcome.payers.len(),
            differences.len()
        ));
        for difference in &differences {
            human.push_str(&format!("  {difference}\n"));
        }
        agreed &= differences.is_empty();
    }
    if let Some(path) = &args.report {
        std::fs::write(
            path,
            report::render("tollgate-load", &outcome.summary, &outcome.stats),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        eprint!("{human}");
        println!("{}", serde_json::to_string(&outcome.summary)?);
    } else {
        print!("{human}");
    }
    Ok(agreed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }
}
