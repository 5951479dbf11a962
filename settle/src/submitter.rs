//! Commits sealed epochs to the Settlement contract, one part per transaction.
//!
//! Resubmission is safe by construction: the contract accepts only the next (epoch, part) it
//! expects, so before every transaction the submitter re-reads where the chain stands and sends
//! exactly the part that is missing. After a crash, a dropped transaction, a timeout or a nonce
//! clash the next step simply re-reads; nothing is remembered that the chain could contradict.

use std::time::Duration;

use alloy::{
    network::ReceiptResponse,
    primitives::{Address, B256, TxHash, U256},
    providers::{DynProvider, Provider},
    signers::local::PrivateKeySigner,
};
use tollgate_engine::PayerKey;

use crate::chain::{self, ChainError};
use crate::contract::{Settlement, pack_credit};

/// What one epoch commits: the root and the net movements since the previous epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochCommit {
    /// Epoch number; the contract takes 1, 2, 3, ... in order.
    pub epoch: u64,
    /// Root of the epoch's [`crate::merkle::EpochTree`].
    pub root: B256,
    /// Net debit per payer since the previous epoch.
    pub debits: Vec<(PayerKey, u128)>,
    /// Net credit per payee since the previous epoch.
    pub credits: Vec<(tollgate_engine::Address, u128)>,
}

/// Submitter limits. Defaults suit a public chain with 30M-gas blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitConfig {
    /// Debits plus credits per transaction. At about 6,000 gas per entry 1,500 entries use about
    /// 9M gas, well inside a block.
    pub part_entries_max: usize,
    /// Failed attempts in a row (RPC errors, timeouts, lost transactions) before giving up for now.
    pub attempts_max: u32,
    /// First retry delay; doubles per failed attempt.
    pub backoff_initial_ms: u64,
    /// Ceiling of the retry delay.
    pub backoff_max_ms: u64,
    /// How long to wait for a sent transaction's receipt before re-reading the chain.
    pub receipt_timeout_ms: u64,
    /// How often to ask for the receipt meanwhile.
    pub receipt_poll_ms: u64,
}

impl Default for SubmitConfig {
    fn default() -> Self {
        Self {
            part_entries_max: 1_500,
            attempts_max: 8,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            receipt_timeout_ms: 120_000,
            receipt_poll_ms: 1_000,
        }
    }
}

/// Why an epoch was not (fully) committed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The contract refused a part for a reason no retry can cure (overdraft, imbalance, wrong
    /// operator, ...): the sealed epoch or the configuration is wrong.
    #[error("epoch {epoch} part {part} rejected by the contract: {reason}")]
    Rejected {
        /// The epoch.
        epoch: u64,
        /// The part.
        part: u16,
        /// The decoded custom error.
        reason: String,
    },
    /// The chain holds another root for this epoch than the one we built.
    #[error("epoch {epoch}: chain has root {onchain}, ours is {ours}")]
    RootConflict {
        /// The epoch.
        epoch: u64,
        /// The root onchain.
        onchain: B256,
        /// Our root.
        ours: B256,
    },
    /// An earlier epoch is not committed yet: epochs go onchain strictly in order.
    #[error("epoch {epoch} cannot be committed before epoch {next_expected}")]
    Gap {
        /// The epoch we were asked to commit.
        epoch: u64,
        /// The epoch the contract expects next.
        next_expected: u64,
    },
    /// The chain's open commit of this epoch was split into another number of parts.
    #[error("epoch {epoch}: chain expects {onchain} parts, we have {ours}")]
    PartsMismatch {
        /// The epoch.
        epoch: u64,
        /// Parts onchain.
        onchain: u16,
        /// Parts we built.
        ours: u16,
    },
    /// More parts than the contract's 16-bit part counter, or an amount above its 96-bit balances.
    #[error("epoch {epoch} does not fit the contract: {reason}")]
    TooLarge {
        /// The epoch.
        epoch: u64,
        /// What does not fit.
        reason: &'static str,
    },
    /// The chain kept failing; the epoch stays queued and can be submitted again later.
    #[error("chain unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: ChainError,
    },
    /// A chain failure that retrying cannot cure.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// One part that landed in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandedPart {
    /// Part number.
    pub part: u16,
    /// Transaction hash.
    pub tx_hash: TxHash,
    /// Block it was mined in.
    pub block: u64,
    /// Gas it used.
    pub gas_used: u64,
}

/// The result of [`Submitter::submit`]: the epoch is complete onchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// Parts this call sent; empty when an earlier run had already committed everything.
    pub landed: Vec<LandedPart>,
    /// Number of parts the epoch was split into.
    pub parts: u16,
}

/// The contract's position: which epoch and part it expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPosition {
    /// Highest epoch whose commit has started.
    pub last_epoch: u64,
    /// `Some((parts, parts_done))` while `last_epoch` is still missing parts.
    pub open: Option<(u16, u16)>,
}

impl ChainPosition {
    /// The (epoch, part) the contract accepts next.
    pub fn next(&self) -> (u64, u16) {
        match self.open {
            Some((_, done)) => (self.last_epoch, done),
            None => (self.last_epoch.saturating_add(1), 0),
        }
    }
}

