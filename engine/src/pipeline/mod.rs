//! The engine as ingest and settle see it: submit a batch, get an ack once it is durable.
//!
//! ```text
//! submit ──[queue_batches_max]──▶ verify stage ──[verified_batches_max]──▶ ledger writer ──▶ RocksDB
//! funds / seal_epoch / record_epoch / grant / revoke ──[control_queue_max]──▶ ledger writer
//! ```
//! The stages are connected by bounded crossbeam channels. The verify stage hands groups of
//! batches to a [`BatchVerifier`], which may fan out on its own pool, two groups at a time, and
//! passes them on in submission order; the writer is a single thread, so batches are applied in
//! that order. When the writer or the verifier falls behind, the queues fill,
//! `submit` answers [`SubmitError::Full`], and ingest stops reading sockets: TCP pushes back on the
//! fleet. Replies travel on `futures_channel::oneshot`, which needs no async runtime.

mod verify_stage;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};
use futures_channel::oneshot;
use thiserror::Error;

use crate::grant::{CheckedGrant, CheckedRevocation};
use crate::ledger::error::invariant;
use crate::ledger::format::{open_store, validate};
use crate::ledger::record::batch_digest;
use crate::ledger::state::Ledger;
use crate::ledger::writer::{BatchKey, Writer, WriterMsg};
use crate::receipt::{PayerKey, ReceiptBatch, ReceiptView};
use crate::store::Store;
use crate::verdict::{Reason, Verdict};
pub use crate::verify::ClientSpan;
#[cfg(test)]
use verify_stage::group_verdicts;
use verify_stage::verify_stage;

pub use crate::ledger::{
    BatchAck, BatchOutcome, EpochStatus, EpochUpdate, FundsEvent, FundsKind, HeadWithdrawals,
    LedgerConfig, LedgerError, LedgerReader, LogPosition, PartRecord, SealedEpoch, UnknownPayers,
};

/// Checks the signatures of a batch. `engine::verify::VerifyPool` is the production one.
pub trait BatchVerifier: Send + Sync + 'static {
    /// One verdict per receipt, in input order: `Ok(())` or why the signature (or key) fails.
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict>;

    /// [`BatchVerifier::verify`] for receipts that `spans` divides into consecutive runs of one
    /// client each; no batch equation may mix two clients' receipts, so one client's bad
    /// signatures cost only that client. The default verifies each span (and any receipts past
    /// the last) in a call of its own.
    fn verify_clients(&self, receipts: &[ReceiptView<'_>], spans: &[ClientSpan]) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(receipts.len());
        let mut rest = receipts;
        let lengths = spans.iter().map(|span| span.receipts);
        for length in lengths.chain([usize::MAX]) {
            let (mine, others) = rest.split_at(length.min(rest.len()));
            if mine.is_empty() {
                continue;
            }
            let checked = self.verify(mine);
            if checked.len() != mine.len() {
                // A miscount in one span would shift every later verdict onto the wrong
                // receipt: answer with no verdicts, which the caller refuses as a whole.
                return Vec::new();
            }
            verdicts.extend(checked);
            rest = others;
        }
        verdicts
    }

    /// [`BatchVerifier::verify_clients`] called from the verify stage's own thread, which may
    /// do a small call's work itself rather than wake a pool for it. The default is
    /// `verify_clients`.
    fn verify_clients_here(
        &self,
        receipts: &[ReceiptView<'_>],
        spans: &[ClientSpan],
    ) -> Vec<Verdict> {
        self.verify_clients(receipts, spans)
    }
}

// Here rather than beside the pool: the verifier knows nothing of the pipeline that calls it.
impl BatchVerifier for crate::verify::VerifyPool {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        crate::verify::VerifyPool::verify(self, receipts)
    }

    fn verify_clients(&self, receipts: &[ReceiptView<'_>], spans: &[ClientSpan]) -> Vec<Verdict> {
        crate::verify::VerifyPool::verify_clients(self, receipts, spans)
    }

    fn verify_clients_here(
        &self,
        receipts: &[ReceiptView<'_>],
        spans: &[ClientSpan],
    ) -> Vec<Verdict> {
        crate::verify::VerifyPool::verify_clients_here(self, receipts, spans)
    }
}

/// Engine limits and where it keeps its data.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// RocksDB directory of the ledger.
    pub data_dir: PathBuf,
    /// Ledger policies and limits.
    pub ledger: LedgerConfig,
    /// Batches submitted and not yet verified; `submit` answers `Full` beyond.
    pub queue_batches_max: usize,
    /// Verified batches waiting for the writer; the verify stage waits beyond.
    pub verified_batches_max: usize,
    /// Funds events, seals and epoch updates waiting for the writer.
    pub control_queue_max: usize,
}

impl EngineConfig {
    /// Defaults for a ledger in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ledger: LedgerConfig::default(),
            queue_batches_max: 256,
            verified_batches_max: 64,
            control_queue_max: 256,
        }
    }
}

