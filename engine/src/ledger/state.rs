//! What the ledger state machine holds between requests, and how it is loaded from the store.
//! Owned by the writer thread; nothing in the state machine blocks on anything but RocksDB reads
//! of cold state and the group's synced write. Its jobs live beside this file: `apply`
//! (receipts), `funds` (chain events), `seal` (cutting and writing an epoch), `epochs` (settle's
//! news about a sealed epoch) and `group` (what one group commit holds and answers while in
//! flight).

use std::sync::Arc;

use crate::store::{Cf, Store};

use super::LedgerConfig;
use super::cache::Cache;
use super::error::{LedgerError, corrupt};
use super::format;
use super::group::{Group, InFlight};
use super::record::{
    ChannelState, FUNDS_CURSOR_KEY, FundsCursor, HEAD_WITHDRAWALS_KEY, HeadWithdrawals,
    OPEN_EPOCH_KEY, OpenEpoch, PayeeState, PayerState, ProducerKey, ProducerState,
    SEALING_EPOCH_KEY, SealingEpoch,
};

/// A producer's batch: `(client_id, producer_id, session_epoch, batch_seq)`. The client id is the
/// one the connection authenticated as, so one client's producers never meet another's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SessionId {
    pub client_id: u64,
    pub producer_id: u64,
    pub session_epoch: u64,
    pub batch_seq: u64,
}

impl SessionId {
    pub(super) fn producer(&self) -> ProducerKey {
        ProducerKey {
            client_id: self.client_id,
            producer_id: self.producer_id,
        }
    }
}

pub(crate) struct Ledger {
    pub(super) store: Arc<Store>,
    pub(super) in_flight: Option<InFlight>,
    pub(super) config: LedgerConfig,
    pub(super) channels: Cache<ChannelState>,
    pub(super) payers: Cache<PayerState>,
    pub(super) payees: Cache<PayeeState>,
    pub(super) producers: Cache<ProducerState>,
    pub(super) open: OpenEpoch,
    /// The epoch being sealed, if a seal is running (see [`Ledger::begin_seal`]).
    pub(super) sealing: Option<SealingEpoch>,
    pub(super) cursor: Option<FundsCursor>,
    /// Requests past the cursor, refused spend already (see [`HeadWithdrawals`]).
    pub(super) head_withdrawals: HeadWithdrawals,
    pub(super) group: Group,
}

impl Ledger {
    /// Loads the ledger's metadata from an opened store and checks it matches `config`.
    pub(crate) fn open(store: Arc<Store>, config: LedgerConfig) -> Result<Self, LedgerError> {
        format::check(&store, &config)?;
        let open = match store.get(Cf::Meta, OPEN_EPOCH_KEY)? {
            Some(bytes) => OpenEpoch::decode(&bytes).map_err(corrupt(Cf::Meta))?,
            None => OpenEpoch::default(),
        };
        let sealing = store
            .get(Cf::Meta, SEALING_EPOCH_KEY)?
            .map(|bytes| SealingEpoch::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()?;
        let cursor = store
            .get(Cf::Meta, FUNDS_CURSOR_KEY)?
            .map(|bytes| FundsCursor::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()?;
        let head_withdrawals = store
            .get(Cf::Meta, HEAD_WITHDRAWALS_KEY)?
            .map(|bytes| HeadWithdrawals::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            channels: Cache::new(config.channels_cached_max),
            payers: Cache::new(config.accounts_cached_max),
            payees: Cache::new(config.accounts_cached_max),
            producers: Cache::new(config.producers_cached_max),
            store,
            config,
            open,
            sealing,
            cursor,
            head_withdrawals,
            group: Group::default(),
            in_flight: None,
        })
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    /// Refuses every further write (see [`Store::poison`]).
    pub(crate) fn poison(&self, cause: String) {
        self.store.poison(cause);
    }

    /// The store the ledger writes to.
    pub(crate) fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }
}
