//! The query API on the `--http` port: balances, epochs and proofs as JSON for integrators, plus
//! `/metrics`, `/healthz`, `/readyz` and `/openapi.json` for operators.
//!
//! The JSON bodies are `tollgate_query::model`'s, the types every client reads (amounts as
//! decimal strings); the handlers here build them.
//!
//! - [`auth`]: who may read what (bearer tokens with scopes, payer-signed requests, open mode).
//! - [`error`]: every error answer, its status and its stable code.
//! - [`openapi`]: the OpenAPI 3.1 document served at `/openapi.json`.
//! - [`epoch_data`]: `GET /v1/epochs/{n}/tree` and `/receipts`, what an auditor recomputes an epoch
//!   from.
//! - [`proof`]: `GET /v1/epochs/{n}/proof` and its bounded cache of built epoch trees.
//! - [`routed`]: the API of a cluster node, which reads payers from their partitions' owners.
//! - `grants`: `POST /v1/grants` and `/v1/revocations` (session grants into the engine, answered
//!   once durable; the only routes that change anything), `GET /v1/grants[/{session_key}]`.
//! - [`withdrawable`]: the short-lived cache of what the contract lets payees withdraw.
//! - [`x402`]: the x402 v2 facilitator, `GET /supported`, `POST /verify` and `POST /settle`
//!   (docs/X402.md): payer-signed receipts into the engine like the fleet protocol's.
//!
//! [`ChainView`] is implemented for settle's [`ContractReader`], which reads the Settlement
//! contract over alloy.
//!
//! Every ledger read goes through [`LedgerReader`] (RocksDB snapshots) on tokio's blocking pool:
//! the API never takes a lock the ledger writer needs and never runs a disk read on an async
//! worker. Apart from the grant routes, which hand a payer-signed record to the engine like the
//! fleet protocol does, it only reads: nothing here can change what anyone owes.

pub mod auth;
mod epoch_data;
pub mod error;
mod grants;
pub mod openapi;
pub mod proof;
pub mod routed;
pub mod withdrawable;
pub mod x402;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tollgate_engine::ledger::{ChannelInfo, EpochRecord, OpenEpoch, PayerBalance};
use tollgate_engine::pipeline::{Engine, EpochStatus, LedgerReader};
use tollgate_engine::store::StoreError;
use tollgate_engine::{Address, Domain, PayerKey};
use tollgate_settle::ContractReader;

use auth::Caller;
pub use error::ApiError;
use tollgate_query::model::{
    CHANNELS_LISTED_MAX, ChannelView, EPOCHS_LIMIT_DEFAULT, EPOCHS_LIMIT_MAX, EpochList,
    EpochStatusView, EpochView, PartView, PayeeView, PayerView, StatusBody, WithdrawableSource,
};
use withdrawable::{WITHDRAWABLE_TTL_DEFAULT, WithdrawableCache};

/// Why the chain could not answer (what a payee may withdraw, whether an epoch is final).
#[derive(Debug, thiserror::Error)]
#[error("chain read failed: {0}")]
pub struct ChainViewError(pub String);

/// What the settlement contract says now, for figures the ledger cannot know. Settle provides the
/// real one (an alloy call); without it the API reports `withdrawable: null` and serves no proofs.
pub trait ChainView: Send + Sync + std::fmt::Debug + 'static {
    /// What `payee` can withdraw from the contract now, in token units.
    fn withdrawable(&self, payee: Address) -> BoxFuture<'_, Result<u128, ChainViewError>>;
    /// Whether `epoch` is final onchain (complete, not voided, past its challenge window): the
    /// only epochs whose proofs the contract's `verifyLeaf` accepts.
    fn epoch_final(&self, epoch: u64) -> BoxFuture<'_, Result<bool, ChainViewError>>;
}

/// How long one contract read may take before the API answers without it.
const CHAIN_READ_TIMEOUT_MS: u64 = 3_000;

