//! `tollgate demo`: the whole system on one machine, end to end, checked.
//!
//! A real anvil chain, the Settlement contract (with a real challenge window and an arbiter key
//! separate from the operator's) and its test token deployed, 1,000 payers funded onchain,
//! `tollgate serve` with settlement on over a temporary RocksDB ledger, a million receipts
//! streamed by `tollgate-load` (a few of them bad on purpose) while the arbiter disputes the
//! first epoch it sees committed, an agent paying through a capped session key until its grant
//! refuses it while its payer's deposit still pays (`session`), epochs committed until nothing is pending (the voided amounts
//! committed again), then the engine's numbers read next to the chain's, one payer's exit
//! requested and completed, the numbers compared again, one Merkle proof checked by the contract
//! itself, a payee's withdrawal, and the last epoch commit replayed to show the contract refuses
//! it. Exit 0 only when every number agrees.
//!
//! This file sets the scene and runs the script; [`checks`] holds each check against the chain.

mod checks;
mod session;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail, ensure};
use tollgate_engine::PayerKey;
use tollgate_load::check::{PayerBalance, fetch_balances};
use tollgate_load::child::{self, LoadRun};
use tollgate_load::population::{payee_address, payer_key, payer_keys};
use tollgate_query::QueryClient;
use tollgate_query::model::EpochView;
use tollgate_settle::chain::{ContractReader, DeployParams, deploy};
use tollgate_settle::devchain::{FundParams, fund_payers};

use crate::serve::process::{self, ServerProcess, WorkDir};

use checks::{
    audit_every_epoch, check_recommitted, compare_with_chain, dispute_first_committed,
    last_committed, payee_withdraws, payer_exits, prove_onchain, replay_last_commit,
};

/// Where `npm ci` puts the pinned anvil, relative to the repository root.
const ANVIL_FROM_NPM: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// Flags of `tollgate demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The anvil binary (installed by `npm ci` from the pinned npm package).
    #[arg(long, env = "TOLLGATE_ANVIL", default_value = ANVIL_FROM_NPM)]
    pub anvil: PathBuf,
    /// Payers funded onchain.
    #[arg(long, default_value_t = 1_000)]
    pub payers: u32,
    /// Payees.
    #[arg(long, default_value_t = 16)]
    pub payees: u32,
    /// Receipts streamed.
    #[arg(long, default_value_t = 1_000_000)]
    pub receipts: u64,
    /// Each payer's deposit, in token units (each receipt costs 1).
    #[arg(long, default_value_t = 1_000_000)]
    pub deposit: u128,
    /// Epochs sealed at least this often.
    #[arg(long, default_value_t = 5)]
    pub epoch_secs: u64,
    /// The contract's challenge window: how long the arbiter may dispute a complete epoch (and
    /// the least time between two commits, so it must be shorter than `--epoch-secs`).
    #[arg(long, default_value_t = 3)]
    pub window_secs: u64,
    /// The contract's payer exit delay. The demo moves anvil's clock past it instead of waiting.
    #[arg(long, default_value_t = 3_600)]
    pub withdrawal_delay_secs: u64,
    /// Receipts per second offered (0 = as fast as the engine acks).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Generator connections.
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// Seed of payer keys, payees and the workload.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the ledger and the server log here instead of a temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Runs the demo; `Ok(false)` when it ran but some number disagreed.
pub fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

fn step(text: &str) {
    println!("\n== {text}");
}

