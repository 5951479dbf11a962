//! What the ledger stores, and its byte layout: each record's `encode` and `decode` side by side.
//!
//! Records are fixed layouts of little-endian integers behind a one-byte version, so a reader
//! never guesses. Keys are big-endian where order matters (epochs, sequence numbers) so RocksDB
//! iterates them in numeric order.
//!
//! One file per family of records: `accounts` (channels, payers, payees), `sessions` (producer
//! sessions and their acks), `meta` (the open and sealing epochs, the funds cursor, the
//! withdrawal requests at the chain's head), `epochs` (sealed epochs, their entries and the
//! open-epoch index), `grants` (session grants and their windows). This file holds what they share: the version byte, the field decoder and
//! encoders, and the format record that fixes the layout of a data directory.

mod accounts;
mod epochs;
mod grants;
mod meta;
mod sessions;
#[cfg(test)]
mod tests;

pub use accounts::*;
pub use epochs::*;
pub use grants::*;
pub use meta::*;
pub use sessions::*;

use std::collections::VecDeque;

use crate::receipt::{Address, PayerKey, ReceiptBatch};
use crate::store::Cf;
use crate::verdict::Reason;

use super::cache::{CacheValue, Cached};
use super::window::NonceWindow;
use super::{BatchAck, BatchOutcome, EpochStatus};

/// Version byte in front of every record written by this code.
const RECORD_VERSION: u8 = 1;

pub use super::error::DecodeError;

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
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            flag => Err(DecodeError(format!("{}: bad flag {flag}", self.what))),
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
    let mut out = Vec::new();
    start_record(&mut out, version, capacity);
    out
}

/// Starts a record of `version` at the end of `out`, with room for `capacity` bytes after it.
fn start_record(out: &mut Vec<u8>, version: u8, capacity: usize) {
    out.reserve(capacity + 1);
    out.push(version);
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

/// Format marker stored at creation: the layout version, the window size, which a later start
/// must not change (stored windows have that many words), and whether accepted receipts are
/// archived (an epoch half archived could not be audited).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FormatRecord {
    /// Layout version of this data directory.
    pub layout: u32,
    /// Anti-replay window size the directory was created with.
    pub window_nonces: u32,
    /// Every accepted receipt is kept in the archive. False in directories created before the
    /// archive existed: their record ends before the flag.
    pub archive_receipts: bool,
}

/// The layout this code writes. 2: producer sessions keyed by client id, a batch digest in each
/// stored ack, receipt and channel counts in each payer record; open-epoch index keys prefixed by
/// their epoch, an indexed epoch in each payer and payee record, and a resumable seal. 3: a
/// session's spend kept in its windows, no record of its own. 4: windows stored as runs of words
/// (channel record version 2, session window version 4).
pub const LAYOUT_VERSION: u32 = 4;

/// The older layouts a ledger still opens. Layout 2's session spends are folded into their
/// windows; layout 3's records need nothing (this build reads windows stored whole and rewrites
/// them as runs when next touched). Then the format record is rewritten, after which a build of
/// an older layout refuses the directory rather than misread it (a layout-2 build would look for
/// spends that are no longer where it expects them, and a session would spend again; a layout-3
/// build cannot read a window stored as runs).
pub const UPGRADABLE_LAYOUTS: [u32; 2] = [2, 3];

impl FormatRecord {
    /// magic, layout u32, window_nonces u32, archive_receipts u8 (0 or 1; appended later).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = encoder(17);
        out.extend_from_slice(b"tollgate");
        out.extend_from_slice(&self.layout.to_le_bytes());
        out.extend_from_slice(&self.window_nonces.to_le_bytes());
        out.push(u8::from(self.archive_receipts));
        out
    }
    /// Inverse of [`FormatRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "format")?;
        if &d.take::<8>()? != b"tollgate" {
            return Err(DecodeError("format: not a Tollgate ledger".into()));
        }
        let layout = d.u32()?;
        let window_nonces = d.u32()?;
        let archive_receipts = match d.bytes.is_empty() {
            true => false,
            false => d.flag()?,
        };
        d.finish()?;
        Ok(Self {
            layout,
            window_nonces,
            archive_receipts,
        })
    }
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
