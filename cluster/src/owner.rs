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
//! Asks are answered from the ledger, never from memory, by the part's log sequence (the outcome
//! the part got is stored under it in the group that applied it, so it stays the answer however
//! many later parts or sessions the producer sends): an ingest node that lost its answer
//! (a dropped connection, an owner restart, a re-publish the log deduplicated) asks again,
//! anywhere, any time, and gets the same verdicts.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{
    AckReceiver, BatchAck, Engine, EngineError, LedgerError, LogPosition, SubmitError,
    SubmitRequest,
};
use tracing::{info, warn};

use crate::error::NatsError;
use crate::part::{Ask, Part, ask_subject, encode_answer};
use crate::partition::subject_of;

/// Asks waiting for the log to be applied that far, per partition; beyond, an ask is dropped
/// and its node asks again after its timeout.
const ASKS_WAITING_MAX: usize = 4_096;
/// Parts handed to the engine and not yet answered. The engine's own queue bounds it too; this
/// keeps the owner from pulling the whole log into memory ahead of the writer.
const PARTS_IN_FLIGHT_MAX: usize = 128;

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
    /// Subscribing to the log or the asks failed.
    #[error("partition {partition}: {what}")]
    Nats {
        partition: u32,
        what: &'static str,
        #[source]
        source: NatsError,
    },
}

/// Applies partition `partition`'s log to `engine` (the partition's own ledger) and answers asks
/// until `stop` is cancelled or the ledger fails. Returns with every part it handed to the engine
/// answered; the caller shuts the engine down.
pub async fn own(
    client: async_nats::Client,
    stream: stream::Stream,
    partition: u32,
    engine: Engine,
    stop: CancellationToken,
) -> Result<(), OwnerError> {
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
    let (applied_tx, applied) = watch::channel(position);
    let asks = client
        .subscribe(ask_subject(partition))
        .await
        .map_err(|e| nats("subscribe to asks")(e.into()))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject_of(partition),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats("create the log consumer")(e.into()))?;
    let messages = Box::pin(
        consumer
            .messages()
            .await
            .map_err(|e| nats("read the log")(e.into()))?,
    );
    info!(partition, position, "owning partition");

    // The ledger failing stops the three loops below through this token.
    let failed = stop.child_token();
    let (in_flight_tx, in_flight_rx) = mpsc::channel(PARTS_IN_FLIGHT_MAX);
    let mut tasks = JoinSet::new();
    tasks.spawn(answer_asks(
        client,
        asks,
        engine.clone(),
        applied.clone(),
        failed.clone(),
    ));
    let acks = tokio::spawn(await_acks(
        partition,
        in_flight_rx,
        applied_tx,
        failed.clone(),
    ));
    let consumed = consume(
        partition,
        messages,
        &engine,
        position,
        in_flight_tx,
        failed.clone(),
    )
    .await;
    // The consumer dropped its sender: the ack loop ends once every part handed over is answered.
    let acked = acks.await.unwrap_or(Err(EngineError::Stopped));
    failed.cancel();
    while tasks.join_next().await.is_some() {}
    consumed?;
    acked.map_err(|source| OwnerError::Ledger { partition, source })
}

/// Feeds the log to the engine in stream order, from just after `position`.
async fn consume(
    partition: u32,
    mut messages: std::pin::Pin<Box<pull::Ordered>>,
    engine: &Engine,
    position: u64,
    in_flight: mpsc::Sender<(u64, AckReceiver)>,
    stop: CancellationToken,
) -> Result<(), OwnerError> {
    let mut last = position;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                // The ordered consumer recreates itself from the last sequence it delivered.
                warn!(partition, %error, "log consumer error");
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
            Ok(info) => info.stream_sequence,
            Err(error) => {
                warn!(partition, %error, "log message without its sequence; skipped");
                continue;
            }
        };
        if seq <= last {
            continue;
        }
        last = seq;
        let part = match Part::decode(&message.payload) {
            Ok(part) if part.partition == partition => part,
            Ok(part) => {
                warn!(
                    partition,
                    seq,
                    wrong = part.partition,
                    "part of another partition in the log; skipped"
                );
                continue;
            }
            Err(error) => {
                warn!(partition, seq, %error, "unreadable part in the log; skipped");
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
                    let source = match error {
                        SubmitError::Poisoned => EngineError::Ledger(LedgerError::Poisoned {
                            cause: "submit refused: ledger poisoned".into(),
                        }),
                        _ => EngineError::Stopped,
                    };
                    return Err(OwnerError::Ledger { partition, source });
                }
            }
        };
        if in_flight.send((seq, receiver)).await.is_err() {
            // The ack loop stopped on a ledger failure, which it reports.
            return Ok(());
        }
    }
}

/// Waits for the engine's answers in log order and publishes how far the log is applied. A
/// refused part (another batch under a remembered number, a superseded session) counts as
/// applied: applying it again refuses it again.
async fn await_acks(
    partition: u32,
    mut in_flight: mpsc::Receiver<(u64, AckReceiver)>,
    applied: watch::Sender<u64>,
    failed: CancellationToken,
) -> Result<(), EngineError> {
    while let Some((seq, receiver)) = in_flight.recv().await {
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
        applied.send_replace(seq);
    }
    Ok(())
}

/// Answers each ask once the log is applied through its sequence, from the ledger.
async fn answer_asks(
    client: async_nats::Client,
    mut asks: async_nats::Subscriber,
    engine: Engine,
    applied: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let waiting = Arc::new(Semaphore::new(ASKS_WAITING_MAX));
    let mut answering = JoinSet::new();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = asks.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let (Some(reply), Ok(ask)) = (message.reply.clone(), Ask::decode(&message.payload)) else {
            warn!(subject = %message.subject, "unreadable ask; ignored");
            continue;
        };
        let Ok(permit) = Arc::clone(&waiting).try_acquire_owned() else {
            continue;
        };
        let (client, reader, mut applied, stop) = (
            client.clone(),
            engine.reader(),
            applied.clone(),
            stop.clone(),
        );
        answering.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => return,
                reached = applied.wait_for(|applied| *applied >= ask.seq) => if reached.is_err() { return },
            }
            let outcome =
                tokio::task::spawn_blocking(move || reader.logged_outcome(ask.seq, &ask.digest))
                    .await;
            match outcome {
                Ok(Ok(outcome)) => {
                    if let Err(error) = client.publish(reply, encode_answer(&outcome)).await {
                        warn!(%error, "cannot send an answer; the node will ask again");
                    }
                }
                Ok(Err(error)) => warn!(%error, "cannot read a batch's outcome"),
                Err(error) => warn!(%error, "outcome read panicked"),
            }
        });
        // Reap finished answers so the set stays as small as what is waiting.
        while answering.try_join_next().is_some() {}
    }
    answering.shutdown().await;
}
