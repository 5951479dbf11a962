//! Epochs in cluster mode: one cut across every partition, one commit per epoch.
//!
//! ```text
//! coordinator ──open?──▶ tollgate.open.<p> (every p) ──owner──▶ what its open epoch holds (seal only if something)
//! coordinator ──Seal(e)──▶ tollgate.rx.<p> (every p) ──owner, in log order──▶ seal e ──▶ summary e.<e>.<p>
//! coordinator ◀── all P summaries ── builds the epoch tree over the partition roots, commits once
//! coordinator ──Committed(e)──▶ tollgate.rx.<p> (every p) ──owner──▶ the ledger settles e
//! coordinator ──Shortfall(e, payer, available, based_on)──▶ tollgate.rx.<payer's p> ──owner──▶ cut, summary again
//! ```
//! The coordinator is whichever node holds the lease [`COORDINATOR_LEASE`] ([`Epochs::coordinate`]).
//! Its marks travel in the partitions' logs, so each owner applies a mark after every part
//! before it and before every part after it: the seal is a consistent cut in log order, the same
//! for every owner that ever applies the log (two owners of a partition for a moment, or a new
//! owner replaying from a checkpoint, make the same cut or find it made). A partition's summary
//! (its sealed epoch's leaves, debits and credits) is a function of the log through the mark, so
//! it needs no fence: whoever stores it stores the same bytes. Building the tree and committing
//! are the chain's business, in `tollgate serve`; this module only moves marks and summaries.
//!
//! A mark is applied at most once in effect: a seal of an epoch the ledger has already sealed
//! only stores the summary again (a crash between the seal and the upload is repaired by the
//! replay), a commit the ledger already recorded changes nothing, and a shortfall applied again
//! finds the payer's cut no longer the one it was based on and changes nothing. A shortfall comes
//! when the commit reverted because the payer's exit overtook its debit: the summary then
//! carries the cut, and the coordinator commits the epoch without it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use futures::future::{join_all, try_join_all};
use tokio_util::sync::CancellationToken;
use tollgate_engine::PayerKey;
use tollgate_engine::ledger::{EpochStatus, EpochUpdate};
use tollgate_engine::pipeline::{Engine, EngineError, LedgerError, LedgerReader, SubmitError};
use tollgate_engine::store::StoreError;
use tracing::{debug, info, warn};

use crate::error::NatsError;
use crate::lease::{COORDINATOR_LEASE, LeaseKeeper, Leases};
use crate::mark_log::publish_mark;
use crate::objects::{ReadError, read_object};
use crate::part::{
    DecodeError, Mark, OpenAnswer, OpenQuery, Shortfall, Summary, open_subject, written_off,
};
use crate::partition::partition_of;
use crate::resources::Cluster;
use crate::retry::backoff;

/// Why the coordinator's reads or writes of marks and summaries failed.
#[derive(Debug, thiserror::Error)]
pub enum EpochsError {
    #[error("cannot {what}: {source}")]
    Nats {
        what: &'static str,
        source: NatsError,
    },
    /// Only seal and commit marks are the coordinator's to write.
    #[error("not a coordinator's mark: {mark:?}")]
    NotEpochMark { mark: Mark },
    /// A stored summary that is not the partition's summary of the epoch it is named for.
    #[error("the summary of partition {partition} for epoch {epoch} is unusable: {why}")]
    BadSummary {
        partition: u32,
        epoch: u64,
        why: String,
    },
}

fn nats(what: &'static str) -> impl FnOnce(NatsError) -> EpochsError {
    move |source| EpochsError::Nats { what, source }
}

/// How long the coordinator waits for an owner to say what its open epoch holds: the owner
/// reads one record once it has applied its log through the tail.
const OPEN_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long storing or reading one summary may take before it is given up and tried again.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(10);

/// The object name of partition `partition`'s summary of `epoch`, in the summary store.
fn summary_name(epoch: u64, partition: u32) -> String {
    format!("e.{epoch:020}.{partition}")
}