/// `read` bounded by [`CHAIN_READ_TIMEOUT_MS`].
async fn chain_read<T>(
    read: impl std::future::Future<Output = Result<T, tollgate_settle::ChainError>>,
) -> Result<T, ChainViewError> {
    match tokio::time::timeout(Duration::from_millis(CHAIN_READ_TIMEOUT_MS), read).await {
        Ok(answer) => answer.map_err(|e| ChainViewError(e.to_string())),
        Err(_) => Err(ChainViewError(format!(
            "no answer from the chain within {CHAIN_READ_TIMEOUT_MS} ms"
        ))),
    }
}

impl ChainView for ContractReader {
    fn withdrawable(&self, payee: Address) -> BoxFuture<'_, Result<u128, ChainViewError>> {
        Box::pin(chain_read(ContractReader::withdrawable(self, payee)))
    }

    fn epoch_final(&self, epoch: u64) -> BoxFuture<'_, Result<bool, ChainViewError>> {
        Box::pin(chain_read(ContractReader::is_final(self, epoch)))
    }
}

/// What a server that is not ready waits for, as `/readyz` (and every ledger route) tells it.
/// Cheap to clone: `serve` writes it as start-up progresses, the API reads it.
#[derive(Clone, Debug, Default)]
pub struct Startup(Arc<std::sync::Mutex<String>>);

impl Startup {
    /// Says what the server waits for now.
    pub fn waiting_for(&self, what: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = what.into();
    }

