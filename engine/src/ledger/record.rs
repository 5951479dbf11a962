//! What the ledger stores, and its byte layout: each record's `encode` and `decode` side by side.
//!
//! Records are fixed layouts of little-endian integers behind a one-byte version, so a reader
//! never guesses. Keys are big-endian where order matters (epochs, sequence numbers) so RocksDB
//! iterates them in numeric order.

use std::collections::VecDeque;

use crate::receipt::{Address, PayerKey, ReceiptBatch};
use crate::verdict::Reason;

use crate::store::Cf;

use super::cache::Cached;
use super::window::NonceWindow;
use super::{BatchAck, EpochStatus};

/// Version byte in front of every record written by this code.
const RECORD_VERSION: u8 = 1;

/// A record that does not decode.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Reads a record field by field; every read checks the length.
struct Decoder<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, DecodeError> {
        Self::versioned(bytes, what, RECORD_VERSION).map(|(decoder, _)| decoder)
    }
    /// A decoder of a record that has versions `RECORD_VERSION ..= newest`, and the version.
    fn versioned(
        bytes: &'a [u8],
        what: &'static str,
        newest: u8,
    ) -> Result<(Self, u8), DecodeError> {
        let mut decoder = Self { bytes, what };
        let version = decoder.u8()?;
        if !(RECORD_VERSION..=newest).contains(&version) {
            return Err(DecodeError(format!(
                "{what}: unknown record version {version}"
            )));
        }
        Ok((decoder, version))
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(DecodeError(format!("{}: record too short", self.what)));
        };
        self.bytes = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            flag => Err(DecodeError(format!(
                "{}: bad option flag {flag}",
                self.what
            ))),
        }
    }
    /// A u128 appended to a record after its first layout: zero when the record ends before it
    /// (written before the field existed).
    fn appended_u128(&mut self) -> Result<u128, DecodeError> {
        if self.bytes.is_empty() {
            return Ok(0);
        }
        self.u128()
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "{}: {} trailing bytes",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

fn encoder(capacity: usize) -> Vec<u8> {
    versioned_encoder(RECORD_VERSION, capacity)
}

fn versioned_encoder(version: u8, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + 1);
    out.push(version);
    out
}

fn put_option<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            write(out, value);
        }
    }
}

/// Key of a channel: `payer ‖ payee`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ChannelKey {
    /// who pays
    pub payer: PayerKey,
    /// who is paid
    pub payee: Address,
}

/// Bytes of a channel key.
pub const CHANNEL_KEY_BYTES: usize = 52;

impl ChannelKey {
    /// `payer ‖ payee`: channels of one payer are adjacent.
    pub fn to_bytes(&self) -> [u8; CHANNEL_KEY_BYTES] {
        let mut out = [0u8; CHANNEL_KEY_BYTES];
        out[..32].copy_from_slice(&self.payer.0);
        out[32..].copy_from_slice(&self.payee.0);
        out
    }
    /// `payee ‖ payer`, the key of the payee index.
    pub fn to_payee_index(&self) -> [u8; CHANNEL_KEY_BYTES] {
        let mut out = [0u8; CHANNEL_KEY_BYTES];
        out[..20].copy_from_slice(&self.payee.0);
        out[20..].copy_from_slice(&self.payer.0);
        out
    }
    /// Parses `payer ‖ payee`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; CHANNEL_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| DecodeError(format!("channel key of {} bytes", bytes.len())))?;
        let mut payer = [0u8; 32];
        let mut payee = [0u8; 20];
        payer.copy_from_slice(&bytes[..32]);
        payee.copy_from_slice(&bytes[32..]);
        Ok(Self {
            payer: PayerKey(payer),
            payee: Address(payee),
        })
    }
    /// Parses `payee ‖ payer`.
    pub fn from_payee_index(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; CHANNEL_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| DecodeError(format!("payee index key of {} bytes", bytes.len())))?;
        let mut payer = [0u8; 32];
        let mut payee = [0u8; 20];
        payee.copy_from_slice(&bytes[..20]);
        payer.copy_from_slice(&bytes[20..]);
        Ok(Self {
            payer: PayerKey(payer),
            payee: Address(payee),
        })
    }
}

/// State of one channel (payer, payee).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChannelState {
    /// Total of every accepted receipt, ever.
    pub cumulative: u128,
    /// Accepted receipts.
    pub receipts: u64,
    /// Latest timestamp among accepted receipts.
    pub last_timestamp_ms: u64,
    /// The open epoch this channel was last indexed in (0: never).
    pub indexed_epoch: u64,
    /// Anti-replay window.
    pub window: NonceWindow,
}

