//! What settle's news about a sealed epoch changes: the epoch state machine (sealed, submitted,
//! committed, disputed) and the money each transition moves once: a commit settles the epoch's
//! debits and credits, a dispute unsettles a committed one and carries its amounts into the open
//! epoch, and an overdraft's shortfall is written off instead of settled.

use std::collections::HashMap;

use crate::receipt::{Address, PayerKey};
use crate::store::{Cf, StoreSnapshot};

use super::account::{Account, Direction};
use super::error::{LedgerError, corrupt, invariant};
use super::record::{
    ChannelKey, ChannelState, EntryKind, EpochRecord, PayeeState, PayerState, decode_amount,
    encode_amount, entry_key, entry_prefix, epoch_key,
};
use super::state::Ledger;
use super::{EntryAmount, EpochStatus, EpochUpdate};

impl Ledger {
    pub(super) fn epoch_record(&self, epoch: u64) -> Result<EpochRecord, LedgerError> {
        if let Some(record) = self.unwritten_epoch(epoch) {
            return Ok(record.clone());
        }
        let bytes = self
            .store
            .get(Cf::Epochs, &epoch_key(epoch))?
            .ok_or(LedgerError::UnknownEpoch { epoch })?;
        Ok(EpochRecord::decode(&bytes).map_err(corrupt(Cf::Epochs))?)
    }

    fn epoch_amounts(&self, epoch: u64, kind: EntryKind) -> Result<Vec<EntryAmount>, LedgerError> {
        Ok(super::reader::epoch_amounts(
            &self.store.snapshot(),
            epoch,
            kind,
        )?)
    }

    /// Records settle's news about an epoch. Committing settles its debits and credits; a dispute
    /// of a committed epoch unsettles them, and any dispute (of a sealed, submitted or committed
    /// epoch) carries them into the open epoch; either way the amounts move once, however often
    /// the update is repeated.
    pub(crate) fn record_epoch(&mut self, update: EpochUpdate) -> Result<(), LedgerError> {
        let mut record = self.epoch_record(update.epoch)?;
        if record.status == EpochStatus::Disputed && update.status != EpochStatus::Disputed {
            // The contract never revives a voided epoch, so news of its commit is older than the
            // dispute (the commit loop finishing as the funds loop records the dispute): nothing
            // to move, and nothing to stop for.
            return Ok(());
        }
        if !record.status.may_become(update.status) {
            return Err(LedgerError::EpochTransition {
                epoch: update.epoch,
                from: record.status,
                to: update.status,
            });
        }
        let first_time = record.status != update.status;
        if first_time && update.status == EpochStatus::Committed {
            self.move_settlement(update.epoch, Direction::Settle)?;
        }
        if first_time && update.status == EpochStatus::Disputed {
            if record.status == EpochStatus::Committed {
                self.move_settlement(update.epoch, Direction::Unsettle)?;
            }
            self.carry_into_open_epoch(update.epoch)?;
            record.carried_into = Some(self.open.epoch);
        }
        record.status = update.status;
        record.root = update.root.or(record.root);
        if let Some(part) = update.part {
            // A part landing again (resent after a reorg) replaces its earlier landing.
            match record
                .parts
                .binary_search_by_key(&part.part, |known| known.part)
            {
                Ok(at) => record.parts[at] = part,
                Err(at) => record.parts.insert(at, part),
            }
        }
        if let Some(last) = record.parts.last() {
            record.tx_hash = Some(last.tx_hash);
            record.block = Some(last.block);
        }
        self.group
            .batch
            .put(Cf::Epochs, epoch_key(update.epoch), record.encode());
        self.group.epochs.insert(update.epoch, record);
        Ok(())
    }

    /// Moves an epoch's debits between pending and settled, and its credits into or out of
    /// settled. The epoch's shortfalls (see [`Ledger::record_shortfall`]) move into or out of
    /// the payers' and payees' `shortfall` instead of `settled`, so settled stays what the chain
    /// moved. A failure here means the stored state contradicts itself: fatal.
    fn move_settlement(&mut self, epoch: u64, direction: Direction) -> Result<(), LedgerError> {
        let ShortfallSums(payer_cuts, payee_cuts) = self.shortfall_sums(epoch)?;
        self.move_entries::<PayerState>(epoch, &payer_cuts, direction)?;
        self.move_entries::<PayeeState>(epoch, &payee_cuts, direction)
    }

