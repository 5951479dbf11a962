//! What the ledger state machine holds between requests (the cached state, the epoch and funds
//! metadata, the group being built and the one being written), and how it is loaded from the
//! store.
//! Owned by the writer thread; nothing in the state machine blocks on anything but RocksDB reads
//! of cold state and the group's synced write. Its jobs live beside this file: `apply`
//! (receipts), `funds` (chain events), `seal` (cutting and writing an epoch), `epochs` (settle's
//! news about a sealed epoch) and `group` (what one group commit holds and answers while in
//! flight).

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{Cf, Store, StoreBatch};

use super::cache::Cache;
use super::error::{LedgerError, corrupt};
use super::format;
use super::record::{
    ARCHIVE_PRUNED_THROUGH_KEY, BatchDigest, ChannelState, EpochRecord, FUNDS_CURSOR_KEY,
    FundsCursor, HEAD_WITHDRAWALS_KEY, HeadWithdrawals, HeldGrant, OPEN_EPOCH_KEY, OpenEpoch,
    PayeeState, PayerState, Position, ProducerKey, ProducerState, SEALING_EPOCH_KEY, SealingEpoch,
    SessionWindow, decode_u64_record,
};
use super::{BatchAck, LedgerConfig};
use crate::grant::GrantSpend;

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

/// What the current group holds besides dirty cache entries.
#[derive(Default)]
pub(super) struct Group {
    /// Index, session and epoch records written with the group.
    pub(super) batch: StoreBatch,
    /// Total of the receipts accepted in the group: the pair assertion's expected delta.
    pub(super) receipt_amount: u128,
    /// Receipts applied in the group (accepted or not).
    pub(super) receipts: usize,
    /// The open epoch or funds cursor changed.
    pub(super) meta_dirty: bool,
    /// The running seal moved (or ended): its record is written (or deleted) with the group.
    pub(super) sealing_dirty: bool,
    /// The withdrawal requests at the chain's head changed.
    pub(super) head_withdrawals_dirty: bool,
    /// The highest log position applied in the group (cluster mode): written with it, so the
    /// stored position always describes exactly the state beside it.
    pub(super) log_position: Option<u64>,
    /// Acks decided in this group with their batch's digest, answered again to a re-send before
    /// they are on disk.
    pub(super) acks: HashMap<SessionId, (BatchAck, BatchDigest)>,
    /// Epoch records changed in this group, so a second update in the same group sees the first.
    pub(super) epochs: HashMap<u64, EpochRecord>,
}

/// What a group whose write is still running answers for.
pub(super) struct InFlight {
    pub(super) acks: HashMap<SessionId, (BatchAck, BatchDigest)>,
    pub(super) epochs: HashMap<u64, EpochRecord>,
}

pub(crate) struct Ledger {
    pub(super) store: Arc<Store>,
    pub(super) in_flight: Option<InFlight>,
    pub(super) config: LedgerConfig,
    pub(super) channels: Cache<ChannelState>,
    pub(super) payers: Cache<PayerState>,
    pub(super) payees: Cache<PayeeState>,
    pub(super) producers: Cache<ProducerState>,
    /// Session grants by session key.
    pub(super) grants: Cache<HeldGrant>,
    /// What each session spent, by session key: its windows' parts combined, never stored.
    pub(super) grant_spends: Cache<GrantSpend>,
    /// Session anti-replay windows by (session key, payee).
    pub(super) session_windows: Cache<SessionWindow>,
    pub(super) open: OpenEpoch,
    /// The epoch being sealed, if a seal is running (see [`Ledger::begin_seal`]).
    pub(super) sealing: Option<SealingEpoch>,
    pub(super) cursor: Option<FundsCursor>,
    /// Requests past the cursor, refused spend already (see [`HeadWithdrawals`]).
    pub(super) head_withdrawals: HeadWithdrawals,
    pub(super) group: Group,
    /// Accepted receipts go into the archive (fixed by the data directory's format record).
    pub(super) archive: bool,
    /// The highest epoch whose archive is pruned, as of the current group.
    pub(super) archive_pruned_through: u64,
}

impl Ledger {
    /// Loads the ledger's metadata from an opened store and checks it matches `config`.
    pub(crate) fn open(store: Arc<Store>, config: LedgerConfig) -> Result<Self, LedgerError> {
        let format = format::check(&store, &config)?;
        let archive = format.archive_receipts;
        format::upgraded(&store, format)?;
        super::grants::split_grant_records(&store)?;
        super::grants::fold_grant_spends(&store)?;
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
        let archive_pruned_through = store
            .get(Cf::Meta, ARCHIVE_PRUNED_THROUGH_KEY)?
            .map(|bytes| decode_u64_record(&bytes, "epoch number").map_err(corrupt(Cf::Meta)))
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            channels: Cache::new(config.channels_cached_max),
            payers: Cache::new(config.accounts_cached_max),
            payees: Cache::new(config.accounts_cached_max),
            producers: Cache::new(config.producers_cached_max),
            grants: Cache::new(config.accounts_cached_max),
            grant_spends: Cache::new(config.accounts_cached_max),
            session_windows: Cache::new(config.session_windows_cached_max),
            store,
            config,
            open,
            sealing,
            cursor,
            head_withdrawals,
            group: Group::default(),
            in_flight: None,
            archive,
            archive_pruned_through,
        })
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.store.is_poisoned()
    }

    /// Refuses every further write (see [`Store::poison`]).
    pub(crate) fn poison(&self, cause: String) {
        self.store.poison(cause);
    }

    /// Where the next accepted receipt goes in the order of accepted receipts.
    pub(super) fn position(&self) -> Position {
        Position {
            epoch: self.open.epoch,
            index: self.open.receipts,
        }
    }

    /// The store the ledger writes to.
    pub(crate) fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }
}