impl ChannelState {
    /// A channel that has accepted nothing.
    pub fn empty(window_nonces: u32) -> Self {
        Self {
            cumulative: 0,
            receipts: 0,
            last_timestamp_ms: 0,
            indexed_epoch: 0,
            window: NonceWindow::new(window_nonces),
        }
    }

    /// Layout: cumulative u128, receipts u64, last_timestamp_ms u64, indexed_epoch u64,
    /// top option<u64>, word count u16, words u64 each.
    pub fn encode(&self) -> Vec<u8> {
        let words = self.window.words();
        let mut out = encoder(16 + 8 * 3 + 9 + 2 + 8 * words.len());
        out.extend_from_slice(&self.cumulative.to_le_bytes());
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.last_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.indexed_epoch.to_le_bytes());
        put_option(&mut out, self.window.top(), |out, top| {
            out.extend_from_slice(&top.to_le_bytes())
        });
        // Word count fits: window_nonces is a u32 checked at open against the stored format.
        out.extend_from_slice(&(words.len() as u16).to_le_bytes());
        for word in words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Inverse of [`ChannelState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "channel")?;
        let cumulative = d.u128()?;
        let receipts = d.u64()?;
        let last_timestamp_ms = d.u64()?;
        let indexed_epoch = d.u64()?;
        let top = d.option(|d| d.u64())?;
        let count = d.u16()?;
        if count < 2 {
            return Err(DecodeError(format!("channel: window of {count} words")));
        }
        let words = (0..count)
            .map(|_| d.u64())
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        d.finish()?;
        Ok(Self {
            cumulative,
            receipts,
            last_timestamp_ms,
            indexed_epoch,
            window: NonceWindow::from_parts(top, words),
        })
    }
}

/// Funds of one payer. Amounts in the token's smallest unit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PayerState {
    /// Sum of every deposit seen onchain.
    pub deposited: u128,
    /// Withdrawals requested onchain and not yet completed: no longer spendable.
    pub withdrawal_requested: u128,
    /// Withdrawals completed onchain.
    pub withdrawn: u128,
    /// Debited in committed epochs.
    pub settled: u128,
    /// Accepted, not yet settled (open and sealed-but-uncommitted epochs).
    pub pending: u128,
    /// The part of `pending` that belongs to the open epoch, or to the epoch being sealed while
    /// `indexed_epoch` is that epoch and the seal has not reached this payer.
    pub unsealed: u128,
    /// Receipts accepted from this payer, over all its channels.
    pub receipts: u64,
    /// Channels (payees) this payer has had a receipt accepted for.
    pub channels: u64,
    /// The open epoch whose index last listed this payer (0: never).
    pub indexed_epoch: u64,
    /// Debited in committed epochs beyond what the chain still held (an exit overtook them):
    /// written off instead of settled, see [`EntryKind::Shortfall`].
    pub shortfall: u128,
}

impl PayerState {
    /// What the payer may still spend: deposited − withdrawn − withdrawal requested − settled −
    /// pending, or zero when withdrawals have taken it below (the chain is the authority).
    pub fn available(&self) -> u128 {
        self.deposited
            .checked_sub(self.withdrawn)
            .and_then(|v| v.checked_sub(self.withdrawal_requested))
            .and_then(|v| v.checked_sub(self.settled))
            .and_then(|v| v.checked_sub(self.pending))
            .unwrap_or(0)
    }

    /// Six u128 fields, three u64 fields, then shortfall u128, in declaration order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(16 * 7 + 8 * 3);
        for field in [
            self.deposited,
            self.withdrawal_requested,
            self.withdrawn,
            self.settled,
            self.pending,
            self.unsealed,
        ] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.channels.to_le_bytes());
        out.extend_from_slice(&self.indexed_epoch.to_le_bytes());
        out.extend_from_slice(&self.shortfall.to_le_bytes());
        out
    }

    /// Inverse of [`PayerState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "payer")?;
        let state = Self {
            deposited: d.u128()?,
            withdrawal_requested: d.u128()?,
            withdrawn: d.u128()?,
            settled: d.u128()?,
            pending: d.u128()?,
            unsealed: d.u128()?,
            receipts: d.u64()?,
            channels: d.u64()?,
            indexed_epoch: d.u64()?,
            shortfall: d.appended_u128()?,
        };
        d.finish()?;
        Ok(state)
    }
}

/// Credits of one payee.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PayeeState {
    /// Sum of every accepted receipt paying this payee.
    pub credited: u128,
    /// Credited in committed epochs.
    pub settled: u128,
    /// The part of `credited − settled` that belongs to the open epoch (or to the epoch being
    /// sealed, as for [`PayerState::unsealed`]).
    pub unsealed: u128,
    /// The open epoch whose index last listed this payee (0: never).
    pub indexed_epoch: u64,
    /// Credited in committed epochs but cut because a payer's exit overtook the debit paying it:
    /// never settled. `settled + shortfall <= credited`.
    pub shortfall: u128,
}

