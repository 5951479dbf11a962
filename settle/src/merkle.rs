//! Epoch Merkle trees laid out exactly as OpenZeppelin's `StandardMerkleTree` lays them out, so
//! the root, every proof and the `standard-v1` dump equal what
//! `StandardMerkleTree.of(values, ["uint64", "bytes32", "address", "uint256"])` produces
//! (`@openzeppelin/merkle-tree`, pinned in package.json; `settle/tests/openzeppelin.rs` checks it
//! against the package itself for every leaf count up to 300 and a large one).
//!
//! - leaf = `keccak256(bytes.concat(keccak256(abi.encode(uint64 epoch, bytes32 payer, address payee,
//!   uint256 cumulative))))`. The epoch is a `uint64` (the contract's epoch type); `abi.encode` pads
//!   it to a word, so `uint256` would hash identically for every epoch that fits.
//! - internal node = `keccak256(min(a, b) ‖ max(a, b))` (sorted pair, so proofs carry no sides);
//!   a 64-byte node can never be confused with a 32-byte-preimage leaf.
//! - leaves are ordered by leaf hash, ascending (`StandardMerkleTree.of`'s default), which makes
//!   the root independent of the order the engine lists channels in.
//! - the tree is a complete binary heap of `2n − 1` nodes: the sorted leaves fill the end in
//!   reverse (`tree[2n − 2 − i]` is the `i`-th smallest leaf), node `i` hashes nodes `2i + 1` and
//!   `2i + 2`, and the root is node 0. A proof is the sibling of each node on the way up from the
//!   leaf, which is what `MerkleProof.verify` / `Settlement.verifyLeaf` fold.
//!
//! The heap is one array built in place: n − 1 node hashes over the sorted leaves, with no layer
//! vectors and no per-node index, because the 1M-leaf root has a 1 s budget (docs/BENCHMARKS.md).
//! [`StandardDump`] is the tree as OpenZeppelin's `dump()` writes it, and
//! [`StandardDump::into_tree`] is the other direction for an auditor who does not trust whoever
//! served the dump: it recomputes every leaf and node, and accepts only the exact tree
//! [`EpochTree::build`] makes from the dump's values.

use alloy::primitives::{B256, U256, keccak256};
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeTuple};
use tollgate_engine::{Address, PayerKey, ledger::SealedEpoch, receipt::parse_hex};

/// The `format` of an OpenZeppelin `StandardMerkleTree` dump.
pub const STANDARD_FORMAT: &str = "standard-v1";

/// The Solidity types of a leaf's values, in order: the dump's `leafEncoding`.
pub const LEAF_ENCODING: [&str; 4] = ["uint64", "bytes32", "address", "uint256"];

/// One channel's frozen cumulative amount in an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The payer's ed25519 public key.
    pub payer: PayerKey,
    /// The payee's EVM address.
    pub payee: Address,
    /// Everything the payer owes the payee on this channel since it opened, in token units.
    pub cumulative: u128,
}

/// Errors building a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// An epoch with no leaves has no root; the engine does not commit empty epochs.
    #[error("an epoch tree needs at least one leaf")]
    Empty,
    /// The same (payer, payee, cumulative) leaf was given twice: the engine freezes each channel once.
    #[error("duplicate leaf {0}")]
    DuplicateLeaf(B256),
}

/// OpenZeppelin's `_hashPair`: keccak256 over the two children in ascending order.
fn hash_pair(a: &[u8; 32], b: &[u8; 32]) -> B256 {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(low);
    buf[32..].copy_from_slice(high);
    keccak256(buf)
}

/// A hash as four big-endian words: the words compare exactly as the bytes do.
fn hash_words(hash: &[u8; 32]) -> [u64; 4] {
    std::array::from_fn(|word| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash[word * 8..word * 8 + 8]);
        u64::from_be_bytes(bytes)
    })
}

fn hash_bytes(words: &[u64; 4]) -> B256 {
    let mut hash = B256::ZERO;
    for (chunk, word) in hash.0.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    hash
}

/// The StandardMerkleTree leaf hash of `(epoch, payer, payee, cumulative)`.
pub fn leaf_hash(epoch: u64, leaf: &Leaf) -> B256 {
    // abi.encode of four static words: uint64, bytes32, address, uint256 — all left-padded.
    let mut encoded = [0u8; 128];
    encoded[24..32].copy_from_slice(&epoch.to_be_bytes());
    encoded[32..64].copy_from_slice(&leaf.payer.0);
    encoded[76..96].copy_from_slice(&leaf.payee.0);
    encoded[96..128].copy_from_slice(&U256::from(leaf.cumulative).to_be_bytes::<32>());
    keccak256(keccak256(encoded))
}

