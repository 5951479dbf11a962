//! Drives a planned workload through C connections and judges every ack.
//!
//! Per connection two tasks: a sender that paces and hands batches to the client
//! ([`Transport::submit_batch`], which awaits only for back-pressure), and a collector that awaits
//! the verdicts of every batch in flight and records them in that connection's [`Stats`]. With
//! `presign`, every receipt is signed on all cores before the clock starts, so during the run the
//! generator only copies bytes; without it, one producer thread plans and signs batch by batch
//! (rayon) and feeds the connections through bounded channels.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tollgate_engine::grant::SignedRevocation;
use tollgate_engine::{PayerKey, Receipt, Verdict};

use super::acked_log::AckedLog;
use super::stats::{Sent, Stats, Summary};
use super::workload::{Planned, Planner, WorkloadError};

/// One connection to the engine, as the generator needs it. Implemented by the ingest client; the
/// seam keeps the driver testable without sockets.
pub trait Transport: Send + Sync + 'static {
    /// Why a submission or a connection failed.
    type Error: std::fmt::Display + Send + 'static;
    /// Resolves to the batch's verdicts, in input order.
    type Verdicts: Future<Output = Result<Vec<Verdict>, Self::Error>> + Send + 'static;
    /// Hands over a whole batch; awaits only while the connection's in-flight window is full.
    fn submit_batch(
        &self,
        receipts: Vec<Receipt>,
    ) -> impl Future<Output = Result<Self::Verdicts, Self::Error>> + Send;
    /// Waits for everything in flight and closes the connection.
    fn close(self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Registers a payer's revocation of a session key; resolves once it is durable, or says
    /// why not. Only session workloads with revoked receipts call it.
    fn revoke(
        &self,
        revocation: &SignedRevocation,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = revocation;
        std::future::ready(Err("this transport cannot register revocations".to_owned()))
    }
}

/// How the workload is driven.
#[derive(Clone, Debug)]
pub struct Options {
    /// Receipts per batch.
    pub batch_receipts: usize,
    /// Receipts per second over all connections; 0 = as fast as the engine acks.
    pub rate_per_s: f64,
    /// Stop submitting after this long (batches in flight are still awaited).
    pub duration: Option<Duration>,
    /// Sign everything before the clock starts.
    pub presign: bool,
    /// Batches awaiting their verdicts per connection. The generator holds to this itself, so ack
    /// latency measures the engine, not a queue inside the client.
    pub batches_in_flight_max: usize,
    /// Draw a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Write one JSON line per acked receipt here.
    pub acked_log: Option<std::path::PathBuf>,
}

/// A run that could not be carried out (as opposed to one whose answers were wrong: that is in the
/// [`Stats`]).
#[derive(Debug, Error)]
pub enum LoadError {
    /// The workload is invalid.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// A connection could not be opened.
    #[error("connection {connection}: {message}")]
    Connect {
        /// which connection (0-based)
        connection: u32,
        /// the client's error
        message: String,
    },
    /// The acked log could not be created or written.
    #[error("acked log: {0}")]
    AckedLog(#[from] std::io::Error),
    /// A generator thread died.
    #[error("generator task failed: {0}")]
    Task(String),
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Everything recorded, merged over connections.
    pub stats: Stats,
    /// The figures `--json` prints.
    pub summary: Summary,
    /// Time spent presigning (before the clock), seconds.
    pub presign_s: f64,
    /// The payers' keys, by index (for `--check`).
    pub payers: Arc<[PayerKey]>,
}

/// A batch ready to hand over, with what is needed to judge its verdicts.
#[derive(Debug)]
struct Batch {
    /// To be durable before the receipts are sent.
    revocations: Vec<SignedRevocation>,
    receipts: Vec<Receipt>,
    sent: Vec<Sent>,
}

/// What signs: [`Planner::signing_keys`] and [`Planner::revocations`].
#[derive(Clone, Copy)]
struct Signers<'a> {
    keys: &'a [ed25519_dalek::SigningKey],
    revocations: &'a [SignedRevocation],
    domain: &'a tollgate_engine::Domain,
}

impl<'a> Signers<'a> {
    fn of(planner: &'a Planner) -> Self {
        Signers {
            keys: planner.signing_keys(),
            revocations: planner.revocations(),
            domain: &planner.workload().domain,
        }
    }

