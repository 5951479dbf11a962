//! The single writer thread and its group commit.
//!
//! The writer takes whatever is waiting (verified batches from the verify stage, funds events
//! and epoch updates from settle), applies it in arrival order, and closes it as one group: one
//! `WriteBatch` written with `sync = true` by the sync thread beside it. While that write's
//! fsync runs, the writer already applies the next group (its cache runs ahead of the disk; the
//! group in flight keeps its entries cached and answers re-sent batches and epoch lookups), so
//! under load a group holds what arrived during one fsync and the disk stops setting the pace.
//! At most one group is in flight. Replies are sent by the sync thread, only after the write
//! that holds them returned; if it failed, every reply of the group is an error and the store is
//! poisoned, so nothing is written or acked again.
//!
//! Metrics: `tollgate_ledger_group_receipts` (receipts per fsync), `tollgate_ledger_write_seconds`,
//! `tollgate_ledger_receipts_accepted_total`, `tollgate_ledger_receipts_rejected_total{reason}`;
//! the archive gauges (`tollgate_archive_bytes`, `tollgate_archive_receipts`,
//! `tollgate_archive_pruned_through`) are refreshed by the sync thread after a write, at most
//! once a second.

use crate::telemetry as names;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, bounded};
use futures_channel::oneshot;

use crate::grant::{CheckedGrant, CheckedRevocation};
use crate::receipt::{PayerKey, ReceiptBatch};
use crate::store::{Store, StoreBatch};
use crate::verdict::Verdict;

use super::archive::{ArchiveGauges, compact_pruned};
use super::error::LedgerError;
use super::record::{BatchDigest, HeadWithdrawals};
use super::state::{Ledger, SessionId};
use super::{BatchAck, EpochUpdate, FundsEvent, LedgerReader, LogPosition, SealedEpoch};

/// The error type the writer answers in: the caller's, which wraps [`LedgerError`]. The writer
/// decides in [`LedgerError`] and converts only as a reply leaves.
pub(crate) trait AnswerError: From<LedgerError> + Send + 'static {}

impl<E: From<LedgerError> + Send + 'static> AnswerError for E {}

pub(crate) type AckSender<E> = oneshot::Sender<Result<BatchAck, E>>;
pub(crate) type DoneSender<E> = oneshot::Sender<Result<(), E>>;
pub(crate) type SealSender<E> = oneshot::Sender<Result<SealedEpoch, E>>;
pub(crate) type CheckpointSender<E> = oneshot::Sender<Result<Option<u64>, E>>;

/// How the ledger knows a batch again, if at all.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BatchKey {
    /// Remembered under its producer session's batch number: `digest` (blake3 of its receipt
    /// bytes, computed before it was queued) tells a re-send from another batch. `log` is set in
    /// cluster mode: the batch's place in its partition's log.
    Sequenced {
        digest: BatchDigest,
        log: Option<LogPosition>,
    },
    /// Remembered nowhere: only its accepted receipts leave a trace (see
    /// [`Ledger::apply_batch`]).
    Unsequenced,
}

/// Work for the writer.
pub(crate) enum WriterMsg<E> {
    /// A verified batch: `verdicts[i]` is the verify stage's verdict for record `i`.
    Batch {
        session: SessionId,
        key: BatchKey,
        receipts: ReceiptBatch,
        verdicts: Vec<Verdict>,
        reply: AckSender<E>,
    },
    /// A chain event for the funds check.
    Funds {
        event: FundsEvent,
        reply: DoneSender<E>,
    },
    /// The withdrawal requests at the chain's head, replacing the last set.
    HeadWithdrawals {
        requests: HeadWithdrawals,
        reply: DoneSender<E>,
    },
    /// Seal the open epoch. Answered once the whole epoch is written; a seal asked for while
    /// another runs seals the epoch open when that one ends.
    Seal { reply: SealSender<E> },
    /// Settle's news about an epoch.
    Record {
        update: EpochUpdate,
        reply: DoneSender<E>,
    },
    /// The chain holds only `available` of `payer`'s debit in `epoch` (see
    /// `Ledger::record_shortfall`).
    Shortfall {
        epoch: u64,
        payer: PayerKey,
        available: u128,
        reply: DoneSender<E>,
    },
    /// Prune the archive of every epoch up to `through` (see `Ledger::prune_archive`).
    PruneArchive { through: u64, reply: DoneSender<E> },
    /// Hold a session grant from now on.
    Grant {
        grant: CheckedGrant,
        reply: DoneSender<E>,
    },
    /// Revoke a session key from now on.
    Revoke {
        revocation: CheckedRevocation,
        reply: DoneSender<E>,
    },
    /// Copy the database to `dir` once everything before this message is written.
    Checkpoint {
        dir: PathBuf,
        reply: CheckpointSender<E>,
    },
    /// Finish what is queued, write it, stop.
    Shutdown,
}

