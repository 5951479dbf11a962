//! Reads of the ledger for operators and settle, served from RocksDB snapshots.
//!
//! The writer only ever writes a group after it is complete and replies after the write
//! returned, so anything an ack promised is visible here by the time the ack is out; the reader
//! never takes a lock the writer needs. Each call reads one snapshot, so a multi-key answer (a
//! channel list, a sealed epoch) is from one point in time.

use std::sync::Arc;

use crate::grant::GrantSpend;
use crate::receipt::{Address, PayerKey};
use crate::store::{Cf, Store, StoreError, StoreSnapshot};

use super::cache::Cached;
use super::error::corrupt;
use super::record::{
    BatchDigest, ChannelKey, ChannelState, EntryKind, EpochRecord, FUNDS_CURSOR_KEY, FundsCursor,
    GRANT_KEY_PREFIX, GrantRecord, HEAD_WITHDRAWALS_KEY, HeadWithdrawals, HeldGrant,
    LOG_POSITION_KEY, OPEN_EPOCH_KEY, OpenEpoch, PayeeState, PayerState, ProducerKey,
    ProducerState, SEALING_EPOCH_KEY, SealingEpoch, SessionWindow, address_from, decode_amount,
    decode_logged_outcome, decode_u64_record, entry_key, entry_prefix, epoch_key, grant_key,
    logged_outcome_key, payer_from, producer_key, session_window_key, session_windows_prefix,
};
use super::{BatchOutcome, SealedEpoch};

/// Entries read from RocksDB per scan when a whole epoch is read back: the transient copies
/// stay this small however large the epoch.
const ENTRIES_PER_SCAN: usize = 4_096;

/// A payer's funds as the ledger sees them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PayerBalance {
    /// Sum of deposits seen onchain.
    pub deposited: u128,
    /// Requested withdrawals not yet completed, including requests mined but not yet
    /// `confirmations` deep (those are refused spend at once).
    pub withdrawal_requested: u128,
    /// Completed withdrawals.
    pub withdrawn: u128,
    /// Debited by committed epochs.
    pub settled: u128,
    /// Accepted, not yet settled.
    pub pending: u128,
    /// What the payer may still spend.
    pub available: u128,
    /// Receipts accepted from this payer, over all its channels.
    pub receipts: u64,
    /// Payees this payer has had a receipt accepted for.
    pub channels: u64,
    /// Debited in committed epochs beyond what the chain still held (its exit overtook the
    /// debits): written off, never settled.
    pub shortfall: u128,
}

/// A payee's credits.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PayeeBalance {
    /// Sum of accepted receipts paying this payee.
    pub credited: u128,
    /// Credited by committed epochs.
    pub settled: u128,
    /// Credited but cut from committed epochs because the payer's exit overtook its debit:
    /// never settled.
    pub shortfall: u128,
}

/// One channel's totals.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChannelInfo {
    /// Who pays.
    pub payer: PayerKey,
    /// Who is paid.
    pub payee: Address,
    /// Total of every accepted receipt.
    pub cumulative: u128,
    /// Accepted receipts.
    pub receipts: u64,
    /// Latest timestamp among accepted receipts.
    pub last_timestamp_ms: u64,
    /// Highest accepted nonce.
    pub highest_nonce: Option<u64>,
}

/// Read-only access to the ledger. Cheap to clone; safe from any thread.
#[derive(Clone, Debug)]
pub struct LedgerReader {
    pub(super) store: Arc<Store>,
}

fn channel_info(key: ChannelKey, bytes: &[u8]) -> Result<ChannelInfo, StoreError> {
    let state = ChannelState::decode(bytes).map_err(corrupt(Cf::Channels))?;
    Ok(ChannelInfo {
        payer: key.payer,
        payee: key.payee,
        cumulative: state.cumulative,
        receipts: state.receipts,
        last_timestamp_ms: state.last_timestamp_ms,
        highest_nonce: state.window.top(),
    })
}

/// The first `limit` channels of `payer` in payee order as `snapshot` holds them.
fn channels_in(
    snapshot: &StoreSnapshot<'_>,
    payer: &PayerKey,
    limit: usize,
) -> Result<Vec<ChannelInfo>, StoreError> {
    snapshot
        .scan(Cf::Channels, &payer.0, None, limit)?
        .into_iter()
        .map(|(key, value)| {
            let key = ChannelKey::from_bytes(&key).map_err(corrupt(Cf::Channels))?;
            channel_info(key, &value)
        })
        .collect()
}

