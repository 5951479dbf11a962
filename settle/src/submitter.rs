//! Commits sealed epochs to the Settlement contract, one part per transaction.
//!
//! Resubmission is safe by construction: the contract accepts only the next (epoch, part) it
//! expects, so before every transaction the submitter re-reads where the chain stands and sends
//! exactly the part that is missing. After a crash, a dropped transaction, a timeout, a reorg or a
//! nonce clash the next step simply re-reads. The only memory is the operator's one unmined
//! transaction (nonce, fees, hashes), so that a stuck commit is replaced at its nonce with higher
//! fees rather than queued behind; the chain's nonce overrides it whenever they disagree.
//!
//! A commit counts as done only when it is complete at the block `confirmations` below the head,
//! and an open commit's part count is adopted from the chain (parts are cut evenly, so the cut
//! depends only on the number of parts), so a restart with another `part_entries_max` finishes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::{
    eips::BlockId,
    network::ReceiptResponse,
    primitives::{Address, B256, TxHash, U256},
    providers::{DynProvider, Provider},
    signers::local::PrivateKeySigner,
};
use tollgate_engine::PayerKey;
use tollgate_engine::ledger::PartRecord;

use crate::chain::{self, ChainError, Fees, NonceOutcome};
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

impl EpochCommit {
    /// The commit less `shortfalls` (per channel: payer, payee, cut), which the chain does not
    /// cover: each payer's debit and each payee's credit reduced by its cuts. Entries keep their
    /// places, reduced possibly to zero, so the commit is cut into the same parts as before and
    /// the parts already sent stay valid. `None` if a cut exceeds the entry it reduces.
    pub fn less_shortfalls(
        mut self,
        shortfalls: &[(PayerKey, tollgate_engine::Address, u128)],
    ) -> Option<EpochCommit> {
        let mut payer_cuts = BTreeMap::new();
        let mut payee_cuts = BTreeMap::new();
        // A channel the payer paid nothing in the epoch can carry a zero cut; its payee may have
        // no credit entry.
        for &(payer, payee, cut) in shortfalls.iter().filter(|(_, _, cut)| *cut > 0) {
            let payer_cut: &mut u128 = payer_cuts.entry(payer).or_default();
            *payer_cut = payer_cut.checked_add(cut)?;
            let payee_cut: &mut u128 = payee_cuts.entry(payee).or_default();
            *payee_cut = payee_cut.checked_add(cut)?;
        }
        for (payer, debit) in &mut self.debits {
            *debit = debit.checked_sub(payer_cuts.remove(payer).unwrap_or(0))?;
        }
        for (payee, credit) in &mut self.credits {
            *credit = credit.checked_sub(payee_cuts.remove(payee).unwrap_or(0))?;
        }
        // A cut of an entry the commit does not have exceeds it.
        (payer_cuts.is_empty() && payee_cuts.is_empty()).then_some(self)
    }
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
    /// Blocks on top of a commit's block before it counts as final (serve passes its
    /// `confirmations` setting, the deposit watcher's). 0 on a dev chain.
    pub confirmations: u64,
    /// Most a commit transaction offers per gas, base fee included, in wei. A stuck commit is
    /// replaced with higher fees up to this and then waited for.
    pub fee_per_gas_max_wei: u128,
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
            confirmations: 0,
            fee_per_gas_max_wei: 1_000_000_000_000,
        }
    }
}

/// Why an epoch was not (fully) committed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The contract refused a part for a reason no retry can cure (imbalance, wrong
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
    /// A payer's debit exceeds what the contract still holds for it: its exit overtook debits
    /// accepted before it. Nothing of the part was sent; the caller commits the epoch without
    /// the uncovered amount. Boxed: its 128-bit amounts would double every result's size.
    #[error("{0}")]
    Overdraft(Box<Overdraft>),
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

