//! Sealed epochs: their records, the parts of their commit, their entries, and the open-epoch
//! index a seal walks.

use super::*;

/// How many entries of each kind a seal wrote: payers debited, payees credited.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EntryCounts {
    /// Debit entries (payers).
    pub debits: u64,
    /// Credit entries (payees).
    pub credits: u64,
}

impl EntryCounts {
    pub(super) fn put(out: &mut Vec<u8>, counts: Self) {
        out.extend_from_slice(&counts.debits.to_le_bytes());
        out.extend_from_slice(&counts.credits.to_le_bytes());
    }
    pub(super) fn read(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
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
    /// For a disputed epoch: the open epoch its amounts were carried into, whose leaves include
    /// this epoch's channels (an auditor replays both). `None` for any other epoch, and for one
    /// disputed before this was recorded.
    pub carried_into: Option<u64>,
}

/// Version of [`EpochRecord`] records: 2 adds the entry counts and the parts, 3 the epoch a
/// disputed one was carried into.
const EPOCH_RECORD_VERSION: u8 = 3;

/// Key of an epoch record.
pub fn epoch_key(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

impl EpochRecord {
    /// epoch, status, leaves, receipts, amount, option root, option tx hash, option block; from
    /// version 2, option counts (debits u64, credits u64) and the parts (count u32, then part
    /// u16, tx hash, block u64 each); from version 3, option carried_into u64.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = versioned_encoder(
            EPOCH_RECORD_VERSION,
            8 + 1 + 16 + 16 + 33 + 33 + 9 + 17 + 4 + 42 * self.parts.len() + 9,
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
        put_option(&mut out, self.carried_into, |out, v| {
            out.extend_from_slice(&v.to_le_bytes())
        });
        out
    }
    /// Inverse of [`EpochRecord::encode`]; reads versions 1 (without counts or parts) and 2
    /// (without carried_into) too.
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
            carried_into: None,
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
        if version >= 3 {
            record.carried_into = d.option(|d| d.u64())?;
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
