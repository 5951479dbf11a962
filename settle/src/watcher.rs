//! Follows the Settlement contract's funds events for the engine's funds check.
//!
//! The caller owns the height: it passes the first block not yet applied and, after applying the
//! returned events, persists [`WatchBatch::next_block`] in the same atomic write (the engine's
//! ledger does this), so a restart neither misses nor repeats an event. Only blocks with at least
//! `confirmations` blocks on top are read; deeper reorganisations than that are out of scope.
//!
//! Withdrawal requests are the exception: refusing spend early is always safe, and a request
//! seen only once confirmed would let receipts through that the payer's exit can overtake. So
//! once the confirmed read is caught up, every poll also returns the requests of the blocks after
//! it up to the head, as a set that replaces the last one ([`WatchBatch::head_requests`]); the
//! cursor never moves past the confirmed blocks, so nothing is skipped or applied twice.

use alloy::{
    primitives::{Address, TxHash, U256},
    providers::{DynProvider, Provider},
    rpc::types::Filter,
    sol_types::SolEvent,
};
use tollgate_engine::PayerKey;
use tollgate_engine::ledger::{FundsEvent, FundsKind, HeadWithdrawals};

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
    /// `amount` left the contract; `remaining` of the request stays requested (the payout is
    /// capped at what the payer has left).
    WithdrawalCompleted {
        /// The payer key.
        payer: PayerKey,
        /// Token units paid out.
        amount: u128,
        /// Token units still requested.
        remaining: u128,
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

/// What an event asks of the engine's ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerNews {
    /// A payer's funds moved: applied once, by the event's chain position.
    Funds(FundsEvent),
    /// The arbiter voided the epoch: its amounts are owed again and go into the open epoch.
    Voided(u64),
}

impl ChainEvent {
    /// The event as the ledger takes it.
    pub fn ledger_news(&self) -> LedgerNews {
        let funds = |payer: PayerKey, kind: FundsKind, amount: u128| {
            LedgerNews::Funds(FundsEvent {
                payer,
                kind,
                amount,
                block: self.block,
                log_index: self.log_index,
            })
        };
        match self.change {
            FundsChange::Deposit { payer, amount } => funds(payer, FundsKind::Deposit, amount),
            FundsChange::WithdrawalRequested { payer, amount, .. } => {
                funds(payer, FundsKind::WithdrawalRequested, amount)
            }
            FundsChange::WithdrawalCompleted { payer, amount, .. } => {
                funds(payer, FundsKind::WithdrawalCompleted, amount)
            }
            FundsChange::Disputed { epoch } => LedgerNews::Voided(epoch),
        }
    }
}

/// The withdrawal requests among `events` (a poll's [`WatchBatch::head_requests`]), summed per
/// payer, for the ledger to refuse spend of at once. A sum past u128 refuses all of the payer's
/// spend: the safe side.
pub fn head_withdrawals(events: &[ChainEvent]) -> HeadWithdrawals {
    let mut requests = HeadWithdrawals::default();
    for event in events {
        if let FundsChange::WithdrawalRequested { payer, amount, .. } = event.change {
            let total = requests.0.entry(payer).or_insert(0u128);
            *total = total.saturating_add(amount);
        }
    }
    requests
}

/// Events of the confirmed blocks `[from, next_block)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// Events in chain order.
    pub events: Vec<ChainEvent>,
    /// The first block not covered yet: persist it with the applied events.
    pub next_block: u64,
    /// The `WithdrawalRequested` events of the blocks `[next_block, head]`, not yet confirmed, in
    /// chain order. `None` while the confirmed read lags behind (it is read once caught up).
    pub head_requests: Option<Vec<ChainEvent>>,
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
    /// `blocks_per_poll_max` blocks, and, once that reaches the confirmed tip, the withdrawal
    /// requests after it up to the head. `next_block == from_block` when no new block is
    /// confirmed.
    pub async fn poll(&self, from_block: u64) -> Result<WatchBatch, WatchError> {
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::from)?;
        let confirmed = head
            .checked_sub(self.config.confirmations)
            .filter(|confirmed| *confirmed >= from_block);
        let (events, next_block) = match confirmed {
            Some(confirmed) => {
                let to_block = confirmed
                    .min(from_block.saturating_add(self.config.blocks_per_poll_max.max(1) - 1));
                let events = self
                    .logs(
                        vec![
                            Settlement::Deposited::SIGNATURE_HASH,
                            Settlement::WithdrawalRequested::SIGNATURE_HASH,
                            Settlement::WithdrawalCompleted::SIGNATURE_HASH,
                            Settlement::Disputed::SIGNATURE_HASH,
                        ],
                        from_block,
                        to_block,
                    )
                    .await?;
                (events, to_block + 1)
            }
            None => (Vec::new(), from_block),
        };
        let caught_up = confirmed.is_none_or(|confirmed| next_block > confirmed);
        let head_requests = if !caught_up {
            None
        } else if next_block > head {
            Some(Vec::new())
        } else {
            let requests = vec![Settlement::WithdrawalRequested::SIGNATURE_HASH];
            Some(self.logs(requests, next_block, head).await?)
        };
        Ok(WatchBatch {
            events,
            next_block,
            head_requests,
        })
    }

    /// The contract's logs with one of `signatures` in `[from_block, to_block]`, in chain order.
    async fn logs(
        &self,
        signatures: Vec<alloy::primitives::B256>,
        from_block: u64,
        to_block: u64,
    ) -> Result<Vec<ChainEvent>, WatchError> {
        let filter = Filter::new()
            .address(self.contract)
            .event_signature(signatures)
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
        Ok(events)
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
                amount: amount(event.amount)?,
                remaining: amount(event.remaining)?,
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