/// The contract's `Overdraft`: what it still holds for a payer is less than the debit sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("epoch {epoch} part {part}: payer {payer} has {available} onchain, debited {amount}")]
pub struct Overdraft {
    /// The epoch.
    pub epoch: u64,
    /// The part.
    pub part: u16,
    /// The payer.
    pub payer: PayerKey,
    /// What the contract still holds for the payer.
    pub available: u128,
    /// The debit sent.
    pub amount: u128,
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

/// How an epoch ended up onchain, `confirmations` blocks deep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnchainEpoch {
    /// Complete, with our root.
    Committed,
    /// The arbiter voided it (between its parts or inside its challenge window): its number is
    /// used up and its amounts belong in a later epoch.
    Voided,
}

/// The result of [`Submitter::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// Committed or voided.
    pub onchain: OnchainEpoch,
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
    /// Epoch of the latest commit not voided (0: none).
    pub live_epoch: u64,
    /// `Some((parts, parts_done))` while `last_epoch` is still missing parts.
    pub open: Option<(u16, u16)>,
}

impl ChainPosition {
    /// Whether `epoch` was started and then voided: a dispute sends the live commit back to the
    /// previous one but never gives its number back, so every started epoch after the live one
    /// is void.
    pub fn voided(&self, epoch: u64) -> bool {
        self.live_epoch < epoch && epoch <= self.last_epoch
    }

    /// The (epoch, part) the contract accepts next.
    pub fn next(&self) -> (u64, u16) {
        match self.open {
            Some((_, done)) => (self.last_epoch, done),
            None => (self.last_epoch.saturating_add(1), 0),
        }
    }
}

/// An epoch's entries in contract types, debits first, ready to be cut into parts.
struct Entries {
    debits: Vec<Settlement::Debit>,
    credits: Vec<U256>,
}

impl Entries {
    fn of(commit: &EpochCommit) -> Result<Self, SubmitError> {
        let debits = commit
            .debits
            .iter()
            .map(|(payer, amount)| Settlement::Debit {
                payerKey: B256::from(payer.0),
                amount: U256::from(*amount),
            })
            .collect();
        let credits = commit
            .credits
            .iter()
            .map(|(payee, amount)| pack_credit(Address::from(payee.0), *amount))
            .collect::<Option<Vec<_>>>()
            .ok_or(SubmitError::TooLarge {
                epoch: commit.epoch,
                reason: "credit above 2^96",
            })?;
        Ok(Self { debits, credits })
    }

    fn len(&self) -> usize {
        self.debits.len() + self.credits.len()
    }

    /// The fewest parts of at most `entries_max` entries (at least one part, even when empty).
    fn parts_for(&self, epoch: u64, entries_max: usize) -> Result<u16, SubmitError> {
        let parts = self.len().div_ceil(entries_max.max(1)).max(1);
        u16::try_from(parts).map_err(|_| SubmitError::TooLarge {
            epoch,
            reason: "more than 65,535 parts",
        })
    }

    /// Where part `index` of `parts` starts: parts are cut evenly, so the cut depends only on the
    /// number of entries and of parts. A run with another `part_entries_max` that adopts an open
    /// commit's part count therefore sends exactly the entries the first run had not sent yet.
    fn cut(&self, index: u16, parts: u16) -> usize {
        let len = self.len();
        let at = len as u128 * u128::from(index) / u128::from(parts.max(1));
        usize::try_from(at).unwrap_or(len).min(len)
    }

    /// Part `index` of `parts`: (debits, credits).
    fn part(&self, index: u16, parts: u16) -> (Vec<Settlement::Debit>, Vec<U256>) {
        let (from, to) = (self.cut(index, parts), self.cut(index + 1, parts));
        let split = self.debits.len();
        let debits = self.debits[from.min(split)..to.min(split)].to_vec();
        let credits = self.credits[from.max(split) - split..to.max(split) - split].to_vec();
        (debits, credits)
    }
}

/// What one step found or did.
enum Step {
    /// The epoch is committed or voided onchain, with the configured confirmations.
    Done(OnchainEpoch),
    /// A part landed.
    Landed(LandedPart),
    /// Something transient went wrong; re-read and try again after a delay.
    Retry(ChainError),
    /// Not a failure: the previous epoch is still in its challenge window, the commit lacks
    /// confirmations, or the chain moved; re-read after this long.
    Wait(Duration),
}

