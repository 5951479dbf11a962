//! The x402 v2 facilitator on the HTTP port: `GET /supported`, `POST /verify`, `POST /settle`
//! (docs/X402.md). The binding itself (types, `request_hash`, the requirement checks) is
//! [`crate::x402`]; this module is only how HTTP reaches it and the engine.
//!
//! `/settle` submits the receipt through the engine as an unsequenced one-receipt batch
//! (`Engine::submit_unsequenced`), the path the fleet protocol's batches take: the verify stage,
//! which checks its signature in a batch equation with the other settles of its group, then the
//! single ledger writer, which applies it with everything else of its group under one fsync.
//!
//! A payment settles once, by the ledger's own rule: the receipt's channel window (or its
//! session's) refuses a nonce it has taken, so a payload settled again, or copies of one settled
//! at once, are refused `duplicate` (as a second settle of an EVM authorization fails onchain;
//! answering with the first success instead would have a resource server, which settles once per
//! request, serve a replayed payment header again). Unsequenced, the batch itself is remembered
//! nowhere: a receipt refused for its signature takes no nonce and no batch number, so a forged
//! payment cannot get its payer's real one refused, and a settle costs no producer session.
//!
//! Who may call: anyone, without a bearer token, like `POST /v1/grants`. A receipt authorizes
//! itself: its payer signed exactly this payee, amount and nonce for this deployment, and settling
//! it can only move that money to that payee, once. A resource server (the usual caller) needs
//! no credential; a bearer token would protect nothing a replay could not already not do.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tollgate_engine::pipeline::{LedgerReader, SubmitError, UnknownPayers};
use tollgate_engine::store::StoreError;
use tollgate_engine::verify::{Verifier, VerifyConfig};
use tollgate_engine::{Domain, Reason, Receipt, ReceiptBatch, ReceiptView, Verdict};

use super::{ApiState, read_ledger};
use crate::grant::now_ms;
use crate::x402::{
    self, FacilitatorRequest, Refusal, SettleResponse, SupportedResponse, VerifyResponse, reason,
};

/// Settles waiting for the engine at once; more wait for a permit. Below the engine's submit
/// queue (256 batches by default) so the fleet protocol's batches still find room.
const SETTLES_IN_FLIGHT_MAX: usize = 128;
/// How long a settle waits for room in a full engine queue before answering 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Pause between tries while the engine queue is full.
const QUEUE_RETRY: Duration = Duration::from_millis(1);

/// What the facilitator needs to know of the deployment beyond its engine and domain.
#[derive(Clone, Debug)]
pub struct X402Config {
    /// The ledger's anti-replay window (advertised in `extra.windowNonces`).
    pub window_nonces: u32,
    /// The ledger's timestamp tolerance (advertised in `extra.timestampSkewMs`).
    pub timestamp_skew_ms: u64,
    /// Whether payers that never deposited are accepted (chainless mode).
    pub unknown_payers: UnknownPayers,
    /// How the facilitator's own signature checks are sized (its key cache).
    pub verify: VerifyConfig,
}

/// The facilitator's state, shared by its routes.
#[derive(Debug)]
pub(super) struct Facilitator {
    domain: Domain,
    config: X402Config,
    /// `/verify`'s signature check; `/settle` leaves it to the engine's verify stage.
    verifier: Verifier,
    settles: Semaphore,
}

impl Facilitator {
    pub(super) fn new(domain: Domain, config: X402Config) -> Arc<Self> {
        Arc::new(Self {
            domain,
            verifier: Verifier::new(domain, config.verify.clone()),
            config,
            settles: Semaphore::new(SETTLES_IN_FLIGHT_MAX),
        })
    }

    fn network(&self) -> String {
        x402::network(self.domain.chain_id)
    }

    /// The receipt, if the payment meets its requirements: the checks that need neither the
    /// signature nor the ledger.
    fn requirements_met(&self, request: &FacilitatorRequest) -> Result<Receipt, Refusal> {
        if request.x402_version != x402::X402_VERSION {
            return Err(Refusal {
                code: reason::INVALID_X402_VERSION,
                message: format!("wrong_version: x402Version {}", request.x402_version),
            });
        }
        x402::check_payment(
            &self.domain,
            &request.payment_payload,
            &request.payment_requirements,
        )
    }