    fn sign_batch(&self, planned: &[Planned]) -> Batch {
        Batch {
            revocations: planned
                .iter()
                .filter(|p| p.revoke_first)
                .filter_map(|p| self.revocations.get(p.payer_index as usize).copied())
                .collect(),
            receipts: planned
                .par_iter()
                .map(|p| p.sign(&self.keys[p.signer as usize], self.domain))
                .collect(),
            sent: planned.iter().map(Sent::from).collect(),
        }
    }
}

/// Where a connection's batches come from.
#[derive(Debug)]
enum Source {
    Presigned(std::vec::IntoIter<Batch>),
    Streamed(mpsc::Receiver<Batch>),
}

impl Source {
    async fn next(&mut self) -> Option<Batch> {
        match self {
            Source::Presigned(batches) => batches.next(),
            Source::Streamed(receiver) => receiver.recv().await,
        }
    }
}

/// State every connection reads or bumps: the clock, the stop flag, the pacing schedule, and the
/// counters the progress bar shows.
#[derive(Debug)]
struct Shared {
    start: Instant,
    /// `start + --duration`: no batch due at or after it is sent.
    deadline: Option<Instant>,
    stop: AtomicBool,
    /// Nanoseconds after `start` at which the next batch may go, when a rate is set.
    next_slot_ns: AtomicU64,
    rate_per_s: f64,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Whether a batch due at `due` is past `--duration`.
    fn past_deadline(&self, due: Instant) -> bool {
        self.deadline.is_some_and(|deadline| due >= deadline)
    }

    /// When a batch of `n` may go: slots are handed out in order over all connections, so the
    /// offered rate holds whatever the engine does (latency is measured from the slot, not from
    /// when the batch finally went, so a stalled engine shows up in the latency).
    fn slot(&self, n: usize) -> Option<Instant> {
        if self.rate_per_s <= 0.0 {
            return None;
        }
        let interval_ns = (n as f64 * 1e9 / self.rate_per_s) as u64;
        let at = self.next_slot_ns.fetch_add(interval_ns, Ordering::Relaxed);
        Some(self.start + Duration::from_nanos(at))
    }
}

/// Signed batches buffered per connection ahead of the sender when not presigning.
const STREAM_QUEUE_BATCHES: usize = 4;
/// How often the progress bar is redrawn.
const PROGRESS_TICK_MS: u64 = 200;

/// How often a streamed plan re-reads the clock for its receipts' timestamps.
const TIMESTAMP_REFRESH_RECEIPTS: u64 = 4096;

/// Now, in unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Plans and signs the whole workload, batched per connection. CPU-bound: run it off the runtime.
fn presign(mut planner: Planner, batch_receipts: usize) -> Result<Vec<Vec<Batch>>, WorkloadError> {
    if planner.workload().receipts.is_none() {
        return Err(WorkloadError::Unbounded);
    }
    let mut per_connection: Vec<Vec<Planned>> = (0..planner.workload().connections)
        .map(|_| Vec::new())
        .collect();
    while let Some(planned) = planner.next_planned()? {
        per_connection[planned.connection as usize].push(planned);
    }
    let signers = Signers::of(&planner);
    Ok(per_connection
        .par_iter()
        .map(|planned| {
            planned
                .chunks(batch_receipts)
                .map(|chunk| signers.sign_batch(chunk))
                .collect::<Vec<Batch>>()
        })
        .collect())
}

/// Plans and signs batch by batch until the plan ends or the run is stopped. A connection whose
/// sender has gone (its client failed) gets nothing more; its receipts are simply not sent.
fn stream(
    mut planner: Planner,
    batch_receipts: usize,
    senders: Vec<mpsc::Sender<Batch>>,
    stop: &AtomicBool,
) -> Result<(), WorkloadError> {
    let mut senders: Vec<Option<mpsc::Sender<Batch>>> = senders.into_iter().map(Some).collect();
    let mut pending: Vec<Vec<Planned>> = senders.iter().map(|_| Vec::new()).collect();
    let keys = planner.signing_keys().to_vec();
    let revocations = planner.revocations().to_vec();
    let domain = planner.workload().domain;
    let signers = Signers {
        keys: &keys,
        revocations: &revocations,
        domain: &domain,
    };
    let mut hand_over = |connection: usize, planned: &mut Vec<Planned>| {
        let gone = match &senders[connection] {
            Some(sender) => sender.blocking_send(signers.sign_batch(planned)).is_err(),
            None => false,
        };
        if gone {
            senders[connection] = None;
        }
        planned.clear();
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(planned) = planner.next_planned()? else {
            break;
        };
        if planner.planned().is_multiple_of(TIMESTAMP_REFRESH_RECEIPTS) {
            planner.set_timestamp_ms(unix_ms());
        }
        let connection = planned.connection as usize;
        pending[connection].push(planned);
        if pending[connection].len() >= batch_receipts {
            hand_over(connection, &mut pending[connection]);
        }
    }
    for (connection, planned) in pending.iter_mut().enumerate() {
        if !planned.is_empty() && !stop.load(Ordering::Relaxed) {
            hand_over(connection, planned);
        }
    }
    Ok(())
}

