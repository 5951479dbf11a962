//! Follows the Settlement contract's funds events for the engine's funds check.
//!
//! The caller owns the height: it passes the first block not yet applied and, after applying the
//! returned events, persists [`WatchBatch::next_block`] in the same atomic write (the engine's
//! ledger does this), so a restart neither misses nor repeats an event. Only blocks with at least
//! `confirmations` blocks on top are read; deeper reorganisations than that are out of scope.

use alloy::{
    primitives::{Address, TxHash, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use tollgate_engine::PayerKey;

use crate::chain::{self, ChainError};
use crate::contract::Settlement;

/// Watcher limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Blocks that must be mined on top of a block before its events count (0 on anvil).
    pub confirmations: u64,
    /// Most blocks asked for in one `eth_getLogs` (public nodes cap the range).
    pub blocks_per_poll_max: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            confirmations: 12,
            blocks_per_poll_max: 2_000,
        }
    }
}

/// Errors reading events.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The node failed; retry later from the same height.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A log from the contract's address that does not decode as the event its topic names: the
    /// node returned garbage or the address is not a Settlement contract.
    #[error("undecodable log in block {block} index {log_index}: {reason}")]
    BadLog {
        /// Block of the log.
        block: u64,
        /// Log index in the block.
        log_index: u64,
        /// Decoder message.
        reason: String,
    },
}

/// A funds event as the engine needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FundsChange {
    /// `amount` was deposited for `payer`.
    Deposit {
        /// The payer key credited.
        payer: PayerKey,
        /// Token units.
        amount: u128,
    },
    /// The payer's owner asked to withdraw `amount`: stop accepting spend of it.
    WithdrawalRequested {
        /// The payer key.
        payer: PayerKey,
        /// Token units requested.
        amount: u128,
        /// Chain time (unix seconds) from which it can be completed.
        ready_at: u64,
    },
    /// `amount` (possibly less than requested) left the contract.
    WithdrawalCompleted {
        /// The payer key.
        payer: PayerKey,
        /// Token units requested.
        requested: u128,
        /// Token units paid out.
        amount: u128,
    },
    /// The arbiter voided `epoch`; the engine must commit it again.
    Disputed {
        /// The voided epoch.
        epoch: u64,
    },
}

/// One event with its position in the chain, which orders and deduplicates events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainEvent {
    /// What changed.
    pub change: FundsChange,
    /// Block number.
    pub block: u64,
    /// Log index within the block.
    pub log_index: u64,
    /// Transaction that emitted it.
    pub tx_hash: TxHash,
}

/// Events of the confirmed blocks `[from, next_block)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// Events in chain order.
    pub events: Vec<ChainEvent>,
    /// The first block not covered yet: persist it with the applied events.
    pub next_block: u64,
}

/// Reads funds events of one Settlement contract.
#[derive(Debug, Clone)]
pub struct Watcher {
    provider: DynProvider,
    contract: Address,
    config: WatchConfig,
}

impl Watcher {
    /// Connects and checks the chain id and that the contract exists.
    pub async fn connect(
        rpc_url: &str,
        expected_chain_id: u64,
        contract: Address,
        config: WatchConfig,
    ) -> Result<Self, ChainError> {
        let provider = chain::read_provider(rpc_url)?;
        chain::check_chain_id(&provider, expected_chain_id).await?;
        chain::check_code(&provider, contract).await?;
        Ok(Self {
            provider,
            contract,
            config,
        })
    }

    /// Reads events from `from_block` up to the newest confirmed block, at most
    /// `blocks_per_poll_max` blocks. Returns an empty batch with `next_block == from_block` when no
    /// new block is confirmed.
    pub async fn poll(&self, from_block: u64) -> Result<WatchBatch, WatchError> {
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::from)?;
        let Some(confirmed) = head.checked_sub(self.config.confirmations) else {
            return Ok(WatchBatch {
                events: Vec::new(),
                next_block: from_block,
            });
        };
        if confirmed < from_block {
            return Ok(WatchBatch {
                events: Vec::new(),
                next_block: from_block,
            });
        }
        let to_block =
            confirmed.min(from_block.saturating_add(self.config.blocks_per_poll_max.max(1) - 1));
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(vec![
                Settlement::Deposited::SIGNATURE_HASH,
                Settlement::WithdrawalRequested::SIGNATURE_HASH,
                Settlement::WithdrawalCompleted::SIGNATURE_HASH,
                Settlement::Disputed::SIGNATURE_HASH,
            ])
            .from_block(from_block)
            .to_block(to_block);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(ChainError::from)?;
        let mut events = logs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        // Nodes return logs in order; sorting makes that an invariant rather than an assumption.
        events.sort_by_key(|event| (event.block, event.log_index));
        Ok(WatchBatch {
            events,
            next_block: to_block + 1,
        })
    }
}

fn decode(log: &alloy::rpc::types::Log) -> Result<ChainEvent, WatchError> {
    let block = log.block_number.unwrap_or_default();
    let log_index = log.log_index.unwrap_or_default();
    let bad = |reason: String| WatchError::BadLog {
        block,
        log_index,
        reason,
    };
    if log.block_number.is_none() || log.log_index.is_none() {
        return Err(bad("log without block number or index (pending log)".into()));
    }
    let amount =
        |value: U256| u128::try_from(value).map_err(|_| bad(format!("amount {value} above u128")));
    use alloy::sol_types::SolEventInterface;
    let decoded = Settlement::SettlementEvents::decode_log(&log.inner)
        .map_err(|error| bad(error.to_string()))?;
    let change = match decoded.data {
        Settlement::SettlementEvents::Deposited(event) => FundsChange::Deposit {
            payer: PayerKey(event.payerKey.0),
            amount: amount(event.amount)?,
        },
        Settlement::SettlementEvents::WithdrawalRequested(event) => {
            FundsChange::WithdrawalRequested {
                payer: PayerKey(event.payerKey.0),
                amount: amount(event.amount)?,
                ready_at: event.readyAt,
            }
        }
        Settlement::SettlementEvents::WithdrawalCompleted(event) => {
            FundsChange::WithdrawalCompleted {
                payer: PayerKey(event.payerKey.0),
                requested: amount(event.requested)?,
                amount: amount(event.amount)?,
            }
        }
        Settlement::SettlementEvents::Disputed(event) => {
            FundsChange::Disputed { epoch: event.epoch }
        }
        other => return Err(bad(format!("unexpected event {other:?}"))),
    };
    Ok(ChainEvent {
        change,
        block,
        log_index,
        tx_hash: log.transaction_hash.unwrap_or_default(),
    })
}