/// Where owners store their partitions' summaries: the summary store (`store`, its stream
/// `objects`).
#[derive(Clone)]
pub(crate) struct Summaries {
    store: object_store::ObjectStore,
    objects: stream::Stream,
    /// Held while a partition's summary is read from its ledger and stored: a later mark (a
    /// shortfall) changes the summary, and the newest read must be the last stored.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl Summaries {
    pub(crate) fn new(cluster: &Cluster) -> Summaries {
        Summaries {
            store: cluster.summaries().clone(),
            objects: cluster.summary_stream().clone(),
            writing: Arc::default(),
        }
    }

    async fn put(&self, summary: &Summary) -> Result<(), NatsError> {
        let bytes = summary.encode();
        let name = summary_name(summary.sealed.epoch, summary.partition);
        // A put can stall for good when a server goes away mid-upload, like a read.
        tokio::time::timeout(
            SUMMARY_TIMEOUT,
            self.store.put(name.as_str(), &mut bytes.as_ref()),
        )
        .await??;
        Ok(())
    }

    async fn get(&self, epoch: u64, partition: u32) -> Result<Option<Summary>, EpochsError> {
        let name = summary_name(epoch, partition);
        let mut bytes = Vec::new();
        let read = read_object(&self.objects, &name, &mut bytes);
        match tokio::time::timeout(SUMMARY_TIMEOUT, read).await {
            Ok(Ok(_)) => {}
            Ok(Err(ReadError::NotFound)) => return Ok(None),
            Ok(Err(error)) => return Err(nats("read a partition summary")(error.into())),
            Err(elapsed) => return Err(nats("read a partition summary")(elapsed.into())),
        }
        let bad = |why: String| EpochsError::BadSummary {
            partition,
            epoch,
            why,
        };
        let summary =
            Summary::decode(&bytes).map_err(|error: DecodeError| bad(error.to_string()))?;
        if (summary.partition, summary.sealed.epoch) != (partition, epoch) {
            return Err(bad(format!(
                "it holds partition {}'s epoch {}",
                summary.partition, summary.sealed.epoch
            )));
        }
        Ok(Some(summary))
    }
}

/// Sends a control request to the engine and waits for its answer, waiting out a full queue.
async fn control<T>(
    mut send: impl FnMut() -> Result<
        futures::channel::oneshot::Receiver<Result<T, EngineError>>,
        SubmitError,
    >,
) -> Result<T, EngineError> {
    loop {
        match send() {
            Ok(reply) => return reply.await.unwrap_or(Err(EngineError::Stopped)),
            Err(SubmitError::Full) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(error) => return Err(refused(error)),
        }
    }
}

/// The engine error behind a request it did not take.
pub(crate) fn refused(error: SubmitError) -> EngineError {
    match error {
        SubmitError::Poisoned => EngineError::Ledger(LedgerError::Poisoned {
            cause: "submit refused: ledger poisoned".into(),
        }),
        _ => EngineError::Stopped,
    }
}