    fn describe(&self) -> String {
        let what = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if what.is_empty() {
            "the server is still starting".into()
        } else {
            what
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    reader: LedgerReader,
    ready: Arc<AtomicBool>,
    startup: Startup,
    chain: Option<Arc<dyn ChainView>>,
    metrics: PrometheusHandle,
    trees: Arc<proof::TreeCache>,
    withdrawable: Arc<WithdrawableCache>,
    access: Arc<auth::ApiAccess>,
    submit: Option<GrantSubmit>,
    x402: Option<x402::X402Config>,
}

/// Where posted grants and revocations go, and the deployment they must be signed for.
#[derive(Clone, Debug)]
struct GrantSubmit {
    engine: Engine,
    domain: Domain,
}

impl ApiState {
    /// State over `reader`. Ledger routes answer 503 until `ready` is set (by `serve`, once the
    /// engine and the deposit watcher have caught up), so nobody reads a half-synced balance.
    pub fn new(reader: LedgerReader, ready: Arc<AtomicBool>, metrics: PrometheusHandle) -> Self {
        Self {
            reader,
            ready,
            startup: Startup::default(),
            chain: None,
            metrics,
            trees: Arc::new(proof::TreeCache::new(proof::TREES_CACHED_DEFAULT)),
            withdrawable: Arc::new(WithdrawableCache::new(WITHDRAWABLE_TTL_DEFAULT)),
            access: Arc::new(auth::ApiAccess::open()),
            submit: None,
            x402: None,
        }
    }

    /// Takes session grants and revocations signed for `domain` (`POST /v1/grants`,
    /// `POST /v1/revocations`) into `engine`. Without it the API only reads.
    pub fn with_engine(mut self, engine: Engine, domain: Domain) -> Self {
        self.submit = Some(GrantSubmit { engine, domain });
        self
    }

    /// Serves the x402 facilitator (`GET /supported`, `POST /verify`, `POST /settle`) for the
    /// deployment and engine given to [`ApiState::with_engine`]; without both it is not served.
    pub fn with_x402(mut self, config: x402::X402Config) -> Self {
        self.x402 = Some(config);
        self
    }

    /// Answers only the callers `access` admits, instead of everyone (open mode).
    pub fn with_access(mut self, access: auth::ApiAccess) -> Self {
        self.access = Arc::new(access);
        self
    }

    /// Reuses a payee's withdrawable figure read from the contract for `ttl` instead of
    /// [`WITHDRAWABLE_TTL_DEFAULT`]; zero reads the contract on every request.
    pub fn with_withdrawable_ttl(mut self, ttl: Duration) -> Self {
        self.withdrawable = Arc::new(WithdrawableCache::new(ttl));
        self
    }

    /// Keeps up to `trees` epoch trees built for proofs (at least one) instead of
    /// [`proof::TREES_CACHED_DEFAULT`]; each 1M-leaf tree holds about 170 MB.
    pub fn with_trees_cached(mut self, trees: usize) -> Self {
        self.trees = Arc::new(proof::TreeCache::new(trees));
        self
    }

    /// Shares `startup`, so a server that is not ready says what it waits for.
    pub fn with_startup(mut self, startup: Startup) -> Self {
        self.startup = startup;
        self
    }

    fn not_ready(&self) -> ApiError {
        ApiError::NotReady {
            waiting_for: self.startup.describe(),
        }
    }

    /// Adds the chain view that fills in payees' `withdrawable`.
    pub fn with_chain(mut self, chain: Arc<dyn ChainView>) -> Self {
        self.chain = Some(chain);
        self
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The whole API. Serve it with `axum::serve(listener, router(state))`.
pub fn router(state: ApiState) -> Router {
    let ledger = Router::new()
        .route("/v1/payers/{payer}", get(payer))
        .route("/v1/payees/{payee}", get(payee))
        .route("/v1/epochs", get(epochs))
        .route("/v1/epochs/{epoch}", get(epoch))
        .route("/v1/epochs/{epoch}/proof", get(proof::proof))
        .route("/v1/epochs/{epoch}/tree", get(epoch_data::tree))
        .route("/v1/epochs/{epoch}/receipts", get(epoch_data::receipts))
        .route("/v1/grants", get(grants::grants))
        .route("/v1/grants/{session_key}", get(grants::grant))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_ready))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.access),
            auth::authenticate,
        ));
    // No credentials: a grant or revocation is authorized by its payer's signature (`grants`).
    let mut submit = Router::new();
    if state.submit.is_some() {
        submit = submit
            .route("/v1/grants", post(grants::post_grant))
            .route("/v1/revocations", post(grants::post_revocation))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_ready));
    }
    // No credentials either: a receipt authorizes itself (see `x402`).
    let mut facilitator = Router::new();
    if let (Some(submit), Some(config)) = (&state.submit, &state.x402) {
        facilitator = facilitator
            .route("/supported", get(x402::supported))
            .route("/verify", post(x402::verify))
            .route("/settle", post(x402::settle))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_ready))
            .layer(Extension(x402::Facilitator::new(
                submit.domain,
                config.clone(),
            )));
    }
    Router::new()
        .merge(ledger)
        .merge(submit)
        .merge(facilitator)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn require_ready(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if state.is_ready() {
        next.run(request).await
    } else {
        state.not_ready().into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

/// Runs a ledger read on the blocking pool: RocksDB reads may wait on the disk.
async fn read_ledger<T: Send + 'static>(
    state: &ApiState,
    read: impl FnOnce(&LedgerReader) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let reader = state.reader.clone();
    tokio::task::spawn_blocking(move || read(&reader))
        .await
        .map_err(|e| ApiError::Internal(format!("ledger read task failed: {e}")))?
}

fn path_text(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(text)| text)
        .map_err(|rejection| ApiError::BadQuery {
            problem: rejection.body_text(),
        })
}

fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| ApiError::BadQuery {
            problem: rejection.body_text(),
        })
}

/// A `limit` parameter: `default` when absent, refused outside 1 to `max`.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadQuery {
            problem: format!("limit must be 1 to {max}, got {limit}"),
        })
    }
}

fn parse_payer(text: &str) -> Result<PayerKey, ApiError> {
    PayerKey::from_str(text).map_err(|e| ApiError::MalformedPayer {
        given: text.to_owned(),
        problem: e.to_string(),
    })
}

fn parse_address(text: &str) -> Result<Address, ApiError> {
    if !text.starts_with("0x") {
        return Err(ApiError::MalformedAddress {
            given: text.to_owned(),
            problem: "no 0x prefix".into(),
        });
    }
    Address::from_str(text).map_err(|e| ApiError::MalformedAddress {
        given: text.to_owned(),
        problem: e.to_string(),
    })
}

