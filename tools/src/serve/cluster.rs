//! `tollgate serve --cluster`: one process that is both an ingest node and an owner node of a
//! cluster on NATS JetStream (docs/CLUSTER.md).
//!
//! As an ingest node it serves the fleet port with the standalone protocol and auth, and hands
//! each batch to [`Publisher::submit`] (verify, split by partition, publish, collect the owners'
//! verdicts) through the ingest server's [`ClusterLedger`] seam. As an owner node it competes for
//! every partition's lease ([`Node`]) and keeps the ledgers of those it owns under the data
//! directory (`partition-<p>`). With the chain configured it also competes for the cluster's two
//! chain roles: the settlement coordinator (`coordinator`) and the funds watcher
//! (`funds_watcher`), which publishes deposits and exits into the partitions' logs for the
//! owners' funds checks. QUERY_BALANCE on the fleet port and `GET /v1/payers/{payer}` on
//! the HTTP port are answered for any payer, by asking the payer's partition owner
//! ([`FundsClient`]); the HTTP port's other routes are [`routed`]'s.
//!
//! Shutdown: the fleet port stops reading and waits for the owners' answers to what it read, and
//! only then do the owners stop and their ledgers close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tollgate_cluster::{
    Cluster, ClusterConfig, ClusterError, Epochs, FundsClient, FundsError, FundsLog, Node,
    NodeLedgers, PublishError, Publisher, backoff,
};
use tollgate_engine::pipeline::{BatchAck, BatchVerifier, EngineConfig, SubmitRequest};
use tollgate_engine::{Verifier, VerifyPool};
use tollgate_ingest::server::{ClusterLedger, Ledger, balance_frame};
use tollgate_ingest::wire::{Balance, ErrorCode, ErrorFrame, QueryBalance};

use super::config::ServeConfig;
use super::coordinator::Coordinator;
use super::funds_watcher::FundsWatcher;
use super::{
    LOOPS_GRACE, READY_MESSAGE, Tasks, connect_chain, drain, failure_of, named, spawn_http,
    spawn_ingest, upkeep,
};
use crate::api::auth::ApiAccess;
use crate::api::routed::{self, RoutedState};

/// Lease TTLs a batch's verdicts may take: a partition whose owner died is ownerless for up to
/// one TTL, and its new owner replays the log before it answers. Past this the connection is
/// closed with `internal` and the client re-sends (the log deduplicates the re-publish).
const VERDICT_TIMEOUT_TTLS: u32 = 3;