impl PayeeState {
    /// Three u128 fields in declaration order, indexed_epoch u64, then shortfall u128.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(16 * 4 + 8);
        for field in [self.credited, self.settled, self.unsealed] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&self.indexed_epoch.to_le_bytes());
        out.extend_from_slice(&self.shortfall.to_le_bytes());
        out
    }

    /// Inverse of [`PayeeState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "payee")?;
        let state = Self {
            credited: d.u128()?,
            settled: d.u128()?,
            unsealed: d.u128()?,
            indexed_epoch: d.u64()?,
            shortfall: d.appended_u128()?,
        };
        d.finish()?;
        Ok(state)
    }
}

/// A producer's client session: its current session epoch and the sequence numbers of the
/// batches whose acks are kept (oldest first). Keyed by (client id, producer id): a producer id
/// means something only inside the authenticated client that uses it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ProducerState {
    /// Highest session epoch seen; older ones are refused.
    pub session_epoch: u64,
    /// Sequence numbers of the kept acks, oldest first, at most the configured count.
    pub recent: VecDeque<u64>,
}

/// A producer as the ledger knows it: the authenticated client and the producer id it chose.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ProducerKey {
    /// The client the connection authenticated as.
    pub client_id: u64,
    /// The producer id inside that client.
    pub producer_id: u64,
}

/// Key of a producer record in the sessions column family: `'p' ‖ client ‖ producer` (BE).
pub fn producer_key(producer: ProducerKey) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = b'p';
    out[1..9].copy_from_slice(&producer.client_id.to_be_bytes());
    out[9..].copy_from_slice(&producer.producer_id.to_be_bytes());
    out
}

/// Key of a stored ack: `'a' ‖ client ‖ producer ‖ session epoch ‖ batch seq` (all BE).
pub fn ack_key(producer: ProducerKey, session_epoch: u64, batch_seq: u64) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = b'a';
    out[1..9].copy_from_slice(&producer.client_id.to_be_bytes());
    out[9..17].copy_from_slice(&producer.producer_id.to_be_bytes());
    out[17..25].copy_from_slice(&session_epoch.to_be_bytes());
    out[25..].copy_from_slice(&batch_seq.to_be_bytes());
    out
}

/// blake3 of a batch's receipt bytes, kept beside its ack so a re-send can be told apart from
/// another batch under the same number.
pub type BatchDigest = [u8; 32];

/// The digest a batch's ack is stored with: blake3 of its receipt bytes as received.
pub fn batch_digest(batch: &ReceiptBatch) -> BatchDigest {
    *blake3::hash(batch.as_bytes()).as_bytes()
}

impl ProducerState {
    /// session_epoch u64, count u32, seqs u64 each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(12 + 8 * self.recent.len());
        out.extend_from_slice(&self.session_epoch.to_le_bytes());
        out.extend_from_slice(&(self.recent.len() as u32).to_le_bytes());
        for seq in &self.recent {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    /// Inverse of [`ProducerState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "producer")?;
        let session_epoch = d.u64()?;
        let count = d.u32()?;
        let recent = (0..count).map(|_| d.u64()).collect::<Result<_, _>>()?;
        d.finish()?;
        Ok(Self {
            session_epoch,
            recent,
        })
    }
}

/// digest 32 bytes, batch_seq u64, accepted u32, count u32, then (index u32, reason code u8)
/// each.
pub fn encode_ack(ack: &BatchAck, digest: &BatchDigest) -> Vec<u8> {
    let mut out = encoder(32 + 16 + 5 * ack.rejections.len());
    out.extend_from_slice(digest);
    out.extend_from_slice(&ack.batch_seq.to_le_bytes());
    out.extend_from_slice(&ack.accepted.to_le_bytes());
    out.extend_from_slice(&(ack.rejections.len() as u32).to_le_bytes());
    for (index, reason) in &ack.rejections {
        out.extend_from_slice(&index.to_le_bytes());
        out.push(reason.code());
    }
    out
}

