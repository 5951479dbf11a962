//! How an epoch is sealed without stopping the writer for long.
//!
//! The cut ([`Ledger::begin_seal`]) is one small write: the open epoch e becomes the sealing epoch
//! (persisted in Meta with its frozen receipt count and amount) and e+1 opens. The open-epoch
//! index is keyed by epoch first, so e's keys and e+1's never mix. e's entries are then written a
//! chunk at a time ([`Ledger::seal_chunk`]), one chunk per group between receipt groups, with the
//! seal's position (a cursor in index order) and its running totals in the same write: a crash at
//! any point resumes from the last written chunk. A channel, payer or payee that something after
//! the cut is about to change while the seal has not reached it (its `indexed_epoch` is e and its
//! key is past the cursor) gets its e entry first, in the same group: copy-on-write at the
//! boundary. Either way each entry is written once, with its value at the cut, so the sealed
//! epoch does not depend on where chunks or crashes fell.

use crate::store::{Cf, StoreError};

use super::EpochStatus;
use super::account::Account;
use super::error::{LedgerError, corrupt, invariant};
use super::record::{
    ChannelKey, EntryCounts, EntryKind, EpochRecord, IndexKind, OpenEpoch, PayeeState, PayerState,
    SealingEpoch, encode_amount, entry_key, epoch_key, index_key, index_suffix,
};
use super::state::Ledger;
#[cfg(test)]
use super::{LedgerReader, SealedEpoch};

impl Ledger {
    /// The epoch being sealed, if a seal is running.
    pub(crate) fn sealing_epoch(&self) -> Option<u64> {
        self.sealing.as_ref().map(|sealing| sealing.epoch)
    }

    /// The cut: the open epoch becomes the epoch being sealed, with its receipt count and amount
    /// frozen, and the next epoch opens empty. Its entries are then written by
    /// [`Ledger::seal_chunk`] between receipt groups, or earlier, by whatever changes an entry
    /// after the cut. The caller must have written every earlier group first: the chunks find
    /// the epoch's index in the store. One seal at a time.
    pub(crate) fn begin_seal(&mut self) -> Result<u64, LedgerError> {
        if let Some(sealing) = &self.sealing {
            return Err(invariant(format!(
                "seal of epoch {} still running",
                sealing.epoch
            )));
        }
        let epoch = self.open.epoch;
        self.sealing = Some(SealingEpoch {
            epoch,
            receipts: self.open.receipts,
            amount: self.open.amount,
            leaves: 0,
            debits: 0,
            credits: 0,
            counts: Some(EntryCounts::default()),
            cursor: None,
        });
        self.open = OpenEpoch {
            epoch: epoch
                .checked_add(1)
                .ok_or_else(|| invariant("epoch number overflows"))?,
            receipts: 0,
            amount: 0,
        };
        self.group.meta_dirty = true;
        self.group.sealing_dirty = true;
        Ok(epoch)
    }

    /// Adds the next `seal_chunk_keys` keys of the sealing epoch's index to the current group: a leaf
    /// per channel (its cumulative), a debit per payer and a credit per payee (their unsealed
    /// amounts), each key deleted, the seal's position saved. The writer's memory stays bounded
    /// by the chunk and its caches. When the index is exhausted, checks the pair assertion
    /// (what the epoch debits is what it credits is what it accepted, summed over the entries as
    /// they were written) and puts the epoch record in the group: returns the epoch then.
    pub(crate) fn seal_chunk(&mut self) -> Result<Option<u64>, LedgerError> {
        let Some(sealing) = &self.sealing else {
            return Ok(None);
        };
        let keys_max = self.config.seal_chunk_keys;
        let epoch = sealing.epoch;
        let prefix = epoch.to_be_bytes();
        // The scan may still list keys that an entry changed after the cut deleted in a group
        // not yet on disk; such an entry's `indexed_epoch` has moved on, so it is skipped.
        let after = sealing
            .cursor
            .as_ref()
            .map(|cursor| index_key(epoch, cursor));
        let keys =
            self.store
                .snapshot()
                .scan(Cf::OpenEpoch, &prefix, after.as_deref(), keys_max)?;
        for (key, _) in &keys {
            let (kind, id) = key
                .get(prefix.len()..)
                .and_then(|suffix| suffix.split_first())
                .ok_or_else(|| StoreError::Corrupt {
                    cf: Cf::OpenEpoch.name(),
                    problem: format!("index key of {} bytes", key.len()),
                })?;
            match IndexKind::from_byte(*kind) {
                Some(IndexKind::Channel) => {
                    let channel = ChannelKey::from_bytes(id).map_err(corrupt(Cf::OpenEpoch))?;
                    let (indexed_epoch, cumulative) = self
                        .channels
                        .peek(&self.store, &channel, |c| (c.indexed_epoch, c.cumulative))?
                        .ok_or_else(|| StoreError::Corrupt {
                            cf: Cf::OpenEpoch.name(),
                            problem: format!("index names channel {channel:?} that does not exist"),
                        })?;
                    if indexed_epoch == epoch {
                        self.write_sealed_entry(IndexKind::Channel, id, cumulative)?;
                    }
                }
                Some(IndexKind::Payer) => self.seal_account::<PayerState>(epoch, id)?,
                Some(IndexKind::Payee) => self.seal_account::<PayeeState>(epoch, id)?,
                None => {
                    return Err(StoreError::Corrupt {
                        cf: Cf::OpenEpoch.name(),
                        problem: format!("unknown index kind {kind}"),
                    }
                    .into());
                }
            }
            self.group.batch.delete(Cf::OpenEpoch, key);
        }
        let sealing = self
            .sealing
            .as_mut()
            .ok_or_else(|| invariant("seal ended inside a chunk"))?;
        if let Some((last, _)) = keys.last() {
            sealing.cursor = last.get(prefix.len()..).map(<[u8]>::to_vec);
            self.group.sealing_dirty = true;
        }
        if keys.len() < keys_max {
            return self.finish_seal().map(Some);
        }
        Ok(None)
    }