/// `MerkleProof.verify` in Rust: fold the proof into the leaf with sorted-pair hashing.
pub fn verify(root: B256, leaf: B256, proof: &[B256]) -> bool {
    proof
        .iter()
        .fold(leaf, |node, sibling| hash_pair(&node.0, &sibling.0))
        == root
}

/// Leaves or nodes per rayon task: below this, splitting costs more than it saves.
const PARALLEL_MIN: usize = 4_096;

/// Fills the first `parents` nodes of a heap whose other nodes are set, deepest level first.
/// A level's nodes depend only on the level below, which sits wholly after them in the array,
/// so each level is hashed on every core.
fn hash_parents(tree: &mut [B256], parents: usize) {
    let mut depth = usize::BITS - parents.leading_zeros();
    while depth > 0 {
        depth -= 1;
        let start = (1usize << depth) - 1;
        let end = ((1usize << (depth + 1)) - 1).min(parents);
        if start >= end {
            continue;
        }
        // Node p's children are 2p + 1 and 2p + 2, at or after 2^(depth+1) - 1 >= end.
        let (head, below) = tree.split_at_mut(end);
        head[start..end]
            .par_iter_mut()
            .enumerate()
            .with_min_len(PARALLEL_MIN)
            .for_each(|(offset, node)| {
                let left = 2 * (start + offset) + 1 - end;
                *node = hash_pair(&below[left].0, &below[left + 1].0);
            });
    }
}

/// OpenZeppelin's heap over `order`'s hashes (each with the position its leaf was listed at):
/// the hashes sorted ascending fill the end in reverse, and every other node hashes its two
/// children. Returns the nodes and, per listed position, where its hash sits. Refuses a hash
/// given twice.
fn heap(mut order: Vec<([u64; 4], usize)>) -> Result<(Vec<B256>, Vec<usize>), MerkleError> {
    // Sorting (hash, listed position) pairs moves 40 bytes per swap instead of a whole leaf,
    // comparing the hash as big-endian words orders it as bytes do while settling almost
    // every comparison on the first word, and the leaves stay where they were listed.
    order.par_sort_unstable_by_key(|(words, _)| *words);
    if let Some(pair) = order.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(MerkleError::DuplicateLeaf(hash_bytes(&pair[0].0)));
    }
    let nodes = 2 * order.len() - 1;
    let mut tree = vec![B256::ZERO; nodes];
    let mut tree_index = vec![0; order.len()];
    for (rank, (words, position)) in order.iter().enumerate() {
        let at = nodes - 1 - rank;
        tree[at] = hash_bytes(words);
        tree_index[*position] = at;
    }
    hash_parents(&mut tree, nodes - order.len());
    Ok((tree, tree_index))
}

/// An epoch's tree: OpenZeppelin's heap of nodes, and the leaves in the order they were listed
/// with where each sits in the heap (a dump's `values`).
pub struct EpochTree {
    epoch: u64,
    /// The leaves in the order they were given.
    listed: Vec<Leaf>,
    /// For each listed leaf, its node's index in `tree` (OpenZeppelin's `treeIndex`).
    tree_index: Vec<usize>,
    /// The `2n − 1` nodes: node `i` hashes `2i + 1` and `2i + 2`, the leaves are the last `n`.
    tree: Vec<B256>,
}

impl std::fmt::Debug for EpochTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochTree")
            .field("epoch", &self.epoch)
            .field("leaves", &self.listed.len())
            .field("root", &self.root())
            .finish()
    }
}

impl EpochTree {
    /// Builds the tree of `epoch` over one leaf per channel.
    pub fn build(epoch: u64, leaves: impl IntoIterator<Item = Leaf>) -> Result<Self, MerkleError> {
        let listed: Vec<Leaf> = leaves.into_iter().collect();
        if listed.is_empty() {
            return Err(MerkleError::Empty);
        }
        // Two thirds of the keccaks are the leaves' double hashes, independent of each other:
        // hashed on every core (rayon's global pool, never the engine's verify pool).
        let order: Vec<([u64; 4], usize)> = listed
            .par_iter()
            .enumerate()
            .with_min_len(PARALLEL_MIN)
            .map(|(position, leaf)| (hash_words(&leaf_hash(epoch, leaf).0), position))
            .collect();
        let (tree, tree_index) = heap(order)?;
        Ok(Self {
            epoch,
            listed,
            tree_index,
            tree,
        })
    }