/// One transaction's worth of entries, in contract types.
#[derive(Clone, Debug, Default)]
struct Part {
    debits: Vec<Settlement::Debit>,
    credits: Vec<U256>,
}

/// Splits an epoch into parts of at most `entries_max` entries, debits first.
fn split_parts(commit: &EpochCommit, entries_max: usize) -> Result<Vec<Part>, SubmitError> {
    let too_large = |reason| SubmitError::TooLarge {
        epoch: commit.epoch,
        reason,
    };
    let entries_max = entries_max.max(1);
    let mut parts = vec![Part::default()];
    let mut room = entries_max;
    let mut next_slot = |parts: &mut Vec<Part>| {
        if room == 0 {
            parts.push(Part::default());
            room = entries_max;
        }
        room -= 1;
    };
    for (payer, amount) in &commit.debits {
        next_slot(&mut parts);
        let last = parts.len() - 1;
        parts[last].debits.push(Settlement::Debit {
            payerKey: B256::from(payer.0),
            amount: U256::from(*amount),
        });
    }
    for (payee, amount) in &commit.credits {
        next_slot(&mut parts);
        let packed =
            pack_credit(Address::from(payee.0), *amount).ok_or(too_large("credit above 2^96"))?;
        let last = parts.len() - 1;
        parts[last].credits.push(packed);
    }
    if u16::try_from(parts.len()).is_err() {
        return Err(too_large("more than 65,535 parts"));
    }
    Ok(parts)
}

/// What one step found or did.
enum Step {
    /// The epoch is complete onchain.
    Done,
    /// A part landed.
    Landed(LandedPart),
    /// Something transient went wrong; re-read and try again after a delay.
    Retry(ChainError),
    /// The previous epoch is still in its challenge window; try again after this long.
    Wait(Duration),
}

/// Sends epochs to one Settlement contract as its operator.
#[derive(Debug, Clone)]
pub struct Submitter {
    provider: DynProvider,
    contract: Settlement::SettlementInstance<DynProvider>,
    config: SubmitConfig,
}

impl Submitter {
    /// Connects and checks, before anything is sent: the chain id, that the contract exists, and
    /// that `operator` is the contract's operator.
    pub async fn connect(
        rpc_url: &str,
        expected_chain_id: u64,
        contract: Address,
        operator: PrivateKeySigner,
        config: SubmitConfig,
    ) -> Result<Self, ChainError> {
        let key = operator.address();
        let provider = chain::wallet_provider(rpc_url, operator)?;
        chain::check_chain_id(&provider, expected_chain_id).await?;
        chain::check_code(&provider, contract).await?;
        let contract = Settlement::new(contract, provider.clone());
        let contract_operator = contract.operator().call().await?;
        if contract_operator != key {
            return Err(ChainError::NotOperator {
                contract_operator,
                key,
            });
        }
        Ok(Self {
            provider,
            contract,
            config,
        })
    }

    /// The contract instance, for reads.
    pub fn contract(&self) -> &Settlement::SettlementInstance<DynProvider> {
        &self.contract
    }

    /// Reads which epoch and part the contract expects next.
    pub async fn position(&self) -> Result<ChainPosition, ChainError> {
        let last_epoch = self.contract.lastEpoch().call().await?;
        let live_seq = self.contract.liveSeq().call().await?;
        if live_seq == 0 {
            return Ok(ChainPosition {
                last_epoch,
                open: None,
            });
        }
        let commit = self.contract.commits(live_seq).call().await?;
        let open = (commit.partsDone != commit.parts).then_some((commit.parts, commit.partsDone));
        Ok(ChainPosition { last_epoch, open })
    }

