//! The ledger state machine. Owned by the writer thread; nothing here blocks on anything but
//! RocksDB reads of cold state and the group's synced write.
//!
//! Every change lands in the writer's cache and is marked dirty; [`Ledger::commit`] turns the
//! group's dirty state plus the index and session records it produced into one synced write,
//! after checking the pair assertion: the receipts accepted in the group add up to the same
//! total in channels, payers and payees.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pipeline::EngineError;
use crate::receipt::{ReceiptBatch, ReceiptView};
use crate::store::{Cf, FORMAT_KEY, Store, StoreBatch, StoreError};
use crate::verdict::{Reason, Verdict};

use super::cache::Cache;
use super::record::{
    BatchDigest, ChannelKey, ChannelState, DecodeError, EntryKind, EpochRecord, FUNDS_CURSOR_KEY,
    FormatRecord, FundsCursor, LAYOUT_VERSION, OPEN_EPOCH_KEY, OpenEpoch, PayeeState, PayerState,
    ProducerKey, ProducerState, ack_key, address_from, decode_ack, encode_ack, encode_amount,
    entry_key, epoch_key, open_channel_key, open_payee_key, open_payer_key, payer_from,
};
use super::window::WINDOW_WORD_BITS;
use super::{
    BatchAck, EpochStatus, EpochUpdate, FundsEvent, FundsKind, LedgerConfig, SealedEpoch,
    UnknownPayers,
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
    fn producer(&self) -> ProducerKey {
        ProducerKey {
            client_id: self.client_id,
            producer_id: self.producer_id,
        }
    }
}

/// What the current group holds besides dirty cache entries.
#[derive(Default)]
struct Group {
    /// Index, session and epoch records written with the group.
    batch: StoreBatch,
    /// Total of the receipts accepted in the group: the pair assertion's expected delta.
    receipt_amount: u128,
    /// Receipts applied in the group (accepted or not).
    receipts: usize,
    /// The open epoch or funds cursor changed.
    meta_dirty: bool,
    /// Acks decided in this group with their batch's digest, answered again to a re-send before
    /// they are on disk.
    acks: HashMap<SessionId, (BatchAck, BatchDigest)>,
    /// Epoch records changed in this group, so a second update in the same group sees the first.
    epochs: HashMap<u64, EpochRecord>,
}

/// What a group whose write is still running answers for.
struct InFlight {
    acks: HashMap<SessionId, (BatchAck, BatchDigest)>,
    epochs: HashMap<u64, EpochRecord>,
}

pub(crate) struct Ledger {
    store: Arc<Store>,
    in_flight: Option<InFlight>,
    config: LedgerConfig,
    channels: Cache<ChannelState>,
    payers: Cache<PayerState>,
    payees: Cache<PayeeState>,
    producers: Cache<ProducerState>,
    open: OpenEpoch,
    cursor: Option<FundsCursor>,
    group: Group,
}

fn corrupt(cf: Cf) -> impl FnOnce(DecodeError) -> StoreError {
    move |DecodeError(problem)| StoreError::Corrupt {
        cf: cf.name(),
        problem,
    }
}

fn invariant(what: impl Into<String>) -> EngineError {
    EngineError::Invariant { what: what.into() }
}

/// The `FormatRecord` a new data directory is created with.
pub(crate) fn initial_format(config: &LedgerConfig) -> Vec<u8> {
    FormatRecord {
        layout: LAYOUT_VERSION,
        window_nonces: config.window_nonces,
    }
    .encode()
}

/// Checks what can be checked about a configuration before anything is opened.
pub(crate) fn validate(config: &LedgerConfig) -> Result<(), EngineError> {
    let words = config.window_nonces / WINDOW_WORD_BITS;
    if config.window_nonces == 0
        || !config.window_nonces.is_multiple_of(WINDOW_WORD_BITS)
        || words >= u32::from(u16::MAX)
    {
        return Err(EngineError::Config {
            problem: format!(
                "window_nonces must be a non-zero multiple of {WINDOW_WORD_BITS} below {}, got {}",
                u32::from(u16::MAX) * WINDOW_WORD_BITS,
                config.window_nonces
            ),
        });
    }
    if config.acks_kept_per_producer == 0 || config.group_receipts_max == 0 {
        return Err(EngineError::Config {
            problem: "acks_kept_per_producer and group_receipts_max must be at least 1".into(),
        });
    }
    Ok(())
}