enum Reply<E> {
    Ack(AckSender<E>, Result<BatchAck, LedgerError>),
    Done(DoneSender<E>, Result<(), LedgerError>),
    /// A finished seal: the epoch and where to read it back from.
    Sealed(SealSender<E>, Result<(u64, LedgerReader), LedgerError>),
    /// After a prune's write: compact the archive below the end of this epoch (nothing if the
    /// write failed).
    CompactArchive(Option<(Arc<Store>, u64)>),
    /// Copy the store to the directory, then answer with the log position the copy holds. Made
    /// on the sync thread as the group's replies are sent, before the next group is written:
    /// the copy holds exactly what was written up to here.
    Checkpoint(
        CheckpointSender<E>,
        Result<(Arc<Store>, PathBuf), LedgerError>,
    ),
}

impl<E: AnswerError> Reply<E> {
    fn send(self) {
        // A receiver that went away (a closed connection) does not need its answer: the state
        // is durable either way and a re-send gets the same ack.
        match self {
            Reply::Ack(tx, result) => drop(tx.send(result.map_err(E::from))),
            Reply::Done(tx, result) => drop(tx.send(result.map_err(E::from))),
            Reply::Sealed(tx, Ok((epoch, reader))) => send_sealed(tx, epoch, reader),
            Reply::Sealed(tx, Err(error)) => drop(tx.send(Err(error.into()))),
            Reply::CompactArchive(Some((store, through))) => compact_pruned(store, through),
            Reply::CompactArchive(None) => {}
            Reply::Checkpoint(tx, made) => {
                let position = made.and_then(|(store, dir)| {
                    store.checkpoint(&dir)?;
                    Ok(LedgerReader::new(store).log_position()?)
                });
                drop(tx.send(position.map_err(E::from)));
            }
        }
    }

    fn fail(self, error: &LedgerError) -> Self {
        match self {
            Reply::Ack(tx, Ok(_)) => Reply::Ack(tx, Err(error.clone_fatal())),
            Reply::Done(tx, Ok(())) => Reply::Done(tx, Err(error.clone_fatal())),
            Reply::Sealed(tx, Ok(_)) => Reply::Sealed(tx, Err(error.clone_fatal())),
            Reply::CompactArchive(_) => Reply::CompactArchive(None),
            Reply::Checkpoint(tx, Ok(_)) => Reply::Checkpoint(tx, Err(error.clone_fatal())),
            refused => refused,
        }
    }
}

/// Answers a seal with its epoch read back from the store, on a thread of its own: the reply
/// holds every leaf (see [`SealedEpoch`]), and reading a large epoch on the sync thread would
/// hold up the acks behind it. If the thread cannot start, dropping `tx` tells the caller the
/// engine could not answer; the epoch is durable and listed either way.
fn send_sealed<E: AnswerError>(tx: SealSender<E>, epoch: u64, reader: LedgerReader) {
    let spawned = std::thread::Builder::new()
        .name("tollgate-seal-reply".into())
        .spawn(move || {
            let sealed = reader
                .sealed_epoch(epoch)
                .map_err(LedgerError::from)
                .and_then(|sealed| sealed.ok_or(LedgerError::UnknownEpoch { epoch }))
                .map_err(E::from);
            // The reader keeps the database open: released before the answer, so a caller that
            // shuts the engine down on hearing it can reopen the directory at once.
            drop(reader);
            drop(tx.send(sealed));
        });
    if let Err(error) = spawned {
        tracing::error!(%error, epoch, "cannot start the thread that answers a seal");
    }
}