    /// The seal's last step, in the group of its last chunk: the pair assertion and the epoch
    /// record. A failed assertion poisons the store.
    fn finish_seal(&mut self) -> Result<u64, LedgerError> {
        let sealing = self
            .sealing
            .take()
            .ok_or_else(|| invariant("no seal running"))?;
        self.group.sealing_dirty = true;
        let epoch = sealing.epoch;
        if sealing.debits != sealing.credits || sealing.debits != sealing.amount {
            let cause = format!(
                "seal pair assertion failed: epoch {epoch} debits {}, credits {}, accepted {}",
                sealing.debits, sealing.credits, sealing.amount
            );
            self.store.poison(cause.clone());
            return Err(invariant(cause));
        }
        let record = EpochRecord {
            epoch,
            status: EpochStatus::Sealed,
            leaves: sealing.leaves,
            receipts: sealing.receipts,
            amount: sealing.amount,
            root: None,
            tx_hash: None,
            block: None,
            counts: sealing.counts,
            parts: Vec::new(),
            carried_into: None,
        };
        self.group
            .batch
            .put(Cf::Epochs, epoch_key(epoch), record.encode());
        self.group.epochs.insert(epoch, record);
        Ok(epoch)
    }

    /// True when `indexed_epoch` is the epoch being sealed and the seal has not reached the
    /// index entry of `kind` and `id` yet: that entry's amount at the cut is still to be written.
    /// The entry's suffix is only built during a seal: every receipt asks this of its payer and
    /// payee.
    fn awaits_seal(&self, kind: IndexKind, id: &[u8], indexed_epoch: u64) -> bool {
        self.sealing.as_ref().is_some_and(|sealing| {
            sealing.epoch == indexed_epoch
                && sealing
                    .cursor
                    .as_deref()
                    .is_none_or(|cursor| index_suffix(kind, id).as_slice() > cursor)
        })
    }

    /// An account's unsealed amount as the open epoch sees it: zero while it still belongs to
    /// the epoch being sealed.
    pub(super) fn unsealed_after_cut<V: Account>(&self, state: &V, key: &V::Key) -> u128 {
        if self.awaits_seal(V::KIND, V::key_bytes(key).as_ref(), state.indexed_epoch()) {
            0
        } else {
            state.unsealed()
        }
    }

    /// Writes one entry of the epoch being sealed and counts it for the seal's pair assertion.
    /// A payer or payee with nothing unsealed gets no entry.
    fn write_sealed_entry(
        &mut self,
        kind: IndexKind,
        id: &[u8],
        amount: u128,
    ) -> Result<(), LedgerError> {
        let sealing = self
            .sealing
            .as_mut()
            .ok_or_else(|| invariant("no seal running"))?;
        let epoch = sealing.epoch;
        let overflow = || invariant(format!("epoch {epoch} totals overflow"));
        let entry = match kind {
            IndexKind::Channel => {
                sealing.leaves = sealing.leaves.checked_add(1).ok_or_else(overflow)?;
                EntryKind::Leaf
            }
            _ if amount == 0 => return Ok(()),
            IndexKind::Payer => {
                sealing.debits = sealing.debits.checked_add(amount).ok_or_else(overflow)?;
                if let Some(counts) = &mut sealing.counts {
                    counts.debits = counts.debits.checked_add(1).ok_or_else(overflow)?;
                }
                EntryKind::Debit
            }
            IndexKind::Payee => {
                sealing.credits = sealing.credits.checked_add(amount).ok_or_else(overflow)?;
                if let Some(counts) = &mut sealing.counts {
                    counts.credits = counts.credits.checked_add(1).ok_or_else(overflow)?;
                }
                EntryKind::Credit
            }
        };
        self.group.batch.put(
            Cf::EpochEntries,
            entry_key(epoch, entry, id),
            encode_amount(amount),
        );
        self.group.sealing_dirty = true;
        Ok(())
    }