/// One client batch for the engine.
#[derive(Clone, Debug)]
pub struct SubmitRequest {
    /// The client the batch's connection authenticated as: producer sessions live inside it, so
    /// no client can reach another's sessions.
    pub client_id: u64,
    /// The producer id, chosen by the client, inside `client_id`.
    pub producer_id: u64,
    /// The producer's session epoch; older than the stored one is refused.
    pub session_epoch: u64,
    /// The batch's number in the session; a re-send of the same receipts reuses it and gets the
    /// same ack.
    pub batch_seq: u64,
    /// The receipts.
    pub receipts: ReceiptBatch,
    /// Receipts an earlier stage already refused (e.g. PayeeNotAllowed): not verified, not applied.
    pub prejudged: Vec<(u32, Reason)>,
}

/// Why the engine could not do what was asked: the ledger's answer, or the pipeline's own
/// trouble around it. Errors marked fatal mean the process must stop.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The ledger refused the request or failed (see [`LedgerError`] for which are fatal).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The pipeline's configuration is invalid.
    #[error("engine configuration: {problem}")]
    Config {
        /// what is wrong
        problem: String,
    },
    /// A thread could not be started.
    #[error("cannot start engine thread: {0}")]
    Spawn(std::io::Error),
    /// The engine stopped before it could answer.
    #[error("engine stopped")]
    Stopped,
}

impl EngineError {
    /// True for answers that refuse one request and change nothing; false for failures after
    /// which the ledger must not write again.
    pub fn is_refusal(&self) -> bool {
        match self {
            EngineError::Ledger(error) => error.is_refusal(),
            EngineError::Config { .. } => true,
            EngineError::Spawn(_) | EngineError::Stopped => false,
        }
    }
}

/// Why a request was not queued. Nothing was done.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: back off (ingest holds a permit per batch so this is rare).
    #[error("engine queue full")]
    Full,
    /// The engine is shutting down or has stopped.
    #[error("engine closed")]
    Closed,
    /// The ledger is poisoned (fatal): the process must stop.
    #[error("engine poisoned")]
    Poisoned,
    /// A prejudged index is past the end of the batch.
    #[error("prejudged receipt {index} is outside a batch of {receipts}")]
    PrejudgedOutOfRange {
        /// the index given
        index: u32,
        /// receipts in the batch
        receipts: usize,
    },
}

/// The answer to a batch: its ack once durable.
pub type AckReceiver = oneshot::Receiver<Result<BatchAck, EngineError>>;
/// The answer to a funds event or an epoch update, once durable.
pub type DoneReceiver = oneshot::Receiver<Result<(), EngineError>>;
/// The sealed epoch, once durable.
pub type SealReceiver = oneshot::Receiver<Result<SealedEpoch, EngineError>>;

/// The log position a checkpoint holds, once it is written.
pub type CheckpointReceiver = oneshot::Receiver<Result<Option<u64>, EngineError>>;

