//! `tollgate-load`'s command line: its flags, and one run from the `--check` baseline through the
//! comparison to whether everything agreed (exit code [`EXIT_DISAGREEMENT`] when not). The binary
//! only parses and maps the answer to an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use ed25519_dalek::SigningKey;
use thiserror::Error;
use tollgate_engine::{Address, Domain};
use tollgate_query::QueryError;

use crate::check::{self, PayerBalance};
use crate::client::{ClientTransportConfig, connect};
use crate::driver::{Options, unix_ms};
use crate::{
    Funds, LoadError, Planner, Sessions, Workload, WorkloadError, population, report, run_with,
};

/// Exit code when the run completed but something did not add up: verdict mismatches, failed
/// receipts, or a `--check` difference.
pub const EXIT_DISAGREEMENT: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Load generator for Tollgate: streams signed receipts and checks every verdict",
    after_help = "Exit codes: 0 everything agreed; 1 the run could not be carried out; \
                  2 bad usage; 3 verdict mismatches, failed receipts or --check differences."
)]
pub struct LoadArgs {
    /// Server address (the ingest port).
    #[arg(long, default_value = "127.0.0.1:7402")]
    pub addr: String,
    /// Receipts to send (default 100000 unless --duration is given).
    #[arg(long)]
    pub receipts: Option<u64>,
    /// Stop sending after this long: `30s`, `500ms`, `2m` or plain seconds.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Number of payers; their keys are derived from --seed.
    #[arg(long, default_value_t = 1000)]
    pub payers: u32,
    /// Seed for payer keys, payee addresses and every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of payees.
    #[arg(long, default_value_t = 16)]
    pub payees: u32,
    /// Zipf exponent of payer popularity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// TCP connections (one client each); a channel always uses the same one.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Receipts per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Batches in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Offered receipts per second over all connections (0 = as fast as the engine acks).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sign every receipt before the clock starts, so the generator does not compete with the
    /// engine for CPU during the run.
    #[arg(long)]
    pub presign: bool,
    /// Percent of receipts with a bad signature (expected: bad_signature).
    #[arg(long, default_value_t = 0.0)]
    pub bad_sig_pct: f64,
    /// Percent of receipts that replay an accepted one (expected: duplicate).
    #[arg(long, default_value_t = 0.0)]
    pub replay_pct: f64,
    /// Percent of receipts with a nonce far below the window (expected: stale).
    #[arg(long, default_value_t = 0.0)]
    pub stale_pct: f64,
    /// Percent of receipts for more than the payer's deposit (expected: insufficient_funds).
    /// Needs --deposit.
    #[arg(long, default_value_t = 0.0)]
    pub overdraft_pct: f64,
    /// Session keys per payer: each payer grants N session keys (registered over GRANT before
    /// the run) and every receipt is signed by one of them, charged to the payer. 0 signs with
    /// the payers' own keys.
    #[arg(long, default_value_t = 0)]
    pub sessions_per_payer: u32,
    /// Percent of session receipts for more than the grant's cap (expected: over_grant_cap).
    /// Needs --sessions-per-payer.
    #[arg(long, default_value_t = 0.0)]
    pub over_cap_pct: f64,
    /// Percent of receipts signed by a session whose grant expired (expected: grant_expired).
    #[arg(long, default_value_t = 0.0)]
    pub expired_pct: f64,
    /// Percent of receipts signed by a session revoked over REVOKE during the run, sent after the
    /// revocation is durable (expected: grant_revoked).
    #[arg(long, default_value_t = 0.0)]
    pub revoked_pct: f64,
    /// Percent of session receipts for a payee outside the grant's scope (expected:
    /// payee_not_in_grant). Needs at least two payees.
    #[arg(long, default_value_t = 0.0)]
    pub out_of_scope_pct: f64,
    /// Each payer's available balance at the start: an amount, `api` to read it from --check's
    /// server, or `unlimited` for a chainless server (no funds check).
    #[arg(long, default_value = "unlimited")]
    pub deposit: String,
    /// Amount of each receipt, smallest token unit.
    #[arg(long, default_value_t = 1)]
    pub amount: u64,
    /// The server's anti-replay window in nonces (an upper bound is enough); stale receipts go two
    /// windows below the channel's highest nonce.
    #[arg(long, default_value_t = 4096)]
    pub window_nonces: u64,
    /// First nonce of every channel (default: unix ms × 2^20, so later runs use higher nonces).
    #[arg(long)]
    pub nonce_base: Option<u64>,
    #[command(flatten)]
    pub domain: DomainArgs,
    /// Client id for the server's HELLO (any value for a server in open mode).
    #[arg(long, env = "TOLLGATE_CLIENT_ID", default_value_t = 0)]
    pub client_id: u64,
    /// The client's ed25519 secret key, 32 bytes of hex (default: derived from --seed, enough
    /// for a server in open mode).
    #[arg(long, env = "TOLLGATE_CLIENT_KEY", hide_env_values = true)]
    pub client_key: Option<String>,
    /// Write one JSON line per acked receipt to FILE.
    #[arg(long, value_name = "FILE")]
    pub acked_log: Option<PathBuf>,
    /// After the run, compare every payer's totals from this HTTP API (e.g.
    /// http://127.0.0.1:7403) with the acks; differences make the exit code 3.
    #[arg(long, value_name = "URL")]
    pub check: Option<String>,
    /// Print the summary as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a self-contained HTML page with throughput and latency plots.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

/// anvil's chain id: what a dev setup signs for unless told otherwise.
const CHAIN_ID_DEFAULT: u64 = 31_337;

/// The deployment receipts are signed for: part of every signing message.
#[derive(Debug, Clone, Args)]
pub struct DomainArgs {
    /// EVM chain id of the settlement chain (31337 is anvil's).
    #[arg(long, env = "TOLLGATE_CHAIN_ID", default_value_t = CHAIN_ID_DEFAULT)]
    pub chain_id: u64,
    /// Address of the settlement contract (0x + 40 hex digits).
    #[arg(long, env = "TOLLGATE_CONTRACT", default_value_t = Address::default())]
    pub contract: Address,
}

impl Default for DomainArgs {
    /// What the flags default to: anvil's chain id and the zero address.
    fn default() -> Self {
        Self {
            chain_id: CHAIN_ID_DEFAULT,
            contract: Address::default(),
        }
    }
}

impl DomainArgs {
    /// The signing domain these arguments name.
    pub fn domain(&self) -> Domain {
        Domain {
            chain_id: self.chain_id,
            contract: self.contract,
        }
    }
}

/// `30s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// Why a run could not be carried out (as opposed to a run whose answers disagreed). Each
/// message is what the flag-by-flag context said before the run moved out of the binary; print
/// the chain of sources after it.
#[derive(Debug, Error)]
pub enum RunError {
    /// `--deposit` is neither an amount nor a keyword.
    #[error("--deposit {text}: not an amount, `api` or `unlimited`")]
    Deposit {
        /// the flag's value
        text: String,
        /// why it is not an amount
        #[source]
        source: std::num::ParseIntError,
    },
    /// `--deposit api` needs the server `--check` reads.
    #[error("--deposit api reads balances from --check URL: give --check too")]
    DepositApiWithoutCheck,
    /// `--client-key` is not 32 bytes of hex.
    #[error("--client-key")]
    ClientKey(#[source] tollgate_engine::receipt::HexError),
    /// A count flag does not fit the protocol's u32.
    #[error("{flag}")]
    TooLarge {
        /// the flag
        flag: &'static str,
        /// the conversion's complaint
        #[source]
        source: std::num::TryFromIntError,
    },
    /// The workload flags do not make a workload.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The `--check` baseline could not be read.
    #[error("reading balances before the run")]
    Before(#[source] QueryError),
    /// The load run itself failed.
    #[error("load run")]
    Load(#[source] LoadError),
    /// The `--check` balances after the run could not be read.
    #[error("reading balances after the run")]
    After(#[source] QueryError),
    /// `--report` could not be written.
    #[error("writing {}", path.display())]
    Report {
        /// the file
        path: PathBuf,
        /// why
        #[source]
        source: std::io::Error,
    },
    /// The `--json` summary could not be serialised.
    #[error("printing the summary")]
    Summary(#[source] serde_json::Error),
    /// A session's grant could not be registered before the run.
    #[error("registering the sessions' grants: {0}")]
    Grants(String),
}

enum DepositFlag {
    Unlimited,
    Amount(u128),
    Api,
}

fn parse_deposit(text: &str) -> Result<DepositFlag, RunError> {
    Ok(match text {
        "unlimited" => DepositFlag::Unlimited,
        "api" => DepositFlag::Api,
        amount => DepositFlag::Amount(amount.parse().map_err(|source| RunError::Deposit {
            text: amount.to_owned(),
            source,
        })?),
    })
}

/// Grants the server must hold at once per connection: enough to keep every connection's
/// GRANTs pipelined.
const GRANTS_IN_FLIGHT: usize = 64;

/// Registers `grants` over GRANT frames on `connections` connections of their own, before the
/// clock starts. A grant the server already holds is accepted again (the grants are fixed by the
/// seed); one refused as `revoked` is a revoked session of an earlier run with this seed, whose
/// receipts are refused `grant_revoked` all the same.
async fn register_grants(
    client: &ClientTransportConfig,
    connections: u32,
    grants: Vec<tollgate_engine::grant::SignedGrant>,
) -> Result<(), RunError> {
    use futures::StreamExt;
    if grants.is_empty() {
        return Ok(());
    }
    let mut clients = Vec::new();
    for index in 0..connections.max(1) {
        // Producer ids past the run's own: these connections submit nothing.
        let producer = u32::MAX - index;
        clients.push(
            connect(client.clone(), producer)
                .await
                .map_err(|e| RunError::Grants(e.to_string()))?,
        );
    }
    let outcomes: Vec<_> = futures::stream::iter(grants.iter().enumerate())
        .map(|(index, grant)| clients[index % clients.len()].grant(grant))
        .buffer_unordered(GRANTS_IN_FLIGHT * clients.len())
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(refused)) if refused.name() == "revoked" => {}
            Ok(Err(refused)) => return Err(RunError::Grants(refused.to_string())),
            Err(error) => return Err(RunError::Grants(error.to_string())),
        }
    }
    for client in clients {
        client
            .close()
            .await
            .map_err(|e| RunError::Grants(e.to_string()))?;
    }
    Ok(())
}

/// Runs, prints the report, and says whether everything agreed.
pub async fn run(args: LoadArgs) -> Result<bool, RunError> {
    let domain = args.domain.domain();
    let deposit = parse_deposit(&args.deposit)?;
    if matches!(deposit, DepositFlag::Api) && args.check.is_none() {
        return Err(RunError::DepositApiWithoutCheck);
    }
    let receipts = match (args.receipts, args.duration) {
        (Some(n), _) => Some(n),
        (None, None) => Some(100_000),
        (None, Some(_)) => None,
    };
    let payer_keys: Vec<_> = population::payer_keys(args.seed, args.payers)
        .iter()
        .map(|key| tollgate_engine::PayerKey(key.verifying_key().to_bytes()))
        .collect();
    let before: Option<Vec<PayerBalance>> = match &args.check {
        Some(url) => Some(
            check::fetch_balances(url, &payer_keys)
                .await
                .map_err(RunError::Before)?,
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
        sessions: Sessions {
            per_payer: args.sessions_per_payer,
            over_cap_pct: args.over_cap_pct,
            expired_pct: args.expired_pct,
            revoked_pct: args.revoked_pct,
            out_of_scope_pct: args.out_of_scope_pct,
        },
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
            &tollgate_engine::receipt::parse_hex::<32>(hex).map_err(RunError::ClientKey)?,
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
        batch_receipts_max: u32::try_from(args.batch).map_err(|source| RunError::TooLarge {
            flag: "--batch",
            source,
        })?,
        batches_in_flight_max: u32::try_from(args.in_flight).map_err(|source| {
            RunError::TooLarge {
                flag: "--in-flight",
                source,
            }
        })?,
        // Unique per run, so the server's client sessions never mistake this run's batches for a
        // retry of an earlier run's.
        producer_id_base: timestamp_ms << 16,
    };
    register_grants(&client, args.connections, planner.grants()).await?;
    let outcome = run_with(planner, &options, |connection| {
        connect(client.clone(), connection)
    })
    .await
    .map_err(RunError::Load)?;

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
            .map_err(RunError::After)?;
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
        .map_err(|source| RunError::Report {
            path: path.clone(),
            source,
        })?;
    }
    if args.json {
        eprint!("{human}");
        println!(
            "{}",
            serde_json::to_string(&outcome.summary).map_err(RunError::Summary)?
        );
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
