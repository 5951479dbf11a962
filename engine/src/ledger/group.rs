//! What one group commit holds, and what a group whose write is still running answers for.
//!
//! Every change lands in the writer's cache and is marked dirty; [`Ledger::close_group`] turns the
//! group's dirty state plus the index and session records it produced into one synced write,
//! after checking the pair assertion: the receipts accepted in the group add up to the same
//! total in channels, payers and payees.

use crate::store::{Cf, StoreBatch};

use super::error::{LedgerError, invariant};
use super::record::{
    BatchDigest, EpochRecord, FUNDS_CURSOR_KEY, HEAD_WITHDRAWALS_KEY, LOG_POSITION_KEY,
    OPEN_EPOCH_KEY, SEALING_EPOCH_KEY, encode_logged_outcome, encode_u64_record,
    logged_outcome_key,
};
use super::state::{InFlight, Ledger, SessionId};
use super::{BatchAck, BatchOutcome};

impl Ledger {
    /// True when closing the group now would write nothing.
    pub(crate) fn group_is_empty(&self) -> bool {
        self.group.batch.is_empty()
            && !self.group.meta_dirty
            && !self.group.sealing_dirty
            && !self.group.head_withdrawals_dirty
            && self.group.log_position.is_none()
            && self.channels.is_clean()
            && self.payers.is_clean()
            && self.payees.is_clean()
            && self.producers.is_clean()
            && self.grants.is_clean()
            && self.grant_spends.is_clean()
            && self.session_windows.is_clean()
    }

    /// Records that the group holds what the log had up to `seq` (a cluster partition's stream
    /// sequence), and what the part at `seq` (digest `digest`) got: `result` of applying it. A
    /// refused part counts too: applying it again refuses it again. A storage failure records no
    /// outcome (nothing is written after one).
    pub(crate) fn note_logged(
        &mut self,
        seq: u64,
        digest: &BatchDigest,
        result: &Result<BatchAck, LedgerError>,
    ) {
        let position = self.group.log_position.get_or_insert(seq);
        *position = (*position).max(seq);
        let outcome = match result {
            Ok(ack) => BatchOutcome::Acked(ack.clone()),
            Err(LedgerError::BatchMismatch { .. }) => BatchOutcome::Mismatch,
            Err(LedgerError::SessionSuperseded { current, .. }) => {
                BatchOutcome::Superseded { current: *current }
            }
            Err(_) => return,
        };
        self.group.batch.put(
            Cf::Sessions,
            logged_outcome_key(seq),
            encode_logged_outcome(&outcome, digest),
        );
    }

    /// Receipts applied since the last write.
    pub(crate) fn group_receipts(&self) -> usize {
        self.group.receipts
    }

    /// The ack of `session` decided in a group not on disk yet (the open one or the one in
    /// flight), with its batch's digest.
    pub(super) fn unwritten_ack(&self, session: &SessionId) -> Option<&(BatchAck, BatchDigest)> {
        self.group
            .acks
            .get(session)
            .or_else(|| self.in_flight.as_ref()?.acks.get(session))
    }

    /// The record of `epoch` as changed by a group not on disk yet, if one changed it.
    pub(super) fn unwritten_epoch(&self, epoch: u64) -> Option<&EpochRecord> {
        self.group
            .epochs
            .get(&epoch)
            .or_else(|| self.in_flight.as_ref()?.epochs.get(&epoch))
    }

    /// True from [`Ledger::close_group`] until [`Ledger::written`].
    pub(crate) fn group_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Closes the current group: its dirty state, indexes, acks and metadata become one batch
    /// for the caller to write with [`Store::write`](crate::store::Store::write), after the pair
    /// assertion (the receipts accepted in the group moved channels, payers and payees by the
    /// same total; a failure poisons the store). Until [`Ledger::written`] is called, the group
    /// is in flight: its entries stay cached and its acks and epoch records answer lookups that
    /// its write would otherwise have to serve, so the next group can be applied while it is
    /// being synced. At most one group may be in flight.
    pub(crate) fn close_group(&mut self) -> Result<StoreBatch, LedgerError> {
        debug_assert!(self.in_flight.is_none(), "one group in flight at most");
        let mut group = std::mem::take(&mut self.group);
        let expected = group.receipt_amount;
        let deltas = [
            ("channels", self.channels.drain_dirty(&mut group.batch)),
            ("payers", self.payers.drain_dirty(&mut group.batch)),
            ("payees", self.payees.drain_dirty(&mut group.batch)),
        ];
        self.producers.drain_dirty(&mut group.batch);
        self.grants.drain_dirty(&mut group.batch);
        // Never stored: the session windows drained below carry it.
        self.grant_spends.forget_dirty();
        self.session_windows.drain_dirty(&mut group.batch);
        if group.sealing_dirty {
            match &self.sealing {
                Some(sealing) => group
                    .batch
                    .put(Cf::Meta, SEALING_EPOCH_KEY, sealing.encode()),
                None => group.batch.delete(Cf::Meta, SEALING_EPOCH_KEY),
            }
        }
        if group.head_withdrawals_dirty {
            group.batch.put(
                Cf::Meta,
                HEAD_WITHDRAWALS_KEY,
                self.head_withdrawals.encode(),
            );
        }
        if group.meta_dirty {
            group
                .batch
                .put(Cf::Meta, OPEN_EPOCH_KEY, self.open.encode());
            if let Some(cursor) = self.cursor {
                group.batch.put(Cf::Meta, FUNDS_CURSOR_KEY, cursor.encode());
            }
        }
        if let Some(seq) = group.log_position {
            group
                .batch
                .put(Cf::Meta, LOG_POSITION_KEY, encode_u64_record(seq));
        }
        for (what, delta) in deltas {
            if delta != Some(expected) {
                let cause = format!(
                    "pair assertion failed: group accepted {expected}, {what} moved by {delta:?}"
                );
                self.store.poison(cause.clone());
                return Err(invariant(cause));
            }
        }
        self.in_flight = Some(InFlight {
            acks: group.acks,
            epochs: group.epochs,
        });
        self.group.batch = StoreBatch::with_room_of(&group.batch);
        Ok(group.batch)
    }

    /// The in-flight group's write returned: what it held is on disk, so its entries may be
    /// evicted and lookups go to the store again.
    pub(crate) fn written(&mut self) {
        if self.in_flight.take().is_some() {
            self.channels.evict();
            self.payers.evict();
            self.payees.evict();
            self.producers.evict();
            self.grants.evict();
            self.grant_spends.evict();
            self.session_windows.evict();
        }
    }

    /// Closes and writes the current group in the calling thread.
    #[cfg(test)]
    pub(crate) fn commit(&mut self) -> Result<(), LedgerError> {
        let batch = self.close_group()?;
        let result = self.store.write(batch).map_err(LedgerError::from);
        self.written();
        result
    }
}