/// Inverse of [`encode_ack`].
pub fn decode_ack(bytes: &[u8]) -> Result<(BatchAck, BatchDigest), DecodeError> {
    let mut d = Decoder::new(bytes, "ack")?;
    let digest = d.take::<32>()?;
    let batch_seq = d.u64()?;
    let accepted = d.u32()?;
    let count = d.u32()?;
    let rejections = (0..count)
        .map(|_| {
            let index = d.u32()?;
            let code = d.u8()?;
            let reason = Reason::from_code(code)
                .ok_or_else(|| DecodeError(format!("ack: unknown reason code {code}")))?;
            Ok((index, reason))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    d.finish()?;
    Ok((
        BatchAck {
            batch_seq,
            accepted,
            rejections,
        },
        digest,
    ))
}

/// The open epoch: its number and what it holds so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OpenEpoch {
    /// Number the epoch will have when sealed (the first is 1).
    pub epoch: u64,
    /// Receipts accepted into it.
    pub receipts: u64,
    /// Amount it will debit (accepted receipts plus amounts carried over from disputed epochs).
    pub amount: u128,
}

impl Default for OpenEpoch {
    fn default() -> Self {
        Self {
            epoch: 1,
            receipts: 0,
            amount: 0,
        }
    }
}

/// Metadata key of the open epoch.
pub const OPEN_EPOCH_KEY: &[u8] = b"open_epoch";
/// Metadata key of the funds cursor.
pub const FUNDS_CURSOR_KEY: &[u8] = b"funds_cursor";

impl OpenEpoch {
    /// epoch u64, receipts u64, amount u128.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(32);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        out
    }
    /// Inverse of [`OpenEpoch::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "open epoch")?;
        let open = Self {
            epoch: d.u64()?,
            receipts: d.u64()?,
            amount: d.u128()?,
        };
        d.finish()?;
        Ok(open)
    }
}

/// An epoch cut off by a seal whose entries are still being written, chunk by chunk, between
/// receipt groups. Persisted in every group that moves it, with the entries it counts, so a
/// restart resumes where the disk is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SealingEpoch {
    /// The epoch being sealed.
    pub epoch: u64,
    /// Receipts accepted into it, frozen at the cut.
    pub receipts: u64,
    /// Amount it debits, frozen at the cut.
    pub amount: u128,
    /// Leaf entries written so far.
    pub leaves: u64,
    /// Sum of the debit entries written so far.
    pub debits: u128,
    /// Sum of the credit entries written so far.
    pub credits: u128,
    /// Debit and credit entries written so far; `None` for a seal begun by a version that did
    /// not count them (its epoch record then has no counts either).
    pub counts: Option<EntryCounts>,
    /// Index suffix ([`index_suffix`]) of the last key the seal processed in order; keys after
    /// it that are still listed in this epoch have not been written yet.
    pub cursor: Option<Vec<u8>>,
}

/// Metadata key of the epoch being sealed; absent when no seal is running.
pub const SEALING_EPOCH_KEY: &[u8] = b"sealing_epoch";

/// Version of [`SealingEpoch`] records: 2 adds the entry counts after the cursor.
const SEALING_EPOCH_VERSION: u8 = 2;

impl SealingEpoch {
    /// epoch u64, receipts u64, amount u128, leaves u64, debits u128, credits u128, option
    /// cursor (length u8, bytes); from version 2, option counts (debits u64, credits u64).
    pub fn encode(&self) -> Vec<u8> {
        let cursor_len = self.cursor.as_ref().map_or(0, Vec::len);
        let mut out =
            versioned_encoder(SEALING_EPOCH_VERSION, 8 * 3 + 16 * 3 + 2 + cursor_len + 17);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.leaves.to_le_bytes());
        out.extend_from_slice(&self.debits.to_le_bytes());
        out.extend_from_slice(&self.credits.to_le_bytes());
        put_option(&mut out, self.cursor.as_ref(), |out, cursor| {
            // Fits: a suffix is a kind byte and a key of at most 52 bytes.
            out.push(cursor.len() as u8);
            out.extend_from_slice(cursor);
        });
        put_option(&mut out, self.counts, EntryCounts::put);
        out
    }
    /// Inverse of [`SealingEpoch::encode`]; reads version 1 too (without counts).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut d, version) = Decoder::versioned(bytes, "sealing epoch", SEALING_EPOCH_VERSION)?;
        let mut record = Self {
            epoch: d.u64()?,
            receipts: d.u64()?,
            amount: d.u128()?,
            leaves: d.u64()?,
            debits: d.u128()?,
            credits: d.u128()?,
            cursor: d.option(|d| {
                let len = d.u8()?;
                (0..len).map(|_| d.u8()).collect()
            })?,
            counts: None,
        };
        if version >= 2 {
            record.counts = d.option(EntryCounts::read)?;
        }
        d.finish()?;
        Ok(record)
    }
}

/// The position of the last chain event the ledger applied: events at or before it are
/// already counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub struct FundsCursor {
    /// Block number.
    pub block: u64,
    /// Log index inside the block (`u64::MAX`: the whole block is done).
    pub log_index: u64,
}

impl FundsCursor {
    /// block u64, log_index u64.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(16);
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.log_index.to_le_bytes());
        out
    }
    /// Inverse of [`FundsCursor::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "funds cursor")?;
        let cursor = Self {
            block: d.u64()?,
            log_index: d.u64()?,
        };
        d.finish()?;
        Ok(cursor)
    }
}

