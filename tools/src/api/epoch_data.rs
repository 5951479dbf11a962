//! What an auditor needs to recompute an epoch: `GET /v1/epochs/{n}/tree`, the epoch's tree as an
//! OpenZeppelin `standard-v1` dump (`StandardMerkleTree.load(dump).validate()` accepts it), and
//! `GET /v1/epochs/{n}/receipts`, its archived receipts exactly as signed, in the order the ledger
//! applied them: JSON lines in the `tollgate receipts` format, or raw 176-byte records with
//! `Accept: application/octet-stream`.
//!
//! Receipts come in pages of `limit` archive positions after the position `after`; a page that is
//! not the epoch's last carries the `after` that resumes it in `X-Tollgate-Next-After`. A page is
//! read from one snapshot and held in memory (at most 17.6 MB of records), so a client resumes
//! from any page boundary, however long the epoch.
//!
//! A payer sees only its own channels: the dump keeps every node (hashes alone reveal no channel)
//! but lists only its values, and a receipts page keeps only its receipts (the page still spans
//! `limit` positions, so the cursor works the same).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use tollgate_engine::ReceiptView;
use tollgate_engine::ledger::ArchiveState;
use tollgate_engine::pipeline::LedgerReader;
use tollgate_query::model::{
    HEADER_NEXT_AFTER, RECEIPTS_JSON_LINES, RECEIPTS_OCTET_STREAM, RECEIPTS_PAGE_DEFAULT,
    RECEIPTS_PAGE_MAX,
};
use tollgate_settle::merkle::StandardDump;

use super::auth::{Caller, EpochDataView};
use super::{
    ApiError, ApiState, page_limit, parse_epoch, path_text, proof, query_params, read_ledger,
};
use crate::receipts_json::ReceiptLine;

/// Why `epoch` has no tree or receipts yet, or `Ok` when it is sealed.
fn require_sealed(reader: &LedgerReader, epoch: u64) -> Result<(), ApiError> {
    let open = reader.open_epoch()?;
    let sealing = reader.sealing_epoch()?.map(|sealing| sealing.epoch);
    if epoch == open.epoch || sealing == Some(epoch) {
        return Err(ApiError::EpochNotSealed { epoch });
    }
    if epoch == 0 || epoch > open.epoch {
        return Err(ApiError::UnknownEpoch(epoch));
    }
    Ok(())
}

pub(super) async fn tree(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StandardDump>, ApiError> {
    let epoch = parse_epoch(&path_text(path)?)?;
    let root = read_ledger(&state, move |reader| {
        require_sealed(reader, epoch)?;
        let record = reader.epoch(epoch)?.ok_or(ApiError::UnknownEpoch(epoch))?;
        Ok(record.root)
    })
    .await?;
    let tree = proof::tree_of(&state, epoch, root).await?;
    let view = caller.epoch_data_view();
    // Millions of values to format: off the async workers.
    let dump = tokio::task::spawn_blocking(move || {
        let mut dump = tree.standard_dump();
        if view != EpochDataView::All {
            dump.values
                .retain(|value| view.shows(&value.value.leaf.payer));
        }
        dump
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tree dump task failed: {e}")))?;
    Ok(Json(dump))
}

#[derive(Debug, Deserialize)]
pub(super) struct ReceiptsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub(super) async fn receipts(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReceiptsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let epoch = parse_epoch(&path_text(path)?)?;
    let query = query_params(query)?;
    let limit = page_limit(query.limit, RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX)?;
    let raw = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(RECEIPTS_OCTET_STREAM));
    let view = caller.epoch_data_view();
    let after = query.after;
    let (body, next_after) = read_ledger(&state, move |reader| {
        let total = match reader.archive_state(epoch)? {
            ArchiveState::Archived { receipts } => receipts,
            ArchiveState::Disabled => return Err(ApiError::ArchiveDisabled),
            ArchiveState::Unknown => return Err(ApiError::UnknownEpoch(epoch)),
            ArchiveState::Open | ArchiveState::Sealing => {
                return Err(ApiError::EpochNotSealed { epoch });
            }
            ArchiveState::Pruned => return Err(ApiError::EpochPruned { epoch }),
        };
        let page = reader.archived_receipts(epoch, after, limit)?;
        let next_after = page
            .last()
            .map(|last| last.index)
            .filter(|last| page.len() == limit && last + 1 < total);
        let mut body = Vec::with_capacity(page.len() * if raw { 176 } else { 400 });
        for archived in &page {
            let receipt = ReceiptView::parse(&archived.bytes).map_err(|e| {
                ApiError::Internal(format!("epoch {epoch} receipt {}: {e}", archived.index))
            })?;
            if !view.shows(&receipt.payer()) {
                continue;
            }
            if raw {
                body.extend_from_slice(&archived.bytes);
            } else {
                let line = ReceiptLine::from_receipt(&receipt.to_owned());
                serde_json::to_writer(&mut body, &line)
                    .map_err(|e| ApiError::Internal(format!("receipt line: {e}")))?;
                body.push(b'\n');
            }
        }
        Ok((body, next_after))
    })
    .await?;
    let content_type = if raw {
        RECEIPTS_OCTET_STREAM
    } else {
        RECEIPTS_JSON_LINES
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(next) = next_after {
        response.headers_mut().insert(
            HEADER_NEXT_AFTER,
            HeaderValue::from_str(&next.to_string())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    Ok(response)
}
