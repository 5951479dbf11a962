//! Whether a verified batch's receipts are accepted, and what an accepted receipt changes: the
//! producer session's ack (a re-send gets the same one), then per receipt the checks in their
//! documented order (skew, for a session receipt its grant's admission, unknown payer,
//! anti-replay window, for a session receipt its grant's cap and allowance, funds, overflow)
//! and the channel, payer, payee and open-epoch totals, all computed before any of them changes
//! (with a session's spend and window), then the receipt's archive entry (see `archive`).

use crate::receipt::{ReceiptBatch, ReceiptView};
use crate::store::{Cf, StoreError};
use crate::verdict::{Reason, Verdict};

use super::archive::archive_key;
use super::error::{LedgerError, corrupt, invariant};
use super::record::{
    BatchDigest, ChannelKey, ChannelState, OpenEpoch, PayeeState, PayerState, ProducerState,
    SessionWindow, ack_key, decode_ack, encode_ack,
};
use super::state::{Ledger, SessionId};
use super::{BatchAck, UnknownPayers};

impl Ledger {
    /// Applies one verified batch and returns its ack; a batch seen before returns the ack it got
    /// then and changes nothing, provided its `digest` (blake3 of its receipt bytes) is the
    /// original's: another batch under a remembered number is refused as
    /// [`LedgerError::BatchMismatch`]. `verdicts[i]` is the verify stage's verdict for record `i`.
    /// With no `digest` the batch is unsequenced: its producer session is neither read nor
    /// written and its ack is not kept, so only its accepted receipts leave a trace.
    pub(crate) fn apply_batch(
        &mut self,
        session: SessionId,
        digest: Option<BatchDigest>,
        receipts: &ReceiptBatch,
        verdicts: &[Verdict],
        now_ms: u64,
    ) -> Result<BatchAck, LedgerError> {
        if let Some(digest) = digest
            && let Some(remembered) = self.remembered_ack(session, digest)?
        {
            return Ok(remembered);
        }
        let ack = self.apply_receipts(session.batch_seq, receipts, verdicts, now_ms)?;
        if let Some(digest) = digest {
            self.keep_ack(session, digest, &ack)?;
        }
        Ok(ack)
    }

