//! What a payer and a payee have in common for the state machine: an unsealed amount that a seal
//! turns into the epoch's debit (payer) or credit (payee), and settled amounts that an epoch's
//! commit or dispute moves. Code over both is written once, generic over [`Account`], and
//! monomorphised per cache.

use std::fmt::Display;
use std::sync::Arc;

use crate::store::{Store, StoreError};

use super::cache::{Cache, Cached};
use super::error::{LedgerError, invariant};
use super::record::{
    DecodeError, EntryKind, IndexKind, PayeeState, PayerState, address_from, payer_from,
};
use super::state::Ledger;

/// Which way an epoch's amounts move between owed and settled.
#[derive(Clone, Copy)]
pub(super) enum Direction {
    /// The epoch was committed.
    Settle,
    /// A committed epoch was disputed.
    Unsettle,
}

/// A payer or payee: an account whose unsealed amount becomes an epoch's debit or credit.
pub(super) trait Account: Cached<Key: Display> + Copy + Default {
    /// Its kind in the open-epoch index.
    const KIND: IndexKind;
    /// The kind of its entry in a sealed epoch.
    const ENTRY: EntryKind;
    /// What it is called in error messages.
    const ROLE: &'static str;
    /// What its entry is called in error messages.
    const ENTRY_NAME: &'static str;
    /// The store and the writer's cache of such accounts, borrowed together.
    fn cache(ledger: &mut Ledger) -> (&Arc<Store>, &mut Cache<Self>);
    /// Its key from the id bytes of an index key or epoch entry.
    fn key_from(id: &[u8]) -> Result<Self::Key, DecodeError>;
    fn unsealed(&self) -> u128;
    fn indexed_epoch(&self) -> u64;
    fn set_index(&mut self, unsealed: u128, indexed_epoch: u64);
    /// The account after its epoch entry `amount` moved in `direction`: `onchain` of it settled
    /// and `cut` written off as shortfall. `None` if that would break its totals.
    fn settle(&self, amount: u128, onchain: u128, cut: u128, direction: Direction) -> Option<Self>;
}

/// The part of [`Account`] that is the same for both: which cache, which fields.
macro_rules! account {
    (
        $state:ty, $cache:ident, $kind:ident, $entry:ident, $role:literal, $entry_name:literal,
        $key_from:path, $settle:path
    ) => {
        impl Account for $state {
            const KIND: IndexKind = IndexKind::$kind;
            const ENTRY: EntryKind = EntryKind::$entry;
            const ROLE: &'static str = $role;
            const ENTRY_NAME: &'static str = $entry_name;
            fn cache(ledger: &mut Ledger) -> (&Arc<Store>, &mut Cache<Self>) {
                (&ledger.store, &mut ledger.$cache)
            }
            fn key_from(id: &[u8]) -> Result<Self::Key, DecodeError> {
                $key_from(id)
            }
            fn unsealed(&self) -> u128 {
                self.unsealed
            }
            fn indexed_epoch(&self) -> u64 {
                self.indexed_epoch
            }
            fn set_index(&mut self, unsealed: u128, indexed_epoch: u64) {
                self.unsealed = unsealed;
                self.indexed_epoch = indexed_epoch;
            }
            fn settle(
                &self,
                amount: u128,
                onchain: u128,
                cut: u128,
                direction: Direction,
            ) -> Option<Self> {
                $settle(self, amount, onchain, cut, direction)
            }
        }
    };
}

account!(
    PayerState,
    payers,
    Payer,
    Debit,
    "payer",
    "debit",
    payer_from,
    settle_debit
);
account!(
    PayeeState,
    payees,
    Payee,
    Credit,
    "payee",
    "credit",
    address_from,
    settle_credit
);

impl Ledger {
    /// Makes sure account `key` is in its cache (see [`Cache::load`]).
    pub(super) fn load_account<V: Account>(&mut self, key: &V::Key) -> Result<(), StoreError> {
        let (store, cache) = V::cache(self);
        cache.load(store, key, V::default)
    }

    /// Account `key`, loaded in this group, for changing.
    pub(super) fn loaded_account_mut<V: Account>(
        &mut self,
        key: &V::Key,
    ) -> Result<&mut V, LedgerError> {
        V::cache(self)
            .1
            .get_mut(key)
            .ok_or_else(|| invariant(format!("{} not cached after load", V::ROLE)))
    }
}

/// A payer's debit leaves (or, undone, returns to) pending.
fn settle_debit(
    payer: &PayerState,
    debit: u128,
    onchain: u128,
    cut: u128,
    direction: Direction,
) -> Option<PayerState> {
    let (pending, settled, shortfall) = match direction {
        Direction::Settle => (
            payer.pending.checked_sub(debit)?,
            payer.settled.checked_add(onchain)?,
            payer.shortfall.checked_add(cut)?,
        ),
        Direction::Unsettle => (
            payer.pending.checked_add(debit)?,
            payer.settled.checked_sub(onchain)?,
            payer.shortfall.checked_sub(cut)?,
        ),
    };
    Some(PayerState {
        pending,
        settled,
        shortfall,
        ..*payer
    })
}

/// A payee's credit becomes (or, undone, stops being) settled; settled and shortfall together
/// never exceed what it was credited.
fn settle_credit(
    payee: &PayeeState,
    _credit: u128,
    onchain: u128,
    cut: u128,
    direction: Direction,
) -> Option<PayeeState> {
    let (settled, shortfall) = match direction {
        Direction::Settle => (
            payee.settled.checked_add(onchain)?,
            payee.shortfall.checked_add(cut)?,
        ),
        Direction::Unsettle => (
            payee.settled.checked_sub(onchain)?,
            payee.shortfall.checked_sub(cut)?,
        ),
    };
    settled
        .checked_add(shortfall)
        .filter(|total| *total <= payee.credited)?;
    Some(PayeeState {
        settled,
        shortfall,
        ..*payee
    })
}