fn parse_epoch(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::MalformedEpoch {
        given: text.to_owned(),
    })
}

fn hex32(bytes: &[u8; 32]) -> String {
    format!("0x{}", hex::encode(bytes))
}

async fn payer(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PayerView>, ApiError> {
    let payer = parse_payer(&path_text(path)?)?;
    caller.may_read_payer(&payer)?;
    let (balance, channels) = read_ledger(&state, move |reader| {
        reader
            .payer_with_channels(&payer, CHANNELS_LISTED_MAX)?
            .ok_or_else(|| ApiError::UnknownPayer(payer.to_string()))
    })
    .await?;
    Ok(Json(payer_view(&payer, &balance, &channels)))
}

/// The JSON view of a payer's funds and counts with its first channels, wherever they were read
/// (this node's ledger, or in cluster mode the partition owner's).
pub(crate) fn payer_view(
    payer: &PayerKey,
    balance: &PayerBalance,
    channels: &[ChannelInfo],
) -> PayerView {
    PayerView {
        payer: payer.to_string(),
        deposited: balance.deposited,
        withdrawal_requested: balance.withdrawal_requested,
        withdrawn: balance.withdrawn,
        settled: balance.settled,
        pending: balance.pending,
        available: balance.available,
        shortfall: balance.shortfall,
        receipts: balance.receipts,
        channel_count: balance.channels,
        channels: channels
            .iter()
            .take(CHANNELS_LISTED_MAX)
            .map(|channel| ChannelView {
                payee: channel.payee.to_string(),
                cumulative: channel.cumulative,
                receipts: channel.receipts,
                last_timestamp_ms: channel.last_timestamp_ms,
                highest_nonce: channel.highest_nonce.map(u128::from),
            })
            .collect(),
    }
}

async fn payee(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PayeeView>, ApiError> {
    let payee = parse_address(&path_text(path)?)?;
    caller.may_read_payee(&payee)?;
    let balance = read_ledger(&state, move |reader| {
        reader
            .payee(&payee)?
            .ok_or_else(|| ApiError::UnknownPayee(payee.to_string()))
    })
    .await?;
    let pending = balance
        .credited
        .checked_sub(balance.settled)
        .and_then(|unsettled| unsettled.checked_sub(balance.shortfall))
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "payee {payee}: settled {} and shortfall {} exceed credited {}",
                balance.settled, balance.shortfall, balance.credited
            ))
        })?;
    let (withdrawable, withdrawable_source) = match &state.chain {
        None => (None, WithdrawableSource::NotConfigured),
        Some(chain) => match state.withdrawable.get(&payee) {
            Some(amount) => (Some(amount), WithdrawableSource::Chain),
            None => match chain.withdrawable(payee).await {
                Ok(amount) => {
                    state.withdrawable.insert(payee, amount);
                    (Some(amount), WithdrawableSource::Chain)
                }
                Err(error) => {
                    tracing::warn!(%payee, %error, "withdrawable unavailable");
                    (None, WithdrawableSource::ChainError)
                }
            },
        },
    };
    Ok(Json(PayeeView {
        payee: payee.to_string(),
        credited: balance.credited,
        settled: balance.settled,
        pending,
        shortfall: balance.shortfall,
        withdrawable,
        withdrawable_source,
    }))
}

fn status_view(status: EpochStatus) -> EpochStatusView {
    match status {
        EpochStatus::Sealed => EpochStatusView::Sealed,
        EpochStatus::Submitted => EpochStatusView::Submitted,
        EpochStatus::Committed => EpochStatusView::Committed,
        EpochStatus::Disputed => EpochStatusView::Disputed,
    }
}

fn open_view(open: &OpenEpoch) -> EpochView {
    EpochView {
        epoch: open.epoch,
        status: EpochStatusView::Open,
        root: None,
        tx_hash: None,
        block: None,
        receipts: open.receipts,
        leaves: None,
        debit_total: open.amount,
        credit_total: open.amount,
        debit_count: None,
        credit_count: None,
        shortfall: 0,
        parts: Vec::new(),
        carried_into: None,
    }
}

