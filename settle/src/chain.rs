//! Connecting to the settlement chain, deploying the contracts, reading what the contract says
//! (withdrawable, available, proofs) for the query API and the demo, and the transactions users
//! send (a payee's `withdraw`, an arbiter's `dispute`, a payer's exit). What only a dev chain
//! needs (its well-known key, minting and funding, gas money, replays) is in [`crate::devchain`].

use std::time::Duration;

use alloy::{
    primitives::{Address, B256, TxHash, U256},
    providers::{DynProvider, PendingTransactionError, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    transports::http::reqwest::{self, Url},
};
use tollgate_engine::PayerKey;

use crate::contract::{Settlement, TestToken};
use crate::merkle::Leaf;

/// Chain ids of local development chains (anvil, hardhat, ganache), where `deploy` may create the
/// test token and the operator may be its own arbiter with a zero challenge window.
pub const DEV_CHAIN_IDS: [u64; 2] = [31_337, 1_337];

/// Whether `chain_id`, as the node reports it, is a local development chain. The chain id is the
/// only test: a node answering with one of [`DEV_CHAIN_IDS`] is, by convention, a throwaway chain
/// nobody holds real money on; every other chain counts as real.
pub fn is_dev_chain(chain_id: u64) -> bool {
    DEV_CHAIN_IDS.contains(&chain_id)
}

/// Errors talking to the chain. [`ChainError::is_transient`] tells a caller whether retrying later
/// can help.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The HTTP client for the RPC could not be built (the TLS backend failed to start).
    #[error("http client: {0}")]
    HttpClient(String),
    /// The RPC URL does not parse.
    #[error("invalid rpc url {url:?}: {reason}")]
    BadUrl {
        /// The URL as given, masked ([`mask_url`]).
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
    /// `deploy` on a chain that is not a dev chain with nobody able to stop the operator: no
    /// independent arbiter, or no challenge window to dispute in. The operator could then debit any
    /// payer into a payee it controls.
    #[error(
        "chain {chain_id} is not a dev chain, and {problem}: the operator could debit any payer \
         into a payee it controls (deploy anyway only with --unsafe-operator-can-take-deposits)"
    )]
    OperatorUnchecked {
        /// Chain id the node reports.
        chain_id: u64,
        /// What is missing.
        problem: String,
    },
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
    /// An EVM secret key that is neither 32 bytes of hex nor a readable file holding them. The
    /// message never contains the key.
    #[error("EVM key: {0}")]
    BadKey(String),
    /// A key file that group or others may access: a secret key file must be its owner's alone
    /// (mode 0600), and a looser mode means the key may already have leaked.
    #[error(
        "key file {} has mode {mode:04o}: group or others may access it; allow its owner only \
         (chmod 600) and consider the key exposed",
        .path.display()
    )]
    KeyFileMode {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The caller asked for more than any token amount can hold (a funding total past u128).
    #[error("amount too large: {0}")]
    AmountTooLarge(String),
    /// The node answered something the contract cannot have meant (an amount past 96 bits, a
    /// deployment receipt without a contract address).
    #[error("unexpected answer from the chain: {0}")]
    BadAnswer(String),
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

/// What stands for the hidden part of a masked RPC URL.
const URL_MASK: &str = "***";

/// `rpc_url` fit for a log line or a printed configuration: scheme, host and port only.
/// Providers carry the API key in the path, the query or the userinfo, so all three are hidden
/// (`/***` says something was). Works on text that does not parse as a URL too.
pub fn mask_url(rpc_url: &str) -> String {
    let Some((scheme, rest)) = rpc_url.split_once("://") else {
        return URL_MASK.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let hidden = host.len() < authority.len() || !matches!(&rest[end..], "" | "/");
    if hidden {
        format!("{scheme}://{host}/{URL_MASK}")
    } else {
        format!("{scheme}://{host}")
    }
}

/// Parses an RPC URL.
pub fn parse_url(rpc_url: &str) -> Result<Url, ChainError> {
    rpc_url.parse::<Url>().map_err(|error| ChainError::BadUrl {
        url: mask_url(rpc_url),
        reason: error.to_string(),
    })
}

/// How long one RPC request may take. Without a bound, a node that accepts connections but
/// never answers (hung, overloaded, stopped) would stall the submitter, the deposit watcher and
/// the API's chain reads forever; with it they fail, and retry or report, like any RPC error.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn http_client() -> Result<reqwest::Client, ChainError> {
    reqwest::Client::builder()
        .timeout(RPC_TIMEOUT)
        .build()
        .map_err(|error| ChainError::HttpClient(error.to_string()))
}

/// A read-only provider.
pub fn read_provider(rpc_url: &str) -> Result<DynProvider, ChainError> {
    Ok(ProviderBuilder::new()
        .connect_reqwest(http_client()?, parse_url(rpc_url)?)
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
        .connect_reqwest(http_client()?, parse_url(rpc_url)?)
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
    /// Deploy outside dev chains even where nobody can stop the operator (a zero window, or the
    /// operator as its own arbiter). Payers must then trust the operator with their deposits.
    pub unsafe_operator_can_take_deposits: bool,
}

impl DeployParams {
    /// Dev chain defaults: no challenge window, a two-minute payer exit delay.
    pub fn dev() -> Self {
        Self {
            challenge_window_secs: 0,
            withdrawal_delay_secs: 120,
            arbiter: None,
            unsafe_operator_can_take_deposits: false,
        }
    }

    /// What leaves the operator unchecked on chain `chain_id`, or `None` when an independent
    /// arbiter has a window to dispute in (or the chain is a dev chain). The operator naming
    /// itself as arbiter is the same as naming none.
    pub fn operator_unchecked(&self, chain_id: u64, operator: Address) -> Option<String> {
        if is_dev_chain(chain_id) {
            return None;
        }
        let mut problems = Vec::new();
        if self.challenge_window_secs == 0 {
            problems.push("a challenge window of 0 leaves no time to dispute".to_owned());
        }
        match self.arbiter {
            None => problems.push("no --arbiter makes the operator its own arbiter".to_owned()),
            Some(arbiter) if arbiter == operator => {
                problems.push(format!("--arbiter {arbiter:#x} is the operator itself"))
            }
            Some(_) => {}
        }
        (!problems.is_empty()).then(|| problems.join(", and "))
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
    /// Block that included the Settlement deployment: the deposit watcher's first block.
    pub block: u64,
}

/// Deploys Settlement (and, on a dev chain without `token`, a [`TestToken`]) with `operator` as
/// deployer and operator. Waits for each receipt. Outside dev chains, refuses before sending
/// anything when [`DeployParams::operator_unchecked`] finds a problem, unless
/// `unsafe_operator_can_take_deposits` is set.
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
        None if is_dev_chain(chain_id) => {
            (*TestToken::deploy(provider.clone()).await?.address(), true)
        }
        None => return Err(ChainError::TokenRequired(chain_id)),
    };
    if let Some(problem) = params.operator_unchecked(chain_id, operator_address)
        && !params.unsafe_operator_can_take_deposits
    {
        return Err(ChainError::OperatorUnchecked { chain_id, problem });
    }
    let arbiter = params.arbiter.unwrap_or(operator_address);
    let receipt = Settlement::deploy_builder(
        provider.clone(),
        token,
        operator_address,
        arbiter,
        params.challenge_window_secs,
        params.withdrawal_delay_secs,
    )
    .send()
    .await?
    .get_receipt()
    .await?;
    if !receipt.status() {
        return Err(ChainError::Reverted(receipt.transaction_hash));
    }
    let (Some(settlement), Some(block)) = (receipt.contract_address, receipt.block_number) else {
        return Err(ChainError::BadAnswer(format!(
            "deployment receipt {} names no contract address or block",
            receipt.transaction_hash
        )));
    };
    Ok(DeployedAddresses {
        chain_id,
        token,
        settlement,
        operator: operator_address,
        arbiter,
        test_token,
        block,
    })
}

/// Reads an EVM secret key given as 64 hex digits (`0x` optional), or as the path of a file
/// holding them. Errors never echo the text: it may be the key itself.
pub fn load_signer(key_or_path: &str) -> Result<PrivateKeySigner, ChainError> {
    let path = std::path::Path::new(key_or_path);
    let text = if path.is_file() {
        read_key_file(path)?
    } else {
        key_or_path.to_owned()
    };
    let text = text.trim();
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let mut secret = [0u8; 32];
    hex::decode_to_slice(digits, &mut secret)
        .map_err(|_| ChainError::BadKey("expected 64 hex digits, or a file holding them".into()))?;
    PrivateKeySigner::from_bytes(&B256::from(secret))
        .map_err(|_| ChainError::BadKey("not a valid secp256k1 secret key".into()))
}

/// Reads a secret key file, refusing one that group or others may access. The mode is read from
/// the open file, so it is the mode of what is read.
pub fn read_key_file(path: &std::path::Path) -> Result<String, ChainError> {
    let unreadable = |error: std::io::Error| {
        ChainError::BadKey(format!("cannot read key file {}: {error}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(unreadable)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ChainError::KeyFileMode {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(unreadable)?;
    Ok(text)
}

fn amount_u128(what: &str, value: U256) -> Result<u128, ChainError> {
    u128::try_from(value).map_err(|_| ChainError::BadAnswer(format!("{what} {value} exceeds u128")))
}

/// Read-only calls to a deployed Settlement contract.
#[derive(Clone, Debug)]
pub struct ContractReader {
    settlement: Settlement::SettlementInstance<DynProvider>,
}

impl ContractReader {
    /// A reader of the Settlement at `settlement` on the node at `rpc_url`. Refuses a node that
    /// serves another chain than `chain_id` or has no code at the address.
    pub async fn connect(
        rpc_url: &str,
        chain_id: u64,
        settlement: Address,
    ) -> Result<Self, ChainError> {
        let provider = read_provider(rpc_url)?;
        check_chain_id(&provider, chain_id).await?;
        check_code(&provider, settlement).await?;
        Ok(Self {
            settlement: Settlement::new(settlement, provider),
        })
    }

    /// The provider the reader calls through.
    pub(crate) fn provider(&self) -> &DynProvider {
        self.settlement.provider()
    }

    /// The contract's address.
    pub fn address(&self) -> Address {
        *self.settlement.address()
    }

    /// The contract's challenge window and payer exit delay.
    pub async fn exit_terms(&self) -> Result<crate::exit::ExitTerms, ChainError> {
        Ok(crate::exit::ExitTerms {
            challenge_window_secs: self.settlement.challengeWindowSecs().call().await?,
            withdrawal_delay_secs: self.settlement.withdrawalDelaySecs().call().await?,
        })
    }

    /// Mean seconds per block over the newest `blocks` blocks (fewer on a young chain), rounded
    /// up; 0 on a chain of one block.
    pub async fn block_secs(&self, blocks: u64) -> Result<u64, ChainError> {
        let provider = self.settlement.provider();
        let head = provider.get_block_number().await?;
        let span = blocks.min(head);
        if span == 0 {
            return Ok(0);
        }
        let time = |number: u64| async move {
            provider
                .get_block_by_number(number.into())
                .await?
                .map(|block| block.header.timestamp)
                .ok_or_else(|| ChainError::BadAnswer(format!("block {number} not found")))
        };
        let (newest, oldest) = (time(head).await?, time(head - span).await?);
        Ok(newest.saturating_sub(oldest).div_ceil(span))
    }

    /// The settlement token the contract was deployed with.
    pub async fn token(&self) -> Result<Address, ChainError> {
        Ok(self.settlement.token().call().await?)
    }

    /// What `payee` can withdraw now (`Settlement.withdrawable`): credits of final epochs.
    pub async fn withdrawable(&self, payee: tollgate_engine::Address) -> Result<u128, ChainError> {
        let amount = self
            .settlement
            .withdrawable(Address::from(payee.0))
            .call()
            .await?;
        amount_u128("withdrawable", amount)
    }

    /// What `payer` could still be debited (`Settlement.available`): deposit minus final and
    /// open debits.
    pub async fn available(&self, payer: &PayerKey) -> Result<u128, ChainError> {
        let amount = self
            .settlement
            .available(B256::from(payer.0))
            .call()
            .await?;
        amount_u128("available", amount)
    }

    /// Whether `epoch` is final onchain (`Settlement.isFinal`): committed in full, not voided,
    /// and past its challenge window, so its proofs verify and nothing can undo it.
    pub async fn is_final(&self, epoch: u64) -> Result<bool, ChainError> {
        Ok(self.settlement.isFinal(epoch).call().await?)
    }

    /// The account that may take `payer`'s deposit back (`Settlement.payerOwner`): whoever made
    /// its first deposit; the zero address for a key nobody has deposited for.
    pub async fn payer_owner(&self, payer: &PayerKey) -> Result<Address, ChainError> {
        Ok(self
            .settlement
            .payerOwner(B256::from(payer.0))
            .call()
            .await?)
    }

    /// Whether the contract accepts `proof` for `leaf` in `epoch` (`Settlement.verifyLeaf`): only
    /// for a final epoch.
    pub async fn verify_leaf(
        &self,
        epoch: u64,
        leaf: &Leaf,
        proof: &[B256],
    ) -> Result<bool, ChainError> {
        Ok(self
            .settlement
            .verifyLeaf(
                epoch,
                B256::from(leaf.payer.0),
                Address::from(leaf.payee.0),
                U256::from(leaf.cumulative),
                proof.to_vec(),
            )
            .call()
            .await?)
    }
}

/// Sends `Settlement.withdraw()` from the `payee` account and returns what the contract paid
/// out, read from its `Withdrawn` event.
pub async fn withdraw(
    rpc_url: &str,
    payee: PrivateKeySigner,
    settlement: Address,
) -> Result<u128, ChainError> {
    let provider = wallet_provider(rpc_url, payee)?;
    let pending = Settlement::new(settlement, provider.clone())
        .withdraw()
        .send()
        .await?;
    let receipt = landed_receipt(&provider, *pending.tx_hash()).await?;
    let paid = logged::<Settlement::Withdrawn>(&receipt)?;
    amount_u128("withdrawn", paid.data.amount)
}

/// Sends `Settlement.dispute(epoch)` from the `arbiter` account, voiding the open epoch.
/// `Ok(false)`, with nothing sent, when the contract would refuse it as `NotDisputable` (the
/// epoch is final already, or is not the open one).
pub async fn dispute(
    rpc_url: &str,
    arbiter: PrivateKeySigner,
    settlement: Address,
    epoch: u64,
) -> Result<bool, ChainError> {
    let provider = wallet_provider(rpc_url, arbiter)?;
    let contract = Settlement::new(settlement, provider.clone());
    let call = contract.dispute(epoch);
    if let Err(error) = call.call().await {
        return match error.as_decoded_interface_error::<Settlement::SettlementErrors>() {
            Some(Settlement::SettlementErrors::NotDisputable(_)) => Ok(false),
            _ => Err(ChainError::Contract(error)),
        };
    }
    let pending = call.send().await?;
    landed_receipt(&provider, *pending.tx_hash()).await?;
    Ok(true)
}

/// Starts a payer exit: `Settlement.requestWithdrawal(payer, amount)` from the key's owner.
/// Returns the chain time (seconds) from which it may be completed.
pub async fn request_withdrawal(
    rpc_url: &str,
    owner: PrivateKeySigner,
    settlement: Address,
    payer: &PayerKey,
    amount: u128,
) -> Result<u64, ChainError> {
    let provider = wallet_provider(rpc_url, owner)?;
    let pending = Settlement::new(settlement, provider.clone())
        .requestWithdrawal(B256::from(payer.0), U256::from(amount))
        .send()
        .await?;
    let receipt = landed_receipt(&provider, *pending.tx_hash()).await?;
    let requested = logged::<Settlement::WithdrawalRequested>(&receipt)?;
    Ok(requested.data.readyAt)
}

/// Completes a payer exit from the key's owner: returns what the contract paid out and what
/// stays requested (an amount that committed debits had taken), read from its event.
pub async fn complete_withdrawal(
    rpc_url: &str,
    owner: PrivateKeySigner,
    settlement: Address,
    payer: &PayerKey,
) -> Result<(u128, u128), ChainError> {
    let provider = wallet_provider(rpc_url, owner)?;
    let pending = Settlement::new(settlement, provider.clone())
        .completeWithdrawal(B256::from(payer.0))
        .send()
        .await?;
    let receipt = landed_receipt(&provider, *pending.tx_hash()).await?;
    let completed = logged::<Settlement::WithdrawalCompleted>(&receipt)?;
    Ok((
        amount_u128("paid", completed.data.amount)?,
        amount_u128("remaining", completed.data.remaining)?,
    ))
}

/// How long a tool waits for its own transaction's receipt (a deposit, a withdrawal).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often it asks for the receipt meanwhile.
const RECEIPT_POLL: Duration = Duration::from_millis(50);

/// Waits for `tx_hash`'s receipt; the block it landed in, or why it did not land.
pub(crate) async fn landed(provider: &DynProvider, tx_hash: TxHash) -> Result<u64, ChainError> {
    let receipt = landed_receipt(provider, tx_hash).await?;
    receipt
        .block_number
        .ok_or_else(|| ChainError::BadAnswer(format!("receipt of {tx_hash} names no block")))
}

/// The first `E` event a mined transaction logged; a receipt without it is a bad answer.
fn logged<E: alloy::sol_types::SolEvent>(
    receipt: &alloy::rpc::types::TransactionReceipt,
) -> Result<alloy::primitives::Log<E>, ChainError> {
    receipt.decoded_log::<E>().ok_or_else(|| {
        ChainError::BadAnswer(format!(
            "transaction {} logged no {} event",
            receipt.transaction_hash,
            E::SIGNATURE
        ))
    })
}

/// Waits for `tx_hash`'s receipt, or says why it did not land (never mined, or reverted).
pub(crate) async fn landed_receipt(
    provider: &DynProvider,
    tx_hash: TxHash,
) -> Result<alloy::rpc::types::TransactionReceipt, ChainError> {
    let receipt = wait_for_receipt(provider, tx_hash, RECEIPT_POLL, RECEIPT_TIMEOUT)
        .await?
        .ok_or(ChainError::ReceiptTimeout(tx_hash))?;
    if !receipt.status() {
        return Err(ChainError::Reverted(tx_hash));
    }
    Ok(receipt)
}

/// The EIP-1559 fees one transaction offers, in wei per gas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fees {
    /// Most the sender pays per gas, base fee included.
    pub max_fee_per_gas: u128,
    /// Most of it that goes to the block producer.
    pub max_priority_fee_per_gas: u128,
}

/// How much more a replacement offers on both fees. Nodes refuse a replacement at the same
/// nonce that pays less than 10% more (geth's default price bump); 25% clears it with room and
/// catches up with a rising base fee in a few steps.
pub const FEE_BUMP_PERCENT: u128 = 25;

impl Fees {
    /// The node's estimate for the next blocks, capped at `cap_per_gas`.
    pub async fn estimate(provider: &DynProvider, cap_per_gas: u128) -> Result<Self, ChainError> {
        let estimate = provider.estimate_eip1559_fees().await?;
        Ok(Self {
            max_fee_per_gas: estimate.max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_priority_fee_per_gas,
        }
        .capped(cap_per_gas))
    }

    fn capped(self, cap_per_gas: u128) -> Self {
        let max_fee_per_gas = self.max_fee_per_gas.min(cap_per_gas);
        Self {
            max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas.min(max_fee_per_gas),
        }
    }

    /// Fees for a replacement of a transaction that offered `self`: [`FEE_BUMP_PERCENT`] more on
    /// both (at least 1 wei), or `now` (the current estimate) where that is higher, at most
    /// `cap_per_gas`. `None` when the cap leaves no room to outbid `self`: the stuck transaction
    /// can only wait for fees to fall.
    pub fn bumped(self, now: Self, cap_per_gas: u128) -> Option<Self> {
        let raise =
            |fee: u128| fee.saturating_add((fee.saturating_mul(FEE_BUMP_PERCENT) / 100).max(1));
        let next = Self {
            max_fee_per_gas: raise(self.max_fee_per_gas).max(now.max_fee_per_gas),
            max_priority_fee_per_gas: raise(self.max_priority_fee_per_gas)
                .max(now.max_priority_fee_per_gas),
        }
        .capped(cap_per_gas);
        (next.max_fee_per_gas > self.max_fee_per_gas
            && next.max_priority_fee_per_gas > self.max_priority_fee_per_gas)
            .then_some(next)
    }
}

/// What became of the transactions sent from one account at one nonce.
#[derive(Debug)]
pub enum NonceOutcome {
    /// One of them was mined (successfully or not): its receipt.
    Mined(Box<alloy::rpc::types::TransactionReceipt>),
    /// The nonce was used by a transaction that is none of them (sent by an earlier run or
    /// another process with the same key): re-read the state before doing anything else.
    Taken,
    /// Still unmined when the wait ran out: dropped, or stuck behind a low fee.
    Unmined,
}

/// Polls every `poll` until `account`'s mined nonce passes `nonce`, then finds which of `hashes`
/// (every transaction sent at `nonce`, replacements included) took it; gives up after `timeout`.
/// Asking for the account's nonce rather than for one receipt follows every replacement at once:
/// an older, cheaper copy may be the one that is mined.
pub async fn wait_for_nonce(
    provider: &DynProvider,
    account: Address,
    nonce: u64,
    hashes: &[TxHash],
    poll: Duration,
    timeout: Duration,
) -> Result<NonceOutcome, ChainError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let used = provider.get_transaction_count(account).latest().await? > nonce;
        if used {
            for hash in hashes.iter().rev() {
                if let Some(receipt) = provider.get_transaction_receipt(*hash).await? {
                    return Ok(NonceOutcome::Mined(Box::new(receipt)));
                }
            }
        }
        // A node may count the nonce as used a moment before it serves the receipt (anvil does
        // with large blocks): only the timeout makes a used nonce without our receipt `Taken`.
        if tokio::time::Instant::now() >= deadline {
            return Ok(if used {
                NonceOutcome::Taken
            } else {
                NonceOutcome::Unmined
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The delay before retry number `failures` (1, 2, ...): `initial_ms` doubled per earlier failure,
/// at most `max_ms`.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(16);
    Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_url_keeps_scheme_host_and_port_only() {
        for (given, shown) in [
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
            ("http://127.0.0.1:8545/", "http://127.0.0.1:8545"),
            (
                "https://eth.example.com/v2/KEY",
                "https://eth.example.com/***",
            ),
            (
                "https://eth.example.com?apikey=KEY",
                "https://eth.example.com/***",
            ),
            (
                "wss://u:KEY@eth.example.com:443",
                "wss://eth.example.com:443/***",
            ),
            ("no scheme KEY", "***"),
        ] {
            assert_eq!(mask_url(given), shown, "{given}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_group_or_others_is_refused_by_name_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("operator.key");
        std::fs::write(&path, "11".repeat(32)).expect("write key");
        let path_text = path.to_str().expect("utf-8 path");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let error = load_signer(path_text)
                .expect_err("a key others can read is refused")
                .to_string();
            assert!(
                error.contains(path_text) && error.contains(&format!("{mode:04o}")),
                "names the file and its mode: {error}"
            );
            assert!(!error.contains(&"11".repeat(32)), "never the key: {error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        load_signer(path_text).expect("an owner-only key file loads");
    }
}