/// Meta key of [`HeadWithdrawals`].
pub const HEAD_WITHDRAWALS_KEY: &[u8] = b"head_withdrawals";

/// Withdrawal requests the funds cursor has not reached yet (mined, not yet `confirmations`
/// deep), summed per payer. They are refused spend at once: a request the ledger waited to
/// confirm would let receipts through that the payer's exit can overtake onchain. The set is
/// replaced whole on every read of the chain's head, so a request a reorg drops stops counting,
/// and one that reaches the cursor moves into [`PayerState::withdrawal_requested`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct HeadWithdrawals(pub std::collections::BTreeMap<PayerKey, u128>);

impl HeadWithdrawals {
    /// What `payer` has requested at the head.
    pub fn of(&self, payer: &PayerKey) -> u128 {
        self.0.get(payer).copied().unwrap_or(0)
    }

    /// count u32, then per payer (sorted) its key and amount u128.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(4 + self.0.len() * 48);
        let count = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (payer, amount) in self.0.iter().take(count as usize) {
            out.extend_from_slice(&payer.0);
            out.extend_from_slice(&amount.to_le_bytes());
        }
        out
    }

    /// Inverse of [`HeadWithdrawals::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "head withdrawals")?;
        let count = d.u32()?;
        let requests = (0..count)
            .map(|_| Ok((PayerKey(d.take()?), d.u128()?)))
            .collect::<Result<_, DecodeError>>()?;
        d.finish()?;
        Ok(Self(requests))
    }
}

/// Format marker stored at creation: the layout version and the window size, which a later
/// start must not change (stored windows have that many words).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FormatRecord {
    /// Layout version of this data directory.
    pub layout: u32,
    /// Anti-replay window size the directory was created with.
    pub window_nonces: u32,
}

/// The layout this code writes. 2: producer sessions keyed by client id, a batch digest in each
/// stored ack, receipt and channel counts in each payer record; open-epoch index keys prefixed by
/// their epoch, an indexed epoch in each payer and payee record, and a resumable seal.
pub const LAYOUT_VERSION: u32 = 2;

impl FormatRecord {
    /// magic, layout u32, window_nonces u32.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(16);
        out.extend_from_slice(b"tollgate");
        out.extend_from_slice(&self.layout.to_le_bytes());
        out.extend_from_slice(&self.window_nonces.to_le_bytes());
        out
    }
    /// Inverse of [`FormatRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "format")?;
        if &d.take::<8>()? != b"tollgate" {
            return Err(DecodeError("format: not a Tollgate ledger".into()));
        }
        let record = Self {
            layout: d.u32()?,
            window_nonces: d.u32()?,
        };
        d.finish()?;
        Ok(record)
    }
}

/// How many entries of each kind a seal wrote: payers debited, payees credited.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EntryCounts {
    /// Debit entries (payers).
    pub debits: u64,
    /// Credit entries (payees).
    pub credits: u64,
}

impl EntryCounts {
    fn put(out: &mut Vec<u8>, counts: Self) {
        out.extend_from_slice(&counts.debits.to_le_bytes());
        out.extend_from_slice(&counts.credits.to_le_bytes());
    }
    fn read(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            debits: d.u64()?,
            credits: d.u64()?,
        })
    }
}

/// One part of an epoch's commit that landed onchain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PartRecord {
    /// Part number (the first is 0).
    pub part: u16,
    /// Hash of the transaction that carried it.
    pub tx_hash: [u8; 32],
    /// Block it landed in.
    pub block: u64,
}

/// What the ledger knows about a sealed epoch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EpochRecord {
    /// Epoch number (the first is 1).
    pub epoch: u64,
    /// Where settlement has got to.
    pub status: EpochStatus,
    /// Number of leaves (channels frozen by the seal).
    pub leaves: u64,
    /// Receipts accepted into the epoch.
    pub receipts: u64,
    /// Total debited (equal to total credited).
    pub amount: u128,
    /// Merkle root, once settle has computed it.
    pub root: Option<[u8; 32]>,
    /// Hash of the transaction of the highest-numbered part in `parts` (of the last part a run
    /// saw land, in records written before parts were kept).
    pub tx_hash: Option<[u8; 32]>,
    /// Block of that transaction.
    pub block: Option<u64>,
    /// Payers debited and payees credited, counted by the seal; `None` for an epoch sealed
    /// before counts were kept.
    pub counts: Option<EntryCounts>,
    /// Every part known to have landed, by part number; a part sent again after a reorg keeps
    /// only its latest landing.
    pub parts: Vec<PartRecord>,
}

