//! Why the ledger refused a request or stopped: its one error type, with the two ways the ledger
//! raises one of its own (a stored record that does not decode, a state that contradicts itself).

use thiserror::Error;

use crate::receipt::PayerKey;
use crate::store::{Cf, StoreError};

use super::EpochStatus;

/// Why the ledger could not do what was asked. Errors marked fatal mean the process must stop.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The store could not be opened or read (the message names the problem and the directory).
    #[error(transparent)]
    Store(StoreError),
    /// Fatal: a write or fsync failed, or an invariant broke, and the ledger takes no more writes.
    #[error("ledger poisoned (fatal): {cause}")]
    Poisoned {
        /// what failed first
        cause: String,
    },
    /// Fatal: the ledger's state contradicts itself; nothing is written after this.
    #[error("ledger invariant broken (fatal): {what}")]
    Invariant {
        /// what did not add up
        what: String,
    },
    /// A batch or HELLO from a session older than the producer's current one.
    #[error(
        "producer {producer_id}: session epoch {session_epoch} is older than the current {current}"
    )]
    SessionSuperseded {
        /// the producer
        producer_id: u64,
        /// the epoch the request came with
        session_epoch: u64,
        /// the epoch stored for the producer
        current: u64,
    },
    /// A batch under a (client, producer, session epoch, batch sequence) whose ack is remembered,
    /// but with other receipt bytes than the batch that got that ack: not a re-send. Nothing was
    /// applied; the original ack still answers the original bytes.
    #[error(
        "producer {producer_id}: batch {batch_seq} of session epoch {session_epoch} was acknowledged \
         with other receipts; a re-send must repeat the batch exactly"
    )]
    BatchMismatch {
        /// the producer
        producer_id: u64,
        /// the session epoch the batch came with
        session_epoch: u64,
        /// the batch sequence number reused
        batch_seq: u64,
    },
    /// `record_epoch` for an epoch that was never sealed.
    #[error("epoch {epoch} was never sealed")]
    UnknownEpoch {
        /// the epoch asked for
        epoch: u64,
    },
    /// `record_epoch` asked for a status change that settlement cannot make.
    #[error("epoch {epoch} cannot go from {from:?} to {to:?}")]
    EpochTransition {
        /// the epoch
        epoch: u64,
        /// stored status
        from: EpochStatus,
        /// requested status
        to: EpochStatus,
    },
    /// A funds event would overflow the payer's totals; it was not applied.
    #[error("funds event for payer {payer} overflows its totals")]
    FundsOverflow {
        /// the payer
        payer: PayerKey,
    },
    /// A grant or revocation that does not fit what the ledger holds (see
    /// [`crate::grant::GrantError`]): nothing changed.
    #[error("grant refused: {0}")]
    Grant(#[from] crate::grant::GrantError),
    /// `prune_archive` asked to prune an epoch the ledger has not finished with.
    #[error("cannot prune the archive through epoch {through}: {problem}")]
    PruneRefused {
        /// the epoch asked for
        through: u64,
        /// why not
        problem: String,
    },
    /// The ledger configuration is invalid or does not match the data directory.
    #[error("engine configuration: {problem}")]
    Config {
        /// what is wrong
        problem: String,
    },
}

impl From<StoreError> for LedgerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Poisoned { cause } => LedgerError::Poisoned { cause },
            other => LedgerError::Store(other),
        }
    }
}

impl LedgerError {
    /// True for answers that refuse one request and change nothing; false for failures after
    /// which the ledger must not write again.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LedgerError::SessionSuperseded { .. }
                | LedgerError::BatchMismatch { .. }
                | LedgerError::UnknownEpoch { .. }
                | LedgerError::EpochTransition { .. }
                | LedgerError::FundsOverflow { .. }
                | LedgerError::PruneRefused { .. }
                | LedgerError::Grant(_)
                | LedgerError::Config { .. }
        )
    }

    /// The error every other reply of a failed group gets.
    pub(crate) fn clone_fatal(&self) -> LedgerError {
        LedgerError::Poisoned {
            cause: self.to_string(),
        }
    }
}

/// A stored record that does not decode.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// A record of column family `cf` that does not decode: the store is corrupt.
pub(crate) fn corrupt(cf: Cf) -> impl FnOnce(DecodeError) -> StoreError {
    move |DecodeError(problem)| StoreError::Corrupt {
        cf: cf.name(),
        problem,
    }
}

/// The ledger's state contradicts itself (fatal).
pub(crate) fn invariant(what: impl Into<String>) -> LedgerError {
    LedgerError::Invariant { what: what.into() }
}