struct InFlight<V> {
    since: Instant,
    sent: Vec<Sent>,
    verdicts: V,
    /// Released when the verdicts are in.
    permit: OwnedSemaphorePermit,
}

/// Awaits every batch the sender hands over and judges the verdicts.
async fn collect<V, E>(
    mut in_flight: mpsc::Receiver<InFlight<V>>,
    shared: Arc<Shared>,
    log: Option<Arc<AckedLog>>,
) -> Stats
where
    V: Future<Output = Result<Vec<Verdict>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut stats = Stats::default();
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = in_flight.recv(), if open => match item {
                Some(InFlight { since, sent, verdicts, permit }) => {
                    waiting.push(async move {
                        let result = verdicts.await;
                        drop(permit);
                        (since, sent, result)
                    });
                }
                None => open = false,
            },
            Some((since, sent, result)) = waiting.next(), if !waiting.is_empty() => {
                let now = Instant::now();
                let n = sent.len() as u64;
                match result {
                    Ok(verdicts) => {
                        stats.record_acked(
                            &sent,
                            &verdicts,
                            now.saturating_duration_since(since),
                            now.saturating_duration_since(shared.start),
                        );
                        if let Some(log) = &log
                            && let Err(error) = log.write_batch(&sent, &verdicts)
                        {
                            stats.note_error(&format!("acked log: {error}"));
                        }
                        shared.acked.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(error) => {
                        stats.record_failed(&sent, &format!("batch failed: {error}"));
                        shared.failed.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            else => break,
        }
    }
    stats
}

/// One connection: paces, submits, and on the first submission error stops sending (the client
/// has already retried as far as it will).
async fn drive<T: Transport>(
    connection: u32,
    transport: T,
    mut source: Source,
    shared: Arc<Shared>,
    log: Option<Arc<AckedLog>>,
    batches_in_flight_max: usize,
) -> Stats {
    let in_flight = Arc::new(Semaphore::new(batches_in_flight_max.max(1)));
    // Never the limit: the semaphore already bounds what is in flight.
    let (to_collector, from_sender) = mpsc::channel(batches_in_flight_max.max(1));
    let collector = tokio::spawn(collect(from_sender, shared.clone(), log));
    let mut stats = Stats::default();
    while let Some(Batch {
        revocations,
        receipts,
        sent,
    }) = source.next().await
    {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let slot = shared.slot(receipts.len());
        // Judged by the batch's due time, not by when this task got to run: a busy machine must
        // not turn a late wake-up into extra batches past --duration.
        if shared.past_deadline(slot.unwrap_or_else(Instant::now)) {
            break;
        }
        if let Some(slot) = slot {
            tokio::time::sleep_until(slot.into()).await;
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        // Taken after the slot: when the engine falls behind the offered rate, the wait for a
        // free window counts in the latency instead of silently lowering the rate.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            // The semaphore is never closed.
            break;
        };
        stats.record_sent(&sent);
        let mut revoked = Ok(());
        for revocation in &revocations {
            revoked = transport.revoke(revocation).await;
            if revoked.is_err() {
                break;
            }
        }
        if let Err(error) = revoked {
            shared
                .failed
                .fetch_add(sent.len() as u64, Ordering::Relaxed);
            stats.record_failed(
                &sent,
                &format!("connection {connection}: revocation: {error}"),
            );
            break;
        }
        match transport.submit_batch(receipts).await {
            Ok(verdicts) => {
                let since = slot.unwrap_or_else(Instant::now);
                let item = InFlight {
                    since,
                    sent,
                    verdicts,
                    permit,
                };
                if to_collector.send(item).await.is_err() {
                    // The collector only ends after this sender does; it cannot have gone.
                    stats.note_error("collector ended early");
                    break;
                }
            }
            Err(error) => {
                shared
                    .failed
                    .fetch_add(sent.len() as u64, Ordering::Relaxed);
                stats.record_failed(&sent, &format!("connection {connection}: {error}"));
                break;
            }
        }
    }
    drop(to_collector);
    match collector.await {
        Ok(collected) => stats.merge(collected),
        Err(error) => stats.note_error(&format!("connection {connection} collector: {error}")),
    }
    if let Err(error) = transport.close().await {
        stats.note_error(&format!("connection {connection} close: {error}"));
    }
    stats
}

fn progress_bar(enabled: bool, total: Option<u64>) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} acked, {per_sec} {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Runs `planner`'s workload over connections opened by `connect(index)`, and judges every ack.
///
/// Keys, presigning and connecting all happen before the clock starts; the clock stops at the
/// last ack.
pub async fn run_with<T, C, F>(
    planner: Planner,
    options: &Options,
    mut connect: C,
) -> Result<Outcome, LoadError>
where
    T: Transport,
    C: FnMut(u32) -> F,
    F: Future<Output = Result<T, T::Error>>,
{
    let connections = planner.workload().connections;
    let total = planner.workload().receipts;
    let payers: Arc<[PayerKey]> = Arc::from(planner.payers());
    let batch_receipts = options.batch_receipts.max(1);
    let log = match &options.acked_log {
        Some(path) => Some(Arc::new(AckedLog::create(path, payers.clone())?)),
        None => None,
    };

    let presign_started = Instant::now();
    let (sources, producer_input) = if options.presign {
        let batches = tokio::task::spawn_blocking(move || presign(planner, batch_receipts))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??;
        let sources: Vec<Source> = batches
            .into_iter()
            .map(|batches| Source::Presigned(batches.into_iter()))
            .collect();
        (sources, None)
    } else {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..connections)
            .map(|_| mpsc::channel(STREAM_QUEUE_BATCHES))
            .unzip();
        let sources = receivers.into_iter().map(Source::Streamed).collect();
        (sources, Some((planner, senders)))
    };
    let presign_s = if options.presign {
        presign_started.elapsed().as_secs_f64()
    } else {
        0.0
    };

    let mut transports = Vec::with_capacity(connections as usize);
    for connection in 0..connections {
        let transport = connect(connection).await.map_err(|e| LoadError::Connect {
            connection,
            message: e.to_string(),
        })?;
        transports.push(transport);
    }

    let shared = Arc::new(Shared {
        start: Instant::now(),
        deadline: options.duration.map(|duration| Instant::now() + duration),
        stop: AtomicBool::new(false),
        next_slot_ns: AtomicU64::new(0),
        rate_per_s: options.rate_per_s,
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let producer = producer_input.map(|(planner, senders)| {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || stream(planner, batch_receipts, senders, &shared.stop))
    });
    let timer = options.duration.map(|duration| {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.stop.store(true, Ordering::Relaxed);
        })
    });
    let bar = progress_bar(options.progress, total);
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(PROGRESS_TICK_MS));
            loop {
                tick.tick().await;
                bar.set_position(shared.acked.load(Ordering::Relaxed));
                let failed = shared.failed.load(Ordering::Relaxed);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
        })
    };

    let drivers: Vec<_> = transports
        .into_iter()
        .zip(sources)
        .enumerate()
        .map(|(connection, (transport, source))| {
            tokio::spawn(drive(
                connection as u32,
                transport,
                source,
                shared.clone(),
                log.clone(),
                options.batches_in_flight_max,
            ))
        })
        .collect();
    let mut stats = Stats::default();
    for driver in drivers {
        match driver.await {
            Ok(connection_stats) => stats.merge(connection_stats),
            Err(error) => stats.note_error(&format!("connection task: {error}")),
        }
    }
    let elapsed = shared.start.elapsed();
    ticker.abort();
    if let Some(timer) = timer {
        timer.abort();
    }
    bar.set_position(shared.acked.load(Ordering::Relaxed));
    bar.finish_and_clear();
    if let Some(producer) = producer {
        // Every sender has finished, so the producer is either done or blocked on a closed
        // channel, which returns at once.
        shared.stop.store(true, Ordering::Relaxed);
        producer
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??;
    }
    if let Some(log) = &log {
        log.flush()?;
    }
    let summary = stats.summary(elapsed);
    Ok(Outcome {
        stats,
        summary,
        presign_s,
        payers,
    })
}
