//! The engine glue: the settlement loop (seal, build the tree, persist, submit, mark committed)
//! and the funds loop (chain events into the ledger's funds check).
//!
//! Both loops keep nothing in memory that a restart could lose: the ledger holds every epoch's
//! status and root and the funds cursor, and the contract holds the next (epoch, part) it will
//! take. After a crash at any point, `EpochLoop::run` re-reads the epochs that are sealed but not
//! committed, rebuilds each tree from the stored leaves (checking it against the stored root), and
//! the submitter sends only what the chain still lacks, so every epoch ends committed exactly once.

use crate::telemetry as names;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::B256;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tollgate_engine::{
    PayerKey,
    ledger::{
        EpochRecord, EpochStatus, EpochUpdate, FundsEvent, FundsKind, PartRecord, SealedEpoch,
    },
    pipeline::{Engine, EngineError, SubmitError as EngineSubmitError},
    store::StoreError,
};

use crate::chain;
use crate::merkle::{EpochTree, MerkleError};
use crate::submitter::{
    EpochCommit, LandedPart, OnchainEpoch, Overdraft, SubmitError, SubmitOutcome, Submitter,
};
use crate::watcher::{ChainEvent, LedgerNews, WatchBatch, WatchError, Watcher, head_withdrawals};

/// When to close an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochConfig {
    /// Seal at least this often (when the open epoch holds anything).
    pub epoch_interval_ms: u64,
    /// Seal as soon as the open epoch holds this many receipts.
    pub epoch_receipts_max: u64,
    /// How often to look at the open epoch and the backlog.
    pub tick_ms: u64,
    /// Epochs the receipt archive keeps after one is final onchain: the archive is pruned
    /// through `e - archive_retention_epochs`, `e` the newest epoch that is final with every
    /// epoch before it (see [`EpochLoop::prune_archive`]).
    pub archive_retention_epochs: u64,
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            epoch_interval_ms: 60_000,
            epoch_receipts_max: 1_000_000,
            tick_ms: 500,
            archive_retention_epochs: 24,
        }
    }
}