/// A payer's funds and counts as `snapshot` holds them.
fn payer_in(
    snapshot: &StoreSnapshot<'_>,
    payer: &PayerKey,
) -> Result<Option<PayerBalance>, StoreError> {
    let Some(bytes) = snapshot.get(Cf::Payers, &payer.0)? else {
        return Ok(None);
    };
    let state = PayerState::decode(&bytes).map_err(corrupt(Cf::Payers))?;
    let at_head = snapshot
        .get(Cf::Meta, HEAD_WITHDRAWALS_KEY)?
        .map(|bytes| HeadWithdrawals::decode(&bytes).map_err(corrupt(Cf::Meta)))
        .transpose()?
        .unwrap_or_default()
        .of(payer);
    Ok(Some(PayerBalance {
        deposited: state.deposited,
        withdrawal_requested: state.withdrawal_requested.saturating_add(at_head),
        withdrawn: state.withdrawn,
        settled: state.settled,
        pending: state.pending,
        available: state.available().saturating_sub(at_head),
        receipts: state.receipts,
        channels: state.channels,
        shortfall: state.shortfall,
    }))
}

/// An epoch's stored entries of one kind in key order, read from one snapshot a page at a time
/// and parsed by `parse(id, amount)` as they come, so the only full copy is the result.
fn epoch_entries<T>(
    snapshot: &StoreSnapshot<'_>,
    epoch: u64,
    kind: EntryKind,
    capacity: usize,
    parse: impl Fn(&[u8], u128) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let prefix = entry_prefix(epoch, kind);
    let mut out = Vec::with_capacity(capacity);
    let mut after: Option<Box<[u8]>> = None;
    loop {
        let page = snapshot.scan(
            Cf::EpochEntries,
            &prefix,
            after.as_deref(),
            ENTRIES_PER_SCAN,
        )?;
        let more = page.len() == ENTRIES_PER_SCAN;
        for (key, value) in page {
            let amount = decode_amount(&value).map_err(corrupt(Cf::EpochEntries))?;
            out.push(parse(&key[prefix.len()..], amount)?);
            after = Some(key);
        }
        if !more {
            return Ok(out);
        }
    }
}

/// An epoch's stored debits or credits, read from one snapshot. The writer uses it too, so both
/// sides decode entries the same way.
pub(crate) fn epoch_amounts(
    snapshot: &StoreSnapshot<'_>,
    epoch: u64,
    kind: EntryKind,
) -> Result<Vec<super::EntryAmount>, StoreError> {
    epoch_entries(snapshot, epoch, kind, 0, |id, amount| {
        Ok((id.into(), amount))
    })
}

impl LedgerReader {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// A payer's funds and counts, from its one record: the cost does not grow with its
    /// channels. `None` if the ledger never heard of the payer.
    pub fn payer(&self, payer: &PayerKey) -> Result<Option<PayerBalance>, StoreError> {
        payer_in(&self.store.snapshot(), payer)
    }

    /// A payer's funds and counts with its first `listed` channels in payee order, all from one
    /// snapshot (the channels add up to no more than the counts say). `None` if the ledger never
    /// heard of the payer.
    pub fn payer_with_channels(
        &self,
        payer: &PayerKey,
        listed: usize,
    ) -> Result<Option<(PayerBalance, Vec<ChannelInfo>)>, StoreError> {
        let snapshot = self.store.snapshot();
        let Some(balance) = payer_in(&snapshot, payer)? else {
            return Ok(None);
        };
        let channels = if listed == 0 {
            Vec::new()
        } else {
            channels_in(&snapshot, payer, listed)?
        };
        Ok(Some((balance, channels)))
    }

    /// A payee's credits; `None` if nothing was ever accepted for it.
    pub fn payee(&self, payee: &Address) -> Result<Option<PayeeBalance>, StoreError> {
        let Some(bytes) = self.store.get(Cf::Payees, &payee.0)? else {
            return Ok(None);
        };
        let state = PayeeState::decode(&bytes).map_err(corrupt(Cf::Payees))?;
        Ok(Some(PayeeBalance {
            credited: state.credited,
            settled: state.settled,
            shortfall: state.shortfall,
        }))
    }