/// Serves `config` as a node of `cluster` until `shutdown` is cancelled or a part fails.
pub(super) async fn serve(
    config: ServeConfig,
    cluster_config: ClusterConfig,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    // A standalone ledger is a RocksDB directory, which always holds CURRENT.
    if data_dir.join("CURRENT").exists() {
        anyhow::bail!(
            "data_dir: {} holds a standalone ledger; cluster mode keeps one ledger per partition \
             in partition-<p> directories of its own data_dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("data_dir: cannot create {}", data_dir.display()))?;
    let node_id = cluster_config.node_id.clone();
    let verdict_timeout =
        Duration::from_millis(cluster_config.lease_ttl_ms).saturating_mul(VERDICT_TIMEOUT_TTLS);
    let links = match &config.chain {
        Some(chain) => {
            let links = connect_chain(&config, chain).await?;
            tracing::info!("this node may coordinate the cluster's epochs and watch its deposits");
            Some(links)
        }
        None => {
            tracing::warn!(
                "no chain configured: this node neither watches deposits nor seals or commits the cluster's epochs"
            );
            None
        }
    };
    let Some(cluster) = join(cluster_config, &shutdown).await? else {
        return Ok(());
    };
    let partitions = cluster.partitions();
    let verifier: Arc<dyn BatchVerifier> = Arc::new(
        VerifyPool::new(
            Verifier::new(config.domain, config.verify.clone()),
            config.verify.clone(),
        )
        .context("verify pool")?,
    );
    let mut node = Node::start(
        &cluster,
        NodeLedgers {
            data_dir: data_dir.clone(),
            engine: EngineConfig {
                ledger: config.ledger.clone(),
                ..EngineConfig::new(&data_dir)
            },
            verifier: Arc::clone(&verifier),
        },
        0..partitions.get(),
    );
    let ingest = ClusterIngest {
        publisher: Publisher::new(&cluster, verifier, verdict_timeout),
        funds: FundsClient::new(&cluster),
    };

    let bound = super::bind(&config).await;
    let (fleet_listener, http_listener) = match bound {
        Ok(listeners) => listeners,
        Err(error) => {
            node.stop().await.ok();
            return Err(error);
        }
    };
    let fleet_address = fleet_listener.local_addr().context("listen")?;
    let http_address = http_listener.local_addr().context("http")?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Tasks::new();
    let mut routes = RoutedState::new(
        FundsClient::new(&cluster),
        ApiAccess::new(
            config.api_tokens.clone(),
            config.domain,
            config.ledger.timestamp_skew_ms,
        ),
        Arc::clone(&ready),
        metrics.clone(),
    );
    if let Some(links) = &links {
        routes = routes.with_proofs(Epochs::new(&cluster), links.reader.clone());
    }
    let app = routed::router(routes);
    spawn_http(&mut tasks, http_listener, app, &shutdown);
    tasks.spawn(named("metrics upkeep", upkeep(metrics, shutdown.clone())));
    // The links exist exactly when the chain is configured.
    if let (Some(links), Some(chain)) = (links, &config.chain) {
        let coordinator = Coordinator {
            epochs: Epochs::new(&cluster),
            submitter: links.submitter,
            config: chain.epochs.clone(),
        };
        tasks.spawn(named(
            "settlement coordinator",
            coordinator.run(shutdown.clone()),
        ));
        let watcher = FundsWatcher {
            log: FundsLog::new(&cluster),
            watcher: links.watcher,
            start_block: chain.start_block,
            poll_ms: chain.funds_poll_ms,
        };
        tasks.spawn(named("funds watcher", watcher.run(shutdown.clone())));
    }
    spawn_ingest(
        &mut tasks,
        fleet_listener,
        &config,
        Ledger::Cluster(Arc::new(ingest)),
        &shutdown,
    );
    ready.store(true, Ordering::Release);
    tracing::info!(
        listen = %fleet_address,
        http = %http_address,
        data_dir = %data_dir.display(),
        node_id = %node_id,
        partitions = partitions.get(),
        "{READY_MESSAGE}"
    );

    // The first part to end (a signal, a failed partition ledger, the ingest server) ends the
    // others.
    let mut failure = tokio::select! {
        outcome = tasks.join_next() => outcome.and_then(failure_of),
        error = node.failed() => Some(anyhow::Error::new(error).context("partition owner")),
    };
    shutdown.cancel();
    ready.store(false, Ordering::Release);
    // Peers stopping at the same time release their partitions: not ours to take now.
    node.stop_taking();
    // The owners keep running while the fleet port drains: its last acks wait for them.
    let grace = Duration::from_millis(config.server.shutdown_grace_ms) + LOOPS_GRACE;
    failure = failure.or(drain(&mut tasks, grace).await);
    let stopped = node.stop().await.context("partition owner");
    if let Some(error) = failure {
        return Err(error);
    }
    stopped?;
    tracing::info!("tollgate stopped cleanly");
    Ok(())
}

/// Joins the cluster, waiting out a NATS cluster that cannot be reached or has no JetStream
/// leader yet (down at start, or still electing): the first failure is logged at warn, the rest
/// at debug, with a growing pause, until it answers or `shutdown`; then `None`. A refusal that
/// waiting cannot change (settings that differ from the cluster's, another partition count) ends
/// `serve` at once.
async fn join(
    config: ClusterConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Cluster>> {
    let mut failures = 0u32;
    loop {
        let joining = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            joining = Cluster::start(config.clone()) => joining,
        };
        let error = match joining {
            Ok(cluster) => {
                if failures > 0 {
                    tracing::info!(failures, "joined the NATS cluster");
                }
                return Ok(Some(cluster));
            }
            Err(error @ (ClusterError::Connect { .. } | ClusterError::NoLeader { .. })) => error,
            Err(error) => return Err(error).context("cluster: joining the NATS cluster"),
        };
        failures = failures.saturating_add(1);
        let pause = backoff(failures);
        let error = anyhow::Error::from(error);
        if failures == 1 {
            tracing::warn!(
                error = format!("{error:#}"),
                ?pause,
                "cannot join the NATS cluster yet; retrying with a growing pause until it answers"
            );
        } else {
            tracing::debug!(
                error = format!("{error:#}"),
                failures,
                ?pause,
                "still cannot join the NATS cluster"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The ingest server's way into the cluster: batches through the publisher, balances from the
/// payer's partition owner, whichever node that is (this one included).
#[derive(Debug)]
struct ClusterIngest {
    publisher: Publisher,
    funds: FundsClient,
}

impl ClusterLedger for ClusterIngest {
    fn submit(&self, request: SubmitRequest) -> BoxFuture<'static, Result<BatchAck, ErrorFrame>> {
        let publisher = self.publisher.clone();
        Box::pin(async move { publisher.submit(request).await.map_err(refusal) })
    }

    fn balance(&self, query: QueryBalance) -> BoxFuture<'static, Result<Balance, ErrorFrame>> {
        let funds = self.funds.clone();
        Box::pin(async move {
            match funds.funds(query.payer).await {
                Ok(known) => Ok(balance_frame(query, known.unwrap_or_default())),
                // Both pass: a partition without an owner, or with one still replaying its log.
                Err(error @ (FundsError::NoOwner { .. } | FundsError::CatchingUp { .. })) => Err(
                    ErrorFrame::new(ErrorCode::PartitionNotOwned, error.to_string()),
                ),
                Err(error) => {
                    tracing::warn!(%error, "balance query failed");
                    Err(ErrorFrame::new(ErrorCode::Internal, error.to_string()))
                }
            }
        })
    }
}

/// The ERROR a batch without an ack closes its connection with. A refusal that is about the
/// batch (another batch under its number, a superseded session) has the standalone code; every
/// other failure is `internal`, after which the client re-sends, from any node, and gets the
/// same verdicts.
fn refusal(error: PublishError) -> ErrorFrame {
    let code = match &error {
        PublishError::BatchMismatch { .. } => ErrorCode::BatchMismatch,
        PublishError::SessionSuperseded { .. } => ErrorCode::ProducerFenced,
        PublishError::Timeout { .. } => ErrorCode::Internal,
        PublishError::VerdictsGone { .. }
        | PublishError::PartRefused { .. }
        | PublishError::BadAnswer { .. }
        | PublishError::Verify(_) => {
            tracing::warn!(%error, "batch not acked");
            ErrorCode::Internal
        }
    };
    ErrorFrame::new(code, error.to_string())
}
