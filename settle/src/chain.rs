//! Connecting to the settlement chain and deploying the contracts.

use alloy::{
    primitives::{Address, TxHash},
    providers::{DynProvider, PendingTransactionError, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    transports::http::reqwest::Url,
};

use crate::contract::{Settlement, TestToken};

/// Chain ids of local development chains (anvil, hardhat, ganache), where `deploy` may create the
/// test token and a zero challenge window is acceptable.
pub const DEV_CHAIN_IDS: [u64; 2] = [31_337, 1_337];

/// Errors talking to the chain. [`ChainError::is_transient`] tells a caller whether retrying later
/// can help.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC URL does not parse.
    #[error("invalid rpc url {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The node could not be reached, timed out, or answered with an error or garbage.
    #[error("rpc: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
    /// The node serves another chain than the one configured (wrong URL or wrong deployment).
    #[error("chain id mismatch: configured {expected}, node reports {actual}")]
    ChainIdMismatch {
        /// Chain id from the configuration.
        expected: u64,
        /// Chain id the node reports.
        actual: u64,
    },
    /// No contract code at the configured address on this chain.
    #[error("no contract code at {0}")]
    NoContract(Address),
    /// The operator key is not the one the contract accepts commits from.
    #[error("operator key {key} is not the contract's operator {contract_operator}")]
    NotOperator {
        /// The contract's operator.
        contract_operator: Address,
        /// The address of the configured key.
        key: Address,
    },
    /// `deploy` without a token on a chain that is not a dev chain: a real deployment must name its
    /// settlement token.
    #[error("chain {0} is not a dev chain: pass the settlement token address")]
    TokenRequired(u64),
    /// A contract call or deployment failed (including a revert, decoded where possible).
    #[error("contract: {0}")]
    Contract(#[from] alloy::contract::Error),
    /// Waiting for a transaction's receipt failed.
    #[error("pending transaction: {0}")]
    Pending(#[from] PendingTransactionError),
    /// No receipt within the timeout: the transaction was dropped or is stuck.
    #[error("no receipt for transaction {0} within the timeout")]
    ReceiptTimeout(TxHash),
    /// A transaction was mined but reverted.
    #[error("transaction {0} reverted")]
    Reverted(TxHash),
}

impl ChainError {
    /// True for failures of the node or the network that a later retry can cure; false for
    /// configuration errors and reverts, which need a person or a state re-read.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc(_) | Self::Pending(_) | Self::ReceiptTimeout(_) => true,
            Self::Contract(error) => matches!(
                error,
                alloy::contract::Error::TransportError(_)
                    | alloy::contract::Error::PendingTransactionError(_)
            ),
            _ => false,
        }
    }
}

/// Parses an RPC URL.
pub fn parse_url(rpc_url: &str) -> Result<Url, ChainError> {
    rpc_url.parse::<Url>().map_err(|error| ChainError::BadUrl {
        url: rpc_url.to_owned(),
        reason: error.to_string(),
    })
}

/// A read-only provider.
pub fn read_provider(rpc_url: &str) -> Result<DynProvider, ChainError> {
    Ok(ProviderBuilder::new()
        .connect_http(parse_url(rpc_url)?)
        .erased())
}

/// A provider that signs with `signer`. The nonce is read from the node (pending) for every
/// transaction instead of cached: after a dropped transaction or a restart the node, not our
/// memory, knows the next nonce.
pub fn wallet_provider(rpc_url: &str, signer: PrivateKeySigner) -> Result<DynProvider, ChainError> {
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(signer)
        .connect_http(parse_url(rpc_url)?)
        .erased())
}

/// Refuses to go on when the node serves another chain than `expected`.
pub async fn check_chain_id(provider: &DynProvider, expected: u64) -> Result<(), ChainError> {
    let actual = provider.get_chain_id().await?;
    if actual != expected {
        return Err(ChainError::ChainIdMismatch { expected, actual });
    }
    Ok(())
}

/// Refuses to go on when there is no code at `address`.
pub async fn check_code(provider: &DynProvider, address: Address) -> Result<(), ChainError> {
    if provider.get_code_at(address).await?.is_empty() {
        return Err(ChainError::NoContract(address));
    }
    Ok(())
}

/// Constructor parameters of a Settlement deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployParams {
    /// Seconds an epoch stays open to dispute; also the least time between two epoch commits.
    pub challenge_window_secs: u64,
    /// Seconds between a payer's withdrawal request and its completion; must exceed the window
    /// plus the engine's epoch interval so every accepted receipt is committed first.
    pub withdrawal_delay_secs: u64,
    /// The arbiter; the operator's own address when `None` (acceptable on dev chains only).
    pub arbiter: Option<Address>,
}

impl DeployParams {
    /// Dev chain defaults: no challenge window, a two-minute payer exit delay.
    pub fn dev() -> Self {
        Self {
            challenge_window_secs: 0,
            withdrawal_delay_secs: 120,
            arbiter: None,
        }
    }
}

/// What `deploy` created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeployedAddresses {
    /// Chain id the contracts live on.
    pub chain_id: u64,
    /// The settlement token (given, or the test token deployed for a dev chain).
    pub token: Address,
    /// The Settlement contract.
    pub settlement: Address,
    /// The operator the contract accepts commits from.
    pub operator: Address,
    /// The arbiter that may dispute epochs.
    pub arbiter: Address,
    /// True when `token` is a freshly deployed [`TestToken`].
    pub test_token: bool,
}

/// Deploys Settlement (and, on a dev chain without `token`, a [`TestToken`]) with `operator` as
/// deployer and operator. Waits for each receipt.
pub async fn deploy(
    rpc_url: &str,
    operator: PrivateKeySigner,
    token: Option<Address>,
    params: &DeployParams,
) -> Result<DeployedAddresses, ChainError> {
    let operator_address = operator.address();
    let provider = wallet_provider(rpc_url, operator)?;
    let chain_id = provider.get_chain_id().await?;
    let (token, test_token) = match token {
        Some(token) => {
            check_code(&provider, token).await?;
            (token, false)
        }
        None if DEV_CHAIN_IDS.contains(&chain_id) => {
            (*TestToken::deploy(provider.clone()).await?.address(), true)
        }
        None => return Err(ChainError::TokenRequired(chain_id)),
    };
    let arbiter = params.arbiter.unwrap_or(operator_address);
    let settlement = Settlement::deploy(
        provider.clone(),
        token,
        operator_address,
        arbiter,
        params.challenge_window_secs,
        params.withdrawal_delay_secs,
    )
    .await?;
    Ok(DeployedAddresses {
        chain_id,
        token,
        settlement: *settlement.address(),
        operator: operator_address,
        arbiter,
        test_token,
    })
}

/// Polls for `tx_hash`'s receipt every `poll` until `timeout`; `Ok(None)` when it never showed up
/// (dropped, or stuck behind a low fee): the caller re-reads state before doing anything else.
/// Hand-rolled instead of alloy's heartbeat so the poll interval is ours on every chain.
pub async fn wait_for_receipt(
    provider: &DynProvider,
    tx_hash: TxHash,
    poll: std::time::Duration,
    timeout: std::time::Duration,
) -> Result<Option<alloy::rpc::types::TransactionReceipt>, ChainError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(receipt) = provider.get_transaction_receipt(tx_hash).await? {
            return Ok(Some(receipt));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(poll).await;
    }
}
