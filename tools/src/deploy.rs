//! `tollgate deploy`: deploys the Settlement contract (and, on a dev chain without `--token`, the
//! test token) and prints what `tollgate serve` needs to settle on it: the addresses, the chain id
//! and the deployment block the deposit watcher starts from.

use alloy::primitives::Address;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Serialize;
use tollgate_settle::chain::{DeployParams, DeployedAddresses, is_dev_chain, mask_url};

use crate::keys::{Secret, dev_chain_signer};
use crate::node;
use crate::output::{fields, print_answer};

/// `tollgate deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// JSON-RPC URL of the settlement chain.
    #[arg(long, env = "TOLLGATE_RPC_URL")]
    pub rpc_url: String,
    /// The operator's EVM secret key (64 hex digits) or a file holding it; prefer the file or the
    /// environment over the command line. The deployer becomes the contract's operator. On anvil
    /// (chain id 31337) its first dev account is used when no key is given.
    #[arg(long, env = "TOLLGATE_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<Secret>,
    /// The settlement token (an ERC20). Required except on a dev chain, where a test token is
    /// deployed when it is left out.
    #[arg(long)]
    pub token: Option<Address>,
    /// Seconds an epoch stays open to dispute. Defaults to 0 on a dev chain; required elsewhere,
    /// and above 0 (see --unsafe-operator-can-take-deposits).
    #[arg(long)]
    pub challenge_window_secs: Option<u64>,
    /// Seconds between a payer's withdrawal request and its completion; must exceed the challenge
    /// window plus the engine's epoch interval. Defaults to 120 on a dev chain; required elsewhere.
    #[arg(long)]
    pub withdrawal_delay_secs: Option<u64>,
    /// The arbiter allowed to dispute epochs (an independent watchtower). Defaults to the
    /// operator on dev chains; required elsewhere, and not the operator itself (see
    /// --unsafe-operator-can-take-deposits).
    #[arg(long)]
    pub arbiter: Option<Address>,
    /// Deploy on a chain that is not a dev chain although nobody can stop the operator: a zero
    /// challenge window, or no independent arbiter (the operator becomes its own). The operator
    /// can then debit any payer into a payee it controls; payers must trust it with their
    /// deposits. Named for that consequence, so nobody passes it by accident.
    #[arg(long)]
    pub unsafe_operator_can_take_deposits: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `tollgate deploy` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployOutput {
    /// Chain id the contracts live on.
    pub chain_id: u64,
    /// The settlement token.
    pub token: String,
    /// True when `token` is a test token deployed just now.
    pub test_token: bool,
    /// The Settlement contract.
    pub settlement: String,
    /// The operator the contract accepts commits from.
    pub operator: String,
    /// The arbiter that may dispute epochs.
    pub arbiter: String,
    /// The contract's challenge window.
    pub challenge_window_secs: u64,
    /// The contract's payer withdrawal delay.
    pub withdrawal_delay_secs: u64,
    /// Block that included the Settlement deployment: where the deposit watcher starts.
    pub block: u64,
}

fn address_text(address: Address) -> String {
    format!("{address:#x}")
}

impl DeployOutput {
    fn new(deployed: &DeployedAddresses, params: &DeployParams) -> Self {
        Self {
            chain_id: deployed.chain_id,
            token: address_text(deployed.token),
            test_token: deployed.test_token,
            settlement: address_text(deployed.settlement),
            operator: address_text(deployed.operator),
            arbiter: address_text(deployed.arbiter),
            challenge_window_secs: params.challenge_window_secs,
            withdrawal_delay_secs: params.withdrawal_delay_secs,
            block: deployed.block,
        }
    }

    /// Aligned `name  value` lines for people.
    pub fn render(&self) -> String {
        let token = if self.test_token {
            format!("{} (test token, deployed now)", self.token)
        } else {
            self.token.clone()
        };
        fields(&[
            ("chain id", self.chain_id.to_string()),
            ("settlement", self.settlement.clone()),
            ("token", token),
            ("operator", self.operator.clone()),
            ("arbiter", self.arbiter.clone()),
            (
                "challenge window",
                format!("{} s", self.challenge_window_secs),
            ),
            (
                "withdrawal delay",
                format!("{} s", self.withdrawal_delay_secs),
            ),
            ("deployed in block", self.block.to_string()),
        ])
    }
}

/// Constructor parameters: dev defaults on a dev chain; a real chain must choose its own.
fn deploy_params(args: &DeployArgs, chain_id: u64) -> anyhow::Result<DeployParams> {
    let dev = DeployParams::dev();
    let is_dev = is_dev_chain(chain_id);
    let pick = |given: Option<u64>, default: u64, flag: &str| match given {
        Some(value) => Ok(value),
        None if is_dev => Ok(default),
        None => Err(anyhow!(
            "chain {chain_id} is not a dev chain: pass {flag} (no default outside dev chains)"
        )),
    };
    let params = DeployParams {
        challenge_window_secs: pick(
            args.challenge_window_secs,
            dev.challenge_window_secs,
            "--challenge-window-secs",
        )?,
        withdrawal_delay_secs: pick(
            args.withdrawal_delay_secs,
            dev.withdrawal_delay_secs,
            "--withdrawal-delay-secs",
        )?,
        arbiter: args.arbiter,
        unsafe_operator_can_take_deposits: args.unsafe_operator_can_take_deposits,
    };
    if params.withdrawal_delay_secs <= params.challenge_window_secs {
        bail!(
            "--withdrawal-delay-secs ({}) must exceed --challenge-window-secs ({})",
            params.withdrawal_delay_secs,
            params.challenge_window_secs
        );
    }
    Ok(params)
}

/// Deploys and returns what to print.
pub async fn execute(args: &DeployArgs) -> anyhow::Result<DeployOutput> {
    let chain_id = node::chain_id(&args.rpc_url).await?;
    let params = deploy_params(args, chain_id)?;
    let operator = dev_chain_signer(
        args.operator_key.as_ref().map(Secret::expose),
        chain_id,
        "--operator-key",
    )?;
    if let Some(problem) = params.operator_unchecked(chain_id, operator.address())
        && params.unsafe_operator_can_take_deposits
    {
        eprintln!(
            "tollgate: WARNING: --unsafe-operator-can-take-deposits: on chain {chain_id} {problem}; \
             the operator can debit any payer into a payee it controls"
        );
    }
    let deployed = tollgate_settle::deploy(&args.rpc_url, operator, args.token, &params)
        .await
        .with_context(|| {
            format!(
                "deploying on chain {chain_id} at {}",
                mask_url(&args.rpc_url)
            )
        })?;
    Ok(DeployOutput::new(&deployed, &params))
}

/// Runs `tollgate deploy` from a synchronous `main`: prints the table or the JSON object.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    print_answer(execute(args), args.json, DeployOutput::render)
}
