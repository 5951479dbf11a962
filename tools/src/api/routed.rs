//! The query API of a cluster node (`tollgate serve --cluster`). A node holds the ledgers of the
//! partitions it owns, not the cluster's, so it answers `GET /v1/payers/{payer}` for any payer by
//! asking the payer's partition owner ([`FundsClient`], the same request the fleet port's
//! QUERY_BALANCE makes), which reads the payer's funds and first channels from one snapshot once
//! it has applied its log through the tail: whatever node is asked, the answer holds every ack
//! given before the request. Same JSON body, same access policy (tokens, payer-signed requests,
//! open mode on loopback) as a standalone server; a partition with no owner right now, or one
//! whose new owner is still replaying its log, is `503 partition_not_owned` with `Retry-After`.
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are served as standalone; the routes that
//! need the whole cluster's ledger (payees, epochs, proofs, grants, the x402 facilitator) answer
//! `501 not_in_cluster`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tollgate_cluster::{FundsClient, FundsError};
use tollgate_query::model::{CHANNELS_LISTED_MAX, PayerView, StatusBody};

use super::auth::{self, ApiAccess, Caller};
use super::{
    ApiError, healthz, method_not_allowed, openapi_json, parse_payer, path_text, payer_view,
    prometheus_text,
};

/// What the routes of a cluster node share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RoutedState {
    funds: FundsClient,
    access: Arc<ApiAccess>,
    ready: Arc<AtomicBool>,
    metrics: PrometheusHandle,
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
        }
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

async fn readyz(State(state): State<RoutedState>) -> Result<Json<StatusBody>, ApiError> {
    state.ready()?;
    Ok(Json(StatusBody {
        status: "ready".into(),
    }))
}

async fn metrics(State(state): State<RoutedState>) -> impl IntoResponse {
    prometheus_text(&state.metrics)
}