    /// Rebuilds the tree of a sealed epoch from the ledger's stored leaves: the one place that
    /// turns stored entries into a tree, so the root settle commits and the proofs the query API
    /// serves can never be built two ways. An epoch without leaves is [`MerkleError::Empty`].
    pub fn from_sealed(sealed: &SealedEpoch) -> Result<Self, MerkleError> {
        Self::build(sealed.epoch, leaves_of(sealed))
    }

    /// The epoch this tree commits.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The root committed onchain: node 0 (`build` refuses an empty tree, so it exists).
    pub fn root(&self) -> B256 {
        self.tree.first().copied().unwrap_or_default()
    }

    /// Number of leaves (channels).
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Always false: `build` refuses empty trees. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// All `2n − 1` nodes in OpenZeppelin's order (a dump's `tree`): the root first.
    pub fn nodes(&self) -> &[B256] {
        &self.tree
    }

    /// The leaves in the order they were listed, each with its leaf hash.
    pub fn leaves(&self) -> impl ExactSizeIterator<Item = (B256, &Leaf)> {
        self.listed
            .iter()
            .zip(&self.tree_index)
            .map(|(leaf, at)| (self.tree[*at], leaf))
    }

    /// Where the channel `(payer, payee)` is listed, if it has a leaf. A linear scan: proofs are
    /// served on request, and an index would cost every epoch memory.
    fn position(&self, payer: &PayerKey, payee: &Address) -> Option<usize> {
        self.listed
            .iter()
            .position(|leaf| leaf.payer == *payer && leaf.payee == *payee)
    }

    /// The index in [`Self::nodes`] of the channel's leaf (the dump's `treeIndex`).
    pub fn tree_index(&self, payer: &PayerKey, payee: &Address) -> Option<usize> {
        self.position(payer, payee).map(|at| self.tree_index[at])
    }

    /// The proof for the channel `(payer, payee)`, ready for `verifyLeaf` / `MerkleProof.verify`.
    pub fn proof(&self, payer: &PayerKey, payee: &Address) -> Option<(Leaf, Vec<B256>)> {
        let position = self.position(payer, payee)?;
        Some((self.listed[position], self.proof_at(position)))
    }

    /// The proof for the `index`-th listed leaf (OpenZeppelin's `getProof(index)`); empty past
    /// the end. The sibling of every node from the leaf up to the root's children.
    pub fn proof_at(&self, index: usize) -> Vec<B256> {
        match self.tree_index.get(index) {
            Some(&leaf) => heap_proof(&self.tree, leaf),
            None => Vec::new(),
        }
    }

    /// The tree as OpenZeppelin's `StandardMerkleTree.dump()` writes it:
    /// `StandardMerkleTree.load(dump).validate()` accepts it once serialized to JSON.
    pub fn standard_dump(&self) -> StandardDump {
        StandardDump {
            format: STANDARD_FORMAT.to_owned(),
            leaf_encoding: LEAF_ENCODING.map(str::to_owned).to_vec(),
            tree: self.tree.clone(),
            values: self
                .listed
                .iter()
                .zip(&self.tree_index)
                .map(|(leaf, at)| StandardValue {
                    value: LeafValue {
                        epoch: self.epoch,
                        leaf: *leaf,
                    },
                    tree_index: *at,
                })
                .collect(),
        }
    }
}

/// A sealed epoch's stored leaves as tree leaves.
fn leaves_of(sealed: &SealedEpoch) -> impl Iterator<Item = Leaf> + '_ {
    sealed
        .leaves
        .iter()
        .map(|&(payer, payee, cumulative)| Leaf {
            payer,
            payee,
            cumulative,
        })
}

/// The sibling of every node from heap node `node` up to the root's children.
fn heap_proof(tree: &[B256], mut node: usize) -> Vec<B256> {
    let mut proof = Vec::with_capacity(usize::BITS as usize);
    while node > 0 {
        let sibling = if node % 2 == 1 { node + 1 } else { node - 1 };
        proof.push(tree[sibling]);
        node = (node - 1) / 2;
    }
    proof
}

