//! `GET /v1/epochs/{epoch}/proof?payer=…&payee=…`: a channel's leaf in an epoch that is final
//! onchain and the Merkle proof `Settlement.verifyLeaf` accepts for it.
//!
//! Only epochs final onchain have proofs: before the commit lands the contract holds no root to
//! verify against, while parts are missing or the challenge window is open the arbiter may still
//! void the epoch (and `verifyLeaf` answers false), and a disputed epoch's root was deleted. The
//! ledger says whether the epoch is committed, the contract (`Settlement.isFinal`) whether it is
//! final. A leaf exists only for the channels that moved in the epoch, and it commits the
//! channel's all-time cumulative amount at the seal; a channel that did not move keeps its leaf in
//! an earlier epoch.
//!
//! The tree is rebuilt from the ledger's stored leaves by [`EpochTree::from_sealed`], the same
//! code settle computes the committed root with, and checked against that root before any proof
//! leaves it. A 1M-leaf tree takes seconds and a few hundred MB to build, so the cache keeps the
//! few most recently used trees and builds one tree at a time however many requests arrive:
//! concurrent requests for an epoch wait for the same build. Whether the channel has a leaf at
//! all is one point read of the ledger, answered before any tree is looked for: a request for a
//! missing leaf never costs a build.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use alloy::primitives::B256;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tollgate_engine::pipeline::{EpochStatus, LedgerReader};
use tollgate_engine::{Address, PayerKey};
use tollgate_query::model::ProofView;
use tollgate_settle::merkle::{EpochTree, Leaf, PartitionedTree, leaf_hash};

use super::auth::Caller;
use super::{
    ApiError, ApiState, ChainView, hex32, parse_address, parse_epoch, parse_payer, path_text,
    query_params, read_ledger, status_view,
};

/// Epoch trees kept built by default. Two covers the epoch just committed and the one before,
/// which is what payees ask about; each 1M-leaf tree holds about 170 MB.
pub const TREES_CACHED_DEFAULT: usize = 2;

/// A tree the cache can hold: it knows its epoch.
pub(super) trait EpochOf {
    fn epoch_of(&self) -> u64;
}

impl EpochOf for EpochTree {
    fn epoch_of(&self) -> u64 {
        self.epoch()
    }
}

impl EpochOf for PartitionedTree {
    fn epoch_of(&self) -> u64 {
        self.epoch()
    }
}

/// The most recently used epoch trees, least recently used first (a standalone server's
/// [`EpochTree`]s, a cluster node's [`PartitionedTree`]s). Only built trees of epochs the
/// chain said were final go in, so a hit needs no chain read (a final epoch stays final), and a
/// request that finds no leaf never pushes a useful tree out.
#[derive(Debug)]
pub(super) struct TreeCache<T = EpochTree> {
    capacity: usize,
    trees: Mutex<VecDeque<Arc<T>>>,
    /// One build at a time: bounds the memory of trees being built to one, and a request that
    /// waited re-checks the cache, so concurrent requests for an epoch build it once. The permit
    /// moves into the blocking build, so a client that hangs up does not release it early.
    building: Arc<Semaphore>,
}

impl<T: EpochOf> TreeCache<T> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            trees: Mutex::new(VecDeque::new()),
            building: Arc::new(Semaphore::new(1)),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, VecDeque<Arc<T>>>, ApiError> {
        self.trees
            .lock()
            .map_err(|_| ApiError::Internal("proof tree cache poisoned".into()))
    }

    /// The tree of `epoch` if built, now the most recently used.
    pub(super) fn get(&self, epoch: u64) -> Result<Option<Arc<T>>, ApiError> {
        let mut trees = self.lock()?;
        let Some(index) = trees.iter().position(|tree| tree.epoch_of() == epoch) else {
            return Ok(None);
        };
        let tree = trees.remove(index);
        if let Some(tree) = &tree {
            trees.push_back(tree.clone());
        }
        Ok(tree)
    }

    /// Keeps `tree` (in place of another tree of its epoch), dropping the least recently used
    /// one when full (a request still holding it finishes with its own reference).
    pub(super) fn insert(&self, tree: Arc<T>) -> Result<(), ApiError> {
        let mut trees = self.lock()?;
        // Built twice meanwhile (a build that did not wait its turn): one copy is enough.
        trees.retain(|kept| kept.epoch_of() != tree.epoch_of());
        if trees.len() >= self.capacity {
            trees.pop_front();
        }
        trees.push_back(tree);
        Ok(())
    }

    /// Waits for the one build at a time: the tree of `epoch` if a build that ran meanwhile
    /// cached it, else the permit to build it (held until the build is done).
    pub(super) async fn turn_to_build(
        &self,
        epoch: u64,
    ) -> Result<Result<Arc<T>, OwnedSemaphorePermit>, ApiError> {
        let permit = self
            .building
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("proof tree builder closed".into()))?;
        Ok(match self.get(epoch)? {
            Some(tree) => Ok(tree),
            None => Err(permit),
        })
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ProofQuery {
    payer: Option<String>,
    payee: Option<String>,
}

impl ProofQuery {
    /// The channel asked about.
    pub(super) fn channel(&self) -> Result<(PayerKey, Address), ApiError> {
        Ok((
            parse_payer(required(&self.payer, "payer")?)?,
            parse_address(required(&self.payee, "payee")?)?,
        ))
    }
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

/// Refuses an epoch the contract does not hold final: its proofs would not verify yet, and the
/// arbiter may still void it.
pub(super) async fn require_final(
    chain: Option<&dyn ChainView>,
    epoch: u64,
) -> Result<(), ApiError> {
    let chain = chain.ok_or_else(|| ApiError::FinalityUnknown {
        epoch,
        reason: "no chain configured".into(),
    })?;
    match chain.epoch_final(epoch).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::EpochNotFinal { epoch }),
        Err(error) => Err(ApiError::FinalityUnknown {
            epoch,
            reason: error.to_string(),
        }),
    }
}