/// Applies `mark` to partition `partition`'s ledger; the caller has applied every part before
/// it and applies none after it until this returns. Only a ledger failure is an error; the
/// summary of a sealed epoch is stored beside the data path until `stop`.
pub(crate) async fn apply_mark(
    engine: &Engine,
    summaries: &Summaries,
    partition: u32,
    mark: &Mark,
    stop: &CancellationToken,
) -> Result<(), EngineError> {
    let reader = engine.reader();
    match *mark {
        Mark::Seal(epoch) => {
            let open = reader.open_epoch().map_err(LedgerError::from)?.epoch;
            if open < epoch {
                // Epochs are sealed one mark at a time from 1, so the ledger missed marks: it
                // was made for another deployment or cluster. Sealing now would give this
                // epoch's number to what belongs to an earlier one.
                warn!(
                    partition,
                    epoch,
                    open,
                    "seal mark for a later epoch than the ledger's open one: not sealed"
                );
                return Ok(());
            }
            if open == epoch {
                let sealed = control(|| engine.seal_epoch()).await?;
                info!(
                    partition,
                    epoch,
                    leaves = sealed.leaves.len(),
                    "partition sealed at the epoch mark"
                );
            }
            // Stored beside the data path, which goes on at once: a stalled object store
            // must not stall the partition. An owner that stops before it is stored leaves it
            // to the next, which stores its newest sealed epoch's summary when it starts.
            tokio::spawn(store_summary(
                engine.reader(),
                summaries.clone(),
                (partition, epoch),
                stop.clone(),
            ));
        }
        Mark::Committed(epoch) => {
            let Some(status) = status_once_sealed(&reader, epoch, stop).await? else {
                return Ok(());
            };
            if status.is_none() {
                warn!(
                    partition,
                    epoch, "commit mark for an epoch this ledger never sealed"
                );
            }
            if matches!(status, Some(EpochStatus::Sealed | EpochStatus::Submitted)) {
                record_status(engine, epoch, EpochStatus::Committed).await?;
                info!(partition, epoch, "partition settled the committed epoch");
            }
        }
        Mark::Voided(epoch) => {
            let Some(status) = status_once_sealed(&reader, epoch, stop).await? else {
                return Ok(());
            };
            match status {
                None => warn!(
                    partition,
                    epoch, "voided mark for an epoch this ledger never sealed"
                ),
                Some(EpochStatus::Disputed) => {}
                Some(_) => {
                    // The ledger carries the epoch's amounts into its open epoch (pending
                    // again, if they were settled): the next seal takes them to the chain.
                    record_status(engine, epoch, EpochStatus::Disputed).await?;
                    warn!(
                        partition,
                        epoch, "the arbiter voided the epoch: its amounts go into the next one"
                    );
                }
            }
        }
        Mark::Shortfall(shortfall) => {
            apply_shortfall(engine, summaries, partition, shortfall, stop).await?;
        }
        // The ledger applies a funds event once, by its chain position.
        Mark::Funds(event) => control(|| engine.funds(event)).await?,
        Mark::HeadWithdrawals(ref requests) => {
            control(|| engine.head_withdrawals(requests.clone())).await?;
        }
    }
    Ok(())
}

/// Records a shortfall mark's cut in the ledger when the epoch is sealed and not settled, it
/// debits the payer, and the payer's cut in it is still the one the mark was based on; then,
/// whatever it changed, stores the partition's summary again: the coordinator that wrote the
/// mark read a summary without this cut, or an older one.
async fn apply_shortfall(
    engine: &Engine,
    summaries: &Summaries,
    partition: u32,
    mark: Shortfall,
    stop: &CancellationToken,
) -> Result<(), EngineError> {
    let Shortfall {
        epoch,
        payer,
        available,
        based_on,
    } = mark;
    let reader = engine.reader();
    let Some(status) = status_once_sealed(&reader, epoch, stop).await? else {
        return Ok(());
    };
    if !matches!(status, Some(EpochStatus::Sealed | EpochStatus::Submitted)) {
        warn!(
            partition, epoch, ?status, %payer,
            "shortfall mark for an epoch this ledger has not sealed, or has settled: not recorded"
        );
        return Ok(());
    }
    let store_again = || {
        tokio::spawn(store_summary(
            engine.reader(),
            summaries.clone(),
            (partition, epoch),
            stop.clone(),
        ))
    };
    let shortfalls = reader.epoch_shortfalls(epoch).map_err(LedgerError::from)?;
    let cut = written_off(&shortfalls, Some(&payer));
    if cut != based_on {
        info!(
            partition, epoch, %payer, cut, based_on,
            "shortfall mark based on another cut than the ledger's (written from an out-of-date summary, or applied again): not recorded"
        );
        store_again();
        return Ok(());
    }
    // A mark naming a payer the epoch does not debit (a coordinator's bug) must not reach the
    // ledger, which treats that as its own corruption.
    let read = engine.reader();
    let sealed = tokio::task::spawn_blocking(move || read.sealed_epoch(epoch))
        .await
        .map_err(|_| EngineError::Stopped)?
        .map_err(LedgerError::from)?;
    let debit = sealed.and_then(|sealed| {
        sealed
            .debits
            .iter()
            .find(|(debited, _)| *debited == payer)
            .map(|(_, debit)| *debit)
    });
    let Some(debit) = debit else {
        warn!(partition, epoch, %payer, "shortfall mark for a payer the epoch does not debit: not recorded");
        return Ok(());
    };
    control(|| engine.record_shortfall(epoch, payer, available)).await?;
    if available < debit {
        warn!(
            partition, epoch, %payer, available, debit,
            "the payer's exit overtook its debit: the epoch's commit leaves the uncovered rest out (shortfall)"
        );
    } else {
        info!(partition, epoch, %payer, available, debit, "the chain covers the payer's debit: no cut");
    }
    store_again();
    Ok(())
}