/// The operator's one unmined transaction: its nonce, the fees of the latest copy sent, and the
/// hash of every copy (each replacement adds one; any of them may be the one mined).
#[derive(Debug, Default)]
struct InFlight {
    nonce: u64,
    fees: Option<Fees>,
    hashes: Vec<TxHash>,
}

/// Most blocks [`Submitter::parts_onchain`] reads logs of in one request.
pub const PART_LOGS_BLOCKS_MAX: u64 = 2_000;

/// Copies kept per nonce. Each replacement pays [`chain::FEE_BUMP_PERCENT`] more, so
/// `fee_per_gas_max_wei` ends the bumping long before this; the bound only keeps a pathological
/// run from growing the list.
const COPIES_PER_NONCE_MAX: usize = 64;

/// Sends epochs to one Settlement contract as its operator.
///
/// It is the operator key's nonce allocator: every commit goes out at the account's lowest
/// unmined nonce, one transaction at a time (a part is sent only once the previous one is mined),
/// and a transaction that is not mined within `receipt_timeout_ms` is replaced at the same nonce
/// with higher fees instead of being queued behind. Clones share the allocator; run one
/// `Submitter` per operator key and nothing else with that key.
#[derive(Debug, Clone)]
pub struct Submitter {
    provider: DynProvider,
    contract: Settlement::SettlementInstance<DynProvider>,
    operator: Address,
    config: SubmitConfig,
    /// Held for a whole [`Submitter::submit`]: at most one transaction in flight per key.
    in_flight: Arc<tokio::sync::Mutex<Option<InFlight>>>,
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
            operator: key,
            config,
            in_flight: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// The contract instance, for reads.
    pub fn contract(&self) -> &Settlement::SettlementInstance<DynProvider> {
        &self.contract
    }

    /// Reads which epoch and part the contract expects next, at the newest block.
    pub async fn position(&self) -> Result<ChainPosition, ChainError> {
        self.position_at(BlockId::latest()).await
    }

    /// Reads which epoch and part the contract expected next at `block`.
    async fn position_at(&self, block: BlockId) -> Result<ChainPosition, ChainError> {
        let last_epoch = self.contract.lastEpoch().block(block).call().await?;
        let live_seq = self.contract.liveSeq().block(block).call().await?;
        if live_seq == 0 {
            return Ok(ChainPosition {
                last_epoch,
                live_epoch: 0,
                open: None,
            });
        }
        let commit = self.contract.commits(live_seq).block(block).call().await?;
        let open = (commit.partsDone != commit.parts).then_some((commit.parts, commit.partsDone));
        Ok(ChainPosition {
            last_epoch,
            live_epoch: commit.epoch,
            open,
        })
    }

    /// Commits `commit` completely, starting from whatever part the chain already has, and
    /// returns once the whole commit has `confirmations` blocks on top. A reorg that drops a part
    /// meanwhile gets it sent again. Retries transient failures with exponential backoff up to
    /// `attempts_max` in a row.
    pub async fn submit(&self, commit: &EpochCommit) -> Result<SubmitOutcome, SubmitError> {
        self.submit_reporting(commit, |_| async { Ok::<(), SubmitError>(()) })
            .await
    }

    /// [`Submitter::submit`], handing each part that lands (is mined) to `on_landed` before
    /// anything else is sent, so the caller can record it: a crash after part k then loses no
    /// record of parts 0..=k. An error from `on_landed` ends the submission with that error.
    pub async fn submit_reporting<E, Report>(
        &self,
        commit: &EpochCommit,
        mut on_landed: impl FnMut(LandedPart) -> Report,
    ) -> Result<SubmitOutcome, E>
    where
        E: From<SubmitError>,
        Report: std::future::Future<Output = Result<(), E>>,
    {
        let entries = Entries::of(commit)?;
        let planned = entries.parts_for(commit.epoch, self.config.part_entries_max)?;
        let mut in_flight = self.in_flight.lock().await;
        let mut landed: Vec<LandedPart> = Vec::new();
        let mut parts = planned;
        let mut failures = 0u32;
        loop {
            let step = match self
                .step(commit, &entries, planned, &mut parts, &mut in_flight)
                .await
            {
                Ok(step) => step,
                Err(SubmitError::Chain(error)) if error.is_transient() => Step::Retry(error),
                Err(error) => return Err(error.into()),
            };
            match step {
                Step::Done(onchain) => {
                    return Ok(SubmitOutcome {
                        onchain,
                        landed,
                        parts,
                    });
                }
                Step::Landed(part) => {
                    on_landed(part).await?;
                    failures = 0;
                    // A part sent again after a reorg replaces the copy that was dropped.
                    landed.retain(|earlier| earlier.part != part.part);
                    landed.push(part);
                }
                Step::Wait(delay) => tokio::time::sleep(delay).await,
                Step::Retry(error) => {
                    failures += 1;
                    if failures >= self.config.attempts_max {
                        return Err(SubmitError::Unavailable {
                            attempts: failures,
                            last: error,
                        }
                        .into());
                    }
                    tracing::warn!(epoch = commit.epoch, failures, %error, "settlement submit failed, retrying");
                    tokio::time::sleep(chain::backoff(
                        self.config.backoff_initial_ms,
                        self.config.backoff_max_ms,
                        failures,
                    ))
                    .await;
                }
            }
        }
    }

