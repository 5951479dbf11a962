//! The query API of a cluster node (`tollgate serve --cluster`). A node holds the ledgers of the
//! partitions it owns, not the cluster's, so it answers `GET /v1/payers/{payer}` for any payer by
//! asking the payer's partition owner ([`FundsClient`], the same request the fleet port's
//! QUERY_BALANCE makes), which reads the payer's funds and first channels from one snapshot once
//! it has applied its log through the tail: whatever node is asked, the answer holds every ack
//! given before the request. Same JSON body, same access policy (tokens, payer-signed requests,
//! open mode on loopback) as a standalone server; a partition with no owner right now, or one
//! whose new owner is still replaying its log, is `503 partition_not_owned` with `Retry-After`.
//! `GET /v1/epochs/{epoch}/proof` is served from the partitions' summaries in the object store
//! (with the chain configured). `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are served
//! as standalone; the routes that need the whole cluster's ledger (payees, the epoch list and
//! details, trees, receipts, grants, the x402 facilitator) answer `501 not_in_cluster`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::OwnedSemaphorePermit;
use tollgate_cluster::{Epochs, FundsClient, FundsError};
use tollgate_query::model::{CHANNELS_LISTED_MAX, PayerView, ProofView, StatusBody};
use tollgate_settle::ContractReader;
use tollgate_settle::merkle::{MerkleError, PartitionedTree};

use super::auth::{self, ApiAccess, Caller};
use super::proof::{
    ProofQuery, TREES_CACHED_DEFAULT, TreeCache, proof_view, require_final, unknown_leaf,
};
use super::{
    ApiError, chain_read, healthz, hex32, method_not_allowed, openapi_json, parse_epoch,
    parse_payer, path_text, payer_view, prometheus_text, query_params,
};

/// What the routes of a cluster node share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RoutedState {
    funds: FundsClient,
    access: Arc<ApiAccess>,
    ready: Arc<AtomicBool>,
    metrics: PrometheusHandle,
    proofs: Option<Proofs>,
}

/// What proofs take in a cluster: the partitions' summaries of an epoch (the coordinator
/// committed the root of the tree over them) and the contract, which says whether the epoch is
/// final and accepts the proof before it is served.
#[derive(Clone, Debug)]
struct Proofs {
    epochs: Epochs,
    contract: ContractReader,
    trees: Arc<TreeCache<PartitionedTree>>,
}

impl RoutedState {
    /// Payers read through `funds` for the callers `access` admits; `ready` is cleared when the
    /// node starts shutting down.
    pub fn new(
        funds: FundsClient,
        access: ApiAccess,
        ready: Arc<AtomicBool>,
        metrics: PrometheusHandle,
    ) -> Self {
        Self {
            funds,
            access: Arc::new(access),
            ready,
            metrics,
            proofs: None,
        }
    }

    /// Serves `GET /v1/epochs/{epoch}/proof` from the partitions' summaries in `epochs`, for
    /// epochs `contract` holds final.
    pub fn with_proofs(mut self, epochs: Epochs, contract: ContractReader) -> Self {
        self.proofs = Some(Proofs {
            epochs,
            contract,
            trees: Arc::new(TreeCache::new(TREES_CACHED_DEFAULT)),
        });
        self
    }

    fn ready(&self) -> Result<(), ApiError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ApiError::NotReady {
                waiting_for: "the node to start serving (or it is shutting down)".into(),
            })
        }
    }
}

/// The whole API of a cluster node.
pub fn router(state: RoutedState) -> Router {
    let payers = Router::new()
        .route("/v1/payers/{payer}", get(payer))
        .route("/v1/epochs/{epoch}/proof", get(proof))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.access),
            auth::authenticate,
        ));
    Router::new()
        .merge(payers)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(|uri: Uri| async move { ApiError::NotInCluster(uri.path().to_owned()) })
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Channels asked of the owner: the ones the JSON body lists.
const CHANNELS_ASKED: u16 = if CHANNELS_LISTED_MAX > u16::MAX as usize {
    u16::MAX
} else {
    CHANNELS_LISTED_MAX as u16
};

