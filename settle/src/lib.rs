//! Tollgate's onchain half: the Settlement contract, epoch Merkle trees, and the alloy code that
//! commits epochs and follows the contract's funds events.
//!
//! - [`contract`]: alloy bindings generated from the committed solc artifacts (`settle/artifacts`),
//!   plus the calldata packing the contract expects.
//! - [`merkle`]: epoch trees exactly as OpenZeppelin's `StandardMerkleTree` builds them (root,
//!   proofs and `standard-v1` dump), and the loader that checks a dump served by someone else;
//!   proofs verify with `MerkleProof.verify` / `Settlement.verifyLeaf`.
//! - [`chain`]: connecting to an RPC (chain id checked at start), deploying token and contract,
//!   [`ContractReader`] for the contract's views, and the transactions users send.
//! - [`devchain`]: what only a dev chain needs (anvil's key, minting and funding payers, gas money,
//!   replaying a mined call); production paths never import it.
//! - [`submitter`]: commits an epoch's parts, resumable from whatever the chain already holds, final
//!   only under `confirmations` blocks; the operator key's nonce allocator (stuck commits are
//!   replaced at their nonce with higher fees).
//! - [`watcher`]: reads Deposit / WithdrawalRequested / WithdrawalCompleted / Disputed events from a
//!   given height, only from blocks with enough confirmations.
//! - [`epoch`]: the engine glue: `EpochLoop` seals, persists and commits epochs; `FundsLoop` feeds
//!   the watcher's events into the ledger from its persisted cursor (and catches up at start-up,
//!   waiting out a failing node).
//! - [`onchain`]: what the chain says an epoch committed (root, every debit and credit decoded from
//!   the commit calldata, voided or not) and what payers deposited, for auditors and the watchtower.
//! - [`exit`]: the start-up check that a payer's exit cannot overtake an accepted receipt (the
//!   contract's withdrawal delay against the epoch interval, window, commit budget and
//!   confirmations).
//! - [`telemetry`]: the names of settlement's metrics and their registration at zero.
//!
//! This crate must never treat a transaction as landed without its receipt, never resend an epoch
//! without first re-reading the contract's position (the contract refuses a duplicate anyway),
//! and never hand the engine an event from a block that lacks the configured confirmations.

pub mod chain;
pub mod contract;
pub mod devchain;
pub mod epoch;
pub mod exit;
pub mod merkle;
pub mod onchain;
pub mod submitter;
pub mod telemetry;
pub mod watcher;

pub use chain::{ChainError, ContractReader, DeployParams, DeployedAddresses, deploy};
pub use merkle::{DumpError, EpochTree, Leaf, MerkleError, StandardDump};
