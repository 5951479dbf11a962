//! What the chain says an epoch committed, for auditors and the watchtower: its root, every debit
//! and credit (decoded from the calldata of the commit transactions, since the contract keeps only
//! running balances), whether the arbiter voided it, and whether it is final; and what each payer
//! deposited. Nothing here trusts the operator's API: it reads logs and transactions only.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::sol_types::SolCall;
use tollgate_engine::PayerKey;

use crate::chain::{ChainError, ContractReader};
use crate::contract::Settlement;

/// One epoch as the chain holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnchainEpoch {
    /// The epoch.
    pub epoch: u64,
    /// The root its parts committed.
    pub root: B256,
    /// Parts landed, of how many.
    pub parts_landed: u16,
    /// Parts the commit was split into.
    pub parts: u16,
    /// Every debit of every landed part, summed per payer.
    pub debits: BTreeMap<PayerKey, u128>,
    /// Every credit of every landed part, summed per payee.
    pub credits: BTreeMap<tollgate_engine::Address, u128>,
    /// Whether the arbiter voided it.
    pub disputed: bool,
    /// Block of the last part landed.
    pub last_block: u64,
    /// That block's timestamp (unix seconds).
    pub completed_at: u64,
}

impl OnchainEpoch {
    /// Whether every part landed.
    pub fn complete(&self) -> bool {
        self.parts_landed == self.parts
    }
}

fn amount(what: &str, value: U256) -> Result<u128, ChainError> {
    u128::try_from(value).map_err(|_| ChainError::BadAnswer(format!("{what} {value} exceeds u128")))
}

fn add(total: &mut u128, amount: u128, what: &str) -> Result<(), ChainError> {
    *total = total
        .checked_add(amount)
        .ok_or_else(|| ChainError::BadAnswer(format!("{what} overflows u128")))?;
    Ok(())
}

impl ContractReader {
    /// `epoch` as committed onchain between blocks `from` and the head, or `None` if no part of
    /// it landed there. When the number was committed more than once (a part sent again after a
    /// reorg), the parts of the latest commit sequence count.
    pub async fn onchain_epoch(
        &self,
        epoch: u64,
        from: u64,
    ) -> Result<Option<OnchainEpoch>, ChainError> {
        let settlement = Settlement::new(self.address(), self.provider().clone());
        let logs = settlement
            .EpochCommitted_filter()
            .topic1(B256::from(U256::from(epoch)))
            .from_block(from)
            .query()
            .await?;
        let Some(seq) = logs.iter().map(|(event, _)| event.seq).max() else {
            return Ok(None);
        };
        let mut parts = BTreeMap::new();
        for (event, log) in logs.into_iter().filter(|(event, _)| event.seq == seq) {
            let tx = log
                .transaction_hash
                .ok_or_else(|| ChainError::BadAnswer("commit log without a transaction".into()))?;
            parts.insert(
                event.part,
                (event, tx, log.block_number.unwrap_or_default()),
            );
        }
        let mut onchain = OnchainEpoch {
            epoch,
            root: B256::ZERO,
            parts_landed: 0,
            parts: 0,
            debits: BTreeMap::new(),
            credits: BTreeMap::new(),
            disputed: false,
            last_block: 0,
            completed_at: 0,
        };
        for (event, tx, block) in parts.into_values() {
            let transaction = self
                .provider()
                .get_transaction_by_hash(tx)
                .await?
                .ok_or_else(|| {
                    ChainError::BadAnswer(format!("commit transaction {tx} not found"))
                })?;
            let input = alloy::consensus::Transaction::input(&transaction);
            let call = Settlement::commitEpochCall::abi_decode(input).map_err(|e| {
                ChainError::BadAnswer(format!(
                    "commit transaction {tx}: not a commitEpoch call: {e}"
                ))
            })?;
            for debit in call.debits {
                let value = amount("debit", debit.amount)?;
                add(
                    onchain
                        .debits
                        .entry(PayerKey(debit.payerKey.0))
                        .or_default(),
                    value,
                    "debits",
                )?;
            }
            for word in call.credits {
                // The payee is the word's low 160 bits, the amount the rest.
                let payee = Address::from_word(B256::from(word));
                let value = amount("credit", word >> 160)?;
                add(
                    onchain
                        .credits
                        .entry(tollgate_engine::Address(payee.0.0))
                        .or_default(),
                    value,
                    "credits",
                )?;
            }
            onchain.root = event.root;
            onchain.parts = event.parts;
            onchain.parts_landed += 1;
            onchain.last_block = onchain.last_block.max(block);
        }
        onchain.completed_at = self
            .provider()
            .get_block_by_number(onchain.last_block.into())
            .await?
            .map_or(0, |block| block.header.timestamp);
        onchain.disputed = !settlement
            .Disputed_filter()
            .topic1(B256::from(U256::from(epoch)))
            .from_block(from)
            .query()
            .await?
            .into_iter()
            .filter(|(event, _)| event.seq == seq)
            .collect::<Vec<_>>()
            .is_empty();
        Ok(Some(onchain))
    }

    /// The key the contract takes disputes from.
    pub async fn arbiter(&self) -> Result<Address, ChainError> {
        Ok(Settlement::new(self.address(), self.provider().clone())
            .arbiter()
            .call()
            .await?)
    }

    /// Everything each payer deposited from block `from` to the head (`Deposited` events).
    pub async fn deposits(&self, from: u64) -> Result<BTreeMap<PayerKey, u128>, ChainError> {
        let settlement = Settlement::new(self.address(), self.provider().clone());
        let mut deposits = BTreeMap::new();
        for (event, _) in settlement
            .Deposited_filter()
            .from_block(from)
            .query()
            .await?
        {
            let value = amount("deposit", event.amount)?;
            add(
                deposits.entry(PayerKey(event.payerKey.0)).or_default(),
                value,
                "deposits",
            )?;
        }
        Ok(deposits)
    }
}