/// The two queues the writer reads. Control messages are rare and small, so they are taken
/// first whenever both have something.
struct Inbox<E> {
    batches: Option<Receiver<WriterMsg<E>>>,
    control: Option<Receiver<WriterMsg<E>>>,
}

impl<E> Inbox<E> {
    /// Blocks until a message arrives; `None` once both queues are closed and empty.
    fn recv(&mut self) -> Option<WriterMsg<E>> {
        loop {
            if let Some(msg) = self.try_recv() {
                return Some(msg);
            }
            // Clones of the receivers (a reference count each) so the selection borrows them,
            // not `self`, which the disconnect handling below changes.
            let open: Vec<(bool, Receiver<WriterMsg<E>>)> =
                [(true, &self.batches), (false, &self.control)]
                    .into_iter()
                    .filter_map(|(is_batches, rx)| rx.clone().map(|rx| (is_batches, rx)))
                    .collect();
            if open.is_empty() {
                return None;
            }
            let mut select = Select::new();
            for (_, rx) in &open {
                select.recv(rx);
            }
            let ready = select.select();
            // `select` only returns indices it was given.
            let (from_batches, rx) = &open[ready.index()];
            match ready.recv(rx) {
                Ok(msg) => return Some(msg),
                Err(_) if *from_batches => self.batches = None,
                Err(_) => self.control = None,
            }
        }
    }