    /// Copy-on-write at the boundary: an entry the seal has not reached yet gets its sealed
    /// entry now, with `amount_at_cut`, and leaves the sealing epoch's index, before anything
    /// after the cut changes it. Returns whether it did.
    fn freeze_if_awaited(
        &mut self,
        kind: IndexKind,
        id: &[u8],
        indexed_epoch: u64,
        amount_at_cut: u128,
    ) -> Result<bool, LedgerError> {
        if !self.awaits_seal(kind, id, indexed_epoch) {
            return Ok(false);
        }
        self.write_sealed_entry(kind, id, amount_at_cut)?;
        self.group.batch.delete(
            Cf::OpenEpoch,
            index_key(indexed_epoch, &index_suffix(kind, id)),
        );
        Ok(true)
    }

    /// Lists a cached channel in the open epoch's index, freezing its leaf for the sealing
    /// epoch first if the seal has not reached it.
    pub(super) fn index_channel(&mut self, key: &ChannelKey) -> Result<(), LedgerError> {
        let open = self.open.epoch;
        let (indexed_epoch, cumulative) = self
            .channels
            .get(key)
            .map(|c| (c.indexed_epoch, c.cumulative))
            .ok_or_else(|| invariant("channel not cached after load"))?;
        if indexed_epoch == open {
            return Ok(());
        }
        let id = key.to_bytes();
        self.freeze_if_awaited(IndexKind::Channel, &id, indexed_epoch, cumulative)?;
        self.group.batch.put(
            Cf::OpenEpoch,
            index_key(open, &index_suffix(IndexKind::Channel, &id)),
            Vec::new(),
        );
        self.channels
            .get_mut(key)
            .ok_or_else(|| invariant("channel evicted inside a group"))?
            .indexed_epoch = open;
        Ok(())
    }

    /// Lists a cached payer or payee in the open epoch's index; if the seal has not reached it,
    /// its unsealed amount goes to the sealing epoch first and it starts the open one at zero.
    pub(super) fn index_account<V: Account>(&mut self, key: &V::Key) -> Result<(), LedgerError> {
        let open = self.open.epoch;
        let mut state = *V::cache(self)
            .1
            .get(key)
            .ok_or_else(|| invariant("account not cached after load"))?;
        if state.indexed_epoch() == open {
            return Ok(());
        }
        let id = V::key_bytes(key);
        if self.freeze_if_awaited(
            V::KIND,
            id.as_ref(),
            state.indexed_epoch(),
            state.unsealed(),
        )? {
            state.set_index(0, open);
        } else {
            state.set_index(state.unsealed(), open);
        }
        self.group.batch.put(
            Cf::OpenEpoch,
            index_key(open, &index_suffix(V::KIND, id.as_ref())),
            Vec::new(),
        );
        *V::cache(self)
            .1
            .get_mut(key)
            .ok_or_else(|| invariant("account evicted inside a group"))? = state;
        Ok(())
    }

    /// A seal chunk's visit of a payer or payee (`id` from its index key): its unsealed amount
    /// becomes the sealing epoch's entry, unless something after the cut gave it to that epoch
    /// already.
    fn seal_account<V: Account>(&mut self, epoch: u64, id: &[u8]) -> Result<(), LedgerError> {
        let key = V::key_from(id).map_err(corrupt(Cf::OpenEpoch))?;
        self.load_account::<V>(&key)?;
        let mut state = *V::cache(self)
            .1
            .get(&key)
            .ok_or_else(|| invariant("account not cached after load"))?;
        if state.indexed_epoch() != epoch || state.unsealed() == 0 {
            return Ok(());
        }
        self.write_sealed_entry(V::KIND, id, state.unsealed())?;
        state.set_index(0, epoch);
        *V::cache(self)
            .1
            .get_mut(&key)
            .ok_or_else(|| invariant("account evicted inside a group"))? = state;
        Ok(())
    }

    /// Seals the open epoch to the end in the calling thread, one committed group per chunk.
    #[cfg(test)]
    pub(crate) fn seal(&mut self) -> Result<SealedEpoch, LedgerError> {
        self.commit()?;
        self.begin_seal()?;
        self.commit()?;
        self.finish_running_seal()
    }

    /// Runs the seal in progress to its end, one committed group per chunk.
    #[cfg(test)]
    pub(crate) fn finish_running_seal(&mut self) -> Result<SealedEpoch, LedgerError> {
        loop {
            let done = self.seal_chunk()?;
            self.commit()?;
            if let Some(epoch) = done {
                return LedgerReader::new(self.store())
                    .sealed_epoch(epoch)?
                    .ok_or_else(|| invariant("sealed epoch not stored"));
            }
        }
    }
}
