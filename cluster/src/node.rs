//! A node's partitions: for each partition it may own, a lease keeper, and while the lease is
//! held, the partition's ledger (its own RocksDB directory, `<data_dir>/partition-<p>`) and
//! the owner loop that applies the partition's log to it ([`crate::owner`]). The node announces
//! itself to the others and holds at most its share of the partitions ([`crate::share`]), so
//! partitions spread over the nodes as they join and leave.
//!
//! One ledger per partition rather than one per node: a partition is the unit that changes
//! owner, so its state must be separable; and each ledger's per-producer ack store then keys a
//! part by (client, producer, session epoch, batch seq) within its partition, which is exactly
//! the part's identity.
//!
//! Losing the lease stops the owner loop and closes the ledger; getting it back reopens the
//! ledger and resumes the log right after the position the ledger holds. A NATS failure under
//! the owner (its subscriptions cannot be made, its log consumer ended) does the same and
//! more: the node stops renewing the lease so it lapses (another node may take the partition),
//! waits a pause that grows with each failure in a row, and competes for the lease again; the
//! streak is logged once, when it starts. Only a ledger failure makes a node give up a
//! partition for good. The ledger a node keeps for a partition it lost may fall behind; when the
//! partition returns it catches up from the log, or, when a newer checkpoint exists (the log
//! may be purged below it), is replaced by that checkpoint first ([`crate::checkpoint`]). A
//! checkpoint that cannot be listed or restored is retried like a NATS failure.
//! The owners' answers do not need fencing: every owner applies the same log in the same order,
//! judged as of the times in the log, so two owners for a moment give the same verdicts.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{BatchVerifier, Engine, EngineConfig, EngineError, LedgerReader};
use tracing::{debug, error, info, warn};

use crate::checkpoint::{CheckpointError, Checkpoints, Policy, Stored};
use crate::epoch::Summaries;
use crate::lease::{Lease, LeaseKeeper, Leases};
use crate::owner::{Checkpointing, Owner, OwnerError};
use crate::resources::Cluster;
use crate::retry::backoff;
use crate::share::Share;
use crate::telemetry;

/// The ledgers of the partitions this node owns now, for reads.
type Owned = Arc<Mutex<BTreeMap<u32, LedgerReader>>>;

/// What a node keeps for every partition it may own.
#[derive(Clone)]
pub struct NodeLedgers {
    /// Where the partitions' ledgers live (`partition-<p>` each).
    pub data_dir: PathBuf,
    /// The ledger settings every partition's ledger opens with (`data_dir` is replaced). Must be
    /// the same on every node: the owners' verdicts are the same only under the same rules.
    pub engine: EngineConfig,
    /// Never called for parts (their signatures were checked by the ingest node), but an
    /// engine needs one.
    pub verifier: Arc<dyn BatchVerifier>,
}

impl std::fmt::Debug for NodeLedgers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLedgers")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The partitions a node competes for, owns and applies.
#[derive(Debug)]
pub struct Node {
    stop: CancellationToken,
    tasks: JoinSet<Result<(), OwnerError>>,
    owned: Owned,
    share: Arc<Share>,
}

impl Node {
    /// Starts keeping a lease on each of `partitions` and owning those it gets.
    pub fn start(
        cluster: &Cluster,
        ledgers: NodeLedgers,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Node {
        let stop = CancellationToken::new();
        let owned: Owned = Arc::default();
        let mut tasks = JoinSet::new();
        let share = Share::new(cluster.partitions().get(), cluster.leases().heartbeat());
        let announcing = announce(cluster.leases().clone(), Arc::clone(&share), stop.clone());
        tasks.spawn(async move {
            announcing.await;
            Ok(())
        });
        for partition in partitions {
            let keeping = Keeping {
                checkpoints: Checkpoints::new(
                    (
                        cluster.checkpoints().clone(),
                        cluster.checkpoint_stream().clone(),
                        cluster.meta().clone(),
                    ),
                    cluster.stream().clone(),
                    cluster.leases().clone(),
                    partition,
                    Policy::of(cluster.config()),
                    &ledgers.data_dir,
                ),
                summaries: Summaries::new(cluster),
                leases: cluster.leases().clone(),
                share: Arc::clone(&share),
                client: cluster.jetstream().client(),
                stream: cluster.stream().clone(),
                partition,
                partitions: cluster.partitions(),
                ledgers: ledgers.clone(),
                owned: Arc::clone(&owned),
                stop: stop.clone(),
            };
            tasks.spawn(keeping.run());
        }
        Node {
            stop,
            tasks,
            owned,
            share,
        }
    }

    /// Takes no more partitions (the node is about to stop): what it owns stays owned until
    /// [`Node::stop`], so what it already handed its owners is still answered.
    pub fn stop_taking(&self) {
        self.share.leave();
    }

    /// The partitions owned now, each with a reader of its ledger.
    pub fn owned(&self) -> BTreeMap<u32, LedgerReader> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves when a partition's ledger failed (the node must stop), with the error.
    pub async fn failed(&mut self) -> OwnerError {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Err(error))) => return error,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops every owner (each answers what it handed its ledger, which then closes) and every
    /// lease keeper; the first failure, if any.
    pub async fn stop(mut self) -> Result<(), OwnerError> {
        self.stop.cancel();
        let mut first = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let (Ok(Err(error)), Ok(())) = (joined, &first) {
                first = Err(error);
            }
        }
        first
    }
}

