//! A cluster's funds watcher (docs/CLUSTER.md, "Funds"): every node with the chain configured
//! runs one, and the one holding the watcher's lease reads the contract's funds events and
//! publishes them into the payers' partitions' logs, where each owner's funds check takes them
//! in log order with the receipts.
//!
//! Like the coordinator it keeps nothing a new holder could lose: the meta bucket says from
//! which block to read (recorded once the logs hold that block's events), and publishing an
//! event again changes nothing (`tollgate_cluster::FundsLog`).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tollgate_cluster::telemetry::WATCHER;
use tollgate_cluster::{FundsLog, FundsLogError, HeadSets, Mark, backoff};
use tollgate_settle::telemetry as names;
use tollgate_settle::watcher::{LedgerNews, WatchError, Watcher, head_withdrawals};

use super::role;

/// How often every partition gets its set of unconfirmed withdrawal requests again, changed or
/// not: a paused old watcher may have published a stale set after this one's, which nothing
/// else would replace until the set changes. One small message per partition per period.
const HEAD_SETS_REFRESH: Duration = Duration::from_secs(60);

/// The funds watcher's duties, whenever this node holds the lease.
pub(super) struct FundsWatcher {
    pub(super) log: FundsLog,
    pub(super) watcher: Watcher,
    /// Block to start from when no watcher has recorded its progress yet (the contract's
    /// deployment block).
    pub(super) start_block: u64,
    pub(super) poll_ms: u64,
}

/// Why a step did not finish: tried again after a pause.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("the chain: {0}")]
    Chain(#[from] WatchError),
    #[error("the cluster: {0}")]
    Cluster(#[from] FundsLogError),
}

impl FundsWatcher {
    /// Competes for the watcher's lease until `shutdown`, watching while it holds it.
    pub(super) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let keeper = self.log.watch();
        role::hold("funds watcher", WATCHER, keeper, shutdown, || self.watch()).await;
        Ok(())
    }

    /// One term: reads and publishes until dropped (the lease lost, or shutdown).
    async fn watch(&self) {
        let mut heads = self.log.unknown_head_sets();
        let mut heads_since = Instant::now();
        let mut failures = 0u32;
        loop {
            if heads_since.elapsed() >= HEAD_SETS_REFRESH {
                heads = self.log.unknown_head_sets();
                heads_since = Instant::now();
            }
            let pause = match self.step(&mut heads).await {
                Ok(caught_up) => {
                    if failures > 0 {
                        tracing::info!(failures, "funds watcher: publishing again");
                    }
                    failures = 0;
                    if caught_up {
                        Duration::from_millis(self.poll_ms)
                    } else {
                        Duration::ZERO
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::error!(%error, "funds watcher: cannot publish the chain's funds events; deposits and exits wait until it can (retrying with a growing pause)");
                    } else {
                        tracing::debug!(%error, failures, "funds watcher: still failing");
                    }
                    backoff(failures)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Publishes the events of the next confirmed blocks, then (once caught up) the unconfirmed
    /// withdrawal requests. True when there was no new confirmed block.
    async fn step(&self, heads: &mut HeadSets) -> Result<bool, StepError> {
        let from = self.log.next_block().await?.unwrap_or(self.start_block);
        let batch = self.watcher.poll(from).await?;
        let caught_up = batch.next_block == from;
        if !caught_up {
            let news: Vec<Mark> = batch
                .events
                .iter()
                .map(|event| match event.ledger_news() {
                    LedgerNews::Funds(funds) => Mark::Funds(funds),
                    LedgerNews::Voided(epoch) => Mark::Voided(epoch),
                })
                .collect();
            self.log.publish(&news).await?;
            self.log.record_next_block(batch.next_block).await?;
            for mark in &news {
                if let Mark::Voided(epoch) = mark {
                    metrics::counter!(names::EPOCHS_VOIDED).increment(1);
                    tracing::warn!(
                        epoch,
                        "the arbiter voided an epoch; every partition carries its amounts into the next one"
                    );
                }
            }
            tracing::debug!(
                events = news.len(),
                next_block = batch.next_block,
                "funds events published"
            );
        }
        // After the confirmed events, as in standalone mode: a request in both is refused
        // twice for a moment, never not at all.
        if let Some(requests) = &batch.head_requests {
            self.log
                .publish_head(&head_withdrawals(requests), heads)
                .await?;
        }
        Ok(caught_up)
    }
}