    /// A waiting message, if any, without blocking.
    fn try_recv(&mut self) -> Option<WriterMsg<E>> {
        for slot in [&mut self.control, &mut self.batches] {
            let Some(rx) = slot else { continue };
            match rx.try_recv() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => *slot = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        None
    }

    fn try_recv_control(&mut self) -> Option<WriterMsg<E>> {
        let rx = self.control.as_ref()?;
        rx.try_recv().ok()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A closed group on its way to disk, with the replies it releases.
struct Job<E> {
    batch: StoreBatch,
    replies: Vec<Reply<E>>,
}

/// The sync thread: writes one closed group at a time and releases its replies once the write
/// returned. Running it beside the writer is what lets the next group be applied during the
/// fsync.
fn sync_loop<E: AnswerError>(store: Arc<Store>, jobs: Receiver<Job<E>>, done: Sender<()>) {
    let mut gauges = ArchiveGauges::new(Arc::clone(&store));
    gauges.refresh(true);
    for job in jobs {
        let writes = !job.batch.is_empty();
        let started = Instant::now();
        // Even a group with nothing to write (re-sends answered from the group before it) goes
        // through the store: its replies may only leave if every earlier write succeeded.
        let result = store.write(job.batch);
        if writes {
            metrics::histogram!(names::LEDGER_WRITE_SECONDS).record(started.elapsed());
        }
        match result {
            Ok(()) => {
                job.replies.into_iter().for_each(Reply::send);
                if writes {
                    gauges.refresh(false);
                }
            }
            Err(error) => {
                let error = LedgerError::from(error);
                tracing::error!(%error, "ledger group write failed; refusing all further writes");
                for reply in job.replies {
                    reply.fail(&error).send();
                }
            }
        }
        if done.send(()).is_err() {
            return;
        }
    }
}

pub(crate) struct Writer<E> {
    ledger: Ledger,
    inbox: Inbox<E>,
    replies: Vec<Reply<E>>,
    group_receipts_max: usize,
    /// To the sync thread; `None` once closed.
    jobs: Option<Sender<Job<E>>>,
    /// From the sync thread: one message per job written (while the ledger has a group in
    /// flight, the sync thread has its job).
    done: Receiver<()>,
    syncer: Option<JoinHandle<()>>,
    /// Waiting for the running seal.
    seal_waiters: Vec<SealSender<E>>,
    /// Asked for a seal while one ran: they share the next one, of the epoch open now.
    next_seal_waiters: Vec<SealSender<E>>,
    /// Test hook: told after each message is handled, so a test can order its steps against
    /// the writer's without sleeping.
    #[cfg(test)]
    handled: Option<Sender<()>>,
}

impl<E: AnswerError> Writer<E> {
    /// Starts the sync thread; the writer itself runs in [`Writer::run`].
    pub(crate) fn new(
        ledger: Ledger,
        batches: Receiver<WriterMsg<E>>,
        control: Receiver<WriterMsg<E>>,
        group_receipts_max: usize,
    ) -> std::io::Result<Self> {
        // One job at a time each way: one group being written while the next is applied.
        let (jobs_tx, jobs_rx) = bounded(1);
        let (done_tx, done_rx) = bounded(1);
        let store = ledger.store();
        let syncer = std::thread::Builder::new()
            .name("tollgate-ledger-sync".into())
            .spawn(move || sync_loop(store, jobs_rx, done_tx))?;
        Ok(Self {
            ledger,
            inbox: Inbox {
                batches: Some(batches),
                control: Some(control),
            },
            replies: Vec::new(),
            group_receipts_max,
            jobs: Some(jobs_tx),
            done: done_rx,
            syncer: Some(syncer),
            seal_waiters: Vec::new(),
            next_seal_waiters: Vec::new(),
            #[cfg(test)]
            handled: None,
        })
    }

    /// Runs until shut down or until every sender is gone. `Err` when the store is poisoned.
    pub(crate) fn run(mut self) -> Result<(), LedgerError> {
        let mut stopping = false;
        while !stopping {
            if self.ledger.is_poisoned() {
                // No seal can end now: its waiters must not wait for the next message to hear.
                self.fail_seal_waiters();
            }
            // While a seal runs, an empty inbox means another chunk, not a wait.
            let first = if self.seal_running() {
                self.inbox.try_recv()
            } else {
                let Some(first) = self.inbox.recv() else {
                    break;
                };
                Some(first)
            };
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Shutdown => {
                        stopping = true;
                        // Settle's last updates still count; nothing new is accepted after this.
                        while let Some(msg) = self.inbox.try_recv_control() {
                            self.handle(msg);
                        }
                    }
                    msg => self.handle(msg),
                }
                #[cfg(test)]
                if let Some(handled) = &self.handled {
                    let _ = handled.send(());
                }
                if stopping || self.ledger.group_receipts() >= self.group_receipts_max {
                    break;
                }
                next = self.inbox.try_recv();
            }
            if !stopping {
                // One chunk per group: receipts wait for at most one chunk's work.
                self.seal_step();
            }
            self.flush();
            if !stopping {
                self.start_next_seal();
            }
        }
        // Seals someone waits for were asked before the shutdown: finish them. A seal nobody
        // waits for (resumed after a restart) resumes again at the next start.
        while !self.ledger.is_poisoned() && self.anyone_waits_for_a_seal() {
            self.start_next_seal();
            self.seal_step();
            self.flush();
        }
        self.flush();
        self.wait_idle();
        self.fail_seal_waiters();
        self.jobs = None;
        if let Some(syncer) = self.syncer.take()
            && syncer.join().is_err()
        {
            self.ledger.poison("ledger sync thread panicked".into());
        }
        if self.ledger.is_poisoned() {
            return Err(self.poisoned());
        }
        Ok(())
    }

    fn poisoned(&self) -> LedgerError {
        LedgerError::Poisoned {
            cause: "an earlier write failed".into(),
        }
    }

    fn handle(&mut self, msg: WriterMsg<E>) {
        if self.ledger.is_poisoned() {
            let error = E::from(self.poisoned());
            match msg {
                WriterMsg::Batch { reply, .. } => drop(reply.send(Err(error))),
                WriterMsg::Funds { reply, .. }
                | WriterMsg::HeadWithdrawals { reply, .. }
                | WriterMsg::Record { reply, .. }
                | WriterMsg::Shortfall { reply, .. }
                | WriterMsg::PruneArchive { reply, .. }
                | WriterMsg::Grant { reply, .. }
                | WriterMsg::Revoke { reply, .. } => drop(reply.send(Err(error))),
                WriterMsg::Seal { reply } => drop(reply.send(Err(error))),
                WriterMsg::Checkpoint { reply, .. } => drop(reply.send(Err(error))),
                WriterMsg::Shutdown => {}
            }
            return;
        }
        match msg {
            WriterMsg::Batch {
                session,
                key,
                receipts,
                verdicts,
                reply,
            } => {
                let (digest, log) = match key {
                    BatchKey::Sequenced { digest, log } => (Some(digest), log),
                    BatchKey::Unsequenced => (None, None),
                };
                let applied_at = log.map_or_else(now_ms, |log| log.time_ms);
                let result = self
                    .ledger
                    .apply_batch(session, digest, &receipts, &verdicts, applied_at);
                self.check_fatal(&result);
                // After a fatal error nothing is written again, so noting it there is harmless.
                if let (Some(log), Some(digest)) = (log, digest) {
                    self.ledger.note_logged(log.seq, &digest, &result);
                }
                if let Ok(ack) = &result {
                    metrics::counter!(names::LEDGER_RECEIPTS_ACCEPTED_TOTAL)
                        .increment(u64::from(ack.accepted));
                    for (_, reason) in &ack.rejections {
                        metrics::counter!(names::LEDGER_RECEIPTS_REJECTED_TOTAL, "reason" => reason.name())
                            .increment(1);
                    }
                }
                self.replies.push(Reply::Ack(reply, result));
            }
            WriterMsg::Funds { event, reply } => {
                let result = self.ledger.apply_funds(event);
                self.check_fatal(&result);
                self.replies.push(Reply::Done(reply, result));
            }
            WriterMsg::HeadWithdrawals { requests, reply } => {
                self.ledger.apply_head_withdrawals(requests);
                self.replies.push(Reply::Done(reply, Ok(())));
            }
            WriterMsg::Record { update, reply } => {
                let result = self.ledger.record_epoch(update);
                self.check_fatal(&result);
                self.replies.push(Reply::Done(reply, result));
            }
            WriterMsg::Shortfall {
                epoch,
                payer,
                available,
                reply,
            } => {
                let result = self.ledger.record_shortfall(epoch, payer, available);
                self.check_fatal(&result);
                self.replies.push(Reply::Done(reply, result));
            }
            WriterMsg::PruneArchive { through, reply } => {
                let result = self.ledger.prune_archive(through);
                self.check_fatal(&result);
                if let Ok(true) = result {
                    self.replies
                        .push(Reply::CompactArchive(Some((self.ledger.store(), through))));
                }
                self.replies.push(Reply::Done(reply, result.map(drop)));
            }
            WriterMsg::Grant { grant, reply } => {
                let result = self.ledger.register_grant(&grant);
                self.check_fatal(&result);
                self.replies.push(Reply::Done(reply, result));
            }
            WriterMsg::Revoke { revocation, reply } => {
                let result = self.ledger.revoke_grant(&revocation);
                self.check_fatal(&result);
                self.replies.push(Reply::Done(reply, result));
            }
            WriterMsg::Seal { reply } => {
                if self.ledger.sealing_epoch().is_some() {
                    self.next_seal_waiters.push(reply);
                } else {
                    self.start_seal(vec![reply]);
                }
            }
            WriterMsg::Checkpoint { dir, reply } => {
                self.replies
                    .push(Reply::Checkpoint(reply, Ok((self.ledger.store(), dir))));
            }
            WriterMsg::Shutdown => {}
        }
    }

    /// Answers every seal waiter with the poison (the only way a waited-for seal stays
    /// unfinished).
    fn fail_seal_waiters(&mut self) {
        let error = self.poisoned();
        for reply in self
            .seal_waiters
            .drain(..)
            .chain(self.next_seal_waiters.drain(..))
        {
            drop(reply.send(Err(error.clone_fatal().into())));
        }
    }

    fn anyone_waits_for_a_seal(&self) -> bool {
        !self.seal_waiters.is_empty() || !self.next_seal_waiters.is_empty()
    }

    fn seal_running(&self) -> bool {
        self.ledger.sealing_epoch().is_some() && !self.ledger.is_poisoned()
    }

    /// The cut. The seal's chunks read the epoch's index from the store, so every group before
    /// the cut is written first: the only wait a seal imposes on receipts.
    fn start_seal(&mut self, waiters: Vec<SealSender<E>>) {
        self.flush();
        self.wait_idle();
        match self.ledger.begin_seal() {
            Ok(epoch) => {
                tracing::info!(epoch, "sealing epoch");
                self.seal_waiters = waiters;
            }
            Err(error) => {
                self.ledger.poison(error.to_string());
                for reply in waiters {
                    drop(reply.send(Err(error.clone_fatal().into())));
                }
            }
        }
    }

    /// Starts the seal asked for while the last one ran, once that one is over.
    fn start_next_seal(&mut self) {
        if self.ledger.sealing_epoch().is_none() && !self.next_seal_waiters.is_empty() {
            let waiters = std::mem::take(&mut self.next_seal_waiters);
            self.start_seal(waiters);
        }
    }

    /// Adds one chunk of the running seal to the current group; when it is the last, the
    /// waiters are answered after that group's write.
    fn seal_step(&mut self) {
        if self.ledger.sealing_epoch().is_none() || self.ledger.is_poisoned() {
            return;
        }
        match self.ledger.seal_chunk() {
            Ok(None) => {}
            Ok(Some(epoch)) => {
                tracing::info!(epoch, "epoch sealed");
                let reader = LedgerReader::new(self.ledger.store());
                for reply in self.seal_waiters.drain(..) {
                    self.replies
                        .push(Reply::Sealed(reply, Ok((epoch, reader.clone()))));
                }
            }
            Err(error) => {
                // Nothing in a seal is a refusal: a failed chunk leaves the cache half-changed.
                self.ledger.poison(error.to_string());
                for reply in self.seal_waiters.drain(..) {
                    drop(reply.send(Err(error.clone_fatal().into())));
                }
            }
        }
    }

    /// A refusal (stale session, unknown epoch...) changed nothing. Anything else may have left
    /// the cache half-changed, so nothing more may be written.
    fn check_fatal<T>(&self, result: &Result<T, LedgerError>) {
        if let Err(error) = result
            && !error.is_refusal()
        {
            self.ledger.poison(error.to_string());
        }
    }

    /// Waits for the group in flight, if any, to be written.
    fn wait_idle(&mut self) {
        if self.ledger.group_in_flight() && self.done.recv().is_err() {
            self.ledger.poison("ledger sync thread stopped".into());
        }
        self.ledger.written();
    }

    /// Hands the current group to the sync thread, once the previous one is written.
    fn flush(&mut self) {
        let replies = std::mem::take(&mut self.replies);
        if replies.is_empty() && self.ledger.group_is_empty() {
            return;
        }
        self.wait_idle();
        metrics::histogram!(names::LEDGER_GROUP_RECEIPTS)
            .record(self.ledger.group_receipts() as f64);
        let batch = match self.ledger.close_group() {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "ledger group refused before writing; refusing all further writes");
                for reply in replies {
                    reply.fail(&error).send();
                }
                return;
            }
        };
        let Some(jobs) = &self.jobs else {
            return;
        };
        match jobs.send(Job { batch, replies }) {
            Ok(()) => {}
            Err(_) => self.ledger.poison("ledger sync thread stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests;