/// The tree of sealed `epoch` whose stored root (if settle stored one yet) is `root`: the cached
/// one, or one built now without caching it (the cache holds final epochs' trees only).
pub(super) async fn tree_of(
    state: &ApiState,
    epoch: u64,
    root: Option<[u8; 32]>,
) -> Result<Arc<EpochTree>, ApiError> {
    match state.trees.get(epoch)? {
        Some(tree) => Ok(tree),
        None => build_once(state, epoch, root).await,
    }
}

/// Builds the tree of `epoch` one build at a time, unless a build that ran while this one
/// waited put it in the cache.
async fn build_once(
    state: &ApiState,
    epoch: u64,
    root: Option<[u8; 32]>,
) -> Result<Arc<EpochTree>, ApiError> {
    let permit = match state.trees.turn_to_build(epoch).await? {
        Ok(tree) => return Ok(tree),
        Err(permit) => permit,
    };
    read_ledger(state, move |reader| {
        let _building = permit;
        build_tree(reader, epoch, root).map(Arc::new)
    })
    .await
}

/// Reads the epoch's stored leaves and builds its tree, refusing a tree whose root is not the
/// stored one.
fn build_tree(
    reader: &LedgerReader,
    epoch: u64,
    root: Option<[u8; 32]>,
) -> Result<EpochTree, ApiError> {
    let sealed = reader.sealed_epoch(epoch)?.ok_or_else(|| {
        ApiError::Internal(format!(
            "epoch {epoch} is sealed but its entries are missing"
        ))
    })?;
    let tree = EpochTree::from_sealed(&sealed)
        .map_err(|e| ApiError::Internal(format!("epoch {epoch}: {e}")))?;
    if let Some(root) = root
        && tree.root().0 != root
    {
        return Err(ApiError::Internal(format!(
            "epoch {epoch}: tree rebuilt from storage has root {}, stored root is {}",
            hex32(&tree.root().0),
            hex32(&root)
        )));
    }
    Ok(tree)
}

pub(super) fn unknown_leaf(epoch: u64, payer: &PayerKey, payee: &Address) -> ApiError {
    ApiError::UnknownLeaf {
        epoch,
        payer: payer.to_string(),
        payee: payee.to_string(),
    }
}

pub(super) async fn proof(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let epoch = parse_epoch(&path_text(path)?)?;
    let (payer, payee) = query_params(query)?.channel()?;
    caller.may_read_channel(&payer)?;
    let root = read_ledger(&state, move |reader| {
        let root = committed_root(reader, epoch)?;
        if reader.epoch_leaf(epoch, &payer, &payee)?.is_none() {
            return Err(unknown_leaf(epoch, &payer, &payee));
        }
        Ok(root)
    })
    .await?;

    let tree = match state.trees.get(epoch)? {
        Some(tree) => tree,
        None => {
            require_final(state.chain.as_deref(), epoch).await?;
            let tree = build_once(&state, epoch, Some(root)).await?;
            state.trees.insert(tree.clone())?;
            tree
        }
    };

    // A linear scan over up to millions of leaves: off the async workers.
    let found = tokio::task::spawn_blocking(move || tree.proof(&payer, &payee))
        .await
        .map_err(|e| ApiError::Internal(format!("proof task failed: {e}")))?;
    let (leaf, proof) = found.ok_or_else(|| unknown_leaf(epoch, &payer, &payee))?;
    Ok(Json(proof_view(epoch, &leaf, root, &proof)))
}

/// The JSON body of a leaf's proof under `root`.
pub(super) fn proof_view(epoch: u64, leaf: &Leaf, root: [u8; 32], proof: &[B256]) -> ProofView {
    ProofView {
        epoch,
        payer: leaf.payer.to_string(),
        payee: leaf.payee.to_string(),
        cumulative: leaf.cumulative,
        leaf: hex32(&leaf_hash(epoch, leaf).0),
        root: hex32(&root),
        proof: proof.iter().map(|hash| hex32(&hash.0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(epoch: u64) -> Arc<EpochTree> {
        let leaf = Leaf {
            payer: PayerKey([1; 32]),
            payee: Address([2; 20]),
            cumulative: u128::from(epoch),
        };
        Arc::new(EpochTree::build(epoch, [leaf]).expect("one leaf"))
    }

    fn cached(cache: &TreeCache<EpochTree>) -> Vec<u64> {
        cache
            .lock()
            .expect("lock")
            .iter()
            .map(|tree| tree.epoch_of())
            .collect()
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_trees_up_to_its_capacity() {
        let cache = TreeCache::new(2);
        cache.insert(tree(1)).expect("insert");
        cache.insert(tree(2)).expect("insert");
        assert_eq!(cache.get(1).expect("get").map(|t| t.epoch()), Some(1));
        assert_eq!(cached(&cache), [2, 1], "a hit becomes the most recent");
        cache.insert(tree(3)).expect("insert");
        assert_eq!(cached(&cache), [1, 3], "the least recently used fell out");
        cache.insert(tree(1)).expect("insert");
        assert_eq!(
            cached(&cache),
            [3, 1],
            "an epoch's tree replaces its other copy"
        );
        assert!(cache.get(2).expect("get").is_none());
        assert_eq!(cached(&TreeCache::new(0)).len(), 0);
        let single = TreeCache::new(0);
        single.insert(tree(4)).expect("insert");
        assert_eq!(cached(&single), [4], "a capacity of 0 still keeps one");
    }
}