/// Version of [`EpochRecord`] records: 2 adds the entry counts and the parts.
const EPOCH_RECORD_VERSION: u8 = 2;

/// Key of an epoch record.
pub fn epoch_key(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

impl EpochRecord {
    /// epoch, status, leaves, receipts, amount, option root, option tx hash, option block; from
    /// version 2, option counts (debits u64, credits u64) and the parts (count u32, then part
    /// u16, tx hash, block u64 each).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = versioned_encoder(
            EPOCH_RECORD_VERSION,
            8 + 1 + 16 + 16 + 33 + 33 + 9 + 17 + 4 + 42 * self.parts.len(),
        );
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.push(self.status.code());
        out.extend_from_slice(&self.leaves.to_le_bytes());
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.amount.to_le_bytes());
        put_option(&mut out, self.root, |out, v| out.extend_from_slice(&v));
        put_option(&mut out, self.tx_hash, |out, v| out.extend_from_slice(&v));
        put_option(&mut out, self.block, |out, v| {
            out.extend_from_slice(&v.to_le_bytes())
        });
        put_option(&mut out, self.counts, EntryCounts::put);
        // Fits: part numbers are u16 and unique.
        out.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        for part in &self.parts {
            out.extend_from_slice(&part.part.to_le_bytes());
            out.extend_from_slice(&part.tx_hash);
            out.extend_from_slice(&part.block.to_le_bytes());
        }
        out
    }
    /// Inverse of [`EpochRecord::encode`]; reads version 1 too (without counts or parts).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut d, version) = Decoder::versioned(bytes, "epoch", EPOCH_RECORD_VERSION)?;
        let epoch = d.u64()?;
        let code = d.u8()?;
        let status = EpochStatus::from_code(code)
            .ok_or_else(|| DecodeError(format!("epoch: unknown status {code}")))?;
        let mut record = Self {
            epoch,
            status,
            leaves: d.u64()?,
            receipts: d.u64()?,
            amount: d.u128()?,
            root: d.option(|d| d.take::<32>())?,
            tx_hash: d.option(|d| d.take::<32>())?,
            block: d.option(|d| d.u64())?,
            counts: None,
            parts: Vec::new(),
        };
        if version >= 2 {
            record.counts = d.option(EntryCounts::read)?;
            let parts = d.u32()?;
            // Each part is 42 bytes: a count the bytes cannot hold is refused before allocating.
            if usize::try_from(parts)
                .ok()
                .is_none_or(|parts| parts > d.bytes.len() / 42)
            {
                return Err(DecodeError(format!("epoch: {parts} parts do not fit")));
            }
            record.parts = (0..parts)
                .map(|_| {
                    Ok(PartRecord {
                        part: d.u16()?,
                        tx_hash: d.take::<32>()?,
                        block: d.u64()?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
        }
        d.finish()?;
        Ok(record)
    }
}

/// Kinds of entries of a sealed epoch, the byte after the epoch number in their keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryKind {
    /// `payer ‖ payee` → cumulative
    Leaf = b'l' as isize,
    /// `payer` → debit
    Debit = b'd' as isize,
    /// `payee` → credit
    Credit = b'c' as isize,
    /// `payer ‖ payee` → the part of the channel's movement in this epoch that was not committed:
    /// the payer's exit overtook its debit onchain (`Overdraft`), so its debit and this payee's
    /// credit went onchain reduced by this much. Written before the commit, by
    /// `record_shortfall`; absent in nearly every epoch.
    Shortfall = b's' as isize,
}

/// Key of an epoch entry: `epoch (BE) ‖ kind ‖ id`.
pub fn entry_key(epoch: u64, kind: EntryKind, id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + id.len());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(id);
    out
}

/// Prefix of every entry of one kind in one epoch.
pub fn entry_prefix(epoch: u64, kind: EntryKind) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[..8].copy_from_slice(&epoch.to_be_bytes());
    out[8] = kind as u8;
    out
}

/// A bare amount (u128).
pub fn encode_amount(amount: u128) -> Vec<u8> {
    let mut out = encoder(16);
    out.extend_from_slice(&amount.to_le_bytes());
    out
}

/// Inverse of [`encode_amount`].
pub fn decode_amount(bytes: &[u8]) -> Result<u128, DecodeError> {
    let mut d = Decoder::new(bytes, "amount")?;
    let amount = d.u128()?;
    d.finish()?;
    Ok(amount)
}

/// What an open-epoch index key names: the byte after the epoch number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IndexKind {
    /// `payer ‖ payee`: the channel becomes a leaf.
    Channel = b'c' as isize,
    /// `payer`: its unsealed amount becomes a debit.
    Payer = b'p' as isize,
    /// `payee`: its unsealed amount becomes a credit.
    Payee = b'e' as isize,
}