/// One partition a node competes for, and what owning it takes.
struct Keeping {
    checkpoints: Checkpoints,
    /// Where the owner stores its partition's summary of each epoch it seals.
    summaries: Summaries,
    leases: Leases,
    /// How many partitions this node may hold (rebalancing, see `share`).
    share: Arc<Share>,
    client: async_nats::Client,
    stream: async_nats::jetstream::stream::Stream,
    partition: u32,
    partitions: NonZeroU32,
    ledgers: NodeLedgers,
    owned: Owned,
    stop: CancellationToken,
}

impl Keeping {
    /// Owns the partition whenever this node holds its lease, until `stop` or a ledger failure;
    /// after a NATS failure lets the lease lapse, backs off and competes again.
    async fn run(self) -> Result<(), OwnerError> {
        let partition = self.partition;
        // Left by a run that crashed mid-checkpoint.
        self.checkpoints.clear_work().await;
        let mut failures = 0u32;
        loop {
            let keeper = self.leases.keep_within(partition, Arc::clone(&self.share));
            let ended = self.own_while_held(&keeper, &mut failures).await;
            if ended.is_ok() {
                keeper.stop().await;
            } else {
                keeper.lapse().await;
            }
            let error = match ended {
                Ok(()) => return Ok(()),
                Err(
                    error @ (OwnerError::Nats { .. }
                    | OwnerError::Checkpoint { .. }
                    | OwnerError::UnreadableMark { .. }),
                ) => error,
                Err(error) => {
                    error!(partition, %error, "partition owner failed; giving up its lease");
                    return Err(error);
                }
            };
            failures = failures.saturating_add(1);
            let pause = backoff(failures);
            if failures == 1 {
                warn!(
                    partition, %error, ?pause,
                    "the partition's owner failed on NATS, its checkpoints or a mark it cannot \
                     read: letting its lease lapse and competing for it again, with a growing pause until it is owned again"
                );
            } else {
                debug!(partition, %error, failures, ?pause, "partition owner failed again");
            }
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Runs the partition's owner whenever `keeper` holds the lease; ends on `stop` or the
    /// first owner failure. An owner that starts ends the streak of `failures`.
    async fn own_while_held(
        &self,
        keeper: &LeaseKeeper,
        failures: &mut u32,
    ) -> Result<(), OwnerError> {
        let partition = self.partition;
        let mut held = keeper.held();
        loop {
            let Some(token) = wait_for_lease(&mut held, &self.stop).await else {
                return Ok(());
            };
            // Not given up when the lease is lost meanwhile: a dropped restore would leave its
            // blocking work (unpacking, the swap, a ledger open) running under the next try,
            // which could find the ledger still locked. A lost lease stops the owner below.
            let prepared = tokio::select! {
                prepared = self.ledger_for_owner(token) => Some(prepared?),
                () = self.stop.cancelled() => None,
            };
            let Some((engine, newest)) = prepared else {
                continue;
            };
            let checkpointing = Checkpointing {
                checkpoints: self.checkpoints.clone(),
                token,
                newest,
            };
            let started = tokio::select! {
                started = Owner::start(
                    self.client.clone(),
                    &self.stream,
                    partition,
                    self.partitions,
                    (engine.clone(), self.summaries.clone()),
                ) => Some(started),
                () = lease_lost(&mut held, token, &self.stop) => None,
            };
            let ended = match started {
                None => Ok(()),
                Some(Err(error)) => Err(error),
                Some(Ok(owner)) => {
                    // Owned from here: the owner answers asks and funds queries, so the gauge,
                    // the ownership counter and `owned()` never run ahead of a working owner.
                    set(&self.owned, partition, Some(engine.reader()));
                    if *failures > 0 {
                        info!(partition, failures = *failures, "partition owned again");
                        *failures = 0;
                    }
                    self.run_owner(owner, checkpointing, &mut held, token).await
                }
            };
            set(&self.owned, partition, None);
            let closed = tokio::task::spawn_blocking(move || engine.shutdown()).await;
            self.checkpoints.clear_work().await;
            ended?;
            if let Ok(Err(source)) = closed {
                return Err(OwnerError::Ledger { partition, source });
            }
            info!(partition, "partition released");
            if self.stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Opens the partition's ledger (`<data_dir>/partition-<p>`) for its new owner, restored
    /// from the newest usable checkpoint when the node's own is behind it; with the newest
    /// checkpoint listed.
    async fn ledger_for_owner(&self, token: u64) -> Result<(Engine, Option<Stored>), OwnerError> {
        let partition = self.partition;
        let ledger_dir = self.ledgers.data_dir.join(format!("partition-{partition}"));
        let open = |data_dir: PathBuf| {
            let mut config = self.ledgers.engine.clone();
            config.data_dir = data_dir;
            let verifier = Arc::clone(&self.ledgers.verifier);
            async move {
                tokio::task::spawn_blocking(move || Engine::open(config, verifier))
                    .await
                    .unwrap_or(Err(EngineError::Stopped))
            }
        };
        self.checkpoints
            .ledger_for_owner(&ledger_dir, token, &open)
            .await
            .map_err(|error| match error {
                // This node's own ledger does not open: as before checkpoints, the node gives
                // the partition up.
                CheckpointError::Ledger(source) => OwnerError::Ledger { partition, source },
                source => OwnerError::Checkpoint { partition, source },
            })
    }

    /// Runs `owner` until it ends or the lease with `token` is lost; on loss the owner stops
    /// after answering what it handed its ledger.
    async fn run_owner(
        &self,
        owner: Owner,
        checkpointing: Checkpointing,
        held: &mut watch::Receiver<Option<Lease>>,
        token: u64,
    ) -> Result<(), OwnerError> {
        let lost = self.stop.child_token();
        let mut running = tokio::spawn(owner.run(checkpointing, lost.clone()));
        let ended = tokio::select! {
            ended = &mut running => Some(ended),
            () = lease_lost(held, token, &self.stop) => None,
        };
        lost.cancel();
        let ended = match ended {
            Some(ended) => ended,
            None => running.await,
        };
        // A panicked owner answered nothing more; the ledger it used is closed next.
        ended.unwrap_or(Ok(()))
    }
}

/// The token of the lease once held, `None` when stopped first.
async fn wait_for_lease(
    held: &mut watch::Receiver<Option<Lease>>,
    stop: &CancellationToken,
) -> Option<u64> {
    loop {
        if let Some(lease) = held.borrow_and_update().as_ref() {
            return Some(lease.token());
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            changed = held.changed() => if changed.is_err() { return None },
        }
    }
}

/// Resolves when the lease with `token` is no longer held (lost, expired, or another owner's
/// since), or on `stop`.
async fn lease_lost(
    held: &mut watch::Receiver<Option<Lease>>,
    token: u64,
    stop: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = held.changed() => {
                let still = held.borrow_and_update().as_ref().map(Lease::token) == Some(token);
                if changed.is_err() || !still {
                    return;
                }
            }
        }
    }
}

fn set(owned: &Owned, partition: u32, reader: Option<LedgerReader>) {
    let mut owned = owned.lock().unwrap_or_else(PoisonError::into_inner);
    let changed = match reader {
        Some(reader) => owned.insert(partition, reader).is_none(),
        None => owned.remove(&partition).is_some(),
    };
    if changed {
        let taken = owned.contains_key(&partition);
        telemetry::ownership_changed(taken);
        if !taken {
            // Not this node's log to follow any more: no lag to alert on here.
            telemetry::log_lag(partition).set(0.0);
            telemetry::checkpoint_age(partition).set(0.0);
        }
    }
}

/// Announces this node every heartbeat and keeps `share` at ceil(P / nodes announced) until
/// `stop`; then withdraws the announcement. A failure keeps the last share and is logged once
/// per streak; a streak as long as a TTL withdraws the announcement, so the peers stop counting
/// a node that cannot count them.
async fn announce(leases: Leases, share: Arc<Share>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match leases.announce().await {
            Ok(nodes) => {
                if failures > 0 {
                    info!(failures, "nodes counted again");
                }
                failures = 0;
                telemetry::nodes(nodes);
                share.set_nodes(nodes);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    warn!(%error, "cannot count the nodes or announce this one; keeping the last share");
                } else {
                    debug!(%error, failures, "cannot count the nodes or announce this one");
                }
                if failures == leases.announce_failures_max()
                    && let Err(error) = leases.withdraw().await
                {
                    debug!(%error, "cannot withdraw this node's announcement");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(leases.heartbeat()) => {}
        }
    }
    if let Err(error) = leases.withdraw().await {
        // It ages out one TTL later anyway.
        debug!(%error, "cannot withdraw this node's announcement");
    }
}