    /// Whether the receipt's signature holds under this deployment, checked on its own.
    fn signature(&self, receipt: &Receipt) -> Result<(), Refusal> {
        let bytes = receipt.to_bytes();
        ReceiptView::parse(&bytes)
            .map_err(|_| Reason::Malformed)
            .and_then(|view| self.verifier.verify_one(&view))
            .map_err(Refusal::of)
    }
}

/// The body as a facilitator request; anything else is `invalid_payload`.
fn parse(body: &[u8]) -> Result<FacilitatorRequest, Refusal> {
    serde_json::from_slice(body).map_err(|error| Refusal {
        code: reason::INVALID_PAYLOAD,
        message: format!(
            "malformed: the body is not {{x402Version, paymentPayload, paymentRequirements}} as \
             docs/X402.md defines them: {error}"
        ),
    })
}

pub(super) async fn supported(
    Extension(facilitator): Extension<Arc<Facilitator>>,
) -> Json<SupportedResponse> {
    Json(SupportedResponse::of(
        &facilitator.domain,
        facilitator.config.window_nonces,
        facilitator.config.timestamp_skew_ms,
    ))
}

fn verify_answer(
    status: StatusCode,
    payer: Option<&Receipt>,
    refusal: Option<Refusal>,
) -> Response {
    let body = VerifyResponse {
        is_valid: refusal.is_none(),
        invalid_reason: refusal.as_ref().map(|r| r.code.to_owned()),
        invalid_message: refusal.map(|r| r.message),
        payer: payer.map(|receipt| receipt.payer.to_string()),
    };
    (status, Json(body)).into_response()
}

/// What the ledger would say of `receipt` now, without applying it, in the ledger's order:
/// the session's grant, unknown payer, the anti-replay window, funds.
fn ledger_verdict(
    reader: &LedgerReader,
    receipt: &Receipt,
    now_ms: u64,
    unknown_payers: UnknownPayers,
) -> Result<Verdict, StoreError> {
    let payer = if receipt.session {
        let Some(record) = reader.grant(&receipt.payer)? else {
            return Ok(Err(Reason::NoGrant));
        };
        if record.revoked.is_some() {
            return Ok(Err(Reason::GrantRevoked));
        }
        let grant = &record.grant.grant;
        if let Err(reason) = grant.admits(&receipt.payee, receipt.timestamp_ms, now_ms) {
            return Ok(Err(reason));
        }
        grant.payer
    } else {
        receipt.payer
    };
    let balance = reader.payer(&payer)?.filter(|b| b.deposited > 0);
    if balance.is_none() && unknown_payers == UnknownPayers::Reject {
        return Ok(Err(Reason::UnknownPayer));
    }
    if let Err(reason) = reader.nonce_verdict(
        &receipt.payer,
        &receipt.payee,
        receipt.session,
        receipt.nonce,
    )? {
        return Ok(Err(reason));
    }
    if let Some(balance) = balance
        && u128::from(receipt.amount) > balance.available
    {
        return Ok(Err(Reason::InsufficientFunds));
    }
    Ok(Ok(()))
}

pub(super) async fn verify(
    State(state): State<ApiState>,
    Extension(facilitator): Extension<Arc<Facilitator>>,
    body: Bytes,
) -> Response {
    let request = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return verify_answer(StatusCode::BAD_REQUEST, None, Some(refusal)),
    };
    let receipt = match facilitator.requirements_met(&request) {
        Ok(receipt) => receipt,
        Err(refusal) => return verify_answer(StatusCode::OK, None, Some(refusal)),
    };
    if let Err(refusal) = facilitator.signature(&receipt) {
        return verify_answer(StatusCode::OK, None, Some(refusal));
    }
    let now = now_ms();
    if receipt.timestamp_ms.abs_diff(now) > facilitator.config.timestamp_skew_ms {
        return verify_answer(
            StatusCode::OK,
            Some(&receipt),
            Some(Refusal::of(Reason::TimestampSkew)),
        );
    }
    let unknown_payers = facilitator.config.unknown_payers;
    let judged = read_ledger(&state, move |reader| {
        Ok(ledger_verdict(reader, &receipt, now, unknown_payers)?)
    })
    .await;
    match judged {
        Ok(Ok(())) => verify_answer(StatusCode::OK, Some(&receipt), None),
        Ok(Err(reason)) => verify_answer(StatusCode::OK, Some(&receipt), Some(Refusal::of(reason))),
        Err(error) => verify_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&receipt),
            Some(Refusal {
                code: reason::UNEXPECTED_VERIFY,
                message: format!("internal: {error}"),
            }),
        ),
    }
}

