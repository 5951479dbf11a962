//! A node's partitions: for each partition it may own, a lease keeper, and while the lease is
//! held, the partition's ledger (its own RocksDB directory, `<data_dir>/partition-<p>`) and
//! the owner loop that applies the partition's log to it ([`crate::owner`]).
//!
//! One ledger per partition rather than one per node: a partition is the unit that changes
//! owner, so its state must be separable; and each ledger's per-producer ack store then keys a
//! part by (client, producer, session epoch, batch seq) within its partition, which is exactly
//! the part's identity.
//!
//! Losing the lease stops the owner loop and closes the ledger; getting it back reopens the
//! ledger and resumes the log right after the position the ledger holds. The ledger a node
//! keeps for a partition it lost may fall behind; the log holds every part (this slice purges
//! nothing), so it catches up when the partition returns. The owners' answers do not need
//! fencing: every owner applies the same log in the same order, judged as of the times in the
//! log, so two owners for a moment give the same verdicts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tollgate_engine::pipeline::{BatchVerifier, Engine, EngineConfig, EngineError, LedgerReader};
use tracing::{error, info};

use crate::lease::{Lease, Leases};
use crate::owner::{OwnerError, own};
use crate::resources::Cluster;

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
        for partition in partitions {
            tasks.spawn(keep_partition(
                cluster.leases().clone(),
                cluster.jetstream().client(),
                cluster.stream().clone(),
                partition,
                ledgers.clone(),
                Arc::clone(&owned),
                stop.clone(),
            ));
        }
        Node { stop, tasks, owned }
    }

    /// The partitions owned now, each with a reader of its ledger.
    pub fn owned(&self) -> BTreeMap<u32, LedgerReader> {
        match self.owned.lock() {
            Ok(owned) => owned.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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

/// Owns `partition` whenever this node holds its lease, until `stop`.
async fn keep_partition(
    leases: Leases,
    client: async_nats::Client,
    stream: async_nats::jetstream::stream::Stream,
    partition: u32,
    ledgers: NodeLedgers,
    owned: Owned,
    stop: CancellationToken,
) -> Result<(), OwnerError> {
    let keeper = leases.keep(partition);
    let mut held = keeper.held();
    let result = loop {
        let Some(token) = wait_for_lease(&mut held, &stop).await else {
            break Ok(());
        };
        let mut config = ledgers.engine.clone();
        config.data_dir = ledgers.data_dir.join(format!("partition-{partition}"));
        let verifier = Arc::clone(&ledgers.verifier);
        let engine = match tokio::task::spawn_blocking(move || Engine::open(config, verifier)).await
        {
            Ok(Ok(engine)) => engine,
            Ok(Err(source)) => break Err(OwnerError::Ledger { partition, source }),
            Err(_) => {
                break Err(OwnerError::Ledger {
                    partition,
                    source: EngineError::Stopped,
                });
            }
        };
        set(&owned, partition, Some(engine.reader()));
        let lost = stop.child_token();
        let mut owner = tokio::spawn(own(
            client.clone(),
            stream.clone(),
            partition,
            engine.clone(),
            lost.clone(),
        ));
        let ended = tokio::select! {
            ended = &mut owner => Some(ended),
            () = lease_lost(&mut held, token, &stop) => None,
        };
        lost.cancel();
        let ended = match ended {
            Some(ended) => ended,
            None => owner.await,
        };
        set(&owned, partition, None);
        let closed = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        match (ended, closed) {
            (Ok(Err(error)), _) => break Err(error),
            (_, Ok(Err(source))) => break Err(OwnerError::Ledger { partition, source }),
            _ => {}
        }
        info!(partition, "partition released");
        if stop.is_cancelled() {
            break Ok(());
        }
    };
    if let Err(error) = &result {
        error!(partition, %error, "partition owner failed; giving up its lease");
    }
    keeper.stop().await;
    result
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
    let mut owned = match owned.lock() {
        Ok(owned) => owned,
        Err(poisoned) => poisoned.into_inner(),
    };
    match reader {
        Some(reader) => owned.insert(partition, reader),
        None => owned.remove(&partition),
    };
}
