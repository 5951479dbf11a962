//! The ledger: the state machine that turns verified receipts into money owed, and the single
//! writer thread that makes it durable with group commit.
//!
//! - [`window`]: the per-channel anti-replay bitmap (RFC 6479).
//! - [`record`]: every stored record and its byte layout.
//! - `cache`: the writer's bounded cache of hot state.
//! - [`error`]: why the ledger refuses a request or stops ([`LedgerError`]).
//! - `format`: whether a data directory is a ledger this build can run, and how a new one is
//!   made.
//! - `state`: the state machine's state (`Ledger`), owned by the writer, and its jobs,
//!   one file each: `apply` (receipts), `funds` (chain events), `seal` (cutting an epoch and
//!   writing its entries in bounded chunks between receipt groups), `epochs` (settle's news about
//!   a sealed epoch), `group` (what one group commit holds and what a group in flight answers),
//!   `account` (what payers and payees share), `grants` (session grants and revocations, and
//!   which payer a session receipt is charged to).
//! - `writer`: the writer thread: applies everything in arrival order, writes each group as one
//!   synced `WriteBatch`, replies only after the write returned.
//! - [`reader`]: reads from RocksDB snapshots; never blocks the writer.
//! - [`archive`]: every accepted receipt as signed, by epoch, for auditors: written with its
//!   group, read like the rest from snapshots, pruned by range.
//!
//! The ledger must never apply a receipt that was not verified, never count a (payer, payee,
//! nonce) twice, never take a payer below zero available, and never reply before the write that
//! holds the answer is synced.

mod account;
mod apply;
pub mod archive;
mod cache;
mod epochs;
pub mod error;
pub(crate) mod format;
mod funds;
mod grants;
mod group;
pub mod reader;
pub mod record;
mod seal;
pub(crate) mod state;
#[cfg(test)]
mod tests;
pub mod window;
pub(crate) mod writer;

pub use archive::{ArchiveDisk, ArchiveState, ArchivedReceipt};
pub use error::LedgerError;
pub use reader::{ChannelInfo, LedgerReader, PayeeBalance, PayerBalance};
pub use record::{
    EntryCounts, EpochRecord, FundsCursor, GrantRecord, HeadWithdrawals, OpenEpoch, PartRecord,
    Position, SealingEpoch,
};

use crate::receipt::{Address, PayerKey};
use crate::verdict::Reason;

/// An epoch entry as stored: the account id bytes (payer key or payee address) and its amount.
pub type EntryAmount = (Box<[u8]>, u128);

/// Where a batch sits in a cluster partition's log: it is applied as of `time_ms` (the time the
/// ingest node published it, which judges the timestamp skew, so replaying the log gives the
/// same verdicts on any node at any time), and `seq` is written with the batch's group.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogPosition {
    /// The stream sequence of the message that carried the batch.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, stamped by the node that published it.
    pub time_ms: u64,
}

/// What the ledger holds for a batch number, read back without applying anything (see
/// [`LedgerReader::logged_outcome`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BatchOutcome {
    /// The batch was applied with these receipt bytes and got this ack.
    Acked(BatchAck),
    /// Another batch was applied under this number ([`LedgerError::BatchMismatch`]).
    Mismatch,
    /// The producer moved on to session epoch `current` ([`LedgerError::SessionSuperseded`]).
    Superseded {
        /// the producer's session epoch now
        current: u64,
    },
    /// Nothing is held for it: not applied yet (a part's outcome stays once applied; a
    /// producer's acks are only the newest `acks_kept_per_producer`).
    Unknown,
}

/// What to do with a receipt whose payer never deposited.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum UnknownPayers {
    /// Refuse it as [`Reason::UnknownPayer`]: the normal mode with a chain.
    #[default]
    Reject,
    /// Accept it without a funds check: chainless mode for load tests and benches. Payers that
    /// did deposit are still checked.
    Accept,
}

/// Ledger limits and policies.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Nonces below a channel's highest that are still judged (a multiple of 64). Fixed when the
    /// data directory is created.
    pub window_nonces: u32,
    /// Receipts whose timestamp is further than this from the server clock are refused.
    pub timestamp_skew_ms: u64,
    /// Policy for payers that never deposited.
    pub unknown_payers: UnknownPayers,
    /// Channels kept in memory between groups.
    pub channels_cached_max: usize,
    /// Payers and payees kept in memory between groups (each), and session grants.
    pub accounts_cached_max: usize,
    /// Session anti-replay windows, one per (session key, payee), kept in memory between
    /// groups: an agent workload has a few of them for every channel (a few hundred bytes each
    /// with the default window).
    pub session_windows_cached_max: usize,
    /// Producers whose sessions are kept in memory.
    pub producers_cached_max: usize,
    /// Acks kept per producer for re-sent batches (the last W batch sequence numbers).
    pub acks_kept_per_producer: usize,
    /// A group is written once it holds this many receipts, even if more are waiting.
    pub group_receipts_max: usize,
    /// Index keys a running seal adds to each group (one chunk): bounds both the writer's
    /// seal working set and what a seal adds to the ack latency of the receipts it rides with.
    pub seal_chunk_keys: usize,
    /// Keep every accepted receipt, as signed, in the archive (see [`archive`]): without it
    /// nobody can audit your epochs. Fixed when the data directory is created.
    pub archive_receipts: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            window_nonces: 1024,
            timestamp_skew_ms: 5 * 60 * 1000,
            unknown_payers: UnknownPayers::Reject,
            channels_cached_max: 100_000,
            accounts_cached_max: 100_000,
            session_windows_cached_max: 300_000,
            producers_cached_max: 10_000,
            acks_kept_per_producer: 64,
            group_receipts_max: 16_384,
            seal_chunk_keys: 4_096,
            archive_receipts: true,
        }
    }
}