    /// Commits `commit` completely, starting from whatever part the chain already has. Retries
    /// transient failures with exponential backoff up to `attempts_max` in a row.
    pub async fn submit(&self, commit: &EpochCommit) -> Result<SubmitOutcome, SubmitError> {
        let parts = split_parts(commit, self.config.part_entries_max)?;
        let parts_count = u16::try_from(parts.len()).map_err(|_| SubmitError::TooLarge {
            epoch: commit.epoch,
            reason: "more than 65,535 parts",
        })?;
        let mut landed = Vec::new();
        let mut failures = 0u32;
        loop {
            let step = match self.step(commit, &parts, parts_count).await {
                Ok(step) => step,
                Err(SubmitError::Chain(error)) if error.is_transient() => Step::Retry(error),
                Err(error) => return Err(error),
            };
            match step {
                Step::Done => {
                    return Ok(SubmitOutcome {
                        landed,
                        parts: parts_count,
                    });
                }
                Step::Landed(part) => {
                    failures = 0;
                    landed.push(part);
                }
                Step::Wait(delay) => tokio::time::sleep(delay).await,
                Step::Retry(error) => {
                    failures += 1;
                    if failures >= self.config.attempts_max {
                        return Err(SubmitError::Unavailable {
                            attempts: failures,
                            last: error,
                        });
                    }
                    tracing::warn!(epoch = commit.epoch, failures, %error, "settlement submit failed, retrying");
                    tokio::time::sleep(self.backoff(failures)).await;
                }
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u64 << failures.saturating_sub(1).min(16);
        Duration::from_millis(
            self.config
                .backoff_initial_ms
                .saturating_mul(factor)
                .min(self.config.backoff_max_ms),
        )
    }

    /// Re-reads the chain, then sends the one part it expects (if any).
    async fn step(
        &self,
        commit: &EpochCommit,
        parts: &[Part],
        parts_count: u16,
    ) -> Result<Step, SubmitError> {
        let position = self.position().await?;
        let (next_epoch, next_part) = position.next();
        if commit.epoch < next_epoch {
            // Already (at least partly) onchain: it must be our root.
            let onchain = self
                .contract
                .roots(commit.epoch)
                .call()
                .await
                .map_err(ChainError::from)?;
            if onchain != commit.root {
                return Err(SubmitError::RootConflict {
                    epoch: commit.epoch,
                    onchain,
                    ours: commit.root,
                });
            }
            if next_part == 0 || commit.epoch < position.last_epoch {
                return Ok(Step::Done);
            }
            if let Some((onchain_parts, _)) = position.open
                && onchain_parts != parts_count
            {
                return Err(SubmitError::PartsMismatch {
                    epoch: commit.epoch,
                    onchain: onchain_parts,
                    ours: parts_count,
                });
            }
        } else if commit.epoch > next_epoch {
            return Err(SubmitError::Gap {
                epoch: commit.epoch,
                next_expected: next_epoch,
            });
        }
        let Some(part) = parts.get(usize::from(next_part)) else {
            return Err(SubmitError::PartsMismatch {
                epoch: commit.epoch,
                onchain: next_part.saturating_add(1),
                ours: parts_count,
            });
        };
        self.send_part(commit, next_part, parts_count, part).await
    }

    async fn send_part(
        &self,
        commit: &EpochCommit,
        part_no: u16,
        parts: u16,
        part: &Part,
    ) -> Result<Step, SubmitError> {
        let call = self.contract.commitEpoch(
            commit.epoch,
            part_no,
            parts,
            commit.root,
            part.debits.clone(),
            part.credits.clone(),
        );
        // Simulate first: a revert comes back as the contract's decoded custom error and costs no gas.
        if let Err(error) = call.call().await {
            return self.classify_revert(commit.epoch, part_no, error).await;
        }
        let pending = match call.send().await {
            Ok(pending) => pending,
            Err(error) => return self.classify_revert(commit.epoch, part_no, error).await,
        };
        let tx_hash = *pending.tx_hash();
        tracing::info!(epoch = commit.epoch, part = part_no, parts, %tx_hash, "epoch part sent");
        let receipt = match chain::wait_for_receipt(
            &self.provider,
            tx_hash,
            Duration::from_millis(self.config.receipt_poll_ms),
            Duration::from_millis(self.config.receipt_timeout_ms),
        )
        .await
        {
            Ok(Some(receipt)) => receipt,
            // Dropped or stuck: the next step re-reads the chain and resends only if still missing.
            Ok(None) => return Ok(Step::Retry(ChainError::ReceiptTimeout(tx_hash))),
            Err(error) => return Ok(Step::Retry(error)),
        };
        if !receipt.status() {
            // Reverted after a successful simulation: the chain moved under us (a competing or
            // earlier copy landed first). Re-read and decide again.
            return Ok(Step::Retry(ChainError::Reverted(tx_hash)));
        }
        Ok(Step::Landed(LandedPart {
            part: part_no,
            tx_hash,
            block: receipt.block_number().unwrap_or_default(),
            gas_used: receipt.gas_used(),
        }))
    }

    async fn classify_revert(
        &self,
        epoch: u64,
        part: u16,
        error: alloy::contract::Error,
    ) -> Result<Step, SubmitError> {
        use Settlement::SettlementErrors as E;
        match error.as_decoded_interface_error::<E>() {
            // Our reading of the position was stale: re-read.
            Some(E::UnexpectedPart(_)) => Ok(Step::Retry(ChainError::Contract(error))),
            Some(E::PreviousEpochNotFinal(not_final)) => {
                let now = self.chain_time().await?;
                let wait_secs = not_final.finalAt.saturating_sub(now).clamp(1, 60);
                Ok(Step::Wait(Duration::from_secs(wait_secs)))
            }
            Some(decoded) => Err(SubmitError::Rejected {
                epoch,
                part,
                reason: format!("{decoded:?}"),
            }),
            // Not one of ours (a node error, a nonce clash, garbage): re-read and retry, bounded by
            // `attempts_max`, after which the caller sees this error in `Unavailable`.
            None => Ok(Step::Retry(ChainError::Contract(error))),
        }
    }

    async fn chain_time(&self) -> Result<u64, ChainError> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await?;
        Ok(block
            .map(|block| block.header.timestamp)
            .unwrap_or_default())
    }
}