impl IndexKind {
    /// The kind a stored key byte names.
    pub fn from_byte(byte: u8) -> Option<Self> {
        [Self::Channel, Self::Payer, Self::Payee]
            .into_iter()
            .find(|kind| *kind as u8 == byte)
    }
}

/// The part of an open-epoch index key after the epoch number: `kind ‖ id`. Seal progress is a
/// position in this order, so the suffixes of one epoch compare as their keys do.
pub fn index_suffix(kind: IndexKind, id: &[u8]) -> Vec<u8> {
    [&[kind as u8][..], id].concat()
}

/// Key of the open-epoch index: `epoch (BE) ‖ kind ‖ id`, what the seal of `epoch` must visit.
/// The epoch comes first so that the epoch being sealed and the one being filled never mix.
pub fn index_key(epoch: u64, suffix: &[u8]) -> Vec<u8> {
    [&epoch.to_be_bytes()[..], suffix].concat()
}

/// Parses a 32-byte payer key.
pub fn payer_from(bytes: &[u8]) -> Result<PayerKey, DecodeError> {
    <[u8; 32]>::try_from(bytes)
        .map(PayerKey)
        .map_err(|_| DecodeError(format!("payer key of {} bytes", bytes.len())))
}

/// Parses a 20-byte address.
pub fn address_from(bytes: &[u8]) -> Result<Address, DecodeError> {
    <[u8; 20]>::try_from(bytes)
        .map(Address)
        .map_err(|_| DecodeError(format!("address of {} bytes", bytes.len())))
}

impl Cached for ChannelState {
    type Key = ChannelKey;
    const CF: Cf = Cf::Channels;
    fn key_bytes(key: &ChannelKey) -> Vec<u8> {
        key.to_bytes().to_vec()
    }
    fn encode(&self) -> Vec<u8> {
        ChannelState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        ChannelState::decode(bytes)
    }
    fn receipt_money(&self) -> u128 {
        self.cumulative
    }
}

impl Cached for PayerState {
    type Key = PayerKey;
    const CF: Cf = Cf::Payers;
    fn key_bytes(key: &PayerKey) -> Vec<u8> {
        key.0.to_vec()
    }
    fn encode(&self) -> Vec<u8> {
        PayerState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        PayerState::decode(bytes)
    }
    /// Settling moves money from pending to settled (or, past what the chain held, to
    /// shortfall) and a dispute moves it back: only a receipt changes their sum. Saturating
    /// because a sum that does not fit has been refused as `Overflow` before it was applied.
    fn receipt_money(&self) -> u128 {
        self.pending
            .saturating_add(self.settled)
            .saturating_add(self.shortfall)
    }
}

impl Cached for PayeeState {
    type Key = Address;
    const CF: Cf = Cf::Payees;
    fn key_bytes(key: &Address) -> Vec<u8> {
        key.0.to_vec()
    }
    fn encode(&self) -> Vec<u8> {
        PayeeState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        PayeeState::decode(bytes)
    }
    fn receipt_money(&self) -> u128 {
        self.credited
    }
}