/// An epoch's tree in cluster mode: an [`EpochTree`] per partition that has leaves, under a tree
/// over their roots laid out as OpenZeppelin lays out nodes (sorted ascending, the same heap).
/// A partition root enters the upper tree as a node, never hashed as a leaf, so a channel's
/// proof is its partition proof followed by its partition root's proof, and `MerkleProof.verify`
/// / `Settlement.verifyLeaf` fold it to the epoch root like any proof. With one partition
/// holding leaves, the epoch root is that partition's root.
pub struct PartitionedTree {
    partitions: Vec<EpochTree>,
    /// The heap over the partition roots: node `i` hashes `2i + 1` and `2i + 2`, the roots are
    /// the last `partitions.len()`.
    top: Vec<B256>,
    /// For each partition tree, its root's index in `top`.
    top_index: Vec<usize>,
}

impl std::fmt::Debug for PartitionedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedTree")
            .field("partitions", &self.partitions.len())
            .field("leaves", &self.len())
            .field("root", &self.root())
            .finish()
    }
}

impl PartitionedTree {
    /// Builds `epoch`'s tree over the partitions' leaves (one list per partition, in any
    /// order; a partition without leaves adds nothing). [`MerkleError::Empty`] when no
    /// partition has a leaf.
    pub fn build(
        epoch: u64,
        partitions: impl IntoIterator<Item = Vec<Leaf>>,
    ) -> Result<Self, MerkleError> {
        let partitions = partitions
            .into_iter()
            .filter(|leaves| !leaves.is_empty())
            .map(|leaves| EpochTree::build(epoch, leaves))
            .collect::<Result<Vec<_>, _>>()?;
        if partitions.is_empty() {
            return Err(MerkleError::Empty);
        }
        let order: Vec<([u64; 4], usize)> = partitions
            .iter()
            .enumerate()
            .map(|(position, tree)| (hash_words(&tree.root().0), position))
            .collect();
        let (top, top_index) = heap(order)?;
        Ok(Self {
            partitions,
            top,
            top_index,
        })
    }

    /// Rebuilds the tree of an epoch that the partitions' ledgers sealed one by one, from each
    /// partition's sealed epoch (all of epoch `epoch`): for the coordinator's commit and for
    /// proofs, which can then never be built two ways.
    pub fn from_sealed<'a>(
        epoch: u64,
        partitions: impl IntoIterator<Item = &'a SealedEpoch>,
    ) -> Result<Self, MerkleError> {
        Self::build(
            epoch,
            partitions
                .into_iter()
                .map(|sealed| leaves_of(sealed).collect()),
        )
    }

    /// The root committed onchain.
    pub fn root(&self) -> B256 {
        self.top.first().copied().unwrap_or_default()
    }

    /// The epoch whose leaves it holds (`build` refuses a tree without a partition tree).
    pub fn epoch(&self) -> u64 {
        self.partitions.first().map_or(0, EpochTree::epoch)
    }

    /// Leaves (channels) over all partitions.
    pub fn len(&self) -> usize {
        self.partitions.iter().map(EpochTree::len).sum()
    }

    /// Always false: `build` refuses a tree without leaves.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The proof for the channel `(payer, payee)`, ready for `verifyLeaf` / `MerkleProof.verify`:
    /// its partition proof, then its partition root's proof.
    pub fn proof(&self, payer: &PayerKey, payee: &Address) -> Option<(Leaf, Vec<B256>)> {
        self.partitions
            .iter()
            .zip(&self.top_index)
            .find_map(|(tree, &at)| {
                let (leaf, mut proof) = tree.proof(payer, payee)?;
                proof.extend(heap_proof(&self.top, at));
                Some((leaf, proof))
            })
    }

    /// Every leaf with its proof, partition by partition.
    pub fn proofs(&self) -> impl Iterator<Item = (Leaf, Vec<B256>)> + '_ {
        self.partitions
            .iter()
            .zip(&self.top_index)
            .flat_map(|(tree, &at)| {
                let upper = heap_proof(&self.top, at);
                (0..tree.len()).map(move |index| {
                    let mut proof = tree.proof_at(index);
                    proof.extend_from_slice(&upper);
                    (tree.listed[index], proof)
                })
            })
    }
}

/// An OpenZeppelin `standard-v1` dump of an epoch tree (`StandardMerkleTree.dump()`'s JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandardDump {
    /// Always [`STANDARD_FORMAT`] for a dump this crate writes.
    pub format: String,
    /// Always [`LEAF_ENCODING`] for a dump this crate writes.
    pub leaf_encoding: Vec<String>,
    /// Every node, 0x-hex, the root first.
    pub tree: Vec<B256>,
    /// The leaves in the order they were listed, each with its node's index in `tree`.
    pub values: Vec<StandardValue>,
}