    /// [`Ledger::move_settlement`] for one kind of account: its entries in `epoch`, less
    /// their shortfall `cuts`.
    fn move_entries<V: Account>(
        &mut self,
        epoch: u64,
        cuts: &HashMap<V::Key, u128>,
        direction: Direction,
    ) -> Result<(), LedgerError> {
        for (id, amount) in self.epoch_amounts(epoch, V::ENTRY)? {
            let key = V::key_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            let cut = cuts.get(&key).copied().unwrap_or(0);
            let onchain = amount.checked_sub(cut).ok_or_else(|| {
                invariant(format!("epoch {epoch} shortfall exceeds {} {key}", V::ROLE))
            })?;
            self.load_account::<V>(&key)?;
            let state = self.loaded_account_mut::<V>(&key)?;
            *state = state
                .settle(amount, onchain, cut, direction)
                .ok_or_else(|| {
                    invariant(format!(
                        "epoch {epoch} {} breaks {} {key}",
                        V::ENTRY_NAME,
                        V::ROLE
                    ))
                })?;
        }
        Ok(())
    }

    /// An epoch's shortfall entries summed per payer and per payee.
    fn shortfall_sums(&self, epoch: u64) -> Result<ShortfallSums, LedgerError> {
        let mut sums = ShortfallSums::default();
        for (id, cut) in self.epoch_amounts(epoch, EntryKind::Shortfall)? {
            let key = ChannelKey::from_bytes(&id).map_err(corrupt(Cf::EpochEntries))?;
            for total in [
                sums.0.entry(key.payer).or_insert(0),
                sums.1.entry(key.payee).or_insert(0),
            ] {
                *total = total
                    .checked_add(cut)
                    .ok_or_else(|| invariant(format!("epoch {epoch} shortfall overflows")))?;
            }
        }
        Ok(sums)
    }

    /// Records that the chain holds only `available` of what `payer` is debited in `epoch` (the
    /// contract answered `Overdraft`: the payer's exit overtook the debit). The uncovered rest is
    /// cut from what the payer paid each payee in this epoch, in payee order, and stored as the
    /// epoch's [`EntryKind::Shortfall`] entries, replacing any earlier cut of this payer; settle
    /// then commits the debit and those credits reduced by the cut, and committing the epoch
    /// writes it off instead of settling it.
    ///
    /// Only for an epoch not committed yet. The entries are read back from the store when the
    /// epoch is committed: the caller waits for this reply (written) before it commits.
    pub(crate) fn record_shortfall(
        &mut self,
        epoch: u64,
        payer: PayerKey,
        available: u128,
    ) -> Result<(), LedgerError> {
        let record = self.epoch_record(epoch)?;
        if !matches!(record.status, EpochStatus::Sealed | EpochStatus::Submitted) {
            return Err(LedgerError::EpochTransition {
                epoch,
                from: record.status,
                to: EpochStatus::Committed,
            });
        }
        let snapshot = self.store.snapshot();
        let debit = snapshot
            .get(
                Cf::EpochEntries,
                &entry_key(epoch, EntryKind::Debit, &payer.0),
            )?
            .map(|bytes| decode_amount(&bytes).map_err(corrupt(Cf::EpochEntries)))
            .transpose()?
            .ok_or_else(|| invariant(format!("epoch {epoch} has no debit of payer {payer}")))?;
        let prefix = [&entry_prefix(epoch, EntryKind::Shortfall)[..], &payer.0].concat();
        for (key, _) in snapshot.scan(Cf::EpochEntries, &prefix, None, usize::MAX)? {
            self.group.batch.delete(Cf::EpochEntries, key.into_vec());
        }
        let mut left = debit.saturating_sub(available);
        for (payee, paid) in self.paid_in_epoch(&snapshot, epoch, &payer)? {
            if left == 0 {
                break;
            }
            let cut = paid.min(left);
            left -= cut;
            let channel = ChannelKey { payer, payee };
            self.group.batch.put(
                Cf::EpochEntries,
                entry_key(epoch, EntryKind::Shortfall, &channel.to_bytes()),
                encode_amount(cut),
            );
        }
        if left != 0 {
            return Err(invariant(format!(
                "epoch {epoch}: payer {payer}'s channels moved less than its debit {debit}"
            )));
        }
        Ok(())
    }