    /// One channel's totals; `None` if it never accepted anything.
    pub fn channel(
        &self,
        payer: &PayerKey,
        payee: &Address,
    ) -> Result<Option<ChannelInfo>, StoreError> {
        let key = ChannelKey {
            payer: *payer,
            payee: *payee,
        };
        self.store
            .get(Cf::Channels, &key.to_bytes())?
            .map(|bytes| channel_info(key, &bytes))
            .transpose()
    }

    /// Whether the anti-replay window of the channel a receipt's nonce lives in would take
    /// `nonce` now: the payer's channel with `payee`, or with `session` the session key's own
    /// window with `payee` (`signer` is then the session key). `Err(Stale)` or `Err(Duplicate)`
    /// as the ledger would answer; a window that never saw a nonce takes any. A check without
    /// applying, for callers that answer before submitting (x402's `/verify`).
    pub fn nonce_verdict(
        &self,
        signer: &PayerKey,
        payee: &Address,
        session: bool,
        nonce: u64,
    ) -> Result<crate::verdict::Verdict, StoreError> {
        let key = ChannelKey {
            payer: *signer,
            payee: *payee,
        };
        let window = if session {
            self.store
                .get(Cf::Grants, &session_window_key(&key))?
                .map(|bytes| SessionWindow::decode(&bytes).map_err(corrupt(Cf::Grants)))
                .transpose()?
                .map(|session| session.window)
        } else {
            self.store
                .get(Cf::Channels, &key.to_bytes())?
                .map(|bytes| ChannelState::decode(&bytes).map_err(corrupt(Cf::Channels)))
                .transpose()?
                .map(|channel| channel.window)
        };
        Ok(match window {
            Some(window) => window.check(nonce),
            None => Ok(()),
        })
    }

    /// Up to `limit` channels paying `payee` in payer order, after `after` when given.
    pub fn payee_channels(
        &self,
        payee: &Address,
        after: Option<&PayerKey>,
        limit: usize,
    ) -> Result<Vec<ChannelInfo>, StoreError> {
        let after = after.map(|payer| {
            ChannelKey {
                payer: *payer,
                payee: *payee,
            }
            .to_payee_index()
        });
        let snapshot = self.store.snapshot();
        snapshot
            .scan(
                Cf::PayeeChannels,
                &payee.0,
                after.as_ref().map(|a| &a[..]),
                limit,
            )?
            .into_iter()
            .map(|(index, _)| {
                let key =
                    ChannelKey::from_payee_index(&index).map_err(corrupt(Cf::PayeeChannels))?;
                let bytes = snapshot
                    .get(Cf::Channels, &key.to_bytes())?
                    .ok_or_else(|| StoreError::Corrupt {
                        cf: Cf::PayeeChannels.name(),
                        problem: format!("index names channel {key:?} that does not exist"),
                    })?;
                channel_info(key, &bytes)
            })
            .collect()
    }

    /// The epoch being filled now.
    pub fn open_epoch(&self) -> Result<OpenEpoch, StoreError> {
        match self.store.get(Cf::Meta, OPEN_EPOCH_KEY)? {
            Some(bytes) => OpenEpoch::decode(&bytes).map_err(corrupt(Cf::Meta)),
            None => Ok(OpenEpoch::default()),
        }
    }

    /// The grant held for a session key, with what the session spent and its revocation.
    pub fn grant(&self, session: &PayerKey) -> Result<Option<GrantRecord>, StoreError> {
        let snapshot = self.store.snapshot();
        snapshot
            .get(Cf::Grants, &grant_key(session))?
            .map(|bytes| with_spend(&snapshot, &bytes))
            .transpose()
    }

    /// Up to `limit` grants in session key order, after session key `after` when given.
    pub fn grants(
        &self,
        after: Option<&PayerKey>,
        limit: usize,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let after = after.map(grant_key);
        let snapshot = self.store.snapshot();
        snapshot
            .scan(
                Cf::Grants,
                &[GRANT_KEY_PREFIX],
                after.as_ref().map(|a| &a[..]),
                limit,
            )?
            .into_iter()
            .map(|(_, value)| with_spend(&snapshot, &value))
            .collect()
    }

