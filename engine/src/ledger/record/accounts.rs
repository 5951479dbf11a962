//! Channels, payers and payees: their keys, their state and its layout.

use super::*;

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

    /// Version 2: cumulative u128, receipts u64, last_timestamp_ms u64, indexed_epoch u64, then
    /// the window as runs ([`put_window`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let words = self.window.words();
        start_record(out, CHANNEL_VERSION, 16 + 8 * 3 + window_bytes(words.len()));
        out.extend_from_slice(&self.cumulative.to_le_bytes());
        out.extend_from_slice(&self.receipts.to_le_bytes());
        out.extend_from_slice(&self.last_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.indexed_epoch.to_le_bytes());
        put_window(out, &self.window);
    }

    /// Inverse of [`ChannelState::encode_into`], and version 1 (every window word whole). An older
    /// record is rewritten in version 2 the next time its channel takes a receipt.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (mut d, version) = Decoder::versioned(bytes, "channel", CHANNEL_VERSION)?;
        let state = d.channel_state(version)?;
        d.finish()?;
        Ok(state)
    }
}

/// Version 1 stored the window's words whole, version 2 as runs.
const CHANNEL_VERSION: u8 = 2;

impl Decoder<'_> {
    /// The fields of a [`ChannelState`] of `version`: also the body of a version-1 session window.
    pub(super) fn channel_state(&mut self, version: u8) -> Result<ChannelState, DecodeError> {
        let cumulative = self.u128()?;
        let receipts = self.u64()?;
        let last_timestamp_ms = self.u64()?;
        let indexed_epoch = self.u64()?;
        let window = match version {
            1 => self.plain_window()?,
            _ => self.window()?,
        };
        Ok(ChannelState {
            cumulative,
            receipts,
            last_timestamp_ms,
            indexed_epoch,
            window,
        })
    }
}

/// Writes a window as top option<u64>, word count u16, then the words as runs (version 2 of the
/// records that hold a window; version 1 stored every word whole, see [`Decoder::plain_window`]).
///
/// Each run is a tag byte, `kind << 6 | (length - 1)` for 1 to 64 words, and for a literal run
/// its words u64 each after it. Kinds: 0 words of all zeros, 1 words of all ones, 2 literal words.
/// A window over nonces taken in order is a run of ones, the word at the top and a run of zeros:
/// with 1,024 nonces about 23 bytes instead of 147, and an unused one 4 instead of 139. The ledger
/// writes one beside every channel and session window it touches, so the bytes flushed, logged
/// and compacted per receipt were mostly windows. Measured in docs/BENCHMARKS.md.
pub(super) fn put_window(out: &mut Vec<u8>, window: &NonceWindow) {
    put_option(out, window.top(), |out, top| {
        out.extend_from_slice(&top.to_le_bytes())
    });
    let words = window.words();
    // Word count fits: window_nonces is a u32 checked at open against the stored format.
    out.extend_from_slice(&(words.len() as u16).to_le_bytes());
    let mut rest = words;
    while let Some(&first) = rest.first() {
        let kind = WordRun::of(first);
        let length = rest
            .iter()
            .take(WordRun::MAX_WORDS)
            .take_while(|&&word| WordRun::of(word) == kind)
            .count();
        // `length` is 1..=64, so the tag's low six bits hold `length - 1`.
        out.push((kind as u8) << 6 | (length - 1) as u8);
        if kind == WordRun::Literal {
            for word in &rest[..length] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        rest = &rest[length..];
    }
}

/// Largest encoded size of a window of `words` words (every word a literal).
pub(super) fn window_bytes(words: usize) -> usize {
    9 + 2 + 8 * words + words.div_ceil(WordRun::MAX_WORDS)
}

/// What a run of a stored window's words holds.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum WordRun {
    Zeros = 0,
    Ones = 1,
    Literal = 2,
}

impl WordRun {
    const MAX_WORDS: usize = 64;

