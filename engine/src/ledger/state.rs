//! The ledger state machine. Owned by the writer thread; nothing here blocks on anything but
//! RocksDB reads of cold state and the group's synced write.
//!
//! Every change lands in the writer's cache and is marked dirty; [`Ledger::commit`] turns the
//! group's dirty state plus the index and session records it produced into one synced write,
//! after checking the pair assertion: the receipts accepted in the group add up to the same
//! total in channels, payers and payees.
//!
//! Sealing never stops the writer for long. The cut ([`Ledger::begin_seal`]) is one small write:
//! the open epoch e becomes the sealing epoch (persisted in Meta with its frozen receipt count and
//! amount) and e+1 opens. The open-epoch index is keyed by epoch first, so e's keys and e+1's
//! never mix. e's entries are then written a chunk at a time ([`Ledger::seal_chunk`]), one chunk
//! per group between receipt groups, with the seal's position (a cursor in index order) and its
//! running totals in the same write: a crash at any point resumes from the last written chunk.
//! A channel, payer or payee that something after the cut is about to change while the seal has
//! not reached it (its `indexed_epoch` is e and its key is past the cursor) gets its e entry
//! first, in the same group: copy-on-write at the boundary. Either way each entry is written
//! once, with its value at the cut, so the sealed epoch does not depend on where chunks or
//! crashes fell.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pipeline::EngineError;
use crate::receipt::{Address, PayerKey, ReceiptBatch, ReceiptView};
use crate::store::{Cf, FORMAT_KEY, Store, StoreBatch, StoreError, StoreSnapshot};
use crate::verdict::{Reason, Verdict};

