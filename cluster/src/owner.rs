//! A partition's owner: applies the partition's log to the partition's ledger in stream order and
//! answers the ingest nodes' asks for verdicts.
//!
//! ```text
//! stream tollgate.rx.<p> ──ordered consumer──▶ Engine::submit_logged ──▶ acks in order ──▶ applied (watch)
//! tollgate.ask.<p> ──▶ wait until applied ≥ ask.seq ──▶ LedgerReader::logged_outcome ──▶ reply
//! ```
//! Exactly once by position: each part is applied with its stream sequence in the same RocksDB
//! write as its effect, and the consumer starts right after the sequence the ledger holds, so a
//! restarted owner neither skips nor repeats a part. A part delivered twice anyway (the same
//! part re-published after the duplicate window) is a re-sent batch to the ledger: the original
//! ack, nothing charged twice.
//!
//! The owner checks the ingest node's split before anything is charged: a part whose receipts
//! do not all belong to its partition (by [`partition_of`] of the payer) would put a payer's
//! spend in two ledgers, so such a part, like an unreadable one, is refused whole
//! ([`PartRefused`], logged once per part) and its asks are answered `Refused`.
//!
//! Asks are answered from the ledger, never from memory, by the part's log sequence (the outcome
//! the part got is stored under it in the group that applied it, so it stays the answer however
//! many later parts or sessions the producer sends): an ingest node that lost its answer
//! (a dropped connection, an owner restart, a re-publish the log deduplicated) asks again,
//! anywhere, any time, and gets the same verdicts. Refusals are the exception: they are kept in
//! memory (the newest [`REFUSALS_KEPT`]), so after a restart past a refused part its ask is
//! answered `Unknown`, which charges nothing either.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{
    AckReceiver, BatchAck, Engine, EngineError, LogPosition, SubmitError, SubmitRequest,
};
use tracing::{debug, error, info, warn};

use crate::checkpoint::{CheckpointError, Checkpoints, Stored};
use crate::epoch::{Summaries, apply_mark, refused, store_newest_summary};
use crate::error::NatsError;
use crate::funds::{QuerySource, answer_queries};
use crate::part::{
    Answer, Ask, DecodeError, Mark, Part, Verdicts, ask_subject, funds_subject, open_subject,
};
use crate::partition::{partition_of, subject_of};
use crate::requests::answer_each;
use crate::retry::backoff;
use crate::telemetry;

/// Asks waiting for the log to be applied that far, per partition; beyond, an ask is dropped
/// and its node asks again after its timeout.
const ASKS_WAITING_MAX: usize = 4_096;
/// Parts handed to the engine and not yet answered. The engine's own queue bounds it too; this
/// keeps the owner from pulling the whole log into memory ahead of the writer.
const PARTS_IN_FLIGHT_MAX: usize = 128;
/// How long the log consumer may deliver nothing before the log is checked for messages it
/// should have delivered.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long the consumer loop waits for the answer to whether the log holds more.
const STALL_QUESTION: Duration = Duration::from_secs(1);
/// Refused parts' sequences an owner remembers to answer their asks with.
pub const REFUSALS_KEPT: usize = 1_024;

/// Why an owner refused a part of its log whole, charging nothing: the ingest node that
/// published it split or encoded it wrongly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartRefused {
    #[error("unreadable part: {0}")]
    Unreadable(#[from] DecodeError),
    #[error("the part names partition {named}")]
    OtherPartition { named: u32 },
    #[error("receipt {index} of the part does not parse")]
    MalformedReceipt { index: usize },
    /// A session receipt is charged to the payer its grant names, which no owner knows yet
    /// (grants do not travel through the log), and ingest nodes never publish one.
    #[error("receipt {index} of the part is signed by a session key")]
    SessionReceipt { index: usize },
    /// Applying it would charge a payer in a ledger other than its partition's.
    #[error("receipt {index} of the part belongs to partition {belongs}")]
    MisSplit { index: usize, belongs: u32 },
}

/// `bytes` as a part of `partition` whose every receipt's payer belongs to `partition`.
pub(crate) fn admit(
    bytes: &bytes::Bytes,
    partition: u32,
    partitions: NonZeroU32,
) -> Result<Part, PartRefused> {
    let part = Part::decode(bytes)?;
    if part.partition != partition {
        return Err(PartRefused::OtherPartition {
            named: part.partition,
        });
    }
    for (index, record) in part.receipts.iter().enumerate() {
        let view = record.map_err(|_| PartRefused::MalformedReceipt { index })?;
        if view.is_session() {
            return Err(PartRefused::SessionReceipt { index });
        }
        let belongs = partition_of(&view.payer(), partitions);
        if belongs != partition {
            return Err(PartRefused::MisSplit { index, belongs });
        }
    }
    Ok(part)
}