    fn of(word: u64) -> Self {
        match word {
            0 => Self::Zeros,
            u64::MAX => Self::Ones,
            _ => Self::Literal,
        }
    }
}

impl Decoder<'_> {
    /// Inverse of [`put_window`].
    pub(super) fn window(&mut self) -> Result<NonceWindow, DecodeError> {
        let top = self.option(|d| d.u64())?;
        let count = self.window_words()?;
        let mut words = Vec::with_capacity(count);
        while words.len() < count {
            let tag = self.u8()?;
            let length = usize::from(tag & 0x3f) + 1;
            if words.len() + length > count {
                return Err(DecodeError(format!(
                    "{}: window runs past its {count} words",
                    self.what
                )));
            }
            match tag >> 6 {
                0 => words.resize(words.len() + length, 0),
                1 => words.resize(words.len() + length, u64::MAX),
                2 => {
                    for _ in 0..length {
                        words.push(self.u64()?);
                    }
                }
                kind => {
                    return Err(DecodeError(format!(
                        "{}: window run of kind {kind}",
                        self.what
                    )));
                }
            }
        }
        Ok(NonceWindow::from_parts(top, words.into_boxed_slice()))
    }

    /// A window as version 1 of its record stored it: top option<u64>, word count u16, every
    /// word u64.
    pub(super) fn plain_window(&mut self) -> Result<NonceWindow, DecodeError> {
        let top = self.option(|d| d.u64())?;
        let count = self.window_words()?;
        let words = (0..count)
            .map(|_| self.u64())
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        Ok(NonceWindow::from_parts(top, words))
    }

    fn window_words(&mut self) -> Result<usize, DecodeError> {
        let count = self.u16()?;
        if count < 2 {
            return Err(DecodeError(format!(
                "{}: window of {count} words",
                self.what
            )));
        }
        Ok(usize::from(count))
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
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        start_record(out, RECORD_VERSION, 16 * 7 + 8 * 3);
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
    }

    /// Inverse of [`PayerState::encode_into`].
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
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        start_record(out, RECORD_VERSION, 16 * 4 + 8);
        for field in [self.credited, self.settled, self.unsealed] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&self.indexed_epoch.to_le_bytes());
        out.extend_from_slice(&self.shortfall.to_le_bytes());
    }

    /// Inverse of [`PayeeState::encode_into`].
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

impl CacheValue for ChannelState {
    type Key = ChannelKey;
    fn receipt_money(&self) -> u128 {
        self.cumulative
    }
}

impl Cached for ChannelState {
    const CF: Cf = Cf::Channels;
    type KeyBytes = [u8; CHANNEL_KEY_BYTES];
    fn key_bytes(key: &ChannelKey) -> Self::KeyBytes {
        key.to_bytes()
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        ChannelState::encode_into(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        ChannelState::decode(bytes)
    }
}

impl CacheValue for PayerState {
    type Key = PayerKey;
    /// Settling moves money from pending to settled (or, past what the chain held, to
    /// shortfall) and a dispute moves it back: only a receipt changes their sum. Saturating
    /// because a sum that does not fit has been refused as `Overflow` before it was applied.
    fn receipt_money(&self) -> u128 {
        self.pending
            .saturating_add(self.settled)
            .saturating_add(self.shortfall)
    }
}

impl Cached for PayerState {
    const CF: Cf = Cf::Payers;
    type KeyBytes = [u8; 32];
    fn key_bytes(key: &PayerKey) -> Self::KeyBytes {
        key.0
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        PayerState::encode_into(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        PayerState::decode(bytes)
    }
}

impl CacheValue for PayeeState {
    type Key = Address;
    fn receipt_money(&self) -> u128 {
        self.credited
    }
}

impl Cached for PayeeState {
    const CF: Cf = Cf::Payees;
    type KeyBytes = [u8; 20];
    fn key_bytes(key: &Address) -> Self::KeyBytes {
        key.0
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        PayeeState::encode_into(self, out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        PayeeState::decode(bytes)
    }
}