/// A settle's answer: the commitment identifier when the receipt is in the ledger.
pub(super) struct Settled {
    status: StatusCode,
    network: String,
    receipt: Option<Receipt>,
    outcome: Result<(), Refusal>,
}

impl IntoResponse for Settled {
    fn into_response(self) -> Response {
        let transaction = match (&self.outcome, &self.receipt) {
            (Ok(()), Some(receipt)) => x402::transaction_id(receipt),
            _ => String::new(),
        };
        let refusal = self.outcome.err();
        let body = SettleResponse {
            success: refusal.is_none(),
            error_reason: refusal.as_ref().map(|r| r.code.to_owned()),
            error_message: refusal.map(|r| r.message),
            payer: self.receipt.map(|receipt| receipt.payer.to_string()),
            transaction,
            network: self.network,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A failure of the facilitator's own; `retry` when nothing was applied and the same payload may
/// simply be sent again.
fn unexpected(retry: bool, name: &str, why: impl std::fmt::Display) -> Refusal {
    let hint = if retry {
        " (nothing was applied; send the same payload again)"
    } else {
        ""
    };
    Refusal {
        code: reason::UNEXPECTED_SETTLE,
        message: format!("{name}: {why}{hint}"),
    }
}

/// Submits `receipt` as its own unsequenced batch and waits until it is durable or refused.
async fn submit(
    state: &ApiState,
    facilitator: &Facilitator,
    receipt: &Receipt,
) -> (StatusCode, Result<(), Refusal>) {
    let Some(engine) = state.submit.as_ref().map(|submit| &submit.engine) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Err(unexpected(true, "not_ready", "no engine")),
        );
    };
    let Ok(_permit) = facilitator.settles.acquire().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Err(unexpected(true, "shutting_down", "closed")),
        );
    };
    let receipts = ReceiptBatch::from_receipts(std::slice::from_ref(receipt));
    let started = tokio::time::Instant::now();
    let receiver = loop {
        match engine.submit_unsequenced(x402::CLIENT_ID, receipts.clone()) {
            Ok(receiver) => break receiver,
            Err(SubmitError::Full) if started.elapsed() < QUEUE_WAIT => {
                tokio::time::sleep(QUEUE_RETRY).await;
            }
            Err(error @ (SubmitError::Full | SubmitError::Closed)) => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                return (status, Err(unexpected(true, "engine_busy", error)));
            }
            Err(error) => {
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                return (status, Err(unexpected(false, "internal", error)));
            }
        }
    };
    match receiver.await {
        Ok(Ok(ack)) if ack.accepted == 1 => (StatusCode::OK, Ok(())),
        Ok(Ok(ack)) => match ack.rejections.first() {
            Some(&(_, Reason::Duplicate)) => (
                StatusCode::OK,
                Err(Refusal {
                    code: reason::REPLAY,
                    message: format!(
                        "duplicate: the nonce is spent: this payment was settled before \
                         (transaction {}), or another receipt took its nonce",
                        x402::transaction_id(receipt)
                    ),
                }),
            ),
            Some(&(_, reason)) => (StatusCode::OK, Err(Refusal::of(reason))),
            None => {
                let status = StatusCode::INTERNAL_SERVER_ERROR;
                (
                    status,
                    Err(unexpected(false, "internal", "an ack without a verdict")),
                )
            }
        },
        Ok(Err(error)) => {
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            (status, Err(unexpected(false, "internal", error)))
        }
        Err(_) => {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            (
                status,
                Err(unexpected(
                    true,
                    "engine_stopped",
                    "no answer from the engine",
                )),
            )
        }
    }
}

pub(super) async fn settle(
    State(state): State<ApiState>,
    Extension(facilitator): Extension<Arc<Facilitator>>,
    body: Bytes,
) -> Settled {
    let request = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => {
            return Settled {
                status: StatusCode::BAD_REQUEST,
                network: facilitator.network(),
                receipt: None,
                outcome: Err(refusal),
            };
        }
    };
    let network = request.payment_requirements.network.clone();
    let receipt = match facilitator.requirements_met(&request) {
        Ok(receipt) => receipt,
        Err(refusal) => {
            return Settled {
                status: StatusCode::OK,
                network,
                receipt: None,
                outcome: Err(refusal),
            };
        }
    };
    let (status, outcome) = submit(&state, &facilitator, &receipt).await;
    Settled {
        status,
        network,
        receipt: Some(receipt),
        outcome,
    }
}