/// One entry of a dump's `values`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandardValue {
    /// The leaf's values, in [`LEAF_ENCODING`]'s order.
    pub value: LeafValue,
    /// The index in the dump's `tree` of the leaf's hash.
    #[serde(rename = "treeIndex")]
    pub tree_index: usize,
}

/// A leaf with its epoch, written as OpenZeppelin's values array: `[epoch, payer, payee,
/// cumulative]`, the integers as decimal strings (JSON numbers cannot hold a uint256) and the
/// bytes as 0x-hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafValue {
    /// The epoch the leaf commits.
    pub epoch: u64,
    /// The channel and its cumulative amount.
    pub leaf: Leaf,
}

impl Serialize for LeafValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(4)?;
        tuple.serialize_element(&self.epoch.to_string())?;
        tuple.serialize_element(&B256::from(self.leaf.payer.0))?;
        tuple.serialize_element(&self.leaf.payee.to_string())?;
        tuple.serialize_element(&self.leaf.cumulative.to_string())?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for LeafValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let [epoch, payer, payee, cumulative] = <[String; 4]>::deserialize(deserializer)?;
        let field = |name: &str, problem: &dyn std::fmt::Display| {
            de::Error::custom(format!("leaf value {name}: {problem}"))
        };
        Ok(Self {
            epoch: epoch.parse().map_err(|e| field("epoch (uint64)", &e))?,
            leaf: Leaf {
                payer: PayerKey(parse_hex(&payer).map_err(|e| field("payer (bytes32)", &e))?),
                payee: Address(parse_hex(&payee).map_err(|e| field("payee (address)", &e))?),
                // The engine's amounts are u128: a larger uint256 is no leaf it could have made.
                cumulative: cumulative
                    .parse()
                    .map_err(|e| field("cumulative (uint256 within u128)", &e))?,
            },
        })
    }
}

/// Why a dump is not the tree of its own values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    /// Not a `standard-v1` dump.
    #[error("dump format is {0:?}, expected \"standard-v1\"")]
    Format(String),
    /// The leaves are not encoded as an epoch tree's are.
    #[error("leaf encoding is {0:?}, expected [\"uint64\", \"bytes32\", \"address\", \"uint256\"]")]
    LeafEncoding(Vec<String>),
    /// The values are not all of one epoch.
    #[error("value {index} is of epoch {epoch}, value 0 of epoch {expected}")]
    Epoch {
        /// the first value of another epoch
        index: usize,
        /// its epoch
        epoch: u64,
        /// value 0's epoch
        expected: u64,
    },
    /// A tree of n leaves has 2n − 1 nodes.
    #[error("{nodes} nodes for {values} values: a tree of n leaves has 2n - 1 nodes")]
    Size {
        /// the dump's nodes
        nodes: usize,
        /// the dump's values
        values: usize,
    },
    /// The values make no tree (none, or a duplicate).
    #[error(transparent)]
    Tree(#[from] MerkleError),
    /// A value's leaf hash is not the leaf node its `treeIndex` names (or that is no leaf node).
    #[error("value {index}: its leaf hash {leaf} is not the leaf node {tree_index}")]
    Value {
        /// the value's index in `values`
        index: usize,
        /// the value's `treeIndex`
        tree_index: usize,
        /// the hash of the value
        leaf: B256,
    },
    /// An internal node is not the hash of its two children.
    #[error("node {index} is not the hash of nodes {} and {}", 2 * index + 1, 2 * index + 2)]
    Node {
        /// the deepest such node
        index: usize,
    },
    /// Every node hashes its children and every value is a leaf, but the leaves are not where
    /// OpenZeppelin's layout puts them (ascending by hash from the end).
    #[error("node {index} differs from the tree StandardMerkleTree.of builds from these values")]
    Layout {
        /// the first node that differs
        index: usize,
    },
}