fn checked_sum(mut amounts: impl Iterator<Item = u128>) -> Option<u128> {
    amounts.try_fold(0u128, |total, amount| total.checked_add(amount))
}

/// `record`'s view; reads the epoch's shortfall entries (one seek when there are none).
fn sealed_view(reader: &LedgerReader, record: &EpochRecord) -> Result<EpochView, ApiError> {
    let shortfall = checked_sum(
        reader
            .epoch_shortfalls(record.epoch)?
            .into_iter()
            .map(|(_, _, cut)| cut),
    )
    .ok_or_else(|| ApiError::Internal(format!("epoch {}: shortfall overflows", record.epoch)))?;
    Ok(EpochView {
        epoch: record.epoch,
        status: status_view(record.status),
        root: record.root.as_ref().map(hex32),
        tx_hash: record.tx_hash.as_ref().map(hex32),
        block: record.block,
        receipts: record.receipts,
        leaves: Some(record.leaves),
        debit_total: record.amount,
        credit_total: record.amount,
        debit_count: record.counts.map(|counts| counts.debits),
        credit_count: record.counts.map(|counts| counts.credits),
        shortfall,
        parts: record
            .parts
            .iter()
            .map(|part| PartView {
                part: part.part,
                tx_hash: hex32(&part.tx_hash),
                block: part.block,
            })
            .collect(),
        carried_into: record.carried_into,
    })
}

#[derive(Debug, Deserialize)]
struct EpochsQuery {
    limit: Option<usize>,
}

async fn epochs(
    State(state): State<ApiState>,
    query: Result<Query<EpochsQuery>, QueryRejection>,
) -> Result<Json<EpochList>, ApiError> {
    let limit = page_limit(
        query_params(query)?.limit,
        EPOCHS_LIMIT_DEFAULT,
        EPOCHS_LIMIT_MAX,
    )?;
    let epochs = read_ledger(&state, move |reader| {
        let open = reader.open_epoch()?;
        // Sealed epochs are 1 ..= open - 1; the open one takes the first slot.
        let sealed_wanted = limit - 1;
        let last_sealed = open.epoch.saturating_sub(1);
        let first = last_sealed
            .saturating_sub(sealed_wanted as u64)
            .saturating_add(1);
        let sealed = if sealed_wanted == 0 || last_sealed == 0 {
            Vec::new()
        } else {
            reader.epochs(Some(first - 1), sealed_wanted)?
        };
        let mut epochs = vec![open_view(&open)];
        for record in sealed.iter().rev() {
            epochs.push(sealed_view(reader, record)?);
        }
        Ok(epochs)
    })
    .await?;
    Ok(Json(EpochList { epochs }))
}

async fn epoch(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EpochView>, ApiError> {
    let number = parse_epoch(&path_text(path)?)?;
    let view = read_ledger(&state, move |reader| {
        let open = reader.open_epoch()?;
        if number == open.epoch {
            return Ok(open_view(&open));
        }
        // The record alone: the seal counted the entries (and checked that they debit and
        // credit what the record says), so an answer never reads the epoch's entries.
        let record = reader
            .epoch(number)?
            .ok_or(ApiError::UnknownEpoch(number))?;
        sealed_view(reader, &record)
    })
    .await?;
    Ok(Json(view))
}

async fn healthz() -> Json<StatusBody> {
    Json(StatusBody {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<ApiState>) -> Result<Json<StatusBody>, ApiError> {
    if state.is_ready() {
        Ok(Json(StatusBody {
            status: "ready".into(),
        }))
    } else {
        Err(state.not_ready())
    }
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    prometheus_text(&state.metrics)
}

/// `/metrics`: the Prometheus text exposition of everything recorded so far.
fn prometheus_text(metrics: &PrometheusHandle) -> impl IntoResponse + use<> {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::UnknownRoute(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