/// Why an owner stopped other than by being told to.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The ledger failed (a write or fsync error): the node must stop.
    #[error("partition {partition}: the ledger failed")]
    Ledger {
        partition: u32,
        #[source]
        source: EngineError,
    },
    /// The ledger's stored log position could not be read.
    #[error("partition {partition}: cannot read the ledger's log position")]
    Position {
        partition: u32,
        #[source]
        source: tollgate_engine::store::StoreError,
    },
    /// The partition's checkpoints could not be listed or restored: tried again, like a NATS
    /// failure.
    #[error("partition {partition}: checkpoints")]
    Checkpoint {
        partition: u32,
        #[source]
        source: CheckpointError,
    },
    /// A mark in the log does not decode: written by a newer release (every node must run it
    /// before its marks are written), or damaged. Tried again like a NATS failure, so the
    /// partition waits at the mark instead of skipping what may be a deposit or an exit.
    #[error("partition {partition}: the mark at log sequence {seq} does not decode")]
    UnreadableMark {
        partition: u32,
        seq: u64,
        #[source]
        source: DecodeError,
    },
    /// Subscribing to the log or the asks failed.
    #[error("partition {partition}: {what}")]
    Nats {
        partition: u32,
        what: &'static str,
        #[source]
        source: NatsError,
    },
}

/// A partition's owner with its subscriptions made, ready to [`Owner::run`].
pub(crate) struct Owner {
    client: async_nats::Client,
    partition: u32,
    partitions: NonZeroU32,
    engine: Engine,
    summaries: Summaries,
    position: u64,
    asks: async_nats::Subscriber,
    funds: async_nats::Subscriber,
    /// The coordinator's questions about the partition's open epoch.
    open: async_nats::Subscriber,
    stream: stream::Stream,
    messages: LogFeed,
}

/// What an owner needs to checkpoint its partition: the partition's checkpoints, the token of
/// the lease it owns the partition by, and the newest checkpoint when it took over.
pub(crate) struct Checkpointing {
    pub(crate) checkpoints: Checkpoints,
    pub(crate) token: u64,
    pub(crate) newest: Option<Stored>,
}

/// A message the consumer took from the log, in log order: a part handed to the ledger, a
/// refused one, or an epoch mark, which the consumer waits for (`done`) before it reads on, so
/// no later part reaches the ledger before the mark is applied.
enum Taken {
    Submitted(u64, AckReceiver),
    Refused(u64),
    Mark {
        seq: u64,
        mark: Mark,
        done: oneshot::Sender<()>,
    },
}

/// The newest refused parts' sequences, for their asks.
type Refusals = Arc<Mutex<BTreeSet<u64>>>;

impl Owner {
    /// Reads where `engine` (partition `partition`'s own ledger) is in the log, subscribes to
    /// the partition's asks, funds queries and open-epoch queries, and opens its log right after
    /// that position.
    pub(crate) async fn start(
        client: async_nats::Client,
        stream: &stream::Stream,
        partition: u32,
        partitions: NonZeroU32,
        (engine, summaries): (Engine, Summaries),
    ) -> Result<Owner, OwnerError> {
        let nats = |what| {
            move |source: NatsError| OwnerError::Nats {
                partition,
                what,
                source,
            }
        };
        let position = engine
            .reader()
            .log_position()
            .map_err(|source| OwnerError::Position { partition, source })?
            .unwrap_or(0);
        let asks = client
            .subscribe(ask_subject(partition))
            .await
            .map_err(|e| nats("subscribe to asks")(e.into()))?;
        let funds = client
            .subscribe(funds_subject(partition))
            .await
            .map_err(|e| nats("subscribe to funds queries")(e.into()))?;
        let open = client
            .subscribe(open_subject(partition))
            .await
            .map_err(|e| nats("subscribe to open-epoch queries")(e.into()))?;
        let messages = LogFeed::open(stream, partition, position)
            .await
            .map_err(nats("open the log"))?;
        info!(partition, position, "owning partition");
        Ok(Owner {
            client,
            partition,
            partitions,
            engine,
            summaries,
            position,
            asks,
            funds,
            open,
            stream: stream.clone(),
            messages,
        })
    }