/// Why a loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The engine failed (fatal errors such as a poisoned ledger included).
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The ledger could not be read.
    #[error("ledger read: {0}")]
    Store(#[from] StoreError),
    /// The engine stopped taking requests (shut down).
    #[error("engine closed")]
    Closed,
    /// A sealed epoch the ledger lists has no stored entries.
    #[error("epoch {0} is listed but its entries are missing")]
    MissingEpoch(u64),
    /// The tree rebuilt from stored leaves differs from the stored root: storage or code changed
    /// under a sealed epoch, and committing either root could be wrong.
    #[error("epoch {epoch}: stored root {stored}, rebuilt root {rebuilt}")]
    RootMismatch {
        /// The epoch.
        epoch: u64,
        /// Root stored at seal time.
        stored: B256,
        /// Root rebuilt now.
        rebuilt: B256,
    },
    /// The epoch's leaves do not form a tree.
    #[error("epoch {epoch}: {source}")]
    Merkle {
        /// The epoch.
        epoch: u64,
        /// Why.
        source: MerkleError,
    },
    /// The ledger's shortfalls of an epoch exceed its debits or credits: they contradict it.
    #[error("epoch {0}: recorded shortfalls exceed its debits or credits")]
    ShortfallExceeds(u64),
    /// The contract refused the epoch for a reason retrying cannot cure.
    #[error("settlement: {0}")]
    Submit(#[from] SubmitError),
    /// The chain returned something the watcher cannot decode.
    #[error("funds watcher: {0}")]
    Watch(WatchError),
}

/// Sends a control request to the engine and waits for its reply, waiting out a full queue.
async fn engine_call<T>(
    mut send: impl FnMut() -> Result<
        futures_channel::oneshot::Receiver<Result<T, EngineError>>,
        EngineSubmitError,
    >,
) -> Result<T, EpochError> {
    loop {
        match send() {
            Ok(reply) => {
                return reply
                    .await
                    .map_err(|_| EpochError::Closed)?
                    .map_err(EpochError::from);
            }
            Err(EngineSubmitError::Full) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => return Err(EpochError::Closed),
        }
    }
}

async fn record(engine: &Engine, update: EpochUpdate) -> Result<(), EpochError> {
    engine_call(|| engine.record_epoch(update)).await
}

/// The root of a sealed epoch. An epoch whose amounts were all carried in from a disputed one can
/// have no leaf of its own; it still takes its number onchain, with a zero root no proof verifies.
fn root_of(sealed: &SealedEpoch) -> Result<B256, EpochError> {
    if sealed.leaves.is_empty() {
        return Ok(B256::ZERO);
    }
    EpochTree::from_sealed(sealed)
        .map(|tree| tree.root())
        .map_err(|source| EpochError::Merkle {
            epoch: sealed.epoch,
            source,
        })
}

/// Seals epochs and commits them, in order, exactly once.
#[derive(Debug)]
pub struct EpochLoop {
    engine: Engine,
    submitter: Submitter,
    config: EpochConfig,
    /// Every epoch up to this one is committed or disputed: final, never in the backlog again.
    /// Commits land in order, so the backlog scan starts after it instead of re-reading the whole
    /// history on every tick of a long-running server. 0 until the first scan.
    final_through: AtomicU64,
    /// The last epoch asked `isFinal` and when: an epoch still in its challenge window is asked
    /// again only after [`FINAL_RECHECK`], not on every tick.
    final_asked: std::sync::Mutex<Option<(u64, Instant)>>,
}

/// How long an epoch found not final onchain is not asked about again.
const FINAL_RECHECK: Duration = Duration::from_secs(10);

impl EpochLoop {
    /// A loop over `engine` committing through `submitter`.
    pub fn new(engine: Engine, submitter: Submitter, config: EpochConfig) -> Self {
        Self {
            engine,
            submitter,
            config,
            final_through: AtomicU64::new(0),
            final_asked: std::sync::Mutex::new(None),
        }
    }

    /// Runs until `shutdown`. Sealing and committing run side by side, so a chain that is down
    /// (a commit retrying with backoff for minutes) does not stop sealing: sealed epochs queue in
    /// the ledger, `tollgate_settle_backlog_epochs` counts them, and they are committed in order
    /// once the chain answers again.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), EpochError> {
        // After a restart the gauges start from the ledger, not from zero.
        let open = self.engine.reader().open_epoch()?;
        metrics::gauge!(names::LAST_SEALED_EPOCH).set(open.epoch.saturating_sub(1) as f64);
        tokio::try_join!(self.seal_when_due(&shutdown), self.commit_queued(&shutdown))?;
        Ok(())
    }

    async fn seal_when_due(&self, shutdown: &CancellationToken) -> Result<(), EpochError> {
        let interval = Duration::from_millis(self.config.epoch_interval_ms);
        let mut last_seal = Instant::now();
        loop {
            let open = self.engine.reader().open_epoch()?;
            let has_content = open.receipts > 0 || open.amount > 0;
            if has_content
                && (open.receipts >= self.config.epoch_receipts_max
                    || last_seal.elapsed() >= interval)
            {
                self.seal().await?;
                last_seal = Instant::now();
                continue;
            }
            if self.tick(shutdown).await {
                return Ok(());
            }
        }
    }

    async fn commit_queued(&self, shutdown: &CancellationToken) -> Result<(), EpochError> {
        loop {
            // Dropping a commit mid-flight on shutdown is safe: the next start re-reads the
            // chain and sends only what is missing.
            let committed = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                committed = self.commit_backlog() => committed,
            };
            match committed {
                Ok(()) => self.prune_archive().await?,
                Err(EpochError::Submit(SubmitError::Unavailable { attempts, last })) => {
                    tracing::warn!(attempts, error = %last, "settlement chain unavailable; epochs stay queued");
                }
                Err(error) => return Err(error),
            }
            if self.tick(shutdown).await {
                return Ok(());
            }
        }
    }

    /// Waits one tick; true when `shutdown` came first.
    async fn tick(&self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(Duration::from_millis(self.config.tick_ms)) => false,
        }
    }

    /// Seals the open epoch and stores its root. Returns the sealed epoch's number.
    pub async fn seal(&self) -> Result<u64, EpochError> {
        let sealed = engine_call(|| self.engine.seal_epoch()).await?;
        let root = root_of(&sealed)?;
        record(
            &self.engine,
            EpochUpdate {
                epoch: sealed.epoch,
                status: EpochStatus::Sealed,
                root: Some(root.0),
                part: None,
            },
        )
        .await?;
        metrics::gauge!(names::LAST_SEALED_EPOCH).set(sealed.epoch as f64);
        metrics::gauge!(names::BACKLOG_EPOCHS).set(self.backlog()?.len() as f64);
        Ok(sealed.epoch)
    }

    /// Commits every sealed epoch not yet committed, oldest first.
    pub async fn commit_backlog(&self) -> Result<(), EpochError> {
        let pending = self.backlog()?;
        metrics::gauge!(names::BACKLOG_EPOCHS).set(pending.len() as f64);
        for record in pending {
            self.commit(&record).await?;
        }
        // Not simply zero: epochs sealed while these were committed are still waiting.
        metrics::gauge!(names::BACKLOG_EPOCHS).set(self.backlog()?.len() as f64);
        Ok(())
    }

    /// Prunes the receipt archive through `e - archive_retention_epochs`, where `e` is the
    /// highest epoch such that every epoch up to it is committed and final onchain, or disputed
    /// and carried into an epoch at or below `e` (whose leaves hold the disputed one's channels).
    /// Only the newest candidate can be still in its challenge window (the contract opens an
    /// epoch only once the one before is final), so only it is asked about (`isFinal`); when it
    /// is not final yet, the candidate before it is. A chain that does not answer, or an engine
    /// that refuses the prune, leaves it for the next tick: pruning is never urgent.
    pub async fn prune_archive(&self) -> Result<(), EpochError> {
        let reader = self.engine.reader();
        let pruned = reader.archive_pruned_through()?;
        let mut candidates = Vec::new();
        let mut carried_max = 0u64;
        let mut after = pruned;
        'scan: loop {
            let page = reader.epochs(Some(after), 256)?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.epoch;
            for record in page {
                match (record.status, record.carried_into) {
                    (EpochStatus::Committed, _) => {}
                    (EpochStatus::Disputed, Some(into)) => carried_max = carried_max.max(into),
                    _ => break 'scan,
                }
                if record.status == EpochStatus::Committed && carried_max <= record.epoch {
                    candidates.push(record.epoch);
                }
            }
        }
        let retention = self.config.archive_retention_epochs;
        let watermark = |epoch: u64| epoch.saturating_sub(retention);
        let newest = candidates.last().copied();
        let before = candidates.len().checked_sub(2).map(|at| candidates[at]);
        let final_through = match (newest, before) {
            (Some(newest), _) if watermark(newest) > pruned && self.is_final(newest).await => {
                Some(newest)
            }
            (_, Some(before)) => Some(before),
            _ => None,
        };
        let Some(through) = final_through.map(watermark).filter(|w| *w > pruned) else {
            return Ok(());
        };
        match engine_call(|| self.engine.prune_archive(through)).await {
            Ok(()) => {
                tracing::info!(through, "receipt archive pruned");
                Ok(())
            }
            Err(EpochError::Engine(error)) if error.is_refusal() => {
                tracing::warn!(%error, through, "the engine refused to prune the archive");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Whether `epoch` is final onchain; false when the chain does not answer, and without
    /// asking when it was found not final less than [`FINAL_RECHECK`] ago.
    async fn is_final(&self, epoch: u64) -> bool {
        let last = *self
            .final_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|(asked, at)| asked == epoch && at.elapsed() < FINAL_RECHECK) {
            return false;
        }
        let answer = self.submitter.contract().isFinal(epoch).call().await;
        let is_final = match answer {
            Ok(is_final) => is_final,
            Err(error) => {
                tracing::warn!(%error, epoch, "isFinal: the chain did not answer");
                false
            }
        };
        if !is_final {
            *self
                .final_asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((epoch, Instant::now()));
        }
        is_final
    }

    /// Sealed or submitted epochs, oldest first, read from after [`Self::final_through`].
    fn backlog(&self) -> Result<Vec<EpochRecord>, EpochError> {
        let reader = self.engine.reader();
        let mut pending = Vec::new();
        let mut after = self.final_through.load(Ordering::Relaxed);
        let mut final_through = after;
        loop {
            let page = reader.epochs(Some(after), 256)?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.epoch;
            for record in page {
                if record.status == EpochStatus::Committed {
                    metrics::gauge!(names::LAST_COMMITTED_EPOCH).set(record.epoch as f64);
                }
                match record.status {
                    EpochStatus::Sealed | EpochStatus::Submitted => pending.push(record),
                    EpochStatus::Committed | EpochStatus::Disputed => {
                        if pending.is_empty() {
                            final_through = record.epoch;
                        }
                    }
                }
            }
        }
        self.final_through
            .fetch_max(final_through, Ordering::Relaxed);
        Ok(pending)
    }

    async fn commit(&self, record: &EpochRecord) -> Result<(), EpochError> {
        let sealed = self
            .engine
            .reader()
            .sealed_epoch(record.epoch)?
            .ok_or(EpochError::MissingEpoch(record.epoch))?;
        // The root sent onchain must be the one recomputed from storage.
        let root = root_of(&sealed)?;
        match record.root {
            Some(stored) if B256::from(stored) != root => {
                return Err(EpochError::RootMismatch {
                    epoch: record.epoch,
                    stored: B256::from(stored),
                    rebuilt: root,
                });
            }
            Some(_) => {}
            None => {
                record_status(
                    &self.engine,
                    record.epoch,
                    EpochStatus::Sealed,
                    Some(root),
                    None,
                )
                .await?;
            }
        }
        // Returns only once the commit (or the arbiter's voiding of it) is `confirmations` blocks
        // deep, so the ledger settles the pending amounts of final commits only, never of one a
        // reorg can still drop. Each part is recorded as it lands, before the next is sent.
        let engine = &self.engine;
        let outcome = self.submit_covered(&sealed, root).await?;
        match outcome.onchain {
            OnchainEpoch::Committed => {
                self.record_parts_not_seen(record.epoch, outcome.parts)
                    .await?;
                record_status(engine, record.epoch, EpochStatus::Committed, None, None).await?;
                metrics::gauge!(names::LAST_COMMITTED_EPOCH).set(record.epoch as f64);
                tracing::info!(
                    epoch = record.epoch,
                    parts = outcome.parts,
                    sent = outcome.landed.len(),
                    "epoch committed"
                );
            }
            // The funds loop records the same dispute when its event is confirmed; whichever
            // comes first carries the amounts into the open epoch, the other changes nothing.
            OnchainEpoch::Voided => {
                record_status(engine, record.epoch, EpochStatus::Disputed, None, None).await?;
            }
        }
        Ok(())
    }

    /// Submits `sealed` less its recorded shortfalls. When a payer's exit has overtaken its
    /// debit (`Overdraft`), the uncovered amount is recorded as a shortfall and the epoch is
    /// submitted again without it, so one payer never stops settlement for everyone. The debit
    /// is in the part that reverted and every credit comes after every debit, so the parts
    /// already sent are untouched; entries keep their places (reduced, possibly to zero), so
    /// the parts are cut as before.
    async fn submit_covered(
        &self,
        sealed: &SealedEpoch,
        root: B256,
    ) -> Result<SubmitOutcome, EpochError> {
        loop {
            let commit = self.covered_commit(sealed, root)?;
            let reported = self
                .submitter
                .submit_reporting(&commit, |part| {
                    record_landed(&self.engine, sealed.epoch, part)
                })
                .await;
            match reported {
                Err(EpochError::Submit(SubmitError::Overdraft(overdraft))) => {
                    let Overdraft {
                        epoch,
                        part,
                        payer,
                        available,
                        amount,
                    } = *overdraft;
                    let cut_before = self.shortfall_of(epoch, &payer)?;
                    engine_call(|| self.engine.record_shortfall(epoch, payer, available)).await?;
                    let uncovered = self.shortfall_of(epoch, &payer)?;
                    let added = uncovered.saturating_sub(cut_before);
                    metrics::counter!(names::SHORTFALL)
                        .increment(u64::try_from(added).unwrap_or(u64::MAX));
                    tracing::warn!(
                        epoch,
                        part,
                        payer = %payer,
                        available,
                        debited = amount,
                        uncovered,
                        "payer's exit overtook its debit: committing the epoch without the uncovered amount (shortfall)"
                    );
                }
                outcome => return outcome,
            }
        }
    }

    /// What is recorded as uncovered of `payer`'s debit in `epoch`.
    fn shortfall_of(&self, epoch: u64, payer: &PayerKey) -> Result<u128, EpochError> {
        Ok(self
            .engine
            .reader()
            .epoch_shortfalls(epoch)?
            .into_iter()
            .filter(|(cut_payer, _, _)| cut_payer == payer)
            .map(|(_, _, cut)| cut)
            .fold(0u128, u128::saturating_add))
    }

    /// The epoch's debits and credits less its recorded shortfalls, under the root as sealed.
    fn covered_commit(&self, sealed: &SealedEpoch, root: B256) -> Result<EpochCommit, EpochError> {
        let shortfalls = self.engine.reader().epoch_shortfalls(sealed.epoch)?;
        EpochCommit {
            epoch: sealed.epoch,
            root,
            debits: sealed.debits.clone(),
            credits: sealed.credits.clone(),
        }
        .less_shortfalls(&shortfalls)
        .ok_or(EpochError::ShortfallExceeds(sealed.epoch))
    }

    /// Records the parts of a complete commit of `parts` parts that an earlier run sent but
    /// did not record (it stopped between a part landing and its record), from the contract's
    /// `EpochCommitted` events. Only the record of hashes is at stake, never money: when the chain
    /// cannot say, the commit is recorded without them and a warning says so.
    async fn record_parts_not_seen(&self, epoch: u64, parts: u16) -> Result<(), EpochError> {
        let reader = self.engine.reader();
        let missing_from = |record: Option<EpochRecord>| {
            let recorded = record.map(|record| record.parts).unwrap_or_default();
            (0..parts)
                .filter(|part| !recorded.iter().any(|known| known.part == *part))
                .collect::<Vec<u16>>()
        };
        let missing = missing_from(reader.epoch(epoch)?);
        if missing.is_empty() {
            return Ok(());
        }
        // Every part of an epoch lands after the last part of the epoch before.
        let not_before = match epoch.checked_sub(1) {
            Some(previous) => reader
                .epoch(previous)?
                .and_then(|record| record.block)
                .unwrap_or(0),
            None => 0,
        };
        match self.submitter.parts_onchain(epoch, not_before).await {
            Ok(onchain) => {
                for part in onchain.into_iter().filter(|p| missing.contains(&p.part)) {
                    record_status(
                        &self.engine,
                        epoch,
                        EpochStatus::Submitted,
                        None,
                        Some(part),
                    )
                    .await?;
                }
            }
            Err(error) => {
                tracing::warn!(epoch, %error, "could not read the parts an earlier run sent");
            }
        }
        let missing = missing_from(reader.epoch(epoch)?);
        if !missing.is_empty() {
            tracing::warn!(
                epoch,
                ?missing,
                "parts an earlier run sent are not in the ledger's record; it keeps the others"
            );
        }
        Ok(())
    }
}