impl StandardDump {
    /// The tree this dump describes, after checking everything `StandardMerkleTree.load(dump)
    /// .validate()` checks and more: the tree is rebuilt from the values and must equal the dump
    /// node for node, so a dump that any `StandardMerkleTree.of` over its values would not
    /// produce is refused, naming the first bad value or the deepest bad node.
    pub fn into_tree(self) -> Result<EpochTree, DumpError> {
        if self.format != STANDARD_FORMAT {
            return Err(DumpError::Format(self.format));
        }
        if self.leaf_encoding != LEAF_ENCODING {
            return Err(DumpError::LeafEncoding(self.leaf_encoding));
        }
        let epoch = self
            .values
            .first()
            .ok_or(DumpError::Tree(MerkleError::Empty))?
            .value
            .epoch;
        if let Some((index, value)) = self
            .values
            .iter()
            .enumerate()
            .find(|(_, value)| value.value.epoch != epoch)
        {
            return Err(DumpError::Epoch {
                index,
                epoch: value.value.epoch,
                expected: epoch,
            });
        }
        if self.tree.len() != 2 * self.values.len() - 1 {
            return Err(DumpError::Size {
                nodes: self.tree.len(),
                values: self.values.len(),
            });
        }
        let built = EpochTree::build(epoch, self.values.iter().map(|value| value.value.leaf))?;
        let same_indices = self
            .values
            .iter()
            .zip(&built.tree_index)
            .all(|(value, at)| value.tree_index == *at);
        if built.tree == self.tree && same_indices {
            return Ok(built);
        }
        Err(self.first_fault(&built))
    }

