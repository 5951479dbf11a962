//! Session grants over HTTP: `POST /v1/grants` and `POST /v1/revocations` hand a payer-signed
//! record to the engine and answer once it is durable; `GET /v1/grants/{session_key}` and the
//! paged `GET /v1/grants` show what the ledger holds, with the signed bytes so a reader can check
//! the payer's signature itself.
//!
//! Who may post: anyone holding the signed record. A grant or revocation authorizes itself: it
//! is checked against the payer's signature over this deployment before the engine sees it
//! ([`SignedGrant::check`]), and nothing a request header could add says more about the payer's
//! intent than that signature. So an agent, a fleet or a relay can deliver the record the payer
//! signed, as the fleet protocol's frame does; a forged or foreign one is refused with its
//! stable reason and changes nothing. Re-sending is harmless: the same grant again, or a second
//! revocation, is answered like the first.
//!
//! Who may read: operators and auditors every grant; a payer-signed request the grants whose
//! payer or session key signed it (a session can see what it has left).

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use tollgate_engine::PayerKey;
use tollgate_engine::grant::{GrantError, SignedGrant, SignedRevocation};
use tollgate_engine::ledger::LedgerError;
use tollgate_engine::pipeline::{DoneReceiver, EngineError, SubmitError};
use tollgate_query::grants::{GRANTS_PAGE_DEFAULT, GRANTS_PAGE_MAX, GrantList, GrantView};
use tollgate_query::model::{HEADER_NEXT_AFTER, RECEIPTS_OCTET_STREAM};

use super::auth::Caller;
use super::{ApiError, ApiState, page_limit, parse_payer, path_text, query_params, read_ledger};

/// The record in a request body: the raw bytes with `Content-Type: application/octet-stream`,
/// else a JSON object whose `field` holds them in hex (other fields, such as the terms
/// `tollgate grant` prints next to them, are ignored: the bytes are what the payer signed).
fn record_bytes(headers: &HeaderMap, body: &[u8], field: &str) -> Result<Vec<u8>, GrantError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(RECEIPTS_OCTET_STREAM));
    if raw {
        return Ok(body.to_vec());
    }
    let malformed = |problem: String| {
        GrantError::Malformed(format!(
            "{problem} (send the raw record as {RECEIPTS_OCTET_STREAM}, or JSON {{\"{field}\": \
             \"<hex>\"}})"
        ))
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("body: {e}")))?;
    let text = value
        .get(field)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| malformed(format!("no string field {field:?}")))?;
    hex::decode(text.trim().trim_start_matches("0x"))
        .map_err(|e| malformed(format!("{field}: {e}")))
}

/// Waits for the engine to make a grant or revocation durable, or to refuse it.
async fn durable(submitted: Result<DoneReceiver, SubmitError>) -> Result<(), ApiError> {
    let receiver = submitted.map_err(|error| match error {
        SubmitError::Full | SubmitError::Closed => ApiError::NotReady {
            waiting_for: format!("the engine cannot take it now ({error}); send it again"),
        },
        other => ApiError::Internal(other.to_string()),
    })?;
    match receiver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(EngineError::Ledger(LedgerError::Grant(error)))) => {
            Err(ApiError::GrantRefused(error))
        }
        Ok(Err(error)) => Err(ApiError::Internal(error.to_string())),
        Err(_) => Err(ApiError::NotReady {
            waiting_for: "the engine stopped before saying whether it is durable; send it again \
                          (the same record twice changes nothing)"
                .into(),
        }),
    }
}

/// The grant the ledger now holds for `session`.
async fn held(state: &ApiState, session: PayerKey) -> Result<GrantView, ApiError> {
    read_ledger(state, move |reader| {
        reader
            .grant(&session)?
            .map(|record| GrantView::of(&record))
            .ok_or_else(|| {
                ApiError::Internal(format!("grant for {session} not held after it was durable"))
            })
    })
    .await
}

pub(super) async fn post_grant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<GrantView>, ApiError> {
    let submit = state.submit.as_ref().ok_or(ApiError::MethodNotAllowed)?;
    let checked = record_bytes(&headers, &body, "grant")
        .and_then(|bytes| SignedGrant::decode(&bytes))
        .and_then(|signed| signed.check(&submit.domain))
        .map_err(ApiError::GrantRefused)?;
    let session = checked.signed().grant.session;
    durable(submit.engine.grant(checked)).await?;
    Ok(Json(held(&state, session).await?))
}

pub(super) async fn post_revocation(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<GrantView>, ApiError> {
    let submit = state.submit.as_ref().ok_or(ApiError::MethodNotAllowed)?;
    let checked = record_bytes(&headers, &body, "revocation")
        .and_then(|bytes| SignedRevocation::decode(&bytes))
        .and_then(|signed| signed.check(&submit.domain))
        .map_err(ApiError::GrantRefused)?;
    let session = checked.signed().revocation.session;
    durable(submit.engine.revoke(checked)).await?;
    Ok(Json(held(&state, session).await?))
}

pub(super) async fn grant(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<GrantView>, ApiError> {
    let session = parse_payer(&path_text(path)?)?;
    let record = read_ledger(&state, move |reader| {
        reader
            .grant(&session)?
            .ok_or_else(|| ApiError::UnknownGrant(session.to_string()))
    })
    .await?;
    caller.may_read_grant(&record.grant.grant)?;
    Ok(Json(GrantView::of(&record)))
}

#[derive(Debug, Deserialize)]
pub(super) struct GrantsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn grants(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<GrantsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query_params(query)?;
    let limit = page_limit(query.limit, GRANTS_PAGE_DEFAULT, GRANTS_PAGE_MAX)?;
    let after = query
        .after
        .as_deref()
        .map(|text| {
            text.parse::<PayerKey>().map_err(|e| ApiError::BadQuery {
                problem: format!("after {text:?}: {e}"),
            })
        })
        .transpose()?;
    let (grants, next_after) = read_ledger(&state, move |reader| {
        // One more than the page, so a full last page does not send the reader to an empty one.
        let mut page = reader.grants(after.as_ref(), limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next_after = page
            .last()
            .filter(|_| more)
            .map(|last| last.grant.grant.session);
        Ok((page, next_after))
    })
    .await?;
    // A payer sees its own grants; the page still spans `limit` grants, so the cursor is the same.
    let grants = grants
        .iter()
        .filter(|record| caller.may_read_grant(&record.grant.grant).is_ok())
        .map(GrantView::of)
        .collect();
    let mut response = Json(GrantList { grants }).into_response();
    if let Some(next) = next_after {
        response.headers_mut().insert(
            HEADER_NEXT_AFTER,
            HeaderValue::from_str(&next.to_string())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    Ok(response)
}
