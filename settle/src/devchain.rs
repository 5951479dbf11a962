//! Dev-chain tooling for the demo, the load generator and tests: anvil's well-known key, funding
//! many payer keys from one account (minting the test token), gas money for payees, and replaying
//! a mined transaction to show what the contract would say now. Production paths (the submitter,
//! the watchers, the query API) never import this module: on a real chain none of it applies.

use alloy::{
    consensus::Transaction as _,
    contract::RawCallBuilder,
    network::{TransactionBuilder, TransactionResponse},
    primitives::{Address, B256, TxHash, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};
use tollgate_engine::PayerKey;

use crate::chain::{ChainError, ContractReader, landed, landed_receipt, wallet_provider};
use crate::contract::{Settlement, TestToken};

/// The chain id anvil serves by default; [`ANVIL_FIRST_DEV_KEY`] is only ever used on it.
pub const ANVIL_CHAIN_ID: u64 = 31_337;

/// The secret key of anvil's first dev account (public knowledge: every anvil prints it). Only
/// for dev chains, and only when the operator gave no key.
pub const ANVIL_FIRST_DEV_KEY: &str =
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Sends `wei` of the chain's native currency from `from` to `to`: gas money for an account that
/// only ever received tokens (a payee about to withdraw, on a dev chain).
pub async fn send_gas_money(
    rpc_url: &str,
    from: PrivateKeySigner,
    to: Address,
    wei: U256,
) -> Result<(), ChainError> {
    let provider = wallet_provider(rpc_url, from)?;
    let request = TransactionRequest::default().with_to(to).with_value(wei);
    let pending = provider.send_transaction(request).await?;
    landed_receipt(&provider, *pending.tx_hash()).await?;
    Ok(())
}

/// What to fund: a deposit of `amount_each` for every payer key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundParams {
    /// The settlement token.
    pub token: Address,
    /// The Settlement contract.
    pub settlement: Address,
    /// Deposit per payer, in token units.
    pub amount_each: u128,
    /// Mint the whole amount to the funder first (a [`TestToken`] on a dev chain lets anyone mint);
    /// otherwise the funder must already hold it.
    pub mint: bool,
}

/// What [`fund_payers`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Funded {
    /// Deposits made (one per payer key).
    pub deposits: usize,
    /// Tokens deposited in all.
    pub total: u128,
    /// Highest block holding one of the deposits (0 when there were none): once the deposit
    /// watcher has scanned it, every deposit is in the ledger.
    pub last_block: u64,
}

/// Deposits `params.amount_each` for every key in `payers` from the `funder` account: optionally
/// mints the total, approves it once, then sends every deposit with consecutive nonces without
/// waiting for each receipt (a dev chain mines each on arrival) and finally waits for all of
/// them. The deposits' first depositor, and so the payers' exit owner, is `funder`: this is for
/// dev chains and demos, where one account funds many payer keys.
pub async fn fund_payers(
    rpc_url: &str,
    funder: PrivateKeySigner,
    payers: &[PayerKey],
    params: &FundParams,
) -> Result<Funded, ChainError> {
    let funder_address = funder.address();
    let provider = wallet_provider(rpc_url, funder)?;
    let total = u128::try_from(payers.len())
        .ok()
        .and_then(|count| count.checked_mul(params.amount_each))
        .ok_or_else(|| {
            ChainError::AmountTooLarge(format!(
                "{} payers times {} exceeds u128",
                payers.len(),
                params.amount_each
            ))
        })?;
    let token = TestToken::new(params.token, provider.clone());
    let settlement = Settlement::new(params.settlement, provider.clone());
    if params.mint {
        let pending = token.mint(funder_address, U256::from(total)).send().await?;
        landed(&provider, *pending.tx_hash()).await?;
    }
    let pending = token
        .approve(params.settlement, U256::from(total))
        .send()
        .await?;
    landed(&provider, *pending.tx_hash()).await?;

    // One nonce read, then consecutive nonces: the node need not be asked once per deposit, and
    // the deposits cannot race each other for a nonce.
    let first_nonce = provider
        .get_transaction_count(funder_address)
        .pending()
        .await?;
    let mut sent = Vec::with_capacity(payers.len());
    for (nonce, payer) in (first_nonce..).zip(payers) {
        let pending = settlement
            .deposit(B256::from(payer.0), U256::from(params.amount_each))
            .nonce(nonce)
            .send()
            .await?;
        sent.push(*pending.tx_hash());
    }
    let mut last_block = 0;
    for tx_hash in sent {
        last_block = last_block.max(landed(&provider, tx_hash).await?);
    }
    Ok(Funded {
        deposits: payers.len(),
        total,
        last_block,
    })
}

/// Replays the exact call of the mined transaction `tx_hash` (same sender, same calldata)
/// against the latest state with `eth_call`, sending nothing. `Ok(None)` when it would
/// succeed now, otherwise the contract's custom error: how the demo, or an auditor, shows
/// that a committed epoch part cannot land a second time.
pub async fn replay(
    reader: &ContractReader,
    tx_hash: TxHash,
) -> Result<Option<Settlement::SettlementErrors>, ChainError> {
    let provider = reader.provider().clone();
    let mined = provider
        .get_transaction_by_hash(tx_hash)
        .await?
        .ok_or_else(|| ChainError::BadAnswer(format!("the node knows no transaction {tx_hash}")))?;
    let call = RawCallBuilder::new_raw(provider, mined.input().clone())
        .from(mined.from())
        .to(reader.address());
    match call.call().await {
        Ok(_) => Ok(None),
        Err(error) => match error.as_decoded_interface_error::<Settlement::SettlementErrors>() {
            Some(revert) => Ok(Some(revert)),
            None => Err(ChainError::Contract(error)),
        },
    }
}