impl Ledger {
    /// Loads the ledger's metadata from an opened store and checks it matches `config`.
    pub(crate) fn open(store: Arc<Store>, config: LedgerConfig) -> Result<Self, EngineError> {
        let format_bytes = store
            .get(Cf::Meta, FORMAT_KEY)?
            .ok_or_else(|| EngineError::Config {
                problem: "data dir has no format record".into(),
            })?;
        let format = FormatRecord::decode(&format_bytes).map_err(corrupt(Cf::Meta))?;
        if format.layout != LAYOUT_VERSION {
            return Err(EngineError::Config {
                problem: format!(
                    "data dir {} has layout {}, this build reads layout {LAYOUT_VERSION}",
                    store.path().display(),
                    format.layout
                ),
            });
        }
        if format.window_nonces != config.window_nonces {
            return Err(EngineError::Config {
                problem: format!(
                    "data dir {} was created with window_nonces = {}, configured {}; the window \
                     size cannot change on an existing ledger",
                    store.path().display(),
                    format.window_nonces,
                    config.window_nonces
                ),
            });
        }
        let open = match store.get(Cf::Meta, OPEN_EPOCH_KEY)? {
            Some(bytes) => OpenEpoch::decode(&bytes).map_err(corrupt(Cf::Meta))?,
            None => OpenEpoch::default(),
        };
        let cursor = store
            .get(Cf::Meta, FUNDS_CURSOR_KEY)?
            .map(|bytes| FundsCursor::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()?;
        Ok(Self {
            channels: Cache::new(config.channels_cached_max),
            payers: Cache::new(config.accounts_cached_max),
            payees: Cache::new(config.accounts_cached_max),
            producers: Cache::new(config.producers_cached_max),
            store,
            config,
            open,
            cursor,
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

    /// True when closing the group now would write nothing.
    pub(crate) fn group_is_empty(&self) -> bool {
        self.group.batch.is_empty()
            && !self.group.meta_dirty
            && self.channels.is_clean()
            && self.payers.is_clean()
            && self.payees.is_clean()
            && self.producers.is_clean()
    }

    /// Receipts applied since the last write.
    pub(crate) fn group_receipts(&self) -> usize {
        self.group.receipts
    }

    /// Applies one verified batch and returns its ack; a batch seen before returns the ack it got
    /// then and changes nothing, provided its `digest` (blake3 of its receipt bytes) is the
    /// original's: another batch under a remembered number is refused as
    /// [`EngineError::BatchMismatch`]. `verdicts[i]` is the verify stage's verdict for record `i`.
    pub(crate) fn apply_batch(
        &mut self,
        session: SessionId,
        digest: BatchDigest,
        receipts: &ReceiptBatch,
        verdicts: &[Verdict],
        now_ms: u64,
    ) -> Result<BatchAck, EngineError> {
        let SessionId {
            producer_id,
            session_epoch,
            batch_seq,
            ..
        } = session;
        let key = session.producer();
        self.producers
            .load(&self.store, &key, ProducerState::default)?;
        let producer = self
            .producers
            .get(&key)
            .ok_or_else(|| invariant("producer not cached after load"))?;
        if session_epoch < producer.session_epoch {
            return Err(EngineError::SessionSuperseded {
                producer_id,
                session_epoch,
                current: producer.session_epoch,
            });
        }
        if session_epoch == producer.session_epoch && producer.recent.contains(&batch_seq) {
            let unwritten = self
                .group
                .acks
                .get(&session)
                .or_else(|| self.in_flight.as_ref()?.acks.get(&session))
                .cloned();
            let (ack, original) = match unwritten {
                Some(found) => found,
                None => {
                    let bytes = self
                        .store
                        .get(Cf::Sessions, &ack_key(key, session_epoch, batch_seq))?
                        .ok_or_else(|| StoreError::Corrupt {
                            cf: Cf::Sessions.name(),
                            problem: format!(
                                "ack of producer {producer_id} batch {batch_seq} missing"
                            ),
                        })?;
                    decode_ack(&bytes).map_err(corrupt(Cf::Sessions))?
                }
            };
            if original != digest {
                return Err(EngineError::BatchMismatch {
                    producer_id,
                    session_epoch,
                    batch_seq,
                });
            }
            return Ok(ack);
        }
        if receipts.len() != verdicts.len() || receipts.len() > u32::MAX as usize {
            return Err(invariant(format!(
                "{} verdicts for {} receipts",
                verdicts.len(),
                receipts.len()
            )));
        }

        let mut ack = BatchAck {
            batch_seq,
            accepted: 0,
            rejections: Vec::new(),
        };
        for (index, (record, verdict)) in receipts.iter().zip(verdicts).enumerate() {
            let outcome = match (verdict, record) {
                (Err(reason), _) => Err(*reason),
                (Ok(()), Ok(view)) => self.apply_receipt(&view, now_ms)?,
                // The verify stage passed a record that does not parse: never charge for it.
                (Ok(()), Err(_)) => Err(Reason::Malformed),
            };
            match outcome {
                Ok(()) => ack.accepted += 1,
                // Fits: the batch length was checked against u32 above.
                Err(reason) => ack.rejections.push((index as u32, reason)),
            }
        }

        let kept = self.config.acks_kept_per_producer;
        let producer = self
            .producers
            .get_mut(&key)
            .ok_or_else(|| invariant("producer evicted inside a group"))?;
        if session_epoch > producer.session_epoch {
            // A new session: the old session's batches can never be re-sent (they would be
            // refused as superseded), so their acks go.
            for seq in producer.recent.drain(..) {
                self.group.batch.delete(
                    Cf::Sessions,
                    ack_key(key, producer.session_epoch, seq).to_vec(),
                );
            }
            producer.session_epoch = session_epoch;
        }
        producer.recent.push_back(batch_seq);
        while producer.recent.len() > kept {
            if let Some(old) = producer.recent.pop_front() {
                self.group
                    .batch
                    .delete(Cf::Sessions, ack_key(key, session_epoch, old).to_vec());
            }
        }
        self.group.batch.put(
            Cf::Sessions,
            ack_key(key, session_epoch, batch_seq).to_vec(),
            encode_ack(&ack, &digest),
        );
        self.group.acks.insert(session, (ack.clone(), digest));
        Ok(ack)
    }

    /// Checks one verified receipt and, if it passes, applies it. `Ok(Err(reason))` is a refused
    /// receipt that changed nothing; `Err` is a storage failure.
    fn apply_receipt(
        &mut self,
        receipt: &ReceiptView<'_>,
        now_ms: u64,
    ) -> Result<Verdict, EngineError> {
        self.group.receipts += 1;
        if receipt.timestamp_ms().abs_diff(now_ms) > self.config.timestamp_skew_ms {
            return Ok(Err(Reason::TimestampSkew));
        }
        let payer = receipt.payer();
        let payee = receipt.payee();
        let key = ChannelKey { payer, payee };
        let nonce = receipt.nonce();
        let amount = u128::from(receipt.amount());

        self.payers.load(&self.store, &payer, PayerState::default)?;
        let payer_state = *self
            .payers
            .get(&payer)
            .ok_or_else(|| invariant("payer not cached after load"))?;
        let known = payer_state.deposited > 0;
        if !known && self.config.unknown_payers == UnknownPayers::Reject {
            return Ok(Err(Reason::UnknownPayer));
        }
        let window_nonces = self.config.window_nonces;
        self.channels
            .load(&self.store, &key, || ChannelState::empty(window_nonces))?;
        let channel = self
            .channels
            .get(&key)
            .ok_or_else(|| invariant("channel not cached after load"))?;
        if let Err(reason) = channel.window.check(nonce) {
            return Ok(Err(reason));
        }
        if known && amount > payer_state.available() {
            return Ok(Err(Reason::InsufficientFunds));
        }
        self.payees.load(&self.store, &payee, PayeeState::default)?;
        let payee_state = *self
            .payees
            .get(&payee)
            .ok_or_else(|| invariant("payee not cached after load"))?;

        // Every sum first: an overflow refuses the receipt before anything changed.
        let Some(sums) = Sums::new(
            amount,
            channel,
            &payer_state,
            &payee_state,
            &self.open,
            self.group.receipt_amount,
        ) else {
            return Ok(Err(Reason::Overflow));
        };
        let epoch = self.open.epoch;
        let channel = self
            .channels
            .get_mut(&key)
            .ok_or_else(|| invariant("channel evicted inside a group"))?;
        if sums.new_channel {
            self.group
                .batch
                .put(Cf::PayeeChannels, key.to_payee_index().to_vec(), Vec::new());
        }
        if channel.indexed_epoch != epoch {
            self.group
                .batch
                .put(Cf::OpenEpoch, open_channel_key(&key), Vec::new());
            channel.indexed_epoch = epoch;
        }
        channel.cumulative = sums.cumulative;
        channel.receipts = sums.channel_receipts;
        channel.last_timestamp_ms = channel.last_timestamp_ms.max(receipt.timestamp_ms());
        channel.window.insert(nonce);

        let payer_entry = self
            .payers
            .get_mut(&payer)
            .ok_or_else(|| invariant("payer evicted inside a group"))?;
        if payer_entry.unsealed == 0 {
            self.group
                .batch
                .put(Cf::OpenEpoch, open_payer_key(&payer), Vec::new());
        }
        payer_entry.pending = sums.pending;
        payer_entry.unsealed = sums.payer_unsealed;
        payer_entry.receipts = sums.payer_receipts;
        payer_entry.channels = sums.payer_channels;

        let payee_entry = self
            .payees
            .get_mut(&payee)
            .ok_or_else(|| invariant("payee evicted inside a group"))?;
        if payee_entry.unsealed == 0 {
            self.group
                .batch
                .put(Cf::OpenEpoch, open_payee_key(&payee), Vec::new());
        }
        payee_entry.credited = sums.credited;
        payee_entry.unsealed = sums.payee_unsealed;

        self.open.receipts = sums.open_receipts;
        self.open.amount = sums.open_amount;
        self.group.meta_dirty = true;
        self.group.receipt_amount = sums.group_amount;
        Ok(Ok(()))
    }

    /// Applies one chain event exactly once: an event at or before the cursor changes nothing.
    pub(crate) fn apply_funds(&mut self, event: FundsEvent) -> Result<(), EngineError> {
        let position = FundsCursor {
            block: event.block,
            log_index: event.log_index,
        };
        if self.cursor.is_some_and(|cursor| position <= cursor) {
            return Ok(());
        }
        if event.kind != FundsKind::BlockScanned {
            self.payers
                .load(&self.store, &event.payer, PayerState::default)?;
            let mut next = *self
                .payers
                .get(&event.payer)
                .ok_or_else(|| invariant("payer not cached after load"))?;
            let overflow = || EngineError::FundsOverflow { payer: event.payer };
            match event.kind {
                FundsKind::Deposit => {
                    next.deposited = next
                        .deposited
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::WithdrawalRequested => {
                    next.withdrawal_requested = next
                        .withdrawal_requested
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::WithdrawalCompleted => {
                    // The contract completes only what was requested; if the request predates
                    // what this ledger watched, the chain is still the authority.
                    next.withdrawal_requested =
                        next.withdrawal_requested.saturating_sub(event.amount);
                    next.withdrawn = next
                        .withdrawn
                        .checked_add(event.amount)
                        .ok_or_else(overflow)?;
                }
                FundsKind::BlockScanned => {}
            }
            *self
                .payers
                .get_mut(&event.payer)
                .ok_or_else(|| invariant("payer evicted inside a group"))? = next;
        }
        self.cursor = Some(position);
        self.group.meta_dirty = true;
        Ok(())
    }

    fn epoch_record(&self, epoch: u64) -> Result<EpochRecord, EngineError> {
        let unwritten = self
            .group
            .epochs
            .get(&epoch)
            .or_else(|| self.in_flight.as_ref()?.epochs.get(&epoch));
        if let Some(record) = unwritten {
            return Ok(record.clone());
        }
        let bytes = self
            .store
            .get(Cf::Epochs, &epoch_key(epoch))?
            .ok_or(EngineError::UnknownEpoch { epoch })?;
        Ok(EpochRecord::decode(&bytes).map_err(corrupt(Cf::Epochs))?)
    }

    fn epoch_amounts(
        &self,
        epoch: u64,
        kind: EntryKind,
    ) -> Result<Vec<super::EntryAmount>, EngineError> {
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
    pub(crate) fn record_epoch(&mut self, update: EpochUpdate) -> Result<(), EngineError> {
        let mut record = self.epoch_record(update.epoch)?;
        if !record.status.may_become(update.status) {
            return Err(EngineError::EpochTransition {
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
        }
        record.status = update.status;
        record.root = update.root.or(record.root);
        record.tx_hash = update.tx_hash.or(record.tx_hash);
        record.block = update.block.or(record.block);
        self.group.batch.put(
            Cf::Epochs,
            epoch_key(update.epoch).to_vec(),
            record.encode(),
        );
        self.group.epochs.insert(update.epoch, record);
        Ok(())
    }

    /// Moves an epoch's debits between pending and settled, and its credits into or out of
    /// settled. A failure here means the stored state contradicts itself: fatal.
    fn move_settlement(&mut self, epoch: u64, direction: Direction) -> Result<(), EngineError> {
        for (id, debit) in self.epoch_amounts(epoch, EntryKind::Debit)? {
            let payer = payer_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payers.load(&self.store, &payer, PayerState::default)?;
            let state = self
                .payers
                .get_mut(&payer)
                .ok_or_else(|| invariant("payer not cached after load"))?;
            let (from, to) = match direction {
                Direction::Settle => (&mut state.pending, &mut state.settled),
                Direction::Unsettle => (&mut state.settled, &mut state.pending),
            };
            *from = from
                .checked_sub(debit)
                .ok_or_else(|| invariant(format!("epoch {epoch} debit exceeds payer {payer}")))?;
            *to = to
                .checked_add(debit)
                .ok_or_else(|| invariant(format!("payer {payer} total overflows")))?;
        }
        for (id, credit) in self.epoch_amounts(epoch, EntryKind::Credit)? {
            let payee = address_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payees.load(&self.store, &payee, PayeeState::default)?;
            let state = self
                .payees
                .get_mut(&payee)
                .ok_or_else(|| invariant("payee not cached after load"))?;
            state.settled = match direction {
                Direction::Settle => state.settled.checked_add(credit),
                Direction::Unsettle => state.settled.checked_sub(credit),
            }
            .filter(|settled| *settled <= state.credited)
            .ok_or_else(|| invariant(format!("epoch {epoch} credit breaks payee {payee}")))?;
        }
        Ok(())
    }

    /// Puts a disputed epoch's amounts back into the open epoch, to be sealed and committed
    /// again, with its channels as leaves of the next seal.
    fn carry_into_open_epoch(&mut self, epoch: u64) -> Result<(), EngineError> {
        let mut total: u128 = 0;
        for (id, debit) in self.epoch_amounts(epoch, EntryKind::Debit)? {
            let payer = payer_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payers.load(&self.store, &payer, PayerState::default)?;
            let state = self
                .payers
                .get_mut(&payer)
                .ok_or_else(|| invariant("payer not cached after load"))?;
            state.unsealed = state
                .unsealed
                .checked_add(debit)
                .ok_or_else(|| invariant("unsealed overflows"))?;
            total = total
                .checked_add(debit)
                .ok_or_else(|| invariant("epoch total overflows"))?;
            self.group
                .batch
                .put(Cf::OpenEpoch, open_payer_key(&payer), Vec::new());
        }
        for (id, credit) in self.epoch_amounts(epoch, EntryKind::Credit)? {
            let payee = address_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payees.load(&self.store, &payee, PayeeState::default)?;
            let state = self
                .payees
                .get_mut(&payee)
                .ok_or_else(|| invariant("payee not cached after load"))?;
            state.unsealed = state
                .unsealed
                .checked_add(credit)
                .ok_or_else(|| invariant("unsealed overflows"))?;
            self.group
                .batch
                .put(Cf::OpenEpoch, open_payee_key(&payee), Vec::new());
        }
        for (id, _) in self.epoch_amounts(epoch, EntryKind::Leaf)? {
            let key = ChannelKey::from_bytes(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.group
                .batch
                .put(Cf::OpenEpoch, open_channel_key(&key), Vec::new());
        }
        self.open.amount = self
            .open
            .amount
            .checked_add(total)
            .ok_or_else(|| invariant("open epoch amount overflows"))?;
        self.group.meta_dirty = true;
        Ok(())
    }

    /// Freezes the open epoch in one atomic write: leaves for every channel it touched, net
    /// debits and credits, the epoch record; the next epoch opens empty. Writes whatever the
    /// current group holds first.
    pub(crate) fn seal(&mut self) -> Result<SealedEpoch, EngineError> {
        self.commit()?;
        let epoch = self.open.epoch;
        let touched = self
            .store
            .snapshot()
            .scan(Cf::OpenEpoch, &[], None, usize::MAX)?;
        let mut sealed = SealedEpoch {
            epoch,
            ..SealedEpoch::default()
        };
        let window_nonces = self.config.window_nonces;
        for (key, _) in touched {
            let (kind, id) = key.split_first().ok_or_else(|| StoreError::Corrupt {
                cf: Cf::OpenEpoch.name(),
                problem: "empty key".into(),
            })?;
            match kind {
                b'c' => {
                    let channel = ChannelKey::from_bytes(id).map_err(corrupt(Cf::OpenEpoch))?;
                    self.channels
                        .load(&self.store, &channel, || ChannelState::empty(window_nonces))?;
                    let cumulative = self
                        .channels
                        .get(&channel)
                        .ok_or_else(|| invariant("channel not cached after load"))?
                        .cumulative;
                    sealed
                        .leaves
                        .push((channel.payer, channel.payee, cumulative));
                    self.group.batch.put(
                        Cf::EpochEntries,
                        entry_key(epoch, EntryKind::Leaf, id),
                        encode_amount(cumulative),
                    );
                }
                b'p' => {
                    let payer = payer_from(id).map_err(corrupt(Cf::OpenEpoch))?;
                    self.payers.load(&self.store, &payer, PayerState::default)?;
                    let state = self
                        .payers
                        .get_mut(&payer)
                        .ok_or_else(|| invariant("payer not cached after load"))?;
                    let debit = std::mem::take(&mut state.unsealed);
                    if debit > 0 {
                        sealed.debits.push((payer, debit));
                        self.group.batch.put(
                            Cf::EpochEntries,
                            entry_key(epoch, EntryKind::Debit, id),
                            encode_amount(debit),
                        );
                    }
                }
                b'e' => {
                    let payee = address_from(id).map_err(corrupt(Cf::OpenEpoch))?;
                    self.payees.load(&self.store, &payee, PayeeState::default)?;
                    let state = self
                        .payees
                        .get_mut(&payee)
                        .ok_or_else(|| invariant("payee not cached after load"))?;
                    let credit = std::mem::take(&mut state.unsealed);
                    if credit > 0 {
                        sealed.credits.push((payee, credit));
                        self.group.batch.put(
                            Cf::EpochEntries,
                            entry_key(epoch, EntryKind::Credit, id),
                            encode_amount(credit),
                        );
                    }
                }
                other => {
                    return Err(StoreError::Corrupt {
                        cf: Cf::OpenEpoch.name(),
                        problem: format!("unknown index kind {other}"),
                    }
                    .into());
                }
            }
            self.group.batch.delete(Cf::OpenEpoch, key.to_vec());
        }
        // Pair assertion: what the epoch debits is what it credits is what it accepted.
        let debits = checked_sum(sealed.debits.iter().map(|(_, d)| *d));
        let credits = checked_sum(sealed.credits.iter().map(|(_, c)| *c));
        if debits != credits || debits != Some(self.open.amount) {
            self.store.poison("seal pair assertion failed".into());
            return Err(invariant(format!(
                "epoch {epoch}: debits {debits:?}, credits {credits:?}, accepted {}",
                self.open.amount
            )));
        }
        let record = EpochRecord {
            epoch,
            status: EpochStatus::Sealed,
            leaves: sealed.leaves.len() as u64,
            receipts: self.open.receipts,
            amount: self.open.amount,
            root: None,
            tx_hash: None,
            block: None,
        };
        self.group
            .batch
            .put(Cf::Epochs, epoch_key(epoch).to_vec(), record.encode());
        self.open = OpenEpoch {
            epoch: epoch
                .checked_add(1)
                .ok_or_else(|| invariant("epoch number overflows"))?,
            receipts: 0,
            amount: 0,
        };
        self.group.meta_dirty = true;
        self.commit()?;
        Ok(sealed)
    }

    /// Closes the current group: its dirty state, indexes, acks and metadata become one batch
    /// for the caller to write with [`Store::write`], after the pair assertion (the receipts
    /// accepted in the group moved channels, payers and payees by the same total; a failure
    /// poisons the store). Until [`Ledger::written`] is called, the group is in flight: its
    /// entries stay cached and its acks and epoch records answer lookups that its write would
    /// otherwise have to serve, so the next group can be applied while it is being synced.
    /// At most one group may be in flight.
    pub(crate) fn close_group(&mut self) -> Result<StoreBatch, EngineError> {
        debug_assert!(self.in_flight.is_none(), "one group in flight at most");
        let mut group = std::mem::take(&mut self.group);
        let expected = group.receipt_amount;
        let deltas = [
            ("channels", self.channels.drain_dirty(&mut group.batch)),
            ("payers", self.payers.drain_dirty(&mut group.batch)),
            ("payees", self.payees.drain_dirty(&mut group.batch)),
        ];
        self.producers.drain_dirty(&mut group.batch);
        if group.meta_dirty {
            group
                .batch
                .put(Cf::Meta, OPEN_EPOCH_KEY.to_vec(), self.open.encode());
            if let Some(cursor) = self.cursor {
                group
                    .batch
                    .put(Cf::Meta, FUNDS_CURSOR_KEY.to_vec(), cursor.encode());
            }
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
        }
    }

    /// Closes and writes the current group in the calling thread (seals, tests).
    pub(crate) fn commit(&mut self) -> Result<(), EngineError> {
        let batch = self.close_group()?;
        let result = self.store.write(batch).map_err(EngineError::from);
        self.written();
        result
    }
}

fn checked_sum(amounts: impl Iterator<Item = u128>) -> Option<u128> {
    amounts
        .into_iter()
        .try_fold(0u128, |sum, amount| sum.checked_add(amount))
}

/// Every total one accepted receipt changes, computed before any of them is changed.
struct Sums {
    cumulative: u128,
    channel_receipts: u64,
    /// The receipt is the channel's first: the payee index and the payer's channel count grow.
    new_channel: bool,
    pending: u128,
    payer_unsealed: u128,
    payer_receipts: u64,
    payer_channels: u64,
    credited: u128,
    payee_unsealed: u128,
    open_receipts: u64,
    open_amount: u128,
    group_amount: u128,
}

impl Sums {
    /// `None` if any total would overflow.
    fn new(
        amount: u128,
        channel: &ChannelState,
        payer: &PayerState,
        payee: &PayeeState,
        open: &OpenEpoch,
        group_amount: u128,
    ) -> Option<Self> {
        let pending = payer.pending.checked_add(amount)?;
        // The pair assertion sums pending + settled: that must fit too.
        pending.checked_add(payer.settled)?;
        let new_channel = channel.receipts == 0;
        Some(Self {
            cumulative: channel.cumulative.checked_add(amount)?,
            channel_receipts: channel.receipts.checked_add(1)?,
            new_channel,
            pending,
            payer_unsealed: payer.unsealed.checked_add(amount)?,
            payer_receipts: payer.receipts.checked_add(1)?,
            payer_channels: if new_channel {
                payer.channels.checked_add(1)?
            } else {
                payer.channels
            },
            credited: payee.credited.checked_add(amount)?,
            payee_unsealed: payee.unsealed.checked_add(amount)?,
            open_receipts: open.receipts.checked_add(1)?,
            open_amount: open.amount.checked_add(amount)?,
            group_amount: group_amount.checked_add(amount)?,
        })
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Settle,
    Unsettle,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::{Address, Domain, PayerKey, Receipt, UnsignedReceipt};
    use ed25519_dalek::SigningKey;

    fn ledger(dir: &std::path::Path) -> Ledger {
        let config = LedgerConfig::default();
        let format = initial_format(&config);
        let (store, _) = Store::open(dir, |b| b.put(Cf::Meta, FORMAT_KEY, format)).expect("open");
        Ledger::open(Arc::new(store), config).expect("ledger")
    }

    fn receipt(key: &SigningKey, amount: u64, nonce: u64) -> Receipt {
        UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([5; 20]),
            amount,
            nonce,
            timestamp_ms: 1_000,
            request_hash: [0; 32],
        }
        .sign(key, &Domain::default())
    }

    fn deposit(ledger: &mut Ledger, payer: PayerKey, amount: u128, block: u64) {
        ledger
            .apply_funds(FundsEvent {
                payer,
                kind: FundsKind::Deposit,
                amount,
                block,
                log_index: 0,
            })
            .expect("deposit");
    }

    fn session(batch_seq: u64) -> SessionId {
        SessionId {
            client_id: 1,
            producer_id: 1,
            session_epoch: 0,
            batch_seq,
        }
    }

    fn digest(batch: &ReceiptBatch) -> BatchDigest {
        *blake3::hash(batch.as_bytes()).as_bytes()
    }

    /// The re-send arrives while the original's group is closed but its write has not returned:
    /// the answer comes from the group in flight, and nothing is applied twice.
    #[test]
    fn resend_while_the_original_is_in_flight_gets_the_same_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ledger(dir.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let payer = PayerKey(key.verifying_key().to_bytes());
        deposit(&mut ledger, payer, 100, 1);
        let batch = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1), receipt(&key, 10, 1)]);
        let now = 1_000;
        let ack = ledger
            .apply_batch(session(5), digest(&batch), &batch, &[Ok(()), Ok(())], now)
            .expect("apply");
        let in_flight = ledger.close_group().expect("close");

        let again = ledger
            .apply_batch(session(5), digest(&batch), &batch, &[Ok(()), Ok(())], now)
            .expect("resend");
        assert_eq!(again, ack);
        assert!(ledger.group_is_empty(), "the re-send changed nothing");
        ledger.store.write(in_flight).expect("write");
        ledger.written();

        let from_disk = ledger
            .apply_batch(session(5), digest(&batch), &batch, &[Ok(()), Ok(())], now)
            .expect("resend");
        assert_eq!(from_disk, ack);
        assert_eq!(ledger.payers.get(&payer).map(|p| p.pending), Some(10));
    }

    /// Another batch under a remembered number is refused wherever the original's ack is kept:
    /// in the open group, in the group being written, and on disk.
    #[test]
    fn other_receipts_under_a_remembered_number_are_refused_wherever_the_ack_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ledger(dir.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let payer = PayerKey(key.verifying_key().to_bytes());
        deposit(&mut ledger, payer, 100, 1);
        let original = ReceiptBatch::from_receipts(&[receipt(&key, 10, 1)]);
        let other = ReceiptBatch::from_receipts(&[receipt(&key, 20, 2)]);
        let now = 1_000;
        let refused = |ledger: &mut Ledger| {
            let result = ledger.apply_batch(session(5), digest(&other), &other, &[Ok(())], now);
            assert!(
                matches!(
                    result,
                    Err(EngineError::BatchMismatch {
                        producer_id: 1,
                        session_epoch: 0,
                        batch_seq: 5
                    })
                ),
                "{result:?}"
            );
        };
        ledger
            .apply_batch(session(5), digest(&original), &original, &[Ok(())], now)
            .expect("apply");
        refused(&mut ledger);
        let in_flight = ledger.close_group().expect("close");
        refused(&mut ledger);
        ledger.store.write(in_flight).expect("write");
        ledger.written();
        refused(&mut ledger);
        assert!(ledger.group_is_empty(), "the refusals changed nothing");

        // The same producer id under another client is another producer.
        let elsewhere = SessionId {
            client_id: 2,
            ..session(5)
        };
        let ack = ledger
            .apply_batch(elsewhere, digest(&other), &other, &[Ok(())], now)
            .expect("apply");
        assert_eq!(ack.accepted, 1);
        assert_eq!(ledger.payers.get(&payer).map(|p| p.pending), Some(30));
    }

    /// A repeated `Committed` while the first one's write is in flight moves the money once.
    #[test]
    fn repeated_commit_while_the_first_is_in_flight_settles_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ledger(dir.path());
        let key = SigningKey::from_bytes(&[4; 32]);
        let payer = PayerKey(key.verifying_key().to_bytes());
        deposit(&mut ledger, payer, 100, 1);
        let batch = ReceiptBatch::from_receipts(&[receipt(&key, 30, 1)]);
        ledger
            .apply_batch(session(1), digest(&batch), &batch, &[Ok(())], 1_000)
            .expect("apply");
        let sealed = ledger.seal().expect("seal");
        let committed = EpochUpdate {
            epoch: sealed.epoch,
            status: EpochStatus::Committed,
            root: None,
            tx_hash: None,
            block: Some(9),
        };
        ledger.record_epoch(committed).expect("commit");
        let in_flight = ledger.close_group().expect("close");
        ledger.record_epoch(committed).expect("repeat");
        ledger.store.write(in_flight).expect("write");
        ledger.written();
        ledger.commit().expect("commit");
        let state = ledger.payers.get(&payer).copied().expect("cached");
        assert_eq!((state.pending, state.settled), (0, 30));
    }

    /// Overflow cannot be reached with u64 amounts and real deposits in a test's lifetime, so the
    /// state is seeded close to the limit.
    #[test]
    fn a_total_that_would_overflow_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ledger(dir.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let payer = PayerKey(key.verifying_key().to_bytes());
        ledger
            .apply_funds(FundsEvent {
                payer,
                kind: FundsKind::Deposit,
                amount: u128::MAX,
                block: 1,
                log_index: 0,
            })
            .expect("deposit");
        let channel = ChannelKey {
            payer,
            payee: Address([5; 20]),
        };
        ledger
            .channels
            .load(&ledger.store, &channel, || ChannelState::empty(1024))
            .expect("load");
        ledger
            .channels
            .get_mut(&channel)
            .expect("cached")
            .cumulative = u128::MAX - 1;
        let batch = ReceiptBatch::from_receipts(&[receipt(&key, 2, 1), receipt(&key, 1, 2)]);
        let ack = ledger
            .apply_batch(session(0), digest(&batch), &batch, &[Ok(()), Ok(())], 1_000)
            .expect("apply");
        assert_eq!(ack.rejections, vec![(0, Reason::Overflow)]);
        assert_eq!(ack.accepted, 1);
        assert_eq!(
            ledger.channels.get(&channel).expect("cached").cumulative,
            u128::MAX
        );
        assert_eq!(ledger.payers.get(&payer).expect("cached").pending, 1);
    }
}