async fn payer(
    State(state): State<RoutedState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PayerView>, ApiError> {
    state.ready()?;
    let payer = parse_payer(&path_text(path)?)?;
    caller.may_read_payer(&payer)?;
    match state.funds.payer(payer, CHANNELS_ASKED).await {
        Ok(Some((balance, channels))) => Ok(Json(payer_view(&payer, &balance, &channels))),
        Ok(None) => Err(ApiError::UnknownPayer(payer.to_string())),
        Err(error @ (FundsError::NoOwner { .. } | FundsError::CatchingUp { .. })) => {
            Err(ApiError::PartitionNotOwned(error.to_string()))
        }
        Err(error) => Err(ApiError::Internal(error.to_string())),
    }
}

/// A channel's leaf in a final epoch and its proof over the whole cluster's tree (its partition
/// proof, then its partition root's), the same JSON as standalone. The tree is rebuilt from the
/// partitions' summaries, the same code the coordinator committed the root with, and cached
/// once the contract has accepted a proof taken from it (its first leaf's, whatever the request
/// asks), which shows its root is the committed one: after that, asking for any channel, with a
/// leaf or without, costs a search of the cached tree and no build.
async fn proof(
    State(state): State<RoutedState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    state.ready()?;
    let epoch = parse_epoch(&path_text(path)?)?;
    let (payer, payee) = query_params(query)?.channel()?;
    caller.may_read_channel(&payer)?;
    let Some(proofs) = &state.proofs else {
        return Err(ApiError::FinalityUnknown {
            epoch,
            reason: "no chain configured".into(),
        });
    };
    let tree = match proofs.trees.get(epoch)? {
        Some(tree) => tree,
        None => {
            require_final(Some(&proofs.contract), epoch).await?;
            match proofs.trees.turn_to_build(epoch).await? {
                Ok(tree) => tree,
                Err(permit) => match verified_tree(proofs, epoch, permit).await? {
                    Some(tree) => tree,
                    // Committed empty: no channel has a leaf in it.
                    None => return Err(unknown_leaf(epoch, &payer, &payee)),
                },
            }
        }
    };
    let search = Arc::clone(&tree);
    // A linear scan over up to millions of leaves: off the async workers.
    let found = tokio::task::spawn_blocking(move || search.proof(&payer, &payee))
        .await
        .map_err(|e| ApiError::Internal(format!("proof task failed: {e}")))?;
    let (leaf, path) = found.ok_or_else(|| unknown_leaf(epoch, &payer, &payee))?;
    Ok(Json(proof_view(epoch, &leaf, tree.root().0, &path)))
}

/// Reads every partition's summary of `epoch`, builds the tree over them, has the contract
/// accept its first leaf's proof and caches it, all under the build `permit` (so concurrent
/// requests for the epoch build it once, and a client that hangs up mid-build does not let a
/// second build start); `None` for an epoch without leaves.
async fn verified_tree(
    proofs: &Proofs,
    epoch: u64,
    permit: OwnedSemaphorePermit,
) -> Result<Option<Arc<PartitionedTree>>, ApiError> {
    let summaries = proofs
        .epochs
        .summaries(epoch)
        .await
        .map_err(|error| ApiError::Internal(format!("epoch {epoch}: {error}")))?;
    let Some(summaries) = summaries.into_iter().collect::<Option<Vec<_>>>() else {
        return Err(ApiError::Internal(format!(
            "epoch {epoch} is final onchain but a partition's summary is missing"
        )));
    };
    let (permit, built) = tokio::task::spawn_blocking(move || {
        let built =
            PartitionedTree::from_sealed(epoch, summaries.iter().map(|summary| &summary.sealed))
                .map(|tree| {
                    let first = tree.proofs().next();
                    (tree, first)
                });
        (permit, built)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tree build failed: {e}")))?;
    let (tree, first) = match built {
        Ok(built) => built,
        Err(MerkleError::Empty) => return Ok(None),
        Err(error) => return Err(ApiError::Internal(format!("epoch {epoch}: {error}"))),
    };
    let (leaf, path) =
        first.ok_or_else(|| ApiError::Internal(format!("epoch {epoch}: a tree without leaves")))?;
    let accepted = chain_read(proofs.contract.verify_leaf(epoch, &leaf, &path))
        .await
        .map_err(|error| ApiError::FinalityUnknown {
            epoch,
            reason: error.to_string(),
        })?;
    if !accepted {
        return Err(ApiError::Internal(format!(
            "epoch {epoch}: the tree rebuilt from the partitions' summaries (root {}) is not the \
             one committed onchain",
            hex32(&tree.root().0)
        )));
    }
    let tree = Arc::new(tree);
    proofs.trees.insert(Arc::clone(&tree))?;
    drop(permit);
    Ok(Some(tree))
}

async fn readyz(State(state): State<RoutedState>) -> Result<Json<StatusBody>, ApiError> {
    state.ready()?;
    Ok(Json(StatusBody {
        status: "ready".into(),
    }))
}

async fn metrics(State(state): State<RoutedState>) -> impl IntoResponse {
    prometheus_text(&state.metrics)
}