/// The reply to one submitted batch: how many receipts were accepted and why each other one was
/// not. A re-sent batch gets exactly the same ack.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct BatchAck {
    /// The batch's sequence number in its producer's session.
    pub batch_seq: u64,
    /// Receipts accepted.
    pub accepted: u32,
    /// Every receipt not accepted, by index in the batch, sorted by index.
    pub rejections: Vec<(u32, Reason)>,
}

/// What happened onchain to a payer's funds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FundsKind {
    /// Tokens deposited for the payer: spendable from now.
    Deposit,
    /// The payer asked to withdraw: that much is no longer spendable.
    WithdrawalRequested,
    /// A requested withdrawal left the contract.
    WithdrawalCompleted,
    /// No event: the watcher has processed every block up to `block`. `payer` and `amount` are
    /// ignored; only the cursor moves.
    BlockScanned,
}

/// One chain event for the funds check, applied exactly once: an event at or before the
/// persisted cursor `(block, log_index)` is acknowledged and ignored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FundsEvent {
    /// The payer whose funds moved.
    pub payer: PayerKey,
    /// What happened.
    pub kind: FundsKind,
    /// Amount in the token's smallest unit.
    pub amount: u128,
    /// Block that holds the event.
    pub block: u64,
    /// Log index of the event in its block (`u64::MAX` for [`FundsKind::BlockScanned`]).
    pub log_index: u64,
}

/// Where settlement has got to with an epoch. Codes are stored: never renumber.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum EpochStatus {
    /// Frozen by the ledger; not yet sent.
    Sealed = 1,
    /// At least one part of the commit landed onchain; not yet complete and final.
    Submitted = 2,
    /// The commit is onchain: the payers' pending amounts are settled.
    Committed = 3,
    /// The arbiter voided the epoch: its amounts are owed again (returned from settled to
    /// pending if it had been committed) and were carried into the open epoch to be committed
    /// again.
    Disputed = 4,
}

impl EpochStatus {
    /// Stored code.
    pub fn code(self) -> u8 {
        self as u8
    }
    /// Status for a stored code.
    pub fn from_code(code: u8) -> Option<Self> {
        [
            Self::Sealed,
            Self::Submitted,
            Self::Committed,
            Self::Disputed,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
    /// Whether settle may move an epoch from `self` to `next`. Repeating the current status is
    /// allowed (a retried update) and never moves money twice. Every status but `Disputed`
    /// itself may become `Disputed`: the contract can void an epoch before or after its commit.
    /// Nothing leaves `Disputed`: the ledger ignores news of a voided epoch's commit, which is
    /// always older than the dispute.
    pub fn may_become(self, next: EpochStatus) -> bool {
        use EpochStatus::*;
        matches!(
            (self, next),
            (Sealed, Sealed | Submitted | Committed | Disputed)
                | (Submitted, Submitted | Committed | Disputed)
                | (Committed, Committed | Disputed)
                | (Disputed, Disputed)
        )
    }
}

/// Settle's news about an epoch. `None` fields keep what is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EpochUpdate {
    /// Which epoch.
    pub epoch: u64,
    /// Its new status.
    pub status: EpochStatus,
    /// Merkle root of its leaves.
    pub root: Option<[u8; 32]>,
    /// A part of the commit that landed, added to the record's parts (replacing an earlier
    /// landing of the same part).
    pub part: Option<PartRecord>,
}

/// A sealed epoch as settle needs it: every leaf, for the tree. It is the one thing a seal holds
/// whole in memory, and only in the reader that builds it (the seal's reply, or
/// [`LedgerReader::sealed_epoch`]), never in the writer: 80 bytes per leaf and 48 per debit or
/// credit (`sealed_epoch_sizes` in the ledger's tests checks these), so an epoch of 1,000,000
/// channels is about 80 MB plus its payers and payees.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SealedEpoch {
    /// Epoch number (the first is 1).
    pub epoch: u64,
    /// Every channel that moved in the epoch with its cumulative amount (all time) at the cut,
    /// sorted by (payer, payee). Channels that did not move keep their leaf in an earlier epoch.
    pub leaves: Vec<(PayerKey, Address, u128)>,
    /// Net debit per payer in the epoch, sorted by payer.
    pub debits: Vec<(PayerKey, u128)>,
    /// Net credit per payee in the epoch, sorted by payee.
    pub credits: Vec<(Address, u128)>,
}