async fn demo(args: &DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("locating the tollgate binary")?;
    let load_binary = child::sibling_binary()?;
    ensure!(
        args.anvil.is_file(),
        "no anvil at {}: run `npm ci` at the repository root (or `make demo`, which does)",
        args.anvil.display()
    );
    let work_dir = WorkDir::given_or_temporary(args.work_dir.as_deref())?;

    step("a chain: anvil, with the Settlement contract and its test token");
    let anvil = spawn_anvil(args)?;
    let rpc_url = anvil.endpoint();
    let operator = dev_key(&anvil, 0)?;
    // The funder makes every payer's first deposit, so it owns their exits.
    let funder = dev_key(&anvil, 1)?;
    let arbiter = dev_key(&anvil, 2)?;
    let params = DeployParams {
        challenge_window_secs: args.window_secs,
        withdrawal_delay_secs: args.withdrawal_delay_secs,
        arbiter: Some(arbiter.address()),
        unsafe_operator_can_take_deposits: false,
    };
    let deployed = deploy(&rpc_url, operator.clone(), None, &params).await?;
    println!(
        "anvil {rpc_url} (chain {}); token {}; Settlement {} at block {}\n\
         operator {}, arbiter {}, challenge window {} s, payer exit delay {} s",
        deployed.chain_id,
        deployed.token,
        deployed.settlement,
        deployed.block,
        deployed.operator,
        deployed.arbiter,
        args.window_secs,
        args.withdrawal_delay_secs
    );

    step(&format!(
        "{} payers funded onchain, {} tokens each",
        args.payers, args.deposit
    ));
    let payers: Vec<PayerKey> = payer_keys(args.seed, args.payers)
        .iter()
        .map(|key| PayerKey(key.verifying_key().to_bytes()))
        .collect();
    let funding_started = Instant::now();
    let funded = fund_payers(
        &rpc_url,
        funder.clone(),
        &payers,
        &FundParams {
            token: deployed.token,
            settlement: deployed.settlement,
            amount_each: args.deposit,
            mint: true,
        },
    )
    .await?;
    println!(
        "{} deposits, {} tokens, in {:.1} s",
        funded.deposits,
        funded.total,
        funding_started.elapsed().as_secs_f64()
    );

    step("the engine: tollgate serve, settlement on, RocksDB in a temporary directory");
    let contract = format!("{}", deployed.settlement);
    // Epochs by size as well as by time, so even a fast run commits several.
    let epoch_receipts = (args.receipts / 4).max(1);
    let mut server_args = process::dev_chain_args(&rpc_url, &deployed, &work_dir.data());
    server_args.extend(
        [
            "--funds-poll-ms",
            "200",
            "--epoch-secs",
            &args.epoch_secs.to_string(),
            "--epoch-receipts",
            &epoch_receipts.to_string(),
        ]
        .map(str::to_owned),
    );
    let operator_key = hex::encode(operator.to_bytes());
    let log = work_dir.log();
    let server = ServerProcess::start(
        &exe,
        &server_args,
        Some(&log),
        // The key goes through the environment, never the command line `ps` shows.
        &[("TOLLGATE_OPERATOR_KEY", &operator_key)],
    )?;
    let api_url = format!("http://{}", server.http);
    println!(
        "fleet port {}, API {api_url}, log {}",
        server.listen,
        log.display()
    );

    step(&format!(
        "{} receipts from {} payers to {} payees, some bad on purpose; the arbiter disputes the \
         first epoch it sees committed",
        args.receipts, args.payers, args.payees
    ));
    let query = QueryClient::new(&api_url)?;
    let watchtower = tokio::spawn(dispute_first_committed(
        rpc_url.clone(),
        arbiter,
        deployed.settlement,
        query.clone(),
    ));
    let load = {
        let (load_binary, server_listen, server_http) =
            (load_binary.clone(), server.listen, server.http);
        let (args, contract) = (args.clone(), contract.clone());
        tokio::task::spawn_blocking(move || {
            run_load(&args, &load_binary, server_listen, server_http, &contract)
        })
        .await??
    };
    let summary = &load.summary;
    println!(
        "{:.0} receipts/s; sent {}, acked {}, accepted {}, rejected {}, verdict mismatches {}",
        summary.receipts_per_s,
        summary.sent,
        summary.acked,
        summary.accepted,
        render_reasons(&summary.rejected),
        summary.verdict_mismatches
    );
    // tollgate-load exits non-zero on any verdict mismatch or --check difference.
    let mut agreed = load.status.success();

    step(
        "an agent session: payer 0 delegates a session key capped at a few calls; the agent pays \
         until the grant refuses it",
    );
    let domain = tollgate_engine::Domain {
        chain_id: deployed.chain_id,
        contract: contract.parse()?,
    };
    agreed &= session::agent_runs_out_of_cap(
        args.seed,
        &payer_key(args.seed, 0),
        payee_address(args.seed, 0),
        server.listen,
        domain,
        &api_url,
    )
    .await?;

    let disputed = watchtower.await??;

    step("settlement: epochs committed until nothing is pending, the disputed one included");
    let balances = wait_until_settled(&api_url, &payers, &query, args.epoch_secs).await?;
    let epochs = query.epochs(100).await?.epochs;
    print_epochs(&epochs);
    let committed = epochs
        .iter()
        .filter(|epoch| epoch.status.as_str() == "committed")
        .count();
    if committed < 2 {
        println!("only {committed} epoch(s) committed; the demo needs at least two");
        agreed = false;
    }
    agreed &= check_recommitted(disputed, &epochs, &balances);

    step("the engine's balances next to the chain's, once the last epoch is final");
    let chain = ContractReader::connect(&rpc_url, deployed.chain_id, deployed.settlement).await?;
    // Payees are paid only from final epochs: the last one's window must end first.
    let last = last_committed(&epochs)?.epoch;
    if !wait_for(|| async { Ok(chain.is_final(last).await?) }).await? {
        println!("epoch {last} never turned final  WRONG");
        agreed = false;
    }
    agreed &= compare_with_chain(args, &payers, &balances, &query, &chain).await?;

    step("a payer exits: withdrawal requested, the delay passes, withdrawal completed");
    agreed &= payer_exits(&rpc_url, funder, &deployed, &payers, &query, &chain).await?;
    let balances = fetch_balances(&api_url, &payers).await?;
    agreed &= compare_with_chain(args, &payers, &balances, &query, &chain).await?;

    step("a proof from the API, checked by the contract's verifyLeaf");
    // The exit moved the chain's clock past every challenge window: every epoch is final.
    let epochs = query.epochs(100).await?.epochs;
    agreed &= prove_onchain(args, &payers, &balances, &epochs, &query, &chain).await?;

    step(
        "tollgate audit: every epoch recomputed from its archived receipts, against the API and the chain",
    );
    agreed &= audit_every_epoch(&api_url, &rpc_url, &deployed).await?;

    step("a payee withdraws; the last commit, replayed, cannot land again");
    agreed &= payee_withdraws(args, &rpc_url, dev_key(&anvil, 1)?, &query, &chain).await?;
    agreed &= replay_last_commit(&epochs, &chain).await?;

    let status = server.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "tollgate serve exited with {status}");
    drop(anvil);
    println!(
        "\n{} in {:.0} s: {}",
        if agreed { "AGREED" } else { "DISAGREED" },
        started.elapsed().as_secs_f64(),
        if agreed {
            "every balance, epoch and proof matches the chain"
        } else {
            "see the lines above"
        }
    );
    Ok(agreed)
}