async fn record_status(
    engine: &Engine,
    epoch: u64,
    status: EpochStatus,
    root: Option<B256>,
    part: Option<PartRecord>,
) -> Result<(), EpochError> {
    record(
        engine,
        EpochUpdate {
            epoch,
            status,
            root: root.map(|root| root.0),
            part,
        },
    )
    .await
}

/// Records a part of `epoch` that landed: the epoch is submitted. (Once the epoch is disputed the
/// ledger takes this as the older news it is, and changes nothing.)
async fn record_landed(engine: &Engine, epoch: u64, part: LandedPart) -> Result<(), EpochError> {
    let part = PartRecord {
        part: part.part,
        tx_hash: part.tx_hash.0,
        block: part.block,
    };
    record_status(engine, epoch, EpochStatus::Submitted, None, Some(part)).await
}

/// First delay between start-up catch-up attempts against a failing node; doubles per failure.
const CATCH_UP_BACKOFF_INITIAL_MS: u64 = 250;
/// Ceiling of that delay.
const CATCH_UP_BACKOFF_MAX_MS: u64 = 30_000;

/// Feeds the contract's funds events into the engine, from the ledger's persisted cursor.
#[derive(Debug)]
pub struct FundsLoop {
    engine: Engine,
    watcher: Watcher,
    /// Block to start from when the ledger has no cursor yet (the contract's deployment block).
    start_block: u64,
    poll_ms: u64,
}

