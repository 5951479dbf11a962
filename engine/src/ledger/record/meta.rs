//! The ledger's metadata records: the open epoch, the epoch being sealed, the funds cursor and
//! the withdrawal requests at the chain's head.

use super::*;

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
/// Metadata key of the log position a cluster partition's ledger has applied through (absent:
/// a standalone ledger, or a partition that applied nothing yet).
pub const LOG_POSITION_KEY: &[u8] = b"log_position";
/// Metadata key of the highest epoch whose archive was pruned (absent: none was).
pub const ARCHIVE_PRUNED_THROUGH_KEY: &[u8] = b"archive_pruned_through";

/// Present once every grant record of the first layout was split (see
/// `ledger::grants::split_grant_records`), so later opens skip the scan.
pub const GRANT_RECORDS_SPLIT_KEY: &[u8] = b"grant_records_split";

/// A single u64 as a record: an epoch number (the archive's pruned-through mark) or a log
/// position (a cluster partition's stream sequence).
pub fn encode_u64_record(value: u64) -> Vec<u8> {
    let mut out = encoder(8);
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// Inverse of [`encode_u64_record`]; `what` names the record in errors.
pub fn decode_u64_record(bytes: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    let mut d = Decoder::new(bytes, what)?;
    let value = d.u64()?;
    d.finish()?;
    Ok(value)
}

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