fn spawn_anvil(args: &DemoArgs) -> anyhow::Result<AnvilInstance> {
    // A block every second besides one per transaction, as on a live chain: the contract's
    // clock is the block time, and a challenge window only ends when blocks keep coming.
    Anvil::at(&args.anvil)
        .host("127.0.0.1")
        .port(0u16)
        .block_time(1)
        .arg("--mixed-mining")
        .try_spawn()
        .with_context(|| format!("starting {}", args.anvil.display()))
}

fn dev_key(anvil: &AnvilInstance, index: usize) -> anyhow::Result<PrivateKeySigner> {
    let key = anvil
        .keys()
        .get(index)
        .with_context(|| format!("anvil has no dev key {index}"))?;
    Ok(PrivateKeySigner::from(key.clone()))
}

fn run_load(
    args: &DemoArgs,
    load_binary: &std::path::Path,
    listen: std::net::SocketAddr,
    http: std::net::SocketAddr,
    contract: &str,
) -> anyhow::Result<LoadRun> {
    let flags = [
        ("--addr", listen.to_string()),
        ("--check", format!("http://{http}")),
        ("--deposit", "api".to_owned()),
        ("--receipts", args.receipts.to_string()),
        ("--payers", args.payers.to_string()),
        ("--payees", args.payees.to_string()),
        ("--connections", args.connections.to_string()),
        ("--seed", args.seed.to_string()),
        ("--contract", contract.to_owned()),
        ("--rate", args.rate.to_string()),
        ("--bad-sig-pct", "0.1".to_owned()),
        ("--replay-pct", "0.1".to_owned()),
        ("--stale-pct", "0.05".to_owned()),
        ("--overdraft-pct", "0.05".to_owned()),
    ];
    let mut load_args: Vec<String> = flags
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
    load_args.push("--presign".to_owned());
    Ok(child::run(load_binary, &load_args)?)
}

fn render_reasons(rejected: &BTreeMap<String, u64>) -> String {
    let total: u64 = rejected.values().sum();
    let parts: Vec<String> = rejected
        .iter()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// Polls until no payer has anything pending (every accepted receipt is in a committed epoch).
async fn wait_until_settled(
    api_url: &str,
    payers: &[PayerKey],
    query: &QueryClient,
    epoch_secs: u64,
) -> anyhow::Result<Vec<PayerBalance>> {
    let deadline = Instant::now() + Duration::from_secs(epoch_secs * 6 + 120);
    loop {
        let balances = fetch_balances(api_url, payers).await?;
        let pending: u128 = balances.iter().map(|balance| balance.pending).sum();
        let epochs = query.epochs(100).await?.epochs;
        let uncommitted = epochs
            .iter()
            .filter(|epoch| matches!(epoch.status.as_str(), "sealed" | "submitted"))
            .count();
        if pending == 0 && uncommitted == 0 {
            return Ok(balances);
        }
        if Instant::now() >= deadline {
            bail!("still {pending} pending and {uncommitted} epochs not committed; giving up");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_epochs(epochs: &[EpochView]) {
    println!(
        "{:>5}  {:<9}  {:>8}  {:>9}  {:>6}  TX",
        "EPOCH", "STATUS", "RECEIPTS", "AMOUNT", "BLOCK"
    );
    let mut sorted: Vec<&EpochView> = epochs.iter().collect();
    sorted.sort_by_key(|epoch| epoch.epoch);
    for epoch in sorted {
        println!(
            "{:>5}  {:<9}  {:>8}  {:>9}  {:>6}  {}",
            epoch.epoch,
            epoch.status.as_str(),
            epoch.receipts,
            epoch.debit_total,
            epoch
                .block
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
            epoch.tx_hash.as_deref().unwrap_or("-")
        );
    }
}

/// Polls `done` every 200 ms for up to a minute; false when it never held.
pub(crate) async fn wait_for<F: std::future::Future<Output = anyhow::Result<bool>>>(
    mut done: impl FnMut() -> F,
) -> anyhow::Result<bool> {
    for _ in 0..300 {
        if done().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}