impl FundsLoop {
    /// A loop reading `watcher` into `engine`, polling every `poll_ms` when caught up.
    pub fn new(engine: Engine, watcher: Watcher, start_block: u64, poll_ms: u64) -> Self {
        Self {
            engine,
            watcher,
            start_block,
            poll_ms,
        }
    }

    /// Runs until `shutdown`. RPC failures are retried on the next poll; an undecodable log stops it.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), EpochError> {
        loop {
            let caught_up = match self.step().await {
                Ok(caught_up) => caught_up,
                Err(EpochError::Watch(WatchError::Chain(error))) => {
                    tracing::warn!(%error, "funds watcher: chain unavailable, retrying");
                    true
                }
                Err(error) => return Err(error),
            };
            if caught_up {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(self.poll_ms)) => {}
                }
            } else if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Applies every confirmed event up to the chain's head, the start-up step before the
    /// server takes receipts. A failing node (timeouts, errors, rate limits) is waited out with
    /// exponential backoff, as the running loop does, instead of ending the start; `report` hears
    /// what it is waiting for after every batch and every failure, for `/readyz`. False when
    /// `shutdown` came first.
    pub async fn catch_up(
        &self,
        shutdown: &CancellationToken,
        mut report: impl FnMut(String),
    ) -> Result<bool, EpochError> {
        let mut failures = 0u32;
        loop {
            let wait = match self.step().await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    failures = 0;
                    let cursor = self.engine.reader().funds_cursor()?;
                    report(format!(
                        "catching up with the chain's funds events (applied through block {})",
                        cursor.map_or(0, |cursor| cursor.block)
                    ));
                    Duration::ZERO
                }
                Err(EpochError::Watch(WatchError::Chain(error))) => {
                    failures = failures.saturating_add(1);
                    let delay = chain::backoff(
                        CATCH_UP_BACKOFF_INITIAL_MS,
                        CATCH_UP_BACKOFF_MAX_MS,
                        failures,
                    );
                    tracing::warn!(%error, failures, "funds watcher: chain unavailable during catch-up, retrying");
                    report(format!(
                        "catching up with the chain's funds events: the node failed {failures} \
                         time(s) in a row, next try in {} ms; last error: {error}",
                        delay.as_millis()
                    ));
                    delay
                }
                Err(error) => return Err(error),
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads and applies one batch of confirmed events, then (once caught up) the withdrawal
    /// requests at the head. True when there was no new confirmed block.
    pub async fn step(&self) -> Result<bool, EpochError> {
        // The cursor is the last applied position: an event at or before it is ignored by the
        // ledger, so re-reading the cursor's own block is harmless and nothing is skipped.
        let from = match self.engine.reader().funds_cursor()? {
            Some(cursor) if cursor.log_index == u64::MAX => cursor.block.saturating_add(1),
            Some(cursor) => cursor.block,
            None => self.start_block,
        };
        let batch = self.watcher.poll(from).await.map_err(EpochError::Watch)?;
        let caught_up = batch.next_block == from;
        if !caught_up {
            self.apply(&batch).await?;
        }
        // After the confirmed events: a request they include is then counted twice until the
        // set below replaces the last one, never not at all.
        if let Some(requests) = &batch.head_requests {
            self.apply_head_requests(requests).await?;
        }
        Ok(caught_up)
    }

    /// Hands the ledger the requests at the head, summed per payer, to refuse spend of at once.
    async fn apply_head_requests(&self, events: &[ChainEvent]) -> Result<(), EpochError> {
        let requests = head_withdrawals(events);
        engine_call(|| self.engine.head_withdrawals(requests.clone())).await
    }

    async fn apply(&self, batch: &WatchBatch) -> Result<(), EpochError> {
        for event in &batch.events {
            match event.ledger_news() {
                LedgerNews::Funds(funds) => engine_call(|| self.engine.funds(funds)).await?,
                LedgerNews::Voided(epoch) => {
                    // Idempotent in the ledger (Disputed may become Disputed), so a replay after a
                    // restart is harmless.
                    record_status(&self.engine, epoch, EpochStatus::Disputed, None, None).await?;
                    metrics::counter!(names::EPOCHS_VOIDED).increment(1);
                    tracing::warn!(
                        epoch,
                        "the arbiter voided an epoch; its amounts go into the next one"
                    );
                }
            }
        }
        let scanned = FundsEvent {
            payer: PayerKey([0; 32]),
            kind: FundsKind::BlockScanned,
            amount: 0,
            block: batch.next_block - 1,
            log_index: u64::MAX,
        };
        engine_call(|| self.engine.funds(scanned)).await
    }
}