    /// Re-reads the chain at its newest block, then sends the one part it expects (if any), or
    /// checks that the complete commit is deep enough. `parts` is the epoch's part count: the
    /// open commit's when the chain has one for this epoch, `planned` otherwise.
    async fn step(
        &self,
        commit: &EpochCommit,
        entries: &Entries,
        planned: u16,
        parts: &mut u16,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Step, SubmitError> {
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(ChainError::from)?;
        let position = self.position_at(head.into()).await?;
        if position.voided(commit.epoch) {
            return self.voided(commit, head).await;
        }
        let (next_epoch, next_part) = position.next();
        if commit.epoch > next_epoch {
            return Err(SubmitError::Gap {
                epoch: commit.epoch,
                next_expected: next_epoch,
            });
        }
        if commit.epoch < next_epoch || next_part > 0 {
            // Already (at least partly) onchain: it must be our root.
            self.check_root(commit, head.into()).await?;
        }
        if commit.epoch < next_epoch {
            return self.finality(commit, head).await;
        }
        *parts = match position.open {
            Some((onchain, _)) => {
                if onchain != planned {
                    tracing::warn!(
                        epoch = commit.epoch,
                        onchain,
                        planned,
                        "the open commit was split into another number of parts (part_entries_max changed); finishing it with the chain's"
                    );
                }
                onchain
            }
            None => planned,
        };
        self.send_part(commit, entries, (next_part, *parts), head, in_flight)
            .await
    }

    /// The parts of `epoch` the chain holds (its `EpochCommitted` events), for parts an earlier
    /// run sent but did not record. Reads one range of logs, from `not_before` (a block no part
    /// of the epoch can precede) to the head, but never more than [`PART_LOGS_BLOCKS_MAX`]
    /// blocks back, which public nodes serve in one `eth_getLogs`: parts older than that are
    /// not found.
    pub async fn parts_onchain(
        &self,
        epoch: u64,
        not_before: u64,
    ) -> Result<Vec<PartRecord>, ChainError> {
        let head = self.provider.get_block_number().await?;
        let from = not_before.max(head.saturating_sub(PART_LOGS_BLOCKS_MAX - 1));
        let logs = self
            .contract
            .EpochCommitted_filter()
            .topic1(B256::from(U256::from(epoch)))
            .from_block(from)
            .to_block(head)
            .query()
            .await?;
        Ok(logs
            .into_iter()
            .filter_map(|(event, log)| {
                Some(PartRecord {
                    part: event.part,
                    tx_hash: log.transaction_hash?.0,
                    block: log.block_number?,
                })
            })
            .collect())
    }

    async fn check_root(&self, commit: &EpochCommit, block: BlockId) -> Result<(), SubmitError> {
        let onchain = self
            .contract
            .roots(commit.epoch)
            .block(block)
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
        Ok(())
    }

    /// The arbiter voided the epoch at `head`: done once that holds `confirmations` blocks deep
    /// too (a reorg can undo the dispute; the next step then finds the commit as it stands).
    async fn voided(&self, commit: &EpochCommit, head: u64) -> Result<Step, SubmitError> {
        let deep = head.saturating_sub(self.config.confirmations);
        if deep == head || self.position_at(deep.into()).await?.voided(commit.epoch) {
            tracing::info!(
                epoch = commit.epoch,
                "epoch voided onchain; nothing more of it is sent"
            );
            return Ok(Step::Done(OnchainEpoch::Voided));
        }
        Ok(Step::Wait(Duration::from_millis(
            self.config.receipt_poll_ms,
        )))
    }

    /// The commit is complete at `head`: done once it is complete, with our root, at the block
    /// `confirmations` below the head too; until then, wait for blocks. If a reorg drops it
    /// meanwhile, the next step sees it missing at the head and sends it again.
    async fn finality(&self, commit: &EpochCommit, head: u64) -> Result<Step, SubmitError> {
        let poll = Duration::from_millis(self.config.receipt_poll_ms);
        let Some(deep) = head.checked_sub(self.config.confirmations) else {
            return Ok(Step::Wait(poll));
        };
        if deep == head {
            return Ok(Step::Done(OnchainEpoch::Committed));
        }
        let (next_epoch, _) = self.position_at(deep.into()).await?.next();
        let root = self
            .contract
            .roots(commit.epoch)
            .block(deep.into())
            .call()
            .await
            .map_err(ChainError::from)?;
        if commit.epoch < next_epoch && root == commit.root {
            return Ok(Step::Done(OnchainEpoch::Committed));
        }
        Ok(Step::Wait(poll))
    }

    /// Sends part `part_no` at the operator's lowest unmined nonce (replacing our own stuck copy
    /// at that nonce with higher fees) and waits for it to be mined.
    async fn send_part(
        &self,
        commit: &EpochCommit,
        entries: &Entries,
        (part_no, parts): (u16, u16),
        head: u64,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Step, SubmitError> {
        let (debits, credits) = entries.part(part_no, parts);
        // Simulated and estimated at the block the position was read at, never against the
        // node's pending state: there our own stuck copy has already "landed", and the
        // replacement would be refused as a duplicate part.
        let call = self
            .contract
            .commitEpoch(commit.epoch, part_no, parts, commit.root, debits, credits)
            .block(head.into());
        // Simulate first: a revert comes back as the contract's decoded custom error and costs no gas.
        if let Err(error) = call.call().await {
            return self.classify_revert(commit.epoch, part_no, error).await;
        }
        let gas = match call.estimate_gas().await {
            Ok(gas) => gas,
            Err(error) => return self.classify_revert(commit.epoch, part_no, error).await,
        };
        let nonce = self
            .provider
            .get_transaction_count(self.operator)
            .latest()
            .await
            .map_err(ChainError::from)?;
        // Our earlier copy at this nonce is still unmined: replace it. Any other nonce of ours
        // was mined (or dropped by a reorg) since, and the chain has been re-read.
        let flight = match in_flight.take() {
            Some(flight) if flight.nonce == nonce => flight,
            _ => InFlight {
                nonce,
                ..InFlight::default()
            },
        };
        let flight = in_flight.insert(flight);
        let cap = self.config.fee_per_gas_max_wei;
        let now = Fees::estimate(&self.provider, cap).await?;
        let fees = match flight.fees {
            None => Some(now),
            Some(sent) => sent.bumped(now, cap),
        };
        match fees {
            Some(fees) => {
                let sending = call
                    .gas(gas)
                    .nonce(nonce)
                    .max_fee_per_gas(fees.max_fee_per_gas)
                    .max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
                // Recorded before sending: if the node took it but the answer was lost, the
                // next copy must outbid it.
                flight.fees = Some(fees);
                match sending.send().await {
                    Ok(pending) => {
                        let tx_hash = *pending.tx_hash();
                        if flight.hashes.len() == COPIES_PER_NONCE_MAX {
                            flight.hashes.remove(0);
                        }
                        flight.hashes.push(tx_hash);
                        let replacing = flight.hashes.len() > 1;
                        if replacing {
                            metrics::counter!(crate::telemetry::TX_REPLACEMENTS).increment(1);
                        }
                        tracing::info!(
                            epoch = commit.epoch,
                            part = part_no,
                            parts,
                            nonce,
                            max_fee_per_gas = fees.max_fee_per_gas,
                            replacing,
                            %tx_hash,
                            "epoch part sent"
                        );
                    }
                    Err(error) => return self.classify_revert(commit.epoch, part_no, error).await,
                }
            }
            None => tracing::warn!(
                epoch = commit.epoch,
                nonce,
                fee_per_gas_max_wei = cap,
                "commit stuck at the fee cap; waiting for it instead of outbidding it"
            ),
        }
        let outcome = chain::wait_for_nonce(
            &self.provider,
            self.operator,
            nonce,
            &flight.hashes,
            Duration::from_millis(self.config.receipt_poll_ms),
            Duration::from_millis(self.config.receipt_timeout_ms),
        )
        .await;
        let receipt = match outcome {
            Ok(NonceOutcome::Mined(receipt)) => receipt,
            // Another transaction took the nonce: re-read the chain at once.
            Ok(NonceOutcome::Taken) => {
                *in_flight = None;
                return Ok(Step::Wait(Duration::ZERO));
            }
            // Dropped or stuck: the next step re-reads the chain and, if the part is still
            // missing, replaces the copy at this nonce.
            Ok(NonceOutcome::Unmined) => {
                let newest = flight.hashes.last().copied().unwrap_or_default();
                return Ok(Step::Retry(ChainError::ReceiptTimeout(newest)));
            }
            Err(error) => return Ok(Step::Retry(error)),
        };
        *in_flight = None;
        let tx_hash = receipt.transaction_hash;
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
            // The contract's amounts are 96-bit, so they always fit.
            Some(E::Overdraft(overdraft)) => Err(SubmitError::Overdraft(Box::new(Overdraft {
                epoch,
                part,
                payer: PayerKey(overdraft.payerKey.0),
                available: overdraft.available.saturating_to(),
                amount: overdraft.amount.saturating_to(),
            }))),
            Some(decoded) => Err(SubmitError::Rejected {
                epoch,
                part,
                reason: format!("{decoded:?}"),
            }),
            // Not one of ours (a node error, an underpriced replacement, garbage): re-read and
            // retry, bounded by `attempts_max`, after which the caller sees this error in
            // `Unavailable`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::Address;

    #[test]
    fn shortfalls_reduce_entries_in_place_and_a_cut_beyond_its_entry_is_refused() {
        let (payer_a, payer_b) = (PayerKey([1; 32]), PayerKey([2; 32]));
        let (payee_x, payee_y, payee_z) = (Address([8; 20]), Address([9; 20]), Address([7; 20]));
        let commit = EpochCommit {
            epoch: 4,
            root: B256::repeat_byte(3),
            debits: vec![(payer_a, 10), (payer_b, 6)],
            credits: vec![(payee_x, 9), (payee_y, 7)],
        };
        // Payer a's 10 is covered to 1: 6 cut from x, 3 from y; a zero cut on a channel whose
        // payee has no credit entry (z) changes nothing.
        let cuts = [
            (payer_a, payee_x, 6),
            (payer_a, payee_y, 3),
            (payer_a, payee_z, 0),
        ];
        let covered = commit.clone().less_shortfalls(&cuts).expect("covered");
        assert_eq!(covered.root, commit.root);
        assert_eq!(covered.debits, vec![(payer_a, 1), (payer_b, 6)]);
        assert_eq!(covered.credits, vec![(payee_x, 3), (payee_y, 4)]);
        // Cut to zero, the entry keeps its place.
        let all = [(payer_b, payee_y, 6)];
        let zeroed = commit.clone().less_shortfalls(&all).expect("covered");
        assert_eq!(zeroed.debits, vec![(payer_a, 10), (payer_b, 0)]);
        assert_eq!(zeroed.credits, vec![(payee_x, 9), (payee_y, 1)]);
        for beyond in [
            [(payer_b, payee_y, 7)],
            [(payer_b, payee_z, 1)],
            [(PayerKey([5; 32]), payee_x, 1)],
        ] {
            assert_eq!(commit.clone().less_shortfalls(&beyond), None, "{beyond:?}");
        }
    }
}