    /// Names what is wrong with a dump that is not `built`, the tree of its own values: the
    /// first value whose hash is not its leaf node, else the deepest node that is not the hash of
    /// its children, else the first node out of OpenZeppelin's place.
    fn first_fault(&self, built: &EpochTree) -> DumpError {
        let leaves_from = self.tree.len() - self.values.len();
        for (index, (value, (leaf, _))) in self.values.iter().zip(built.leaves()).enumerate() {
            let is_leaf = (leaves_from..self.tree.len()).contains(&value.tree_index);
            if !is_leaf || self.tree[value.tree_index] != leaf {
                return DumpError::Value {
                    index,
                    tree_index: value.tree_index,
                    leaf,
                };
            }
        }
        if let Some(index) = (0..leaves_from).rev().find(|&parent| {
            self.tree[parent]
                != hash_pair(&self.tree[2 * parent + 1].0, &self.tree[2 * parent + 2].0)
        }) {
            return DumpError::Node { index };
        }
        // Every value is on a distinct leaf (their hashes differ, `build` refused duplicates), so
        // equal trees would have meant equal indices: some node differs.
        let index = (0..self.tree.len())
            .find(|&at| self.tree[at] != built.tree[at])
            .unwrap_or_default();
        DumpError::Layout { index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(i: u32) -> Leaf {
        let mut payer = [0u8; 32];
        payer[..4].copy_from_slice(&i.to_be_bytes());
        let mut payee = [0u8; 20];
        payee[16..].copy_from_slice(&(i.wrapping_mul(7)).to_be_bytes());
        Leaf {
            payer: PayerKey(payer),
            payee: Address(payee),
            cumulative: u128::from(i) * 1_000 + 1,
        }
    }

    fn tree(n: u32) -> EpochTree {
        EpochTree::build(5, (0..n).map(leaf)).expect("leaves")
    }

    #[test]
    fn leaf_hash_is_double_keccak_of_abi_encoding() {
        // abi.encode(uint64(7), bytes32(0x11..), address(0x22..), uint256(5)) built by alloy's encoder.
        use alloy::sol_types::SolValue;
        let l = Leaf {
            payer: PayerKey([0x11; 32]),
            payee: Address([0x22; 20]),
            cumulative: 5,
        };
        let encoded = (
            7u64,
            B256::from(l.payer.0),
            alloy::primitives::Address::from(l.payee.0),
            U256::from(l.cumulative),
        )
            .abi_encode();
        assert_eq!(leaf_hash(7, &l), keccak256(keccak256(encoded)));
    }

    #[test]
    fn partitioned_tree_proofs_fold_to_its_root() {
        for (partitions, leaves) in [(1u32, 1u32), (1, 7), (3, 2), (4, 9), (16, 40), (5, 41)] {
            let mut split = vec![Vec::new(); partitions as usize + 1];
            for i in 0..leaves {
                split[(i % partitions) as usize].push(leaf(i));
            }
            // The extra partition stays empty and adds nothing.
            let tree = PartitionedTree::build(5, split.clone()).expect("leaves");
            assert_eq!(tree.len(), leaves as usize);
            let mut proven = 0;
            for (listed, proof) in tree.proofs() {
                assert!(verify(tree.root(), leaf_hash(5, &listed), &proof));
                let (found, by_channel) = tree.proof(&listed.payer, &listed.payee).expect("listed");
                assert_eq!((found, &by_channel), (listed, &proof));
                proven += 1;
            }
            assert_eq!(proven, leaves);
            if partitions == 1 {
                assert_eq!(
                    tree.root(),
                    EpochTree::build(5, split[0].clone())
                        .expect("leaves")
                        .root()
                );
            }
            // Another epoch number or another cumulative is not proven.
            let (listed, proof) = tree.proofs().next().expect("a leaf");
            assert!(!verify(tree.root(), leaf_hash(6, &listed), &proof));
        }
        assert_eq!(
            PartitionedTree::build(5, vec![Vec::new(), Vec::new()]).err(),
            Some(MerkleError::Empty)
        );
    }

    #[test]
    fn single_leaf_root_is_the_leaf_and_proof_is_empty() {
        let tree = EpochTree::build(1, [leaf(1)]).expect("one leaf");
        assert_eq!(tree.root(), leaf_hash(1, &leaf(1)));
        assert_eq!(tree.nodes(), [tree.root()]);
        assert!(tree.proof_at(0).is_empty());
    }

    /// The heap's invariants, stated on the nodes rather than by a second builder: the sorted
    /// leaves fill the end in reverse, every other node hashes its two children, and each listed
    /// leaf's tree index holds its hash. The package itself is the reference in
    /// `tests/openzeppelin.rs`.
    #[test]
    fn nodes_form_openzeppelins_heap() {
        for n in 1..=40u32 {
            let tree = tree(n);
            let nodes = tree.nodes();
            let n = n as usize;
            assert_eq!(nodes.len(), 2 * n - 1);
            let mut sorted: Vec<B256> = tree.leaves().map(|(hash, _)| hash).collect();
            sorted.sort();
            for (rank, hash) in sorted.iter().enumerate() {
                assert_eq!(nodes[2 * n - 2 - rank], *hash, "leaf {rank}, n = {n}");
            }
            for parent in 0..n - 1 {
                assert_eq!(
                    nodes[parent],
                    hash_pair(&nodes[2 * parent + 1].0, &nodes[2 * parent + 2].0),
                    "node {parent}, n = {n}"
                );
            }
            for (hash, listed) in tree.leaves() {
                let at = tree
                    .tree_index(&listed.payer, &listed.payee)
                    .expect("listed");
                assert_eq!(nodes[at], hash);
            }
        }
    }

    #[test]
    fn five_leaves_have_no_leaf_next_to_the_root() {
        // rs_merkle's shape (the old one) carried the fifth leaf up beside the root; the heap
        // puts the two smallest leaves one level below the others.
        let tree = tree(5);
        let nodes = tree.nodes();
        let depths: Vec<usize> = tree
            .leaves()
            .map(|(hash, _)| {
                let at = nodes.iter().position(|node| *node == hash).expect("leaf");
                (usize::BITS - (at + 1).leading_zeros() - 1) as usize
            })
            .collect();
        assert_eq!(depths.iter().filter(|depth| **depth == 2).count(), 3);
        assert_eq!(depths.iter().filter(|depth| **depth == 3).count(), 2);
        for (index, depth) in depths.iter().enumerate() {
            assert_eq!(tree.proof_at(index).len(), *depth);
        }
    }

    #[test]
    fn empty_and_duplicate_are_refused() {
        assert_eq!(EpochTree::build(1, []).err(), Some(MerkleError::Empty));
        assert_eq!(
            EpochTree::build(1, [leaf(1), leaf(1)]).err(),
            Some(MerkleError::DuplicateLeaf(leaf_hash(1, &leaf(1))))
        );
    }

    #[test]
    fn tampered_leaf_or_proof_fails() {
        let tree = EpochTree::build(9, (0..11).map(leaf)).expect("leaves");
        let (l, proof) = tree.proof(&leaf(4).payer, &leaf(4).payee).expect("present");
        assert!(verify(tree.root(), leaf_hash(9, &l), &proof));
        let more = Leaf {
            cumulative: l.cumulative + 1,
            ..l
        };
        assert!(!verify(tree.root(), leaf_hash(9, &more), &proof));
        assert!(
            !verify(tree.root(), leaf_hash(10, &l), &proof),
            "other epoch"
        );
        let mut bad = proof.clone();
        bad[0].0[0] ^= 1;
        assert!(!verify(tree.root(), leaf_hash(9, &l), &bad));
        assert!(tree.proof(&leaf(99).payer, &leaf(4).payee).is_none());
        assert!(tree.tree_index(&leaf(99).payer, &leaf(4).payee).is_none());
        assert!(tree.proof_at(11).is_empty());
    }

    #[test]
    fn dump_is_openzeppelins_json_and_loads_back() {
        let tree = tree(3);
        let json = serde_json::to_value(tree.standard_dump()).expect("json");
        assert_eq!(json["format"], "standard-v1");
        assert_eq!(
            json["leafEncoding"],
            serde_json::json!(["uint64", "bytes32", "address", "uint256"])
        );
        assert_eq!(json["tree"][0], format!("{}", tree.root()));
        let first = &json["values"][0];
        assert_eq!(
            first["value"],
            serde_json::json!([
                "5",
                format!("0x{}", hex::encode(leaf(0).payer.0)),
                format!("{}", leaf(0).payee),
                "1"
            ])
        );
        assert_eq!(
            first["treeIndex"],
            tree.tree_index(&leaf(0).payer, &leaf(0).payee)
                .expect("listed")
        );
        let dump: StandardDump = serde_json::from_value(json).expect("parses");
        let loaded = dump.clone().into_tree().expect("valid");
        assert_eq!(loaded.root(), tree.root());
        assert_eq!(loaded.standard_dump(), dump);
    }

    #[test]
    fn a_malformed_value_does_not_parse() {
        let mut json = serde_json::to_value(tree(2).standard_dump()).expect("json");
        json["values"][1]["value"][3] = serde_json::json!("0x10");
        let error = serde_json::from_value::<StandardDump>(json)
            .expect_err("hex amount")
            .to_string();
        assert!(error.contains("cumulative"), "{error}");
    }

    /// Every way a served dump can lie is refused, naming where.
    #[test]
    fn a_dump_that_is_not_its_values_tree_is_refused() {
        let good = tree(9).standard_dump();
        let refused = |edit: &dyn Fn(&mut StandardDump)| {
            let mut dump = good.clone();
            edit(&mut dump);
            dump.into_tree().expect_err("tampered")
        };
        assert_eq!(
            refused(&|d| d.format = "standard-v2".into()),
            DumpError::Format("standard-v2".into())
        );
        assert!(matches!(
            refused(&|d| d.leaf_encoding[0] = "uint256".into()),
            DumpError::LeafEncoding(_)
        ));
        assert_eq!(
            refused(&|d| d.values[4].value.epoch = 6),
            DumpError::Epoch {
                index: 4,
                epoch: 6,
                expected: 5
            }
        );
        assert_eq!(
            refused(&|d| {
                d.tree.pop();
            }),
            DumpError::Size {
                nodes: 16,
                values: 9
            }
        );
        assert_eq!(
            refused(&|d| d.values.clear()),
            DumpError::Tree(MerkleError::Empty)
        );
        assert!(matches!(
            refused(&|d| d.values[3].value = d.values[2].value),
            DumpError::Tree(MerkleError::DuplicateLeaf(_))
        ));
        // An inflated amount: its hash is no longer the leaf it claims.
        assert!(matches!(
            refused(&|d| d.values[2].value.leaf.cumulative += 1),
            DumpError::Value { index: 2, .. }
        ));
        assert!(matches!(
            refused(&|d| d.values[2].tree_index = 3),
            DumpError::Value {
                index: 2,
                tree_index: 3,
                ..
            }
        ));
        assert!(matches!(
            refused(&|d| d.values[2].tree_index = 17),
            DumpError::Value { index: 2, .. }
        ));
        assert_eq!(
            refused(&|d| d.tree[3].0[0] ^= 1),
            DumpError::Node { index: 3 }
        );
        // A consistent tree in another layout: two leaves swapped, parents rehashed.
        let swapped = refused(&|d| {
            let (a, b) = (d.values[0].tree_index, d.values[1].tree_index);
            d.tree.swap(a, b);
            d.values[0].tree_index = b;
            d.values[1].tree_index = a;
            for parent in (0..8).rev() {
                d.tree[parent] = hash_pair(&d.tree[2 * parent + 1].0, &d.tree[2 * parent + 2].0);
            }
        });
        assert!(matches!(swapped, DumpError::Layout { .. }), "{swapped:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_leaf_proves_against_the_root(n in 1u32..300, epoch in any::<u64>()) {
            let tree = EpochTree::build(epoch, (0..n).map(leaf)).expect("leaves");
            // Insertion order must not matter: the root of the reversed list is the same.
            let reversed = EpochTree::build(epoch, (0..n).rev().map(leaf)).expect("leaves");
            prop_assert_eq!(tree.root(), reversed.root());
            prop_assert_eq!(tree.nodes(), reversed.nodes());
            for (i, (hash, _)) in tree.leaves().enumerate() {
                prop_assert!(verify(tree.root(), hash, &tree.proof_at(i)));
            }
        }
    }
}