/// Records `status` for `epoch` in the ledger.
async fn record_status(
    engine: &Engine,
    epoch: u64,
    status: EpochStatus,
) -> Result<(), EngineError> {
    let update = EpochUpdate {
        epoch,
        status,
        root: None,
        part: None,
    };
    control(|| engine.record_epoch(update)).await
}

/// The ledger's status of `epoch` (`None` inside: never sealed), once a seal resumed after a
/// crash has finished writing it (its record comes when it is done); `None` if `stop` came
/// first.
async fn status_once_sealed(
    reader: &LedgerReader,
    epoch: u64,
    stop: &CancellationToken,
) -> Result<Option<Option<EpochStatus>>, LedgerError> {
    loop {
        let status = reader.epoch(epoch)?.map(|record| record.status);
        if status.is_some() || !still_sealing(reader, epoch)? {
            return Ok(Some(status));
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            () = tokio::time::sleep(SEAL_POLL) => {}
        }
    }
}

/// How often a mark waiting for a seal still being written looks again.
const SEAL_POLL: Duration = Duration::from_millis(20);

/// Whether the ledger is still writing the seal of `epoch`.
fn still_sealing(reader: &LedgerReader, epoch: u64) -> Result<bool, LedgerError> {
    Ok(reader
        .sealing_epoch()
        .map_err(LedgerError::from)?
        .is_some_and(|sealing| sealing.epoch == epoch))
}

/// Stores the summary of the newest epoch `engine`'s ledger has sealed, if any: the owner
/// before may have sealed it and stopped before its summary was stored, and resuming after the
/// mark this owner will not apply it again. Storing a summary twice stores the same bytes.
pub(crate) async fn store_newest_summary(
    engine: &Engine,
    summaries: Summaries,
    partition: u32,
    stop: CancellationToken,
) {
    let open = match engine.reader().open_epoch() {
        Ok(open) => open.epoch,
        Err(error) => {
            warn!(partition, %error, "cannot read the open epoch: the newest summary is not stored again");
            return;
        }
    };
    if let Some(newest) = open.checked_sub(1).filter(|&epoch| epoch > 0) {
        store_summary(engine.reader(), summaries, (partition, newest), stop).await;
    }
}