use super::cache::{Cache, Cached};
use super::record::{
    BatchDigest, ChannelKey, ChannelState, DecodeError, EntryCounts, EntryKind, EpochRecord,
    FUNDS_CURSOR_KEY, FormatRecord, FundsCursor, HEAD_WITHDRAWALS_KEY, HeadWithdrawals, IndexKind,
    LAYOUT_VERSION, OPEN_EPOCH_KEY, OpenEpoch, PayeeState, PayerState, ProducerKey, ProducerState,
    SEALING_EPOCH_KEY, SealingEpoch, ack_key, address_from, decode_ack, decode_amount, encode_ack,
    encode_amount, entry_key, entry_prefix, epoch_key, index_key, index_suffix, payer_from,
};
use super::window::WINDOW_WORD_BITS;
use super::{
    BatchAck, EpochStatus, EpochUpdate, FundsEvent, FundsKind, LedgerConfig, UnknownPayers,
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
    /// The running seal moved (or ended): its record is written (or deleted) with the group.
    sealing_dirty: bool,
    /// The withdrawal requests at the chain's head changed.
    head_withdrawals_dirty: bool,
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
    /// The epoch being sealed, if a seal is running (see [`Ledger::begin_seal`]).
    sealing: Option<SealingEpoch>,
    cursor: Option<FundsCursor>,
    /// Requests past the cursor, refused spend already (see [`HeadWithdrawals`]).
    head_withdrawals: HeadWithdrawals,
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
    if config.acks_kept_per_producer == 0
        || config.group_receipts_max == 0
        || config.seal_chunk_keys == 0
    {
        return Err(EngineError::Config {
            problem: "acks_kept_per_producer, group_receipts_max and seal_chunk_keys must be at \
                      least 1"
                .into(),
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

    /// True when closing the group now would write nothing.
    pub(crate) fn group_is_empty(&self) -> bool {
        self.group.batch.is_empty()
            && !self.group.meta_dirty
            && !self.group.sealing_dirty
            && !self.group.head_withdrawals_dirty
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
        let spendable = payer_state
            .available()
            .saturating_sub(self.head_withdrawals.of(&payer));
        if known && amount > spendable {
            return Ok(Err(Reason::InsufficientFunds));
        }
        self.payees.load(&self.store, &payee, PayeeState::default)?;
        let payee_state = *self
            .payees
            .get(&payee)
            .ok_or_else(|| invariant("payee not cached after load"))?;

        // Every sum first: an overflow refuses the receipt before anything changed. A payer or
        // payee whose unsealed amount still belongs to the epoch being sealed gives it to that
        // epoch below, and starts this one from zero.
        let payer_view = PayerState {
            unsealed: self.unsealed_after_cut(&payer_state, &payer),
            ..payer_state
        };
        let payee_view = PayeeState {
            unsealed: self.unsealed_after_cut(&payee_state, &payee),
            ..payee_state
        };
        let Some(sums) = Sums::new(
            amount,
            channel,
            &payer_view,
            &payee_view,
            &self.open,
            self.group.receipt_amount,
        ) else {
            return Ok(Err(Reason::Overflow));
        };
        if sums.new_channel {
            self.group
                .batch
                .put(Cf::PayeeChannels, key.to_payee_index().to_vec(), Vec::new());
        }
        self.index_channel(&key)?;
        self.index_account::<PayerState>(&payer)?;
        self.index_account::<PayeeState>(&payee)?;
        let channel = self
            .channels
            .get_mut(&key)
            .ok_or_else(|| invariant("channel evicted inside a group"))?;
        channel.cumulative = sums.cumulative;
        channel.receipts = sums.channel_receipts;
        channel.last_timestamp_ms = channel.last_timestamp_ms.max(receipt.timestamp_ms());
        channel.window.insert(nonce);

        let payer_entry = self
            .payers
            .get_mut(&payer)
            .ok_or_else(|| invariant("payer evicted inside a group"))?;
        payer_entry.pending = sums.pending;
        payer_entry.unsealed = sums.payer_unsealed;
        payer_entry.receipts = sums.payer_receipts;
        payer_entry.channels = sums.payer_channels;

        let payee_entry = self
            .payees
            .get_mut(&payee)
            .ok_or_else(|| invariant("payee evicted inside a group"))?;
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

    /// Replaces the withdrawal requests of the blocks past the cursor with `requests`: what the
    /// chain's head holds now. Requests the cursor has since reached are in both until then,
    /// refused twice for a moment, which is safe; one a reorg dropped is in neither.
    pub(crate) fn apply_head_withdrawals(&mut self, requests: HeadWithdrawals) {
        if requests != self.head_withdrawals {
            self.head_withdrawals = requests;
            self.group.head_withdrawals_dirty = true;
        }
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
        if record.status == EpochStatus::Disputed && update.status != EpochStatus::Disputed {
            // The contract never revives a voided epoch, so news of its commit is older than the
            // dispute (the commit loop finishing as the funds loop records the dispute): nothing
            // to move, and nothing to stop for.
            return Ok(());
        }
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
        self.group.batch.put(
            Cf::Epochs,
            epoch_key(update.epoch).to_vec(),
            record.encode(),
        );
        self.group.epochs.insert(update.epoch, record);
        Ok(())
    }

    /// Moves an epoch's debits between pending and settled, and its credits into or out of
    /// settled. The epoch's shortfalls (see [`Ledger::record_shortfall`]) move into or out of
    /// the payers' and payees' `shortfall` instead of `settled`, so settled stays what the chain
    /// moved. A failure here means the stored state contradicts itself: fatal.
    fn move_settlement(&mut self, epoch: u64, direction: Direction) -> Result<(), EngineError> {
        let ShortfallSums(payer_cuts, payee_cuts) = self.shortfall_sums(epoch)?;
        for (id, debit) in self.epoch_amounts(epoch, EntryKind::Debit)? {
            let payer = payer_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            let cut = payer_cuts.get(&payer).copied().unwrap_or(0);
            let onchain = debit.checked_sub(cut).ok_or_else(|| {
                invariant(format!("epoch {epoch} shortfall exceeds payer {payer}"))
            })?;
            self.payers.load(&self.store, &payer, PayerState::default)?;
            let state = self
                .payers
                .get_mut(&payer)
                .ok_or_else(|| invariant("payer not cached after load"))?;
            let moved = match direction {
                Direction::Settle => state.pending.checked_sub(debit).and_then(|pending| {
                    Some((
                        pending,
                        state.settled.checked_add(onchain)?,
                        state.shortfall.checked_add(cut)?,
                    ))
                }),
                Direction::Unsettle => state.pending.checked_add(debit).and_then(|pending| {
                    Some((
                        pending,
                        state.settled.checked_sub(onchain)?,
                        state.shortfall.checked_sub(cut)?,
                    ))
                }),
            };
            (state.pending, state.settled, state.shortfall) = moved
                .ok_or_else(|| invariant(format!("epoch {epoch} debit breaks payer {payer}")))?;
        }
        for (id, credit) in self.epoch_amounts(epoch, EntryKind::Credit)? {
            let payee = address_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            let cut = payee_cuts.get(&payee).copied().unwrap_or(0);
            let onchain = credit.checked_sub(cut).ok_or_else(|| {
                invariant(format!("epoch {epoch} shortfall exceeds payee {payee}"))
            })?;
            self.payees.load(&self.store, &payee, PayeeState::default)?;
            let state = self
                .payees
                .get_mut(&payee)
                .ok_or_else(|| invariant("payee not cached after load"))?;
            let moved = match direction {
                Direction::Settle => state
                    .settled
                    .checked_add(onchain)
                    .zip(state.shortfall.checked_add(cut)),
                Direction::Unsettle => state
                    .settled
                    .checked_sub(onchain)
                    .zip(state.shortfall.checked_sub(cut)),
            }
            .filter(|(settled, shortfall)| {
                settled
                    .checked_add(*shortfall)
                    .is_some_and(|total| total <= state.credited)
            });
            (state.settled, state.shortfall) = moved
                .ok_or_else(|| invariant(format!("epoch {epoch} credit breaks payee {payee}")))?;
        }
        Ok(())
    }

    /// An epoch's shortfall entries summed per payer and per payee.
    fn shortfall_sums(&self, epoch: u64) -> Result<ShortfallSums, EngineError> {
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
    ) -> Result<(), EngineError> {
        let record = self.epoch_record(epoch)?;
        if !matches!(record.status, EpochStatus::Sealed | EpochStatus::Submitted) {
            return Err(EngineError::EpochTransition {
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
    ) -> Result<Vec<(Address, u128)>, EngineError> {
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
    fn carry_into_open_epoch(&mut self, epoch: u64) -> Result<(), EngineError> {
        let mut total: u128 = 0;
        for (id, debit) in self.epoch_amounts(epoch, EntryKind::Debit)? {
            let payer = payer_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payers.load(&self.store, &payer, PayerState::default)?;
            self.index_account::<PayerState>(&payer)?;
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
        }
        for (id, credit) in self.epoch_amounts(epoch, EntryKind::Credit)? {
            let payee = address_from(&id).map_err(corrupt(Cf::EpochEntries))?;
            self.payees.load(&self.store, &payee, PayeeState::default)?;
            self.index_account::<PayeeState>(&payee)?;
            let state = self
                .payees
                .get_mut(&payee)
                .ok_or_else(|| invariant("payee not cached after load"))?;
            state.unsealed = state
                .unsealed
                .checked_add(credit)
                .ok_or_else(|| invariant("unsealed overflows"))?;
        }
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

    /// The epoch being sealed, if a seal is running.
    pub(crate) fn sealing_epoch(&self) -> Option<u64> {
        self.sealing.as_ref().map(|sealing| sealing.epoch)
    }

    /// The cut: the open epoch becomes the epoch being sealed, with its receipt count and amount
    /// frozen, and the next epoch opens empty. Its entries are then written by
    /// [`Ledger::seal_chunk`] between receipt groups, or earlier, by whatever changes an entry
    /// after the cut. The caller must have written every earlier group first: the chunks find
    /// the epoch's index in the store. One seal at a time.
    pub(crate) fn begin_seal(&mut self) -> Result<u64, EngineError> {
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
    pub(crate) fn seal_chunk(&mut self) -> Result<Option<u64>, EngineError> {
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
                Some(IndexKind::Payer) => {
                    let payer = payer_from(id).map_err(corrupt(Cf::OpenEpoch))?;
                    self.seal_account::<PayerState>(epoch, &payer)?;
                }
                Some(IndexKind::Payee) => {
                    let payee = address_from(id).map_err(corrupt(Cf::OpenEpoch))?;
                    self.seal_account::<PayeeState>(epoch, &payee)?;
                }
                None => {
                    return Err(StoreError::Corrupt {
                        cf: Cf::OpenEpoch.name(),
                        problem: format!("unknown index kind {kind}"),
                    }
                    .into());
                }
            }
            self.group.batch.delete(Cf::OpenEpoch, key.to_vec());
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
    fn finish_seal(&mut self) -> Result<u64, EngineError> {
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
        };
        self.group
            .batch
            .put(Cf::Epochs, epoch_key(epoch).to_vec(), record.encode());
        self.group.epochs.insert(epoch, record);
        Ok(epoch)
    }

    /// True when `indexed_epoch` is the epoch being sealed and the seal has not reached the
    /// index entry `suffix` yet: that entry's amount at the cut is still to be written.
    fn awaits_seal(&self, suffix: &[u8], indexed_epoch: u64) -> bool {
        self.sealing.as_ref().is_some_and(|sealing| {
            sealing.epoch == indexed_epoch
                && sealing
                    .cursor
                    .as_deref()
                    .is_none_or(|cursor| suffix > cursor)
        })
    }

    /// An account's unsealed amount as the open epoch sees it: zero while it still belongs to
    /// the epoch being sealed.
    fn unsealed_after_cut<V: Account>(&self, state: &V, key: &V::Key) -> u128 {
        let suffix = index_suffix(V::KIND, &V::key_bytes(key));
        if self.awaits_seal(&suffix, state.indexed_epoch()) {
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
    ) -> Result<(), EngineError> {
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
    ) -> Result<bool, EngineError> {
        let suffix = index_suffix(kind, id);
        if !self.awaits_seal(&suffix, indexed_epoch) {
            return Ok(false);
        }
        self.write_sealed_entry(kind, id, amount_at_cut)?;
        self.group
            .batch
            .delete(Cf::OpenEpoch, index_key(indexed_epoch, &suffix));
        Ok(true)
    }

    /// Lists a cached channel in the open epoch's index, freezing its leaf for the sealing
    /// epoch first if the seal has not reached it.
    fn index_channel(&mut self, key: &ChannelKey) -> Result<(), EngineError> {
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
    fn index_account<V: Account>(&mut self, key: &V::Key) -> Result<(), EngineError> {
        let open = self.open.epoch;
        let mut state = *V::cache(self)
            .get(key)
            .ok_or_else(|| invariant("account not cached after load"))?;
        if state.indexed_epoch() == open {
            return Ok(());
        }
        let id = V::key_bytes(key);
        if self.freeze_if_awaited(V::KIND, &id, state.indexed_epoch(), state.unsealed())? {
            state.set_index(0, open);
        } else {
            state.set_index(state.unsealed(), open);
        }
        self.group.batch.put(
            Cf::OpenEpoch,
            index_key(open, &index_suffix(V::KIND, &id)),
            Vec::new(),
        );
        *V::cache(self)
            .get_mut(key)
            .ok_or_else(|| invariant("account evicted inside a group"))? = state;
        Ok(())
    }

    /// A seal chunk's visit of a payer or payee: its unsealed amount becomes the sealing epoch's
    /// entry, unless something after the cut gave it to that epoch already.
    fn seal_account<V: Account>(&mut self, epoch: u64, key: &V::Key) -> Result<(), EngineError> {
        let store = Arc::clone(&self.store);
        V::cache(self).load(&store, key, V::default)?;
        let mut state = *V::cache(self)
            .get(key)
            .ok_or_else(|| invariant("account not cached after load"))?;
        if state.indexed_epoch() != epoch || state.unsealed() == 0 {
            return Ok(());
        }
        self.write_sealed_entry(V::KIND, &V::key_bytes(key), state.unsealed())?;
        state.set_index(0, epoch);
        *V::cache(self)
            .get_mut(key)
            .ok_or_else(|| invariant("account evicted inside a group"))? = state;
        Ok(())
    }

    /// Seals the open epoch to the end in the calling thread, one committed group per chunk.
    #[cfg(test)]
    pub(crate) fn seal(&mut self) -> Result<super::SealedEpoch, EngineError> {
        self.commit()?;
        self.begin_seal()?;
        self.commit()?;
        self.finish_running_seal()
    }

    /// Runs the seal in progress to its end, one committed group per chunk.
    #[cfg(test)]
    pub(crate) fn finish_running_seal(&mut self) -> Result<super::SealedEpoch, EngineError> {
        loop {
            let done = self.seal_chunk()?;
            self.commit()?;
            if let Some(epoch) = done {
                return super::LedgerReader::new(self.store())
                    .sealed_epoch(epoch)?
                    .ok_or_else(|| invariant("sealed epoch not stored"));
            }
        }
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
        if group.sealing_dirty {
            match &self.sealing {
                Some(sealing) => {
                    group
                        .batch
                        .put(Cf::Meta, SEALING_EPOCH_KEY.to_vec(), sealing.encode())
                }
                None => group.batch.delete(Cf::Meta, SEALING_EPOCH_KEY.to_vec()),
            }
        }
        if group.head_withdrawals_dirty {
            group.batch.put(
                Cf::Meta,
                HEAD_WITHDRAWALS_KEY.to_vec(),
                self.head_withdrawals.encode(),
            );
        }
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

    /// Closes and writes the current group in the calling thread.
    #[cfg(test)]
    pub(crate) fn commit(&mut self) -> Result<(), EngineError> {
        let batch = self.close_group()?;
        let result = self.store.write(batch).map_err(EngineError::from);
        self.written();
        result
    }
}

/// A payer or payee: an account whose unsealed amount becomes an epoch's debit or credit.
trait Account: Cached + Copy + Default {
    /// Its kind in the open-epoch index.
    const KIND: IndexKind;
    /// The writer's cache of such accounts.
    fn cache(ledger: &mut Ledger) -> &mut Cache<Self>;
    fn unsealed(&self) -> u128;
    fn indexed_epoch(&self) -> u64;
    fn set_index(&mut self, unsealed: u128, indexed_epoch: u64);
}

impl Account for PayerState {
    const KIND: IndexKind = IndexKind::Payer;
    fn cache(ledger: &mut Ledger) -> &mut Cache<Self> {
        &mut ledger.payers
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
}

impl Account for PayeeState {
    const KIND: IndexKind = IndexKind::Payee;
    fn cache(ledger: &mut Ledger) -> &mut Cache<Self> {
        &mut ledger.payees
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
        // The pair assertion sums pending + settled + shortfall: that must fit too.
        pending
            .checked_add(payer.settled)?
            .checked_add(payer.shortfall)?;
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

/// An epoch's shortfall per payer and per payee.
#[derive(Default)]
struct ShortfallSums(HashMap<PayerKey, u128>, HashMap<Address, u128>);

#[derive(Clone, Copy)]
enum Direction {
    Settle,
    Unsettle,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::batch_digest;
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
            .apply_batch(
                session(5),
                batch_digest(&batch),
                &batch,
                &[Ok(()), Ok(())],
                now,
            )
            .expect("apply");
        let in_flight = ledger.close_group().expect("close");

        let again = ledger
            .apply_batch(
                session(5),
                batch_digest(&batch),
                &batch,
                &[Ok(()), Ok(())],
                now,
            )
            .expect("resend");
        assert_eq!(again, ack);
        assert!(ledger.group_is_empty(), "the re-send changed nothing");
        ledger.store.write(in_flight).expect("write");
        ledger.written();

        let from_disk = ledger
            .apply_batch(
                session(5),
                batch_digest(&batch),
                &batch,
                &[Ok(()), Ok(())],
                now,
            )
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
            let result =
                ledger.apply_batch(session(5), batch_digest(&other), &other, &[Ok(())], now);
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
            .apply_batch(
                session(5),
                batch_digest(&original),
                &original,
                &[Ok(())],
                now,
            )
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
            .apply_batch(elsewhere, batch_digest(&other), &other, &[Ok(())], now)
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
            .apply_batch(session(1), batch_digest(&batch), &batch, &[Ok(())], 1_000)
            .expect("apply");
        let sealed = ledger.seal().expect("seal");
        let committed = EpochUpdate {
            epoch: sealed.epoch,
            status: EpochStatus::Committed,
            root: None,
            part: None,
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

    /// The commit loop can finish an epoch just after the funds loop recorded the arbiter's
    /// dispute of it: that `Committed` is older news than the dispute and must neither fail (it
    /// stopped serve) nor settle the carried amounts.
    #[test]
    fn commit_news_after_a_dispute_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = ledger(dir.path());
        let key = SigningKey::from_bytes(&[4; 32]);
        let payer = PayerKey(key.verifying_key().to_bytes());
        deposit(&mut ledger, payer, 100, 1);
        let batch = ReceiptBatch::from_receipts(&[receipt(&key, 30, 1)]);
        ledger
            .apply_batch(session(1), batch_digest(&batch), &batch, &[Ok(())], 1_000)
            .expect("apply");
        let sealed = ledger.seal().expect("seal");
        let update = |status| EpochUpdate {
            epoch: sealed.epoch,
            status,
            root: None,
            part: None,
        };
        ledger
            .record_epoch(update(EpochStatus::Disputed))
            .expect("dispute");
        for stale in [
            EpochStatus::Committed,
            EpochStatus::Submitted,
            EpochStatus::Sealed,
        ] {
            ledger.record_epoch(update(stale)).expect("stale news");
        }
        ledger.commit().expect("commit");
        assert_eq!(
            ledger.epoch_record(sealed.epoch).expect("record").status,
            EpochStatus::Disputed
        );
        let state = ledger.payers.get(&payer).copied().expect("cached");
        assert_eq!(
            (state.pending, state.settled, state.unsealed),
            (30, 0, 30),
            "still owed, carried into the open epoch, never settled"
        );
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
            .apply_batch(
                session(0),
                batch_digest(&batch),
                &batch,
                &[Ok(()), Ok(())],
                1_000,
            )
            .expect("apply");
        assert_eq!(ack.rejections, vec![(0, Reason::Overflow)]);
        assert_eq!(ack.accepted, 1);
        assert_eq!(
            ledger.channels.get(&channel).expect("cached").cumulative,
            u128::MAX
        );
        assert_eq!(ledger.payers.get(&payer).expect("cached").pending, 1);
    }

    /// Seal tests: chunks of two index keys so that a small epoch takes many groups, and payers
    /// accepted without deposits so any key can pay.
    fn sealing_ledger(dir: &std::path::Path) -> Ledger {
        let config = LedgerConfig {
            seal_chunk_keys: 2,
            unknown_payers: UnknownPayers::Accept,
            ..LedgerConfig::default()
        };
        let format = initial_format(&config);
        let (store, _) = Store::open(dir, |b| b.put(Cf::Meta, FORMAT_KEY, format)).expect("open");
        Ledger::open(Arc::new(store), config).expect("ledger")
    }

    const PAYERS: u8 = 4;
    const PAYEES: u8 = 3;

    /// What receipt `nonce` of channel (payer `p`, payee `q`) pays: distinct per channel and
    /// nonce, so a leaf, debit or credit counted in the wrong epoch changes a total.
    fn amount(p: u8, q: u8, nonce: u64) -> u64 {
        nonce * 1_000 + u64::from(p) * 10 + u64::from(q)
    }

    fn channel_receipt(p: u8, q: u8, nonce: u64) -> Receipt {
        Receipt {
            payer: PayerKey([p + 1; 32]),
            payee: Address([q + 1; 20]),
            amount: amount(p, q, nonce),
            nonce,
            timestamp_ms: 1_000,
            request_hash: [0; 32],
            // The verdicts passed with the batch are what the ledger trusts.
            signature: [0; 64],
        }
    }

    /// Applies receipt `nonce` of every channel in `channels`, one batch.
    fn pay(ledger: &mut Ledger, seq: u64, nonce: u64, channels: &[(u8, u8)]) {
        let receipts: Vec<Receipt> = channels
            .iter()
            .map(|&(p, q)| channel_receipt(p, q, nonce))
            .collect();
        let verdicts = vec![Ok(()); receipts.len()];
        let batch = ReceiptBatch::from_receipts(&receipts);
        let ack = ledger
            .apply_batch(session(seq), batch_digest(&batch), &batch, &verdicts, 1_000)
            .expect("apply");
        assert_eq!(
            ack.accepted as usize,
            receipts.len(),
            "{:?}",
            ack.rejections
        );
    }

    fn all_channels() -> Vec<(u8, u8)> {
        (0..PAYERS)
            .flat_map(|p| (0..PAYEES).map(move |q| (p, q)))
            .collect()
    }

    /// The sealed epoch an auditor expects: leaves at `cumulative_through` receipts per channel
    /// for `channels`, debits and credits of receipt `nonce` only.
    fn expected(epoch: u64, nonce: u64, channels: &[(u8, u8)]) -> super::super::SealedEpoch {
        let mut leaves = Vec::new();
        let mut debits = std::collections::BTreeMap::new();
        let mut credits = std::collections::BTreeMap::new();
        for &(p, q) in channels {
            let cumulative: u64 = (1..=nonce).map(|n| amount(p, q, n)).sum();
            leaves.push((
                PayerKey([p + 1; 32]),
                Address([q + 1; 20]),
                u128::from(cumulative),
            ));
            *debits.entry(PayerKey([p + 1; 32])).or_insert(0u128) +=
                u128::from(amount(p, q, nonce));
            *credits.entry(Address([q + 1; 20])).or_insert(0u128) +=
                u128::from(amount(p, q, nonce));
        }
        leaves.sort();
        super::super::SealedEpoch {
            epoch,
            leaves,
            debits: debits.into_iter().collect(),
            credits: credits.into_iter().collect(),
        }
    }

    /// Receipts of the next epoch arrive between the chunks of a seal and touch channels, payers
    /// and payees the seal has and has not reached yet: the sealed epoch holds exactly its own
    /// receipts (leaves at the cut), and the next one exactly the rest.
    #[test]
    fn receipts_between_seal_chunks_land_in_the_next_epoch_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = sealing_ledger(dir.path());
        let channels = all_channels();
        pay(&mut ledger, 1, 1, &channels);
        ledger.commit().expect("commit");
        assert_eq!(ledger.begin_seal().expect("cut"), 1);
        ledger.commit().expect("commit");
        // The seal reaches the first two channels; everything else is still ahead of it.
        assert_eq!(ledger.seal_chunk().expect("chunk"), None);
        ledger.commit().expect("commit");
        // Epoch 2 pays every channel again, a few at a time, each batch sharing its group with
        // one more chunk of the seal.
        for (seq, batch) in channels.chunks(5).enumerate() {
            pay(&mut ledger, 2 + seq as u64, 2, batch);
            assert_eq!(ledger.seal_chunk().expect("chunk"), None);
            ledger.commit().expect("commit");
        }
        let first = ledger.finish_running_seal().expect("seal 1");
        assert_eq!(first, expected(1, 1, &channels));
        let record = LedgerReaderFor(&ledger).epoch(1);
        assert_eq!((record.receipts, record.leaves), (12, 12));
        assert_eq!(
            record.counts,
            Some(EntryCounts {
                debits: first.debits.len() as u64,
                credits: first.credits.len() as u64,
            }),
            "the seal counted the entries it wrote, those frozen early included"
        );
        assert_eq!(
            record.amount,
            first.debits.iter().map(|(_, d)| d).sum::<u128>()
        );

        let second = ledger.seal().expect("seal 2");
        assert_eq!(second, expected(2, 2, &channels));
        assert_eq!(ledger.open.epoch, 3);
        assert!(ledger.sealing.is_none());
        assert_eq!(
            ledger
                .store
                .snapshot()
                .scan(Cf::OpenEpoch, &[], None, 10)
                .expect("scan"),
            Vec::new(),
            "every index key of both epochs was consumed"
        );
    }

    /// Reads one stored epoch record for assertions.
    struct LedgerReaderFor<'a>(&'a Ledger);

    impl LedgerReaderFor<'_> {
        fn epoch(&self, epoch: u64) -> EpochRecord {
            super::super::LedgerReader::new(self.0.store())
                .epoch(epoch)
                .expect("read")
                .expect("stored")
        }
    }

    /// A crash after chunk k (with receipts of the next epoch written between chunks, and a
    /// group that never reached the disk) loses nothing: the restarted ledger knows the seal is
    /// running, resumes it from the disk, and produces the same epoch as a seal that ran through.
    #[test]
    fn a_seal_cut_short_by_a_crash_resumes_to_the_same_epoch() {
        let channels = all_channels();
        let reference_dir = tempfile::tempdir().expect("tempdir");
        let mut reference = sealing_ledger(reference_dir.path());
        pay(&mut reference, 1, 1, &channels);
        let reference = reference.seal().expect("seal");

        for crash_after in [0, 1, 3, 5] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut ledger = sealing_ledger(dir.path());
            pay(&mut ledger, 1, 1, &channels);
            ledger.commit().expect("commit");
            ledger.begin_seal().expect("cut");
            ledger.commit().expect("commit");
            for chunk in 0..crash_after {
                // Receipts of epoch 2 on every other chunk, ahead of the seal and behind it.
                if chunk % 2 == 0 {
                    let (p, q) = channels[(chunk * 5) % channels.len()];
                    pay(
                        &mut ledger,
                        2 + chunk as u64,
                        2,
                        &[(p, q), (PAYERS - 1 - p, q)],
                    );
                }
                assert_eq!(ledger.seal_chunk().expect("chunk"), None);
                ledger.commit().expect("commit");
            }
            // The group being applied when the process dies: a chunk and a receipt, never
            // written, never acked.
            pay(&mut ledger, 100, 3, &[(3, 2)]);
            ledger.seal_chunk().expect("chunk");
            drop(ledger);

            let mut ledger = sealing_ledger(dir.path());
            assert_eq!(
                super::super::LedgerReader::new(ledger.store())
                    .sealing_epoch()
                    .expect("read")
                    .map(|s| s.epoch),
                Some(1),
                "crash after chunk {crash_after}"
            );
            assert_eq!(ledger.sealing_epoch(), Some(1));
            let resumed = ledger.finish_running_seal().expect("resume");
            assert_eq!(resumed, reference, "crash after chunk {crash_after}");
            let record = LedgerReaderFor(&ledger).epoch(1);
            assert_eq!(record.leaves, 12);
            assert_eq!(
                record.counts,
                Some(EntryCounts {
                    debits: reference.debits.len() as u64,
                    credits: reference.credits.len() as u64,
                }),
                "crash after chunk {crash_after}"
            );
        }
    }

    /// A dispute carried into the open epoch while the previous one is being sealed: payers,
    /// payees and channels the seal has not reached give their amounts to the sealing epoch
    /// first, so the carried amounts land in the next epoch only.
    #[test]
    fn a_dispute_carried_during_a_seal_lands_in_the_next_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = sealing_ledger(dir.path());
        let channels = all_channels();
        pay(&mut ledger, 1, 1, &channels);
        let first = ledger.seal().expect("seal 1");
        let update = |status| EpochUpdate {
            epoch: 1,
            status,
            root: None,
            part: None,
        };
        ledger
            .record_epoch(update(EpochStatus::Committed))
            .expect("commit");
        pay(&mut ledger, 2, 2, &channels);
        ledger.commit().expect("commit");
        ledger.begin_seal().expect("cut 2");
        ledger.commit().expect("commit");
        ledger
            .record_epoch(update(EpochStatus::Disputed))
            .expect("dispute");
        ledger.commit().expect("commit");
        let second = ledger.finish_running_seal().expect("seal 2");
        assert_eq!(second, expected(2, 2, &channels));
        let third = ledger.seal().expect("seal 3");
        assert_eq!(third.debits, first.debits);
        assert_eq!(third.credits, first.credits);
        // The carried channels are leaves again, at their cumulative now.
        assert_eq!(third.leaves, second.leaves);
    }

    /// An overdraft's uncovered amount is cut from what the payer paid in the epoch (its leaf
    /// minus the previous one, not its cumulative), in payee order; committing writes it off
    /// instead of settling it, and a dispute of that commit puts everything back.
    #[test]
    fn a_shortfall_is_written_off_on_commit_and_put_back_by_a_dispute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = sealing_ledger(dir.path());
        let channels = [(0, 0), (0, 1), (1, 0)];
        let update = |epoch, status| EpochUpdate {
            epoch,
            status,
            root: None,
            part: None,
        };
        pay(&mut ledger, 1, 1, &channels);
        ledger.seal().expect("seal 1");
        ledger
            .record_epoch(update(1, EpochStatus::Committed))
            .expect("commit 1");
        pay(&mut ledger, 2, 2, &channels);
        ledger.seal().expect("seal 2");
        let payer = PayerKey([1; 32]);
        let (first, second) = (Address([1; 20]), Address([2; 20]));
        // Debited 2,000 + 2,001 in epoch 2; the chain holds 1,000 of it. Asking twice replaces.
        for _ in 0..2 {
            ledger.record_shortfall(2, payer, 1_000).expect("shortfall");
            ledger.commit().expect("write");
        }
        let reader = super::super::LedgerReader::new(ledger.store());
        assert_eq!(
            reader.epoch_shortfalls(2).expect("read"),
            vec![(payer, first, 2_000), (payer, second, 1_001)]
        );
        ledger
            .record_epoch(update(2, EpochStatus::Committed))
            .expect("commit 2");
        ledger.commit().expect("write");
        let balances = |reader: &super::super::LedgerReader| {
            let payer = reader.payer(&payer).expect("read").expect("payer");
            let first = reader.payee(&first).expect("read").expect("payee");
            let second = reader.payee(&second).expect("read").expect("payee");
            (
                (payer.pending, payer.settled, payer.shortfall),
                (first.settled, first.shortfall),
                (second.settled, second.shortfall),
            )
        };
        assert_eq!(
            balances(&reader),
            ((0, 2_001 + 1_000, 3_001), (4_020, 2_000), (2_001, 1_001))
        );
        assert_eq!(
            ledger
                .record_shortfall(2, payer, 0)
                .map_err(|e| e.to_string()),
            Err("epoch 2 cannot go from Committed to Committed".to_string()),
            "a committed epoch's amounts are final"
        );
        ledger
            .record_epoch(update(2, EpochStatus::Disputed))
            .expect("dispute 2");
        ledger.commit().expect("write");
        assert_eq!(
            balances(&reader),
            ((4_001, 2_001, 0), (2_010, 0), (1_001, 0)),
            "back to pending, to be carried into epoch 3"
        );
    }
}
