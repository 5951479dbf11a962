//! `GET /v1/epochs/{epoch}/proof?payer=…&payee=…`: a channel's leaf in a committed epoch and the
//! Merkle proof `Settlement.verifyLeaf` accepts for it.
//!
//! Only committed epochs have proofs: before the commit lands the contract holds no root to verify
//! against, and a disputed epoch's root was deleted. A leaf exists only for the channels that
//! moved in the epoch, and it commits the channel's all-time cumulative amount at the seal; a
//! channel that did not move keeps its leaf in an earlier epoch.
//!
//! The tree is rebuilt from the ledger's stored leaves by [`EpochTree::from_sealed`], the same
//! code settle computes the committed root with, and checked against that root before any proof
//! leaves it. A 1M-leaf tree takes seconds and a few hundred MB to build, so the cache keeps the
//! few most recently used trees and builds one tree at a time however many requests arrive:
//! concurrent requests for an epoch wait for the same build.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};
use tollgate_engine::pipeline::{EpochStatus, LedgerReader};
use tollgate_engine::{Address, PayerKey};
use tollgate_settle::merkle::{EpochTree, leaf_hash};

use super::model::ProofView;
use super::{
    ApiError, ApiState, hex32, parse_address, parse_epoch, parse_payer, path_text, read_ledger,
    status_view,
};

/// Epoch trees kept built by default. Two covers the epoch just committed and the one before,
/// which is what payees ask about; each 1M-leaf tree holds about 170 MB.
pub const TREES_CACHED_DEFAULT: usize = 2;

/// One epoch's tree, built at most once however many requests wait for it.
type TreeSlot = Arc<OnceCell<Arc<EpochTree>>>;

/// The most recently used epoch trees, least recently used first.
#[derive(Debug)]
pub(super) struct TreeCache {
    capacity: usize,
    slots: Mutex<VecDeque<(u64, TreeSlot)>>,
    /// One build at a time: bounds the memory of trees being built to one.
    building: Semaphore,
}

impl TreeCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: Mutex::new(VecDeque::new()),
            building: Semaphore::new(1),
        }
    }

    /// The slot of `epoch`, now the most recently used; the least recently used falls out when
    /// the cache is full (a request still holding it finishes with its own copy).
    fn slot(&self, epoch: u64) -> Result<TreeSlot, ApiError> {
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| ApiError::Internal("proof tree cache poisoned".into()))?;
        let slot = match slots.iter().position(|(number, _)| *number == epoch) {
            Some(index) => slots.remove(index).map(|(_, slot)| slot),
            None => None,
        }
        .unwrap_or_default();
        if slots.len() >= self.capacity {
            slots.pop_front();
        }
        slots.push_back((epoch, slot.clone()));
        Ok(slot)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ProofQuery {
    payer: Option<String>,
    payee: Option<String>,
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    value.as_deref().ok_or_else(|| ApiError::BadQuery {
        problem: format!("missing query parameter {name}"),
    })
}

/// The committed root of `epoch`, or why the epoch has no proofs.
fn committed_root(reader: &LedgerReader, epoch: u64) -> Result<[u8; 32], ApiError> {
    let open = reader.open_epoch()?;
    if epoch == open.epoch {
        return Err(ApiError::EpochNotCommitted {
            epoch,
            status: "open",
        });
    }
    let record = reader.epoch(epoch)?.ok_or(ApiError::UnknownEpoch(epoch))?;
    if record.status != EpochStatus::Committed {
        return Err(ApiError::EpochNotCommitted {
            epoch,
            status: status_view(record.status).as_str(),
        });
    }
    record
        .root
        .ok_or_else(|| ApiError::Internal(format!("committed epoch {epoch} has no stored root")))
}

/// Reads the epoch's stored leaves and builds its tree, refusing a tree whose root is not the
/// committed one. Answers `UnknownLeaf` without building when the channel has no leaf.
fn build_tree(
    reader: &LedgerReader,
    epoch: u64,
    root: [u8; 32],
    payer: PayerKey,
    payee: Address,
) -> Result<EpochTree, ApiError> {
    let sealed = reader.sealed_epoch(epoch)?.ok_or_else(|| {
        ApiError::Internal(format!(
            "epoch {epoch} is committed but its entries are missing"
        ))
    })?;
    // The stored leaves are sorted by (payer, payee): a miss costs a search, not a build.
    if sealed
        .leaves
        .binary_search_by(|(p, q, _)| (p, q).cmp(&(&payer, &payee)))
        .is_err()
    {
        return Err(unknown_leaf(epoch, &payer, &payee));
    }
    let tree = EpochTree::from_sealed(&sealed)
        .map_err(|e| ApiError::Internal(format!("epoch {epoch}: {e}")))?;
    if tree.root().0 != root {
        return Err(ApiError::Internal(format!(
            "epoch {epoch}: tree rebuilt from storage has root {}, committed root is {}",
            hex32(&tree.root().0),
            hex32(&root)
        )));
    }
    Ok(tree)
}

fn unknown_leaf(epoch: u64, payer: &PayerKey, payee: &Address) -> ApiError {
    ApiError::UnknownLeaf {
        epoch,
        payer: payer.to_string(),
        payee: payee.to_string(),
    }
}

pub(super) async fn proof(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let epoch = parse_epoch(&path_text(path)?)?;
    let Query(query) = query.map_err(|rejection| ApiError::BadQuery {
        problem: rejection.body_text(),
    })?;
    let payer = parse_payer(required(&query.payer, "payer")?)?;
    let payee = parse_address(required(&query.payee, "payee")?)?;
    let root = read_ledger(&state, move |reader| committed_root(reader, epoch)).await?;

    let slot = state.trees.slot(epoch)?;
    let tree = slot
        .get_or_try_init(|| async {
            let _permit = state
                .trees
                .building
                .acquire()
                .await
                .map_err(|_| ApiError::Internal("proof tree builder closed".into()))?;
            read_ledger(&state, move |reader| {
                build_tree(reader, epoch, root, payer, payee).map(Arc::new)
            })
            .await
        })
        .await?
        .clone();

    // A linear scan over up to millions of leaves: off the async workers.
    let found = tokio::task::spawn_blocking(move || tree.proof(&payer, &payee))
        .await
        .map_err(|e| ApiError::Internal(format!("proof task failed: {e}")))?;
    let (leaf, proof) = found.ok_or_else(|| unknown_leaf(epoch, &payer, &payee))?;
    Ok(Json(ProofView {
        epoch,
        payer: leaf.payer.to_string(),
        payee: leaf.payee.to_string(),
        cumulative: leaf.cumulative,
        leaf: hex32(&leaf_hash(epoch, &leaf).0),
        root: hex32(&root),
        proof: proof.iter().map(|hash| hex32(&hash.0)).collect(),
    }))
}