/// Reads the sealed epoch and its shortfalls and stores its summary, trying again with a
/// growing pause until it is stored or `stop`. Read and stored under the partition's writing
/// lock, so of two stores racing (a seal's and a shortfall's) the later read lands last.
async fn store_summary(
    reader: LedgerReader,
    summaries: Summaries,
    (partition, epoch): (u32, u64),
    stop: CancellationToken,
) {
    // A seal resumed after a crash may still be writing the epoch: read it once it is done.
    while matches!(still_sealing(&reader, epoch), Ok(true)) {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SEAL_POLL) => {}
        }
    }
    let mut failures = 0u32;
    loop {
        let stored = {
            let _writing = summaries.writing.lock().await;
            let read = reader.clone();
            let summary = match tokio::task::spawn_blocking(move || {
                summary_of(&read, partition, epoch)
            })
            .await
            {
                Ok(Ok(Some(summary))) => summary,
                Ok(Ok(None)) => {
                    warn!(
                        partition,
                        epoch, "the epoch is not sealed in this ledger: no summary"
                    );
                    return;
                }
                Ok(Err(error)) => {
                    warn!(partition, epoch, %error, "cannot read the sealed epoch: no summary");
                    return;
                }
                Err(error) => {
                    warn!(partition, epoch, %error, "reading the sealed epoch panicked: no summary");
                    return;
                }
            };
            summaries.put(&summary).await
        };
        let error = match stored {
            Ok(()) => {
                if failures > 0 {
                    info!(partition, epoch, failures, "partition summary stored");
                }
                return;
            }
            Err(error) => error,
        };
        failures = failures.saturating_add(1);
        if failures == 1 {
            warn!(partition, epoch, %error, "cannot store the partition summary; retrying with backoff");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff(failures)) => {}
        }
    }
}

/// Partition `partition`'s summary of `epoch` as its ledger holds it now; `None` if not sealed.
fn summary_of(
    reader: &LedgerReader,
    partition: u32,
    epoch: u64,
) -> Result<Option<Summary>, StoreError> {
    let Some(sealed) = reader.sealed_epoch(epoch)? else {
        return Ok(None);
    };
    Ok(Some(Summary {
        partition,
        sealed,
        shortfalls: reader.epoch_shortfalls(epoch)?,
    }))
}

/// What the partitions' open epochs hold, as the coordinator asks before it seals: the funds
/// watcher's marks and the coordinator's own grow the logs without filling an epoch, and
/// judging by the logs' growth committed an empty epoch every interval on an idle cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenEpochs {
    /// Some partition's open epoch holds receipts, or amounts a voided epoch carried in.
    Something,
    /// Every owner answered, and every open epoch is empty.
    Nothing,
    /// Some owner could not say (none right now, catching up, no answer in time, a release
    /// that does not answer), and none said something.
    Unsure,
}

/// Whether an owner's answer means epoch `next` has something to seal; `None` when it cannot
/// tell. An owner already past `next` sealed it at a seal mark the others have not all applied
/// (a coordinator stopped half-way): the marks must go out again. One behind it is replaying
/// from an older checkpoint.
fn fills(answer: &OpenAnswer, next: u64) -> Option<bool> {
    match answer {
        OpenAnswer::Holds { epoch, .. } if *epoch > next => Some(true),
        OpenAnswer::Holds { epoch, .. } if *epoch == next => Some(answer.fills()),
        OpenAnswer::Holds { .. } | OpenAnswer::CatchingUp | OpenAnswer::Failed => None,
    }
}

/// The coordinator's access to the partitions' logs and summaries.
#[derive(Clone)]
pub struct Epochs {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    summaries: Summaries,
    leases: Leases,
    partitions: NonZeroU32,
}

