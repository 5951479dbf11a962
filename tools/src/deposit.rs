//! `tollgate deposit`: deposits for payer keys from one EVM account, for dev chains and demos
//! (the depositor becomes each key's exit owner; see the Settlement contract).

use alloy::primitives::Address;
use alloy::providers::Provider;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Serialize;
use tollgate_engine::PayerKey;
use tollgate_settle::chain::{ContractReader, FundParams, fund_payers, read_provider};

use crate::deploy::{dev_chain_signer, one_line, root_cause};

/// `tollgate deposit`.
#[derive(Debug, Clone, Args)]
pub struct DepositArgs {
    /// JSON-RPC URL of the settlement chain.
    #[arg(long, env = "TOLLGATE_RPC_URL")]
    pub rpc_url: String,
    /// The Settlement contract.
    #[arg(long, env = "TOLLGATE_CONTRACT")]
    pub contract: Address,
    /// The depositor's EVM secret key (64 hex digits) or a file holding it; it becomes each
    /// payer key's exit owner. On anvil (chain id 31337) its first dev account is used when none
    /// is given.
    #[arg(long, env = "TOLLGATE_DEPOSITOR_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Payer keys (ed25519 public keys, 64 hex digits) to deposit for.
    #[arg(long = "payer", required = true, num_args = 1..)]
    pub payers: Vec<PayerKey>,
    /// Deposit per payer, in the token's smallest unit.
    #[arg(long)]
    pub amount: u128,
    /// Mint the tokens first (the dev chain's test token lets anyone mint).
    #[arg(long)]
    pub mint: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `tollgate deposit` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DepositOutput {
    /// Deposits made, one per payer key.
    pub deposits: usize,
    /// Deposit per payer, a decimal string.
    pub amount_each: String,
    /// Tokens deposited in all, a decimal string.
    pub total: String,
    /// Highest block holding one of the deposits.
    pub last_block: u64,
}

/// Deposits and returns what to print.
pub async fn execute(args: &DepositArgs) -> anyhow::Result<DepositOutput> {
    if args.amount == 0 {
        bail!("--amount must be above 0 (the contract refuses empty deposits)");
    }
    let provider = read_provider(&args.rpc_url)?;
    let chain_id = provider.get_chain_id().await.map_err(|e| {
        anyhow!(
            "cannot reach the node at {}: {}",
            args.rpc_url,
            root_cause(&e)
        )
    })?;
    let depositor = dev_chain_signer(args.key.as_deref(), chain_id, "--key")?;
    let contract = ContractReader::connect(&args.rpc_url, chain_id, args.contract).await?;
    let params = FundParams {
        token: contract.token().await?,
        settlement: args.contract,
        amount_each: args.amount,
        mint: args.mint,
    };
    let funded = fund_payers(&args.rpc_url, depositor, &args.payers, &params)
        .await
        .with_context(|| format!("depositing on chain {chain_id} at {}", args.rpc_url))?;
    Ok(DepositOutput {
        deposits: funded.deposits,
        amount_each: args.amount.to_string(),
        total: funded.total.to_string(),
        last_block: funded.last_block,
    })
}

/// Runs `tollgate deposit` from a synchronous `main`: prints the table or the JSON object.
pub fn run(args: &DepositArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let output = runtime
        .block_on(execute(args))
        .map_err(|error| one_line(&error))?;
    if args.json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        print!(
            "{}",
            crate::api::cli::fields(&[
                ("deposits", output.deposits.to_string()),
                ("each", output.amount_each.clone()),
                ("total", output.total.clone()),
                ("last block", output.last_block.to_string()),
            ])
        );
    }
    Ok(())
}