    /// Up to `limit` sealed epochs in order, after epoch `after` when given.
    pub fn epochs(&self, after: Option<u64>, limit: usize) -> Result<Vec<EpochRecord>, StoreError> {
        let after = after.map(epoch_key);
        self.store
            .snapshot()
            .scan(Cf::Epochs, &[], after.as_ref().map(|a| &a[..]), limit)?
            .into_iter()
            .map(|(_, value)| EpochRecord::decode(&value).map_err(corrupt(Cf::Epochs)))
            .collect()
    }

    /// One sealed epoch's record.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, StoreError> {
        self.store
            .get(Cf::Epochs, &epoch_key(epoch))?
            .map(|bytes| EpochRecord::decode(&bytes).map_err(corrupt(Cf::Epochs)))
            .transpose()
    }

    /// A sealed epoch's leaves, debits and credits exactly as the seal returned them (for
    /// settle to rebuild its tree after a restart). Reads every entry of the epoch: counted in
    /// [`LedgerReader::sealed_epochs_read`].
    pub fn sealed_epoch(&self, epoch: u64) -> Result<Option<SealedEpoch>, StoreError> {
        self.store.count_sealed_epoch_read();
        let snapshot = self.store.snapshot();
        let Some(record) = snapshot.get(Cf::Epochs, &epoch_key(epoch))? else {
            return Ok(None);
        };
        let record = EpochRecord::decode(&record).map_err(corrupt(Cf::Epochs))?;
        let leaves_hint = usize::try_from(record.leaves).unwrap_or(0);
        let leaves = epoch_entries(
            &snapshot,
            epoch,
            EntryKind::Leaf,
            leaves_hint,
            |id, cumulative| {
                let key = ChannelKey::from_bytes(id).map_err(corrupt(Cf::EpochEntries))?;
                Ok((key.payer, key.payee, cumulative))
            },
        )?;
        let debits = epoch_entries(&snapshot, epoch, EntryKind::Debit, 0, |id, amount| {
            Ok((payer_from(id).map_err(corrupt(Cf::EpochEntries))?, amount))
        })?;
        let credits = epoch_entries(&snapshot, epoch, EntryKind::Credit, 0, |id, amount| {
            Ok((address_from(id).map_err(corrupt(Cf::EpochEntries))?, amount))
        })?;
        Ok(Some(SealedEpoch {
            epoch,
            leaves,
            debits,
            credits,
        }))
    }

    /// An epoch's shortfalls in (payer, payee) order: what each channel's movement was cut by
    /// because the payer's exit overtook its debit onchain. Empty for nearly every epoch.
    pub fn epoch_shortfalls(
        &self,
        epoch: u64,
    ) -> Result<Vec<(PayerKey, Address, u128)>, StoreError> {
        epoch_entries(
            &self.store.snapshot(),
            epoch,
            EntryKind::Shortfall,
            0,
            |id, cut| {
                let key = ChannelKey::from_bytes(id).map_err(corrupt(Cf::EpochEntries))?;
                Ok((key.payer, key.payee, cut))
            },
        )
    }

    /// Whole epochs [`LedgerReader::sealed_epoch`] has read since the ledger was opened, by any
    /// reader of it. Each costs a scan of every leaf, debit and credit of an epoch, so a route
    /// that answers many requests must not cost one per request; tests count them here.
    pub fn sealed_epochs_read(&self) -> u64 {
        self.store.sealed_epochs_read()
    }

    /// The cumulative amount a sealed epoch's leaf for (payer, payee) commits: one point read;
    /// `None` when the channel did not move in that epoch.
    pub fn epoch_leaf(
        &self,
        epoch: u64,
        payer: &PayerKey,
        payee: &Address,
    ) -> Result<Option<u128>, StoreError> {
        let channel = ChannelKey {
            payer: *payer,
            payee: *payee,
        };
        self.store
            .get(
                Cf::EpochEntries,
                &entry_key(epoch, EntryKind::Leaf, &channel.to_bytes()),
            )?
            .map(|bytes| decode_amount(&bytes).map_err(corrupt(Cf::EpochEntries)))
            .transpose()
    }

    /// The epoch whose seal is still being written, if any, and how far it has got.
    pub fn sealing_epoch(&self) -> Result<Option<SealingEpoch>, StoreError> {
        self.store
            .get(Cf::Meta, SEALING_EPOCH_KEY)?
            .map(|bytes| SealingEpoch::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()
    }

    /// The last chain event the ledger applied; the watcher resumes after it.
    pub fn funds_cursor(&self) -> Result<Option<FundsCursor>, StoreError> {
        self.store
            .get(Cf::Meta, FUNDS_CURSOR_KEY)?
            .map(|bytes| FundsCursor::decode(&bytes).map_err(corrupt(Cf::Meta)))
            .transpose()
    }

    /// The session epoch stored for a client's producer, for a HELLO to be refused early when it
    /// is older (the writer checks again on every batch).
    pub fn session_epoch(
        &self,
        client_id: u64,
        producer_id: u64,
    ) -> Result<Option<u64>, StoreError> {
        let producer = ProducerKey {
            client_id,
            producer_id,
        };
        self.store
            .get(Cf::Sessions, &producer_key(producer))?
            .map(|bytes| {
                ProducerState::decode(&bytes)
                    .map(|p| p.session_epoch)
                    .map_err(corrupt(Cf::Sessions))
            })
            .transpose()
    }

    /// The log position a cluster partition's ledger has applied through (`None`: nothing from
    /// a log yet). Written in the same group as the effects of the batch at that position.
    pub fn log_position(&self) -> Result<Option<u64>, StoreError> {
        self.store
            .get(Cf::Meta, LOG_POSITION_KEY)?
            .map(|bytes| decode_u64_record(&bytes, "log position").map_err(corrupt(Cf::Meta)))
            .transpose()
    }

    /// What the part a cluster partition's log holds at stream sequence `seq` got when it was
    /// applied, if its receipt bytes hash to `digest` (`batch_digest`; another part there is
    /// [`BatchOutcome::Mismatch`]). Recorded in the group that applied it, so exact once the
    /// log position reached `seq`, and the same however many parts or sessions followed;
    /// `Unknown` before.
    pub fn logged_outcome(
        &self,
        seq: u64,
        digest: &BatchDigest,
    ) -> Result<BatchOutcome, StoreError> {
        let Some(bytes) = self.store.get(Cf::Sessions, &logged_outcome_key(seq))? else {
            return Ok(BatchOutcome::Unknown);
        };
        let (outcome, original) = decode_logged_outcome(&bytes).map_err(corrupt(Cf::Sessions))?;
        Ok(if &original == digest {
            outcome
        } else {
            BatchOutcome::Mismatch
        })
    }
}