    /// Applies the partition's log to its ledger, answers asks and checkpoints the ledger until
    /// `stop` is cancelled or the ledger or the log fails. Returns with every part it handed to
    /// the ledger answered; the caller shuts the engine down.
    pub(crate) async fn run(
        self,
        checkpointing: Checkpointing,
        stop: CancellationToken,
    ) -> Result<(), OwnerError> {
        let (partition, engine, position) = (self.partition, self.engine, self.position);
        let (applied_tx, applied) = watch::channel(position);
        let messages_applied = Arc::new(AtomicU64::new(0));
        let refusals = Refusals::default();
        // The ledger failing stops the three loops below through this token.
        let failed = stop.child_token();
        let (in_flight_tx, in_flight_rx) = mpsc::channel(PARTS_IN_FLIGHT_MAX);
        let mut tasks = JoinSet::new();
        let funds = QuerySource {
            client: self.client.clone(),
            stream: self.stream.clone(),
            partition,
            partitions: self.partitions,
            reader: engine.reader(),
            applied: applied.clone(),
        };
        tasks.spawn(answer_queries(
            funds,
            (self.funds, self.open),
            failed.clone(),
        ));
        let (newest, summaries) = (engine.clone(), self.summaries.clone());
        let stopping = failed.clone();
        tasks.spawn(async move {
            store_newest_summary(&newest, summaries, partition, stopping).await;
        });
        tasks.spawn(checkpointing.checkpoints.keep_taking(
            engine.clone(),
            Arc::clone(&messages_applied),
            checkpointing.token,
            checkpointing.newest,
            failed.clone(),
        ));
        tasks.spawn(answer_asks(
            self.client,
            self.asks,
            engine.clone(),
            applied.clone(),
            Arc::clone(&refusals),
            failed.clone(),
        ));
        let acks = tokio::spawn(await_acks(
            (partition, engine.clone(), self.summaries),
            in_flight_rx,
            (applied_tx, messages_applied),
            failed.clone(),
        ));
        let log = Log {
            partition,
            partitions: self.partitions,
            refusals,
            stream: self.stream.clone(),
        };
        let consumed = log
            .consume(
                self.messages,
                &engine,
                position,
                in_flight_tx,
                failed.clone(),
            )
            .await;
        // The consumer dropped its sender: the ack loop ends once every part handed over is
        // answered.
        let acked = acks.await.unwrap_or(Err(EngineError::Stopped));
        failed.cancel();
        while tasks.join_next().await.is_some() {}
        consumed?;
        acked.map_err(|source| OwnerError::Ledger { partition, source })
    }
}

/// Messages an ordered consumer's task may hold for the consumer loop.
const FEED_BUFFER: usize = 64;

/// The partition's log through an ordered consumer, read by a task of its own: the consumer
/// loop waits on the channel with a timeout instead of on the consumer, whose `next` must not
/// be cancelled (async-nats's ordered consumer stopped delivering when it was, every few
/// seconds, in the cluster test). Dropping the feed stops the task and the consumer.
struct LogFeed {
    messages: mpsc::Receiver<Result<jetstream::Message, pull::OrderedError>>,
    task: tokio::task::JoinHandle<()>,
}

