//! `tollgate deposit`: deposits for payer keys from one EVM account, for dev chains and demos
//! (the depositor becomes each key's exit owner; see the Settlement contract).

use alloy::primitives::Address;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tollgate_engine::PayerKey;
use tollgate_settle::chain::{ContractReader, mask_url};
use tollgate_settle::devchain::{FundParams, fund_payers};

use crate::keys::{Secret, dev_chain_signer};
use crate::node;
use crate::output::{fields, print_answer};

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
    pub key: Option<Secret>,
    /// Payer keys (ed25519 public keys, 64 hex digits) to deposit for.
    #[arg(long = "payer", required = true, num_args = 1..)]
    pub payers: Vec<PayerKey>,
    /// Deposit per payer, in the token's smallest unit.
    #[arg(long)]
    pub amount: u128,
    /// Also top up payer keys whose exit owner is another account. Their owner, not you, can
    /// take such a deposit back; without this flag they are refused.
    #[arg(long)]
    pub to_foreign_owner: bool,
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
    /// Each payer key's exit owner after the deposits, in the order given.
    pub owners: Vec<PayerOwner>,
}

impl DepositOutput {
    /// Aligned `name  value` lines for people, then each payer key's exit owner.
    pub fn render(&self) -> String {
        let owners: Vec<(&str, String)> = self
            .owners
            .iter()
            .map(|entry| (entry.owner.as_str(), entry.payer.clone()))
            .collect();
        format!(
            "{}exit owner of each payer key:\n{}",
            fields(&[
                ("deposits", self.deposits.to_string()),
                ("each", self.amount_each.clone()),
                ("total", self.total.clone()),
                ("last block", self.last_block.to_string()),
            ]),
            fields(&owners)
        )
    }
}

/// The account that may withdraw a payer key's deposit (`payerOwner` onchain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PayerOwner {
    /// The payer key, 64 hex digits.
    pub payer: String,
    /// Its exit owner, `0x` and 40 hex digits.
    pub owner: String,
}

/// Deposits and returns what to print.
pub async fn execute(args: &DepositArgs) -> anyhow::Result<DepositOutput> {
    if args.amount == 0 {
        bail!("--amount must be above 0 (the contract refuses empty deposits)");
    }
    let chain_id = node::chain_id(&args.rpc_url).await?;
    let depositor = dev_chain_signer(args.key.as_ref().map(Secret::expose), chain_id, "--key")?;
    let contract = ContractReader::connect(&args.rpc_url, chain_id, args.contract).await?;
    let owners = owners_after_deposit(&contract, args, depositor.address()).await?;
    let params = FundParams {
        token: contract.token().await?,
        settlement: args.contract,
        amount_each: args.amount,
        mint: args.mint,
    };
    let funded = fund_payers(&args.rpc_url, depositor, &args.payers, &params)
        .await
        .with_context(|| {
            format!(
                "depositing on chain {chain_id} at {}",
                mask_url(&args.rpc_url)
            )
        })?;
    Ok(DepositOutput {
        deposits: funded.deposits,
        amount_each: args.amount.to_string(),
        total: funded.total.to_string(),
        last_block: funded.last_block,
        owners,
    })
}

/// Each payer key's exit owner once `depositor` has deposited: the current owner, or the
/// depositor for a fresh key. Refuses keys another account owns unless `--to-foreign-owner`:
/// the contract lets anyone top up any key, but only its owner can take the deposit back, so a
/// mistyped or reused key would hand the tokens to a stranger.
async fn owners_after_deposit(
    contract: &ContractReader,
    args: &DepositArgs,
    depositor: Address,
) -> anyhow::Result<Vec<PayerOwner>> {
    let mut owners = Vec::with_capacity(args.payers.len());
    let mut foreign = Vec::new();
    for payer in &args.payers {
        let owner = match contract.payer_owner(payer).await? {
            Address::ZERO => depositor,
            owner => owner,
        };
        if owner != depositor {
            foreign.push(format!("{payer} (owner {owner:#x})"));
        }
        owners.push(PayerOwner {
            payer: payer.to_string(),
            owner: format!("{owner:#x}"),
        });
    }
    if !foreign.is_empty() && !args.to_foreign_owner {
        bail!(
            "nothing deposited: payer key {} already belongs to another account than the \
             depositor {depositor:#x}, and only its owner can take a deposit back; pass \
             --to-foreign-owner to top it up anyway",
            foreign.join(", ")
        );
    }
    Ok(owners)
}

/// Runs `tollgate deposit` from a synchronous `main`: prints the table or the JSON object.
pub fn run(args: &DepositArgs) -> anyhow::Result<()> {
    print_answer(execute(args), args.json, DepositOutput::render)
}
