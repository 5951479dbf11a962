//! The core of Tollgate: what a receipt is, who may be charged for it, and what is owed.
//!
//! - [`receipt`]: receipt v1, its fixed 176-byte layout, its signing bytes and the domain that binds
//!   a signature to one chain and settlement contract.
//! - [`grant`]: session capabilities: a payer's signed grant of bounded spending to a session
//!   key, its revocation, and the rule a grant imposes on the session's receipts.
//! - [`verdict`]: per-receipt verdicts and their stable reason codes.
//! - [`pipeline`]: the [`pipeline::Engine`] handle ingest and settle use: bounded queues from
//!   submission through signature verification to the ledger writer, acks after the fsync.
//! - [`ledger`]: the state machine (anti-replay windows, funds check, epochs) and its single
//!   writer thread with group commit; [`ledger::LedgerReader`] reads without blocking it.
//! - [`store`]: the only code that touches RocksDB: column families, synced writes, poisoning
//!   on write failure, refusing corrupt or half-written data directories.
//! - [`verify`]: the signature rule, batch verification with key coalescing and bisection, and the
//!   dedicated rayon pool that runs it.
//! - [`telemetry`]: the names of the engine's metrics and their registration at zero.
//!
//! The engine is synchronous and knows nothing of sockets or async runtimes: it is driven through
//! bounded channels by `tollgate-ingest` (receipts in) and `tollgate-settle` (deposits in, sealed
//! epochs out), so it can equally be driven by a log consumer when receipts are sharded by payer.
//! It must never charge a payer for a receipt whose signature it has not checked, never count a
//! receipt twice, and never acknowledge anything before it is durable.

pub mod grant;
pub mod ledger;
pub mod pipeline;
pub mod receipt;
pub mod store;
pub mod telemetry;
pub mod verdict;
pub mod verify;

pub use receipt::{Address, Domain, PayerKey, Receipt, ReceiptBatch, ReceiptView, UnsignedReceipt};
pub use verdict::{Reason, Verdict};
pub use verify::{ClientSpan, SignedMessage, Verifier, VerifyConfig, VerifyError, VerifyPool};