/// Who checks a batch's signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signatures {
    /// The verify stage, with the engine's verifier.
    Unchecked,
    /// The ingest node that published the batch to the log ([`Engine::submit_logged`]).
    CheckedByCaller,
}

enum VerifyMsg {
    Batch(QueuedBatch),
    Shutdown,
}

/// A submitted batch on its way through the verify stage.
struct QueuedBatch {
    request: SubmitRequest,
    key: BatchKey,
    signatures: Signatures,
    reply: oneshot::Sender<Result<BatchAck, EngineError>>,
}

struct Threads {
    /// True when the stage told the writer to stop.
    verify: JoinHandle<bool>,
    writer: JoinHandle<Result<(), LedgerError>>,
}

struct Inner {
    submit: Sender<VerifyMsg>,
    control: Sender<WriterMsg<EngineError>>,
    store: Arc<Store>,
    closed: AtomicBool,
    threads: Mutex<Option<Threads>>,
}

/// Handle to a running engine. Clones share it; the threads stop on [`Engine::shutdown`] or
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) the ledger in `config.data_dir` and starts the verify and writer
    /// threads. A corrupt, half-written or foreign directory is refused with an error naming the
    /// problem.
    pub fn open(
        config: EngineConfig,
        verifier: Arc<dyn BatchVerifier>,
    ) -> Result<Engine, EngineError> {
        validate(&config.ledger)?;
        if config.queue_batches_max == 0
            || config.verified_batches_max == 0
            || config.control_queue_max == 0
        {
            return Err(EngineError::Config {
                problem: "queue capacities must be at least 1".into(),
            });
        }
        let (store, created) = open_store(&config.data_dir, &config.ledger)?;
        let store = Arc::new(store);
        let ledger = Ledger::open(Arc::clone(&store), config.ledger.clone())?;
        if config.ledger.unknown_payers == UnknownPayers::Accept {
            tracing::warn!(
                "unknown payers accepted without a funds check (chainless mode): nothing here is \
                 backed by a deposit"
            );
        }
        tracing::info!(data_dir = %config.data_dir.display(), created, "ledger opened");

        // submit → verify: bounded so `submit` can refuse instead of buffering without limit.
        let (submit_tx, submit_rx) = bounded(config.queue_batches_max);
        // verify → writer: bounded so a slow disk stalls verification, then submission.
        let (verified_tx, verified_rx) = bounded(config.verified_batches_max);
        // settle → writer: funds events and epoch work, small and rare.
        let (control_tx, control_rx) = bounded(config.control_queue_max);

        let writer = Writer::new(
            ledger,
            verified_rx,
            control_rx,
            config.ledger.group_receipts_max,
        )
        .map_err(EngineError::Spawn)?;
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || writer.run())
            .map_err(EngineError::Spawn)?;
        // Not `tollgate-verify`: Linux keeps 15 bytes of a thread's name, and the pool's threads
        // (`tollgate-verify-N`) must stay apart from this one in a profile or a CPU split.
        let verify = std::thread::Builder::new()
            .name("tollgate-stage".into())
            .spawn(move || verify_stage(verifier.as_ref(), submit_rx, verified_tx))
            .map_err(EngineError::Spawn)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                submit: submit_tx,
                control: control_tx,
                store,
                closed: AtomicBool::new(false),
                threads: Mutex::new(Some(Threads { verify, writer })),
            }),
        })
    }

    fn check_open(&self) -> Result<(), SubmitError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed);
        }
        if self.inner.store.is_poisoned() {
            return Err(SubmitError::Poisoned);
        }
        Ok(())
    }

    /// Queues a batch for verification and the ledger. Never blocks: `Err(SubmitError::Full)`
    /// when `queue_batches_max` batches are in flight. The batch's digest is computed here, on
    /// the caller's thread, so the single ledger writer never hashes.
    pub fn submit(&self, request: SubmitRequest) -> Result<AckReceiver, SubmitError> {
        let key = BatchKey::Sequenced {
            digest: batch_digest(&request.receipts),
            log: None,
        };
        self.enqueue(request, key, Signatures::Unchecked)
    }

    /// Queues receipts that belong to no producer's sequence, each judged on its own: verified
    /// with `client_id`'s other receipts, applied like any batch, but the ledger remembers
    /// nothing of the batch itself, only what its accepted receipts changed. A receipt sent again
    /// is refused by its channel's anti-replay window (`Duplicate`, `Stale`) instead of getting
    /// the first ack back, and a refused receipt (a forged one included) takes nothing: its
    /// nonce stays free for the receipt its payer signs. For the x402 facilitator's `/settle`,
    /// where a payment settles once and a forged payment must not take a batch number. The
    /// ack's `batch_seq` is 0.
    pub fn submit_unsequenced(
        &self,
        client_id: u64,
        receipts: ReceiptBatch,
    ) -> Result<AckReceiver, SubmitError> {
        let request = SubmitRequest {
            client_id,
            producer_id: 0,
            session_epoch: 0,
            batch_seq: 0,
            receipts,
            prejudged: Vec::new(),
        };
        self.enqueue(request, BatchKey::Unsequenced, Signatures::Unchecked)
    }

    /// [`Engine::submit`] for a cluster partition's owner: the batch is the part of a client
    /// batch that the log holds at `log.seq`, verified by the ingest node that published it (the
    /// verify stage does not check its signatures again; records that do not parse are still
    /// refused `Malformed`). It is judged as of `log.time_ms`, and `log.seq` is written in the
    /// same group as its effect, so [`LedgerReader::log_position`] tells a restarted owner
    /// exactly where to resume. Submit a partition's parts in log order.
    pub fn submit_logged(
        &self,
        request: SubmitRequest,
        log: LogPosition,
    ) -> Result<AckReceiver, SubmitError> {
        let key = BatchKey::Sequenced {
            digest: batch_digest(&request.receipts),
            log: Some(log),
        };
        self.enqueue(request, key, Signatures::CheckedByCaller)
    }

    /// Queues a batch for the verify stage.
    fn enqueue(
        &self,
        request: SubmitRequest,
        key: BatchKey,
        signatures: Signatures,
    ) -> Result<AckReceiver, SubmitError> {
        self.check_open()?;
        let receipts = request.receipts.len();
        if let Some(&(index, _)) = request
            .prejudged
            .iter()
            .find(|(index, _)| *index as usize >= receipts)
        {
            return Err(SubmitError::PrejudgedOutOfRange { index, receipts });
        }
        let (tx, rx) = oneshot::channel();
        match self.inner.submit.try_send(VerifyMsg::Batch(QueuedBatch {
            request,
            key,
            signatures,
            reply: tx,
        })) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    fn control<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> WriterMsg<EngineError>,
    ) -> Result<oneshot::Receiver<Result<T, EngineError>>, SubmitError> {
        self.check_open()?;
        let (tx, rx) = oneshot::channel();
        match self.inner.control.try_send(make(tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Queues a chain event for the funds check. Applied exactly once by `(block, log_index)`,
    /// with the cursor persisted in the same write.
    pub fn funds(&self, event: FundsEvent) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Funds { event, reply })
    }

    /// Replaces the withdrawal requests of the blocks past the funds cursor (the chain's head)
    /// with `requests`; they are refused spend from the reply on. Persisted with the next write.
    pub fn head_withdrawals(&self, requests: HeadWithdrawals) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::HeadWithdrawals { requests, reply })
    }

    /// Seals the open epoch in one atomic write; receipts after it go to the next epoch.
    pub fn seal_epoch(&self) -> Result<SealReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Seal { reply })
    }

    /// Persists settle's progress with an epoch (root, status, transaction, block).
    pub fn record_epoch(&self, update: EpochUpdate) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Record { update, reply })
    }

    /// Records that the chain holds only `available` of `payer`'s debit in `epoch`, which is not
    /// committed yet (its commit reverted with `Overdraft`: the payer's exit overtook it). The
    /// uncovered rest is cut from what the payer paid in the epoch, in payee order; settle then
    /// commits the epoch reduced by [`LedgerReader::epoch_shortfalls`], and committing it writes
    /// the cut off instead of settling it.
    pub fn record_shortfall(
        &self,
        epoch: u64,
        payer: PayerKey,
        available: u128,
    ) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Shortfall {
            epoch,
            payer,
            available,
            reply,
        })
    }

    /// Deletes the archived receipts of every epoch up to `through` and records it as pruned,
    /// in one write. A `through` at or below what is pruned already changes nothing; one
    /// reaching an epoch the ledger has not committed (or seen disputed) is refused
    /// ([`LedgerError::PruneRefused`]). The caller decides what is final onchain: settle prunes
    /// only epochs `isFinal` onchain, a retention period ago.
    pub fn prune_archive(&self, through: u64) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::PruneArchive { through, reply })
    }

    /// Holds a session grant from the reply on: receipts of its session key are charged to its
    /// payer within its terms. The grant was checked (signature, deployment, fields) when it
    /// became a [`CheckedGrant`]; the ledger refuses one that does not fit what it holds
    /// ([`LedgerError::Grant`]). Durable before the reply, like everything else.
    pub fn grant(&self, grant: CheckedGrant) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Grant { grant, reply })
    }

    /// Revokes a session key for good: every receipt the ledger applies after this is refused
    /// as [`Reason::GrantRevoked`], and none of their acks leaves before the revocation is on
    /// disk.
    pub fn revoke(&self, revocation: CheckedRevocation) -> Result<DoneReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Revoke { revocation, reply })
    }

    /// Writes a consistent copy of the ledger to `dir` (which must not exist; on the data
    /// directory's filesystem the table files are hard links, not copies) holding every write
    /// answered before the checkpoint's own answer (and those of its group answered after it),
    /// and answers with the log position the copy holds, exactly where a ledger restored from it
    /// resumes (read from the store right after the copy is made: the sync thread makes it and
    /// is the only writer). Made between two group writes, so nothing is written while it is
    /// made: the next group waits for it (a flush of the memtables, then the links). For a
    /// cluster partition's checkpoints.
    pub fn checkpoint(&self, dir: PathBuf) -> Result<CheckpointReceiver, SubmitError> {
        self.control(|reply| WriterMsg::Checkpoint { dir, reply })
    }

    /// Snapshot reads that never block the writer.
    pub fn reader(&self) -> LedgerReader {
        LedgerReader::new(Arc::clone(&self.inner.store))
    }

    /// Stops taking requests, lets everything queued be verified, applied, written and answered,
    /// then joins the threads. `Err(Poisoned)` if the ledger was poisoned on the way. Dropping the
    /// last handle does the same, without the report.
    pub fn shutdown(self) -> Result<(), EngineError> {
        self.inner.stop()
    }
}

impl Inner {
    fn stop(&self) -> Result<(), EngineError> {
        self.closed.store(true, Ordering::Release);
        let threads = match self.threads.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(threads) = threads else {
            // Another handle already shut the engine down.
            return Ok(());
        };
        // Blocking send: the marker queues behind every batch already submitted. An error means
        // the verify stage is gone already, which joining reports.
        drop(self.submit.send(VerifyMsg::Shutdown));
        let verify = threads.verify.join();
        if !matches!(verify, Ok(true)) {
            // A stage that panicked, or ended early, never told the writer to stop, and the
            // writer keeps waiting for control messages while this handle holds their queue:
            // tell it here, or the join below never returns.
            drop(self.control.send(WriterMsg::Shutdown));
        }
        let writer = threads.writer.join();
        if verify.is_err() {
            return Err(invariant("verify stage panicked").into());
        }
        match writer {
            Ok(result) => Ok(result?),
            Err(_) => Err(invariant("ledger writer panicked").into()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!(%error, "engine stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests;