/// A held grant as stored, with what its session spent (nothing until it spends), both read
/// from one snapshot.
fn with_spend(snapshot: &StoreSnapshot<'_>, held: &[u8]) -> Result<GrantRecord, StoreError> {
    let held = HeldGrant::decode(held).map_err(corrupt(Cf::Grants))?;
    let spent = session_spend(snapshot, &held.grant.grant.session)?;
    Ok(GrantRecord::new(held, spent))
}

/// Session windows read per scan while summing a session's spend.
const SPEND_SCAN_WINDOWS: usize = 256;

/// What a session spent as of `snapshot`: its windows' parts combined (nothing before it
/// spends). The ledger writer derives its cached spend the same way.
pub(super) fn session_spend(
    snapshot: &StoreSnapshot<'_>,
    session: &PayerKey,
) -> Result<GrantSpend, StoreError> {
    let prefix = session_windows_prefix(session);
    let mut spent = GrantSpend::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = snapshot.scan(Cf::Grants, &prefix, after.as_deref(), SPEND_SCAN_WINDOWS)?;
        for (_, value) in &chunk {
            let part = SessionWindow::decode(value)
                .map_err(corrupt(Cf::Grants))?
                .spent;
            spent = spent.combine(part).ok_or_else(|| StoreError::Corrupt {
                cf: Cf::Grants.name(),
                problem: format!(
                    "session {}: its windows' spends overflow",
                    hex::encode(session.0)
                ),
            })?;
        }
        match chunk.last() {
            Some((key, _)) if chunk.len() == SPEND_SCAN_WINDOWS => after = Some(key.to_vec()),
            _ => return Ok(spent),
        }
    }
}