impl Cached for ProducerState {
    type Key = ProducerKey;
    const CF: Cf = Cf::Sessions;
    fn key_bytes(key: &ProducerKey) -> Vec<u8> {
        producer_key(*key).to_vec()
    }
    fn encode(&self) -> Vec<u8> {
        ProducerState::encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        ProducerState::decode(bytes)
    }
    fn receipt_money(&self) -> u128 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_trailing_or_short_bytes() {
        let mut window = NonceWindow::new(128);
        window.insert(77);
        let channel = ChannelState {
            cumulative: u128::MAX - 3,
            receipts: 9,
            last_timestamp_ms: 123,
            indexed_epoch: 4,
            window,
        };
        let bytes = channel.encode();
        assert_eq!(ChannelState::decode(&bytes), Ok(channel));
        assert!(ChannelState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ChannelState::decode(&[bytes.as_slice(), &[0]].concat()).is_err());

        let payer = PayerState {
            deposited: 1,
            withdrawal_requested: 2,
            withdrawn: 3,
            settled: 4,
            pending: 5,
            unsealed: 6,
            receipts: 7,
            channels: 8,
            indexed_epoch: 7,
            shortfall: 9,
        };
        assert_eq!(PayerState::decode(&payer.encode()), Ok(payer));
        // Records written before shortfalls existed end before the field: it reads as zero.
        let bytes = payer.encode();
        assert_eq!(
            PayerState::decode(&bytes[..bytes.len() - 16]),
            Ok(PayerState {
                shortfall: 0,
                ..payer
            })
        );
        assert!(PayerState::decode(&bytes[..bytes.len() - 1]).is_err());
        let head =
            HeadWithdrawals([(PayerKey([3; 32]), 40), (PayerKey([9; 32]), u128::MAX)].into());
        let bytes = head.encode();
        assert_eq!(HeadWithdrawals::decode(&bytes), Ok(head));
        assert!(HeadWithdrawals::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            HeadWithdrawals::decode(&HeadWithdrawals::default().encode()),
            Ok(HeadWithdrawals::default())
        );
        let payee = PayeeState {
            credited: 1,
            settled: 2,
            unsealed: 3,
            indexed_epoch: 4,
            shortfall: 5,
        };
        assert_eq!(PayeeState::decode(&payee.encode()), Ok(payee));
        let bytes = payee.encode();
        assert_eq!(
            PayeeState::decode(&bytes[..bytes.len() - 16]),
            Ok(PayeeState {
                shortfall: 0,
                ..payee
            })
        );

        for (cursor, counts) in [
            (None, None),
            (
                Some(index_suffix(IndexKind::Payee, &[9; 20])),
                Some(EntryCounts {
                    debits: 2,
                    credits: 3,
                }),
            ),
        ] {
            let sealing = SealingEpoch {
                epoch: 3,
                receipts: 4,
                amount: 5,
                leaves: 6,
                debits: 7,
                credits: 8,
                counts,
                cursor,
            };
            let bytes = sealing.encode();
            assert_eq!(SealingEpoch::decode(&bytes), Ok(sealing));
            assert!(SealingEpoch::decode(&bytes[..bytes.len() - 1]).is_err());
        }

        let ack = BatchAck {
            batch_seq: 5,
            accepted: 2,
            rejections: vec![(0, Reason::Duplicate), (3, Reason::Stale)],
        };
        assert_eq!(decode_ack(&encode_ack(&ack, &[9; 32])), Ok((ack, [9; 32])));

        let producer = ProducerState {
            session_epoch: 3,
            recent: [1, 2, 3].into(),
        };
        assert_eq!(ProducerState::decode(&producer.encode()), Ok(producer));

        let epoch = EpochRecord {
            epoch: 2,
            status: EpochStatus::Submitted,
            leaves: 10,
            receipts: 11,
            amount: 12,
            root: Some([1; 32]),
            tx_hash: Some([3; 32]),
            block: Some(99),
            counts: Some(EntryCounts {
                debits: 4,
                credits: 5,
            }),
            parts: vec![
                PartRecord {
                    part: 0,
                    tx_hash: [2; 32],
                    block: 98,
                },
                PartRecord {
                    part: 1,
                    tx_hash: [3; 32],
                    block: 99,
                },
            ],
        };
        let bytes = epoch.encode();
        assert_eq!(EpochRecord::decode(&bytes), Ok(epoch));
        assert!(EpochRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut wrong_version = PayeeState::default().encode();
        wrong_version[0] = 9;
        assert!(PayeeState::decode(&wrong_version).is_err());
    }

    /// Records written before counts and parts were kept (version 1) still decode, without them.
    #[test]
    fn version_1_epoch_and_sealing_records_decode() {
        let mut epoch = vec![1];
        epoch.extend_from_slice(&7u64.to_le_bytes());
        epoch.push(EpochStatus::Committed.code());
        epoch.extend_from_slice(&3u64.to_le_bytes());
        epoch.extend_from_slice(&4u64.to_le_bytes());
        epoch.extend_from_slice(&5u128.to_le_bytes());
        epoch.extend_from_slice(&[1; 33]);
        epoch.extend_from_slice(&[1; 33]);
        epoch.push(1);
        epoch.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(
            EpochRecord::decode(&epoch),
            Ok(EpochRecord {
                epoch: 7,
                status: EpochStatus::Committed,
                leaves: 3,
                receipts: 4,
                amount: 5,
                root: Some([1; 32]),
                tx_hash: Some([1; 32]),
                block: Some(9),
                counts: None,
                parts: Vec::new(),
            })
        );

        let mut sealing = vec![1];
        for value in [3u64, 4] {
            sealing.extend_from_slice(&value.to_le_bytes());
        }
        sealing.extend_from_slice(&5u128.to_le_bytes());
        sealing.extend_from_slice(&6u64.to_le_bytes());
        sealing.extend_from_slice(&7u128.to_le_bytes());
        sealing.extend_from_slice(&7u128.to_le_bytes());
        sealing.push(0);
        let decoded = SealingEpoch::decode(&sealing).expect("version 1 decodes");
        assert_eq!((decoded.epoch, decoded.counts), (3, None));

        let mut unknown = EpochRecord::decode(&epoch).expect("decodes").encode();
        unknown[0] = 3;
        assert!(EpochRecord::decode(&unknown).is_err());
    }
}