    /// What `payer` paid each payee in `epoch`, in payee order: each of its leaves minus the
    /// channel's leaf in the latest earlier epoch that was not disputed (a disputed epoch's
    /// movements were carried into a later one). One backward lookup per channel: costly, and
    /// only ever run on an overdraft.
    fn paid_in_epoch(
        &self,
        snapshot: &StoreSnapshot<'_>,
        epoch: u64,
        payer: &PayerKey,
    ) -> Result<Vec<(Address, u128)>, LedgerError> {
        let head = entry_prefix(epoch, EntryKind::Leaf);
        let prefix = [&head[..], &payer.0].concat();
        let mut paid = Vec::new();
        for (key, value) in snapshot.scan(Cf::EpochEntries, &prefix, None, usize::MAX)? {
            let channel =
                ChannelKey::from_bytes(&key[head.len()..]).map_err(corrupt(Cf::EpochEntries))?;
            let cumulative = decode_amount(&value).map_err(corrupt(Cf::EpochEntries))?;
            let mut before = 0;
            for earlier in (1..epoch).rev() {
                let earlier_key = entry_key(earlier, EntryKind::Leaf, &channel.to_bytes());
                let Some(bytes) = snapshot.get(Cf::EpochEntries, &earlier_key)? else {
                    continue;
                };
                if self.epoch_record(earlier)?.status != EpochStatus::Disputed {
                    before = decode_amount(&bytes).map_err(corrupt(Cf::EpochEntries))?;
                    break;
                }
            }
            let moved = cumulative.checked_sub(before).ok_or_else(|| {
                invariant(format!("epoch {epoch}: channel {channel:?} went backwards"))
            })?;
            paid.push((channel.payee, moved));
        }
        Ok(paid)
    }

    /// Puts a disputed epoch's amounts back into the open epoch, to be sealed and committed
    /// again, with its channels as leaves of the next seal.
    fn carry_into_open_epoch(&mut self, epoch: u64) -> Result<(), LedgerError> {
        let total = self
            .carry_entries::<PayerState>(epoch)?
            .ok_or_else(|| invariant("epoch total overflows"))?;
        // The credits add up to the debits (the seal's pair assertion): their total is known.
        self.carry_entries::<PayeeState>(epoch)?;
        let window_nonces = self.config.window_nonces;
        for (id, _) in self.epoch_amounts(epoch, EntryKind::Leaf)? {
            let key = ChannelKey::from_bytes(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.channels
                .load(&self.store, &key, || ChannelState::empty(window_nonces))?;
            self.index_channel(&key)?;
        }
        self.open.amount = self
            .open
            .amount
            .checked_add(total)
            .ok_or_else(|| invariant("open epoch amount overflows"))?;
        self.group.meta_dirty = true;
        Ok(())
    }

    /// Adds one kind of account's entries in `epoch` back to their unsealed amounts, listing
    /// them in the open epoch's index; returns their total, `None` if it overflows.
    fn carry_entries<V: Account>(&mut self, epoch: u64) -> Result<Option<u128>, LedgerError> {
        let mut total = Some(0u128);
        for (id, amount) in self.epoch_amounts(epoch, V::ENTRY)? {
            let key = V::key_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.load_account::<V>(&key)?;
            self.index_account::<V>(&key)?;
            let state = self.loaded_account_mut::<V>(&key)?;
            let unsealed = state
                .unsealed()
                .checked_add(amount)
                .ok_or_else(|| invariant("unsealed overflows"))?;
            state.set_index(unsealed, state.indexed_epoch());
            total = total.and_then(|total| total.checked_add(amount));
        }
        Ok(total)
    }
}

/// An epoch's shortfall per payer and per payee.
#[derive(Default)]
struct ShortfallSums(HashMap<PayerKey, u128>, HashMap<Address, u128>);