    /// The ack a batch got the first time, if its producer session remembers its number (the
    /// producer's state is loaded into the cache either way).
    fn remembered_ack(
        &mut self,
        session: SessionId,
        digest: BatchDigest,
    ) -> Result<Option<BatchAck>, LedgerError> {
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
            return Err(LedgerError::SessionSuperseded {
                producer_id,
                session_epoch,
                current: producer.session_epoch,
            });
        }
        if session_epoch == producer.session_epoch && producer.recent.contains(&batch_seq) {
            let (ack, original) = match self.unwritten_ack(&session).cloned() {
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
                return Err(LedgerError::BatchMismatch {
                    producer_id,
                    session_epoch,
                    batch_seq,
                });
            }
            return Ok(Some(ack));
        }
        Ok(None)
    }

    /// Judges and applies each receipt of a batch on its verdict.
    fn apply_receipts(
        &mut self,
        batch_seq: u64,
        receipts: &ReceiptBatch,
        verdicts: &[Verdict],
        now_ms: u64,
    ) -> Result<BatchAck, LedgerError> {
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
        Ok(ack)
    }

    /// Remembers `ack` under the batch's number in its producer session (loaded by
    /// [`Ledger::remembered_ack`]), forgetting the oldest beyond the number kept.
    fn keep_ack(
        &mut self,
        session: SessionId,
        digest: BatchDigest,
        ack: &BatchAck,
    ) -> Result<(), LedgerError> {
        let SessionId {
            session_epoch,
            batch_seq,
            ..
        } = session;
        let key = session.producer();
        let kept = self.config.acks_kept_per_producer;
        let producer = self
            .producers
            .get_mut(&key)
            .ok_or_else(|| invariant("producer evicted inside a group"))?;
        if session_epoch > producer.session_epoch {
            // A new session: the old session's batches can never be re-sent (they would be
            // refused as superseded), so their acks go.
            for seq in producer.recent.drain(..) {
                self.group
                    .batch
                    .delete(Cf::Sessions, ack_key(key, producer.session_epoch, seq));
            }
            producer.session_epoch = session_epoch;
        }
        producer.recent.push_back(batch_seq);
        while producer.recent.len() > kept {
            if let Some(old) = producer.recent.pop_front() {
                self.group
                    .batch
                    .delete(Cf::Sessions, ack_key(key, session_epoch, old));
            }
        }
        self.group.batch.put(
            Cf::Sessions,
            ack_key(key, session_epoch, batch_seq),
            encode_ack(ack, &digest),
        );
        self.group.acks.insert(session, (ack.clone(), digest));
        Ok(())
    }

    /// Checks one verified receipt and, if it passes, applies it. `Ok(Err(reason))` is a refused
    /// receipt that changed nothing; `Err` is a storage failure.
    fn apply_receipt(
        &mut self,
        receipt: &ReceiptView<'_>,
        now_ms: u64,
    ) -> Result<Verdict, LedgerError> {
        self.group.receipts += 1;
        if receipt.timestamp_ms().abs_diff(now_ms) > self.config.timestamp_skew_ms {
            return Ok(Err(Reason::TimestampSkew));
        }
        let signer = receipt.payer();
        let payee = receipt.payee();
        // A session's receipt is charged to the payer whose grant admits it; its nonces live in
        // the session's own window with the payee.
        let session_window = receipt.is_session().then_some(ChannelKey {
            payer: signer,
            payee,
        });
        let payer = match session_window {
            None => signer,
            Some(_) => match self.session_payer(receipt, now_ms)? {
                Ok(payer) => payer,
                Err(reason) => return Ok(Err(reason)),
            },
        };
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
        let window = match &session_window {
            None => {
                &self
                    .channels
                    .get(&key)
                    .ok_or_else(|| invariant("channel not cached after load"))?
                    .window
            }
            Some(session_key) => {
                self.session_windows.load(&self.store, session_key, || {
                    SessionWindow::new(window_nonces)
                })?;
                &self
                    .session_windows
                    .get(session_key)
                    .ok_or_else(|| invariant("session window not cached after load"))?
                    .window
            }
        };
        if let Err(reason) = window.check(nonce) {
            return Ok(Err(reason));
        }
        // For a session receipt: the session's spend after it, and the part spent with this
        // payee after it (kept in the window record).
        let grant_spend = match &session_window {
            None => None,
            Some(session_key) => match self.session_charge(receipt)? {
                Ok((before, after)) => {
                    let part = self
                        .session_windows
                        .get(session_key)
                        .ok_or_else(|| invariant("session window not cached after load"))?
                        .spent
                        .part_after(&before, &after, receipt.amount());
                    match part {
                        Some(part) => Some((after, part)),
                        None => return Ok(Err(Reason::Overflow)),
                    }
                }
                Err(reason) => return Ok(Err(reason)),
            },
        };
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
        let channel = self
            .channels
            .get(&key)
            .ok_or_else(|| invariant("channel not cached after load"))?;
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
                .put(Cf::PayeeChannels, key.to_payee_index(), Vec::new());
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
        match (session_window, grant_spend) {
            (Some(session_key), Some((spend, part))) => {
                let session = self
                    .session_windows
                    .get_mut(&session_key)
                    .ok_or_else(|| invariant("session window evicted inside a group"))?;
                session.window.insert(nonce);
                session.spent = part;
                *self
                    .grant_spends
                    .get_mut(&signer)
                    .ok_or_else(|| invariant("grant spend evicted inside a group"))? = spend;
            }
            (None, None) => channel.window.insert(nonce),
            _ => return Err(invariant("a session receipt without its spend")),
        }

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

        if self.archive {
            // Its position among the epoch's accepted receipts is the count before it.
            let key = archive_key(self.open.epoch, self.open.receipts);
            self.group.batch.archive(&key, receipt.as_bytes());
        }
        self.open.receipts = sums.open_receipts;
        self.open.amount = sums.open_amount;
        self.group.meta_dirty = true;
        self.group.receipt_amount = sums.group_amount;
        Ok(Ok(()))
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