impl LogFeed {
    /// The partition's log from just after `position`.
    async fn open(
        stream: &stream::Stream,
        partition: u32,
        position: u64,
    ) -> Result<LogFeed, NatsError> {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject_of(partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                },
                ..Default::default()
            })
            .await?;
        let mut ordered = consumer.messages().await?;
        let (tx, messages) = mpsc::channel(FEED_BUFFER);
        let task = tokio::spawn(async move {
            while let Some(message) = ordered.next().await {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(LogFeed { messages, task })
    }
}

impl Drop for LogFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the log holds a message of `partition` after `position`: an ordered consumer that
/// delivers nothing while this says yes is stalled. Asks the stream's leader for the
/// partition's last message (no consumer needed), for at most [`STALL_QUESTION`]; `false`
/// when it does not answer.
async fn log_has_more(stream: &stream::Stream, partition: u32, position: u64) -> bool {
    let last = tokio::time::timeout(
        STALL_QUESTION,
        stream.get_last_raw_message_by_subject(&subject_of(partition)),
    )
    .await;
    matches!(last, Ok(Ok(message)) if message.sequence > position)
}

/// What the consumer needs to judge the parts of one partition's log.
struct Log {
    partition: u32,
    partitions: NonZeroU32,
    refusals: Refusals,
    stream: stream::Stream,
}

impl Log {
    /// Feeds the log to the engine in stream order, from just after `position`. The ordered
    /// consumer recreates itself after an error from the last sequence it delivered; a streak of
    /// errors is logged once and waited out with a growing pause, never spun on. A consumer that
    /// delivers nothing for [`STALL_CHECK`] while the log holds more is replaced.
    async fn consume(
        &self,
        mut feed: LogFeed,
        engine: &Engine,
        position: u64,
        in_flight: mpsc::Sender<Taken>,
        stop: CancellationToken,
    ) -> Result<(), OwnerError> {
        let partition = self.partition;
        // Looked up once: the registry lookup and the label's allocation stay off the per-part path.
        let lag = telemetry::log_lag(partition);
        let mut last = position;
        let mut errors = 0u32;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                message = tokio::time::timeout(STALL_CHECK, feed.messages.recv()) => message,
            };
            let Ok(message) = message else {
                // With a NATS server down, NATS 2.9.10 can leave an ordered consumer that
                // delivers nothing and reports nothing (seen for minutes after a server was
                // killed): checked against the log itself, and replaced when stalled.
                if log_has_more(&self.stream, partition, last).await {
                    warn!(
                        partition,
                        position = last,
                        "the log consumer delivers nothing while the log has more; opening it again"
                    );
                    match LogFeed::open(&self.stream, partition, last).await {
                        Ok(reopened) => feed = reopened,
                        Err(error) => {
                            warn!(partition, %error, "cannot open the log again; trying at the next check")
                        }
                    }
                }
                continue;
            };
            let message = match message {
                Some(Ok(message)) => {
                    if errors > 0 {
                        info!(partition, errors, "log consumer recovered");
                        errors = 0;
                    }
                    message
                }
                Some(Err(error)) => {
                    errors = errors.saturating_add(1);
                    let pause = backoff(errors);
                    if errors == 1 {
                        warn!(partition, %error, ?pause, "log consumer error; retrying with backoff until it recovers");
                    } else {
                        debug!(partition, %error, errors, ?pause, "log consumer error");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
                None => {
                    return Err(OwnerError::Nats {
                        partition,
                        what: "the log consumer ended",
                        source: "no more messages".into(),
                    });
                }
            };
            let seq = match message.info() {
                Ok(info) => {
                    lag.set(info.pending as f64);
                    info.stream_sequence
                }
                Err(error) => {
                    warn!(partition, %error, "log message without its sequence; skipped");
                    continue;
                }
            };
            if seq <= last {
                continue;
            }
            last = seq;
            if Mark::is_mark(&message.payload) {
                // A mark this node cannot read (a newer release wrote it, or it is damaged)
                // may be money: the partition stops here rather than skip it.
                let mark = Mark::decode(&message.payload).map_err(|source| {
                    OwnerError::UnreadableMark {
                        partition,
                        seq,
                        source,
                    }
                })?;
                if let Some(payer) = mark.payer()
                    && partition_of(payer, self.partitions) != partition
                {
                    // A funds mark would move this partition's funds cursor past its own
                    // payers' events; a shortfall names a debit this ledger does not hold.
                    error!(partition, seq, %payer, ?mark, "mark for another partition's payer: not applied");
                    if in_flight.send(Taken::Refused(seq)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                let (done, applied) = oneshot::channel();
                if in_flight
                    .send(Taken::Mark { seq, mark, done })
                    .await
                    .is_err()
                    || applied.await.is_err()
                {
                    // The ack loop stopped (on a ledger failure, which it reports, or `stop`).
                    return Ok(());
                }
                continue;
            }
            let part = match admit(&message.payload, partition, self.partitions) {
                Ok(part) => part,
                Err(error) => {
                    warn!(partition, seq, %error, "part refused, nothing of it applied");
                    self.refused(seq);
                    if in_flight.send(Taken::Refused(seq)).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let request = SubmitRequest {
                client_id: part.batch.client_id,
                producer_id: part.batch.producer_id,
                session_epoch: part.batch.session_epoch,
                batch_seq: part.batch.batch_seq,
                receipts: part.receipts,
                prejudged: Vec::new(),
            };
            let at = LogPosition {
                seq,
                time_ms: part.published_ms,
            };
            let receiver = loop {
                match engine.submit_logged(request.clone(), at) {
                    Ok(receiver) => break receiver,
                    // The in-flight bound normally keeps the engine's queue from filling.
                    Err(SubmitError::Full) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(error) => {
                        return Err(OwnerError::Ledger {
                            partition,
                            source: refused(error),
                        });
                    }
                }
            };
            if in_flight
                .send(Taken::Submitted(seq, receiver))
                .await
                .is_err()
            {
                // The ack loop stopped on a ledger failure, which it reports.
                return Ok(());
            }
        }
    }

    /// Remembers that the part at `seq` was refused, forgetting the oldest beyond the bound.
    fn refused(&self, seq: u64) {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        refusals.insert(seq);
        if refusals.len() > REFUSALS_KEPT {
            refusals.pop_first();
        }
    }
}

/// Waits for the engine's answers in log order and publishes how far the log is applied, and
/// how many of its messages. A refused part (another batch under a remembered number, a
/// superseded session) counts as applied: applying it again refuses it again. An epoch mark is
/// applied here, once everything before it is answered.
async fn await_acks(
    (partition, engine, summaries): (u32, Engine, Summaries),
    mut in_flight: mpsc::Receiver<Taken>,
    (applied, messages): (watch::Sender<u64>, Arc<AtomicU64>),
    failed: CancellationToken,
) -> Result<(), EngineError> {
    while let Some(taken) = in_flight.recv().await {
        let (seq, receiver) = match taken {
            Taken::Submitted(seq, receiver) => (seq, receiver),
            Taken::Refused(seq) => {
                messages.fetch_add(1, Ordering::Relaxed);
                applied.send_replace(seq);
                continue;
            }
            Taken::Mark { seq, mark, done } => {
                if let Err(error) = apply_mark(&engine, &summaries, partition, &mark, &failed).await
                {
                    if !error.is_refusal() {
                        failed.cancel();
                        return Err(error);
                    }
                    warn!(partition, seq, ?mark, %error, "mark refused by the ledger");
                }
                messages.fetch_add(1, Ordering::Relaxed);
                applied.send_replace(seq);
                done.send(()).ok();
                continue;
            }
        };
        let answer: Result<BatchAck, EngineError> =
            receiver.await.unwrap_or(Err(EngineError::Stopped));
        match answer {
            Ok(_) => {}
            Err(error) if error.is_refusal() => {
                warn!(partition, seq, %error, "part refused by the ledger");
            }
            Err(error) => {
                failed.cancel();
                return Err(error);
            }
        }
        messages.fetch_add(1, Ordering::Relaxed);
        applied.send_replace(seq);
    }
    Ok(())
}

/// Answers each ask once the log is applied through its sequence, from the ledger (or as
/// refused).
async fn answer_asks(
    client: async_nats::Client,
    asks: async_nats::Subscriber,
    engine: Engine,
    applied: watch::Receiver<u64>,
    refusals: Refusals,
    stop: CancellationToken,
) {
    let answer = |ask: Ask, reply| {
        let (client, reader, mut applied, refusals, stop) = (
            client.clone(),
            engine.reader(),
            applied.clone(),
            Arc::clone(&refusals),
            stop.clone(),
        );
        async move {
            tokio::select! {
                () = stop.cancelled() => return,
                reached = applied.wait_for(|applied| *applied >= ask.seq) => if reached.is_err() { return },
            }
            let refused = refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&ask.seq);
            let verdicts = if refused {
                Ok(Ok(Verdicts::Refused))
            } else {
                tokio::task::spawn_blocking(move || {
                    reader
                        .logged_outcome(ask.seq, &ask.digest)
                        .map(Verdicts::Ledger)
                })
                .await
            };
            match verdicts {
                Ok(Ok(verdicts)) => {
                    let answer = Answer {
                        seq: ask.seq,
                        verdicts,
                    };
                    if let Err(error) = client.publish(reply, answer.encode()).await {
                        warn!(%error, "cannot send an answer; the node will ask again");
                    }
                }
                Ok(Err(error)) => warn!(%error, "cannot read a batch's outcome"),
                Err(error) => warn!(%error, "outcome read panicked"),
            }
        }
    };
    answer_each(
        asks,
        "ask",
        ASKS_WAITING_MAX,
        Ask::decode,
        answer,
        stop.clone(),
    )
    .await;
}