impl std::fmt::Debug for Epochs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epochs")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Epochs {
    pub fn new(cluster: &Cluster) -> Epochs {
        Epochs {
            jetstream: cluster.jetstream().clone(),
            stream: cluster.stream().clone(),
            summaries: Summaries::new(cluster),
            leases: cluster.leases().clone(),
            partitions: cluster.partitions(),
        }
    }

    pub fn partitions(&self) -> NonZeroU32 {
        self.partitions
    }

    /// Competes for the coordinator's lease, and keeps it while held.
    pub fn coordinate(&self) -> LeaseKeeper {
        self.leases.keep(COORDINATOR_LEASE)
    }

    /// Writes `mark` (a seal or commit mark) into every partition's log, each with its message
    /// id, and returns once the log holds all of them.
    pub async fn mark(&self, mark: Mark) -> Result<(), EpochsError> {
        if !matches!(mark, Mark::Seal(_) | Mark::Committed(_)) {
            return Err(EpochsError::NotEpochMark { mark });
        }
        try_join_all((0..self.partitions.get()).map(|partition| {
            // The next step publishes again (once, by its id) if this one fails.
            publish_mark(&self.jetstream, partition, &mark)
        }))
        .await
        .map_err(nats("publish an epoch mark"))?;
        Ok(())
    }

    /// Writes into `payer`'s partition that the chain holds only `available` of its debit in
    /// `epoch` (the commit reverted with `Overdraft`), and returns once the log holds it. The
    /// owner records the shortfall if the payer's cut in the epoch is still `based_on` (as in
    /// the summary the commit was built from), and stores its summary again.
    pub async fn shortfall(
        &self,
        epoch: u64,
        payer: PayerKey,
        (available, based_on): (u128, u128),
    ) -> Result<(), EpochsError> {
        let mark = Mark::Shortfall(Shortfall {
            epoch,
            payer,
            available,
            based_on,
        });
        publish_mark(
            &self.jetstream,
            partition_of(&payer, self.partitions),
            &mark,
        )
        .await
        .map_err(nats("publish a shortfall mark"))
    }

    /// Every partition's summary of `epoch`, in partition order: `None` for a partition whose
    /// owner has not stored it yet.
    pub async fn summaries(&self, epoch: u64) -> Result<Vec<Option<Summary>>, EpochsError> {
        try_join_all(
            (0..self.partitions.get()).map(|partition| self.summaries.get(epoch, partition)),
        )
        .await
    }

    /// The log's last sequence: a ledger changes only through its log, so while this stays
    /// where it was when every owner said its open epoch holds nothing, it still holds nothing.
    pub async fn log_tail(&self) -> Result<u64, EpochsError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|error| nats("read the log's state")(error.into()))?;
        Ok(info.state.last_sequence)
    }

    /// What the partitions' open epochs hold, `next` being the epoch to seal next, as their
    /// owners' ledgers have them once applied through the log's tail (so every receipt acked
    /// before the question counts): something to seal (receipts, or amounts a voided epoch
    /// carried in), nothing, or not known (some owner could not say and none said something).
    pub async fn open_epochs(&self, next: u64) -> OpenEpochs {
        let client = self.jetstream.client();
        let asked = (0..self.partitions.get()).map(|partition| {
            let client = client.clone();
            async move {
                let request = client.request(open_subject(partition), OpenQuery.encode());
                let judged = match tokio::time::timeout(OPEN_QUERY_TIMEOUT, request).await {
                    Ok(Ok(reply)) => OpenAnswer::decode(&reply.payload)
                        .ok()
                        .and_then(|answer| fills(&answer, next)),
                    Ok(Err(_)) | Err(_) => None,
                };
                if judged.is_none() {
                    debug!(partition, "no answer about the partition's open epoch");
                }
                judged
            }
        });
        let judged = join_all(asked).await;
        if judged.contains(&Some(true)) {
            OpenEpochs::Something
        } else if judged.contains(&None) {
            OpenEpochs::Unsure
        } else {
            OpenEpochs::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_for_the_epoch_to_seal_and_past_it_but_not_behind_it() {
        let holds = |epoch, receipts| OpenAnswer::Holds {
            epoch,
            receipts,
            amount: 0,
        };
        assert_eq!(fills(&holds(5, 0), 5), Some(false));
        assert_eq!(fills(&holds(5, 3), 5), Some(true));
        // Sealed 5 at a mark the other partitions have not all applied: the marks go out again.
        assert_eq!(fills(&holds(6, 0), 5), Some(true));
        // Replaying from an older checkpoint: what it holds is not epoch 5's yet.
        assert_eq!(fills(&holds(4, 3), 5), None);
        assert_eq!(fills(&OpenAnswer::CatchingUp, 5), None);
        assert_eq!(fills(&OpenAnswer::Failed, 5), None);
    }
}
