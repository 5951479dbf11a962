//! Receipt v1: one fixed 176-byte record, its signing bytes, and the domain that binds a signature
//! to one deployment (version, chain id, settlement contract).
//!
//! Layout (all integers little-endian; offsets in bytes):
//!
//! | offset | size | field |
//! | ---: | ---: | --- |
//! | 0 | 32 | payer: ed25519 public key (the signer: the payer's deposit key, or a session key) |
//! | 32 | 20 | payee: EVM address |
//! | 52 | 1 | flags: bit 0 set when the key at offset 0 is a session key; other bits zero |
//! | 53 | 3 | reserved, must be zero |
//! | 56 | 8 | amount (u64, smallest unit of the settlement token) |
//! | 64 | 8 | nonce (u64) |
//! | 72 | 8 | timestamp (u64, unix milliseconds) |
//! | 80 | 32 | request hash (opaque) |
//! | 112 | 64 | signature: ed25519 `R ‖ S` over the signing bytes |
//!
//! The signing bytes are `DOMAIN_TAG ‖ chain_id ‖ contract ‖ receipt[0..112]`: 159 bytes, fixed
//! width. The flags and reserved bytes are signed too, so a later version can give them meaning
//! without a signature ever covering a different reading of them.
//!
//! The session flag is that kind of later meaning (docs/PROTOCOL.md, "Session capabilities"): a
//! receipt signed by a session key names the session key at offset 0 and says so in signed bytes,
//! and the ledger charges it to the payer whose grant names that key. The flag rather than a
//! lookup of every key: a payer's own receipts never pay for a grant lookup, a receipt meant for
//! a session can be told it has no grant instead of being taken for an unknown payer, and no key
//! is ever read two ways. Parsers from before the flag refuse such a receipt (its byte 52 is not
//! zero), never misread it.
//!
//! A batch is a run of records back to back. [`ReceiptView`] reads a record in place (no copy out
//! of the network buffer); [`Receipt`] is the owned form for tools and tests.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use thiserror::Error;

/// Size of one encoded receipt, signature included.
pub const RECEIPT_BYTES: usize = 176;
/// Size of the signed part of a receipt (everything before the signature).
pub const RECEIPT_BODY_BYTES: usize = 112;
/// Size of the signature at the end of a receipt.
pub const SIGNATURE_BYTES: usize = 64;
/// The string that opens every v1 signing message.
pub const DOMAIN_TAG: &[u8; 19] = b"tollgate-receipt-v1";
/// Size of the domain separator: tag, chain id (u64), contract address (20 bytes).
pub const DOMAIN_BYTES: usize = DOMAIN_TAG.len() + 8 + 20;
/// Size of the bytes a payer signs.
pub const SIGNING_BYTES: usize = DOMAIN_BYTES + RECEIPT_BODY_BYTES;

const PAYER: std::ops::Range<usize> = 0..32;
const PAYEE: std::ops::Range<usize> = 32..52;
const FLAGS: usize = 52;
const RESERVED: std::ops::Range<usize> = 53..56;
/// Flag bit: the key at offset 0 is a session key (see [`crate::grant`]).
pub const FLAG_SESSION: u8 = 0b1;
const AMOUNT: std::ops::Range<usize> = 56..64;
const NONCE: std::ops::Range<usize> = 64..72;
const TIMESTAMP: std::ops::Range<usize> = 72..80;
const REQUEST_HASH: std::ops::Range<usize> = 80..112;
const SIGNATURE: std::ops::Range<usize> = 112..176;

const _: () = assert!(SIGNATURE.end == RECEIPT_BYTES);
const _: () = assert!(REQUEST_HASH.end == RECEIPT_BODY_BYTES);
const _: () = assert!(RECEIPT_BODY_BYTES + SIGNATURE_BYTES == RECEIPT_BYTES);
const _: () = assert!(SIGNING_BYTES == 159);

/// An ed25519 public key naming a payer, as its 32-byte compressed encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayerKey(pub [u8; 32]);

/// A 20-byte EVM address naming a payee (or a contract).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 20]);

macro_rules! hex_display {
    ($ty:ty, $prefix:expr) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}
hex_display!(PayerKey, "");
hex_display!(Address, "0x");

/// Why a hex string did not parse as a key, address or hash.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HexError {
    /// The text is not hexadecimal.
    #[error("not hex: {0}")]
    NotHex(String),
    /// The text is hex but of the wrong length.
    #[error("expected {expected} bytes of hex, got {got}")]
    Length {
        /// bytes wanted
        expected: usize,
        /// bytes given
        got: usize,
    },
}

/// Parses `N` bytes of hex, with or without a `0x` prefix.
pub fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(digits).map_err(|e| HexError::NotHex(e.to_string()))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| HexError::Length {
        expected: N,
        got: bytes.len(),
    })
}

impl std::str::FromStr for PayerKey {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(PayerKey)
    }
}

impl std::str::FromStr for Address {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Address)
    }
}

/// The deployment a receipt is signed for. Part of every signing message, so a receipt signed for
/// one chain or contract never verifies on another.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Domain {
    /// EVM chain id of the settlement chain.
    pub chain_id: u64,
    /// Address of the settlement contract.
    pub contract: Address,
}

impl Domain {
    /// The separator that prefixes every signing message of this domain.
    pub fn separator(&self) -> [u8; DOMAIN_BYTES] {
        let mut out = [0u8; DOMAIN_BYTES];
        let tag = DOMAIN_TAG.len();
        out[..tag].copy_from_slice(DOMAIN_TAG);
        out[tag..tag + 8].copy_from_slice(&self.chain_id.to_le_bytes());
        out[tag + 8..].copy_from_slice(&self.contract.0);
        out
    }
}

/// A record that does not parse as a v1 receipt.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// The slice is not exactly [`RECEIPT_BYTES`] long.
    #[error("a receipt is {RECEIPT_BYTES} bytes, got {0}")]
    Length(usize),
    /// The reserved bytes at offset 53..56, or an unassigned flag bit at offset 52, are not zero.
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
}

/// A borrowed, validated view of one encoded receipt. Reading a field reads the buffer in place.
#[derive(Clone, Copy)]
pub struct ReceiptView<'a> {
    bytes: &'a [u8; RECEIPT_BYTES],
}

impl fmt::Debug for ReceiptView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_owned(), f)
    }
}

fn le_u64(bytes: &[u8; RECEIPT_BYTES], range: std::ops::Range<usize>) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[range]);
    u64::from_le_bytes(word)
}

fn array<const N: usize>(bytes: &[u8; RECEIPT_BYTES], range: std::ops::Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[range]);
    out
}

impl<'a> ReceiptView<'a> {
    /// Parses one record. The only check is the one a v1 parser owes: the length and the reserved
    /// bytes. Whether the signature holds is the verifier's question.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ReceiptError> {
        let bytes: &'a [u8; RECEIPT_BYTES] = bytes
            .try_into()
            .map_err(|_| ReceiptError::Length(bytes.len()))?;
        if bytes[RESERVED] != [0u8; 3] || bytes[FLAGS] & !FLAG_SESSION != 0 {
            return Err(ReceiptError::ReservedNotZero);
        }
        Ok(Self { bytes })
    }

    /// The whole encoded record.
    pub fn as_bytes(&self) -> &'a [u8; RECEIPT_BYTES] {
        self.bytes
    }
    /// The signed part of the record (everything but the signature).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[..RECEIPT_BODY_BYTES]
    }
    /// The key at offset 0, which signed the receipt: the payer's deposit key, or a session key
    /// when [`ReceiptView::is_session`].
    pub fn payer(&self) -> PayerKey {
        PayerKey(array(self.bytes, PAYER))
    }
    /// True when the key at offset 0 is a session key, charged through its grant.
    pub fn is_session(&self) -> bool {
        self.bytes[FLAGS] & FLAG_SESSION != 0
    }
    /// The payee's address.
    pub fn payee(&self) -> Address {
        Address(array(self.bytes, PAYEE))
    }
    /// Amount in the smallest unit of the settlement token.
    pub fn amount(&self) -> u64 {
        le_u64(self.bytes, AMOUNT)
    }
    /// Per-channel nonce.
    pub fn nonce(&self) -> u64 {
        le_u64(self.bytes, NONCE)
    }
    /// Unix time in milliseconds, as the payer stated it.
    pub fn timestamp_ms(&self) -> u64 {
        le_u64(self.bytes, TIMESTAMP)
    }
    /// Opaque hash of the request the receipt pays for.
    pub fn request_hash(&self) -> [u8; 32] {
        array(self.bytes, REQUEST_HASH)
    }
    /// `R ‖ S`.
    pub fn signature(&self) -> [u8; SIGNATURE_BYTES] {
        array(self.bytes, SIGNATURE)
    }
    /// The bytes the payer signed under `domain`.
    pub fn signing_bytes(&self, domain: &Domain) -> [u8; SIGNING_BYTES] {
        let mut out = [0u8; SIGNING_BYTES];
        out[..DOMAIN_BYTES].copy_from_slice(&domain.separator());
        out[DOMAIN_BYTES..].copy_from_slice(self.body());
        out
    }
    /// An owned copy.
    pub fn to_owned(&self) -> Receipt {
        Receipt {
            payer: self.payer(),
            payee: self.payee(),
            amount: self.amount(),
            nonce: self.nonce(),
            timestamp_ms: self.timestamp_ms(),
            request_hash: self.request_hash(),
            session: self.is_session(),
            signature: self.signature(),
        }
    }
}

/// The fields a payer signs. Sign with [`UnsignedReceipt::sign`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnsignedReceipt {
    /// The signing key: the payer's deposit key, or a session key when `session`.
    pub payer: PayerKey,
    /// Who is paid.
    pub payee: Address,
    /// Amount in the smallest unit of the settlement token.
    pub amount: u64,
    /// Per-channel nonce.
    pub nonce: u64,
    /// Unix time in milliseconds.
    pub timestamp_ms: u64,
    /// Opaque hash of the request paid for.
    pub request_hash: [u8; 32],
    /// `payer` is a session key, charged to the payer whose grant names it.
    pub session: bool,
}

impl UnsignedReceipt {
    /// The signed part of the record.
    pub fn body(&self) -> [u8; RECEIPT_BODY_BYTES] {
        let mut out = [0u8; RECEIPT_BODY_BYTES];
        out[PAYER].copy_from_slice(&self.payer.0);
        out[PAYEE].copy_from_slice(&self.payee.0);
        out[AMOUNT].copy_from_slice(&self.amount.to_le_bytes());
        out[NONCE].copy_from_slice(&self.nonce.to_le_bytes());
        out[TIMESTAMP].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[REQUEST_HASH].copy_from_slice(&self.request_hash);
        if self.session {
            out[FLAGS] = FLAG_SESSION;
        }
        out
    }

    /// The bytes the payer signs under `domain`.
    pub fn signing_bytes(&self, domain: &Domain) -> [u8; SIGNING_BYTES] {
        let mut out = [0u8; SIGNING_BYTES];
        out[..DOMAIN_BYTES].copy_from_slice(&domain.separator());
        out[DOMAIN_BYTES..].copy_from_slice(&self.body());
        out
    }

    /// Signs with `key` (standard ed25519, RFC 8032). The payer field is whatever the caller set:
    /// signing with a key that does not match it yields a receipt that fails verification.
    pub fn sign(&self, key: &SigningKey, domain: &Domain) -> Receipt {
        let signature = key.sign(&self.signing_bytes(domain)).to_bytes();
        self.with_signature(signature)
    }

    /// Attaches a signature made elsewhere.
    pub fn with_signature(&self, signature: [u8; SIGNATURE_BYTES]) -> Receipt {
        Receipt {
            payer: self.payer,
            payee: self.payee,
            amount: self.amount,
            nonce: self.nonce,
            timestamp_ms: self.timestamp_ms,
            request_hash: self.request_hash,
            session: self.session,
            signature,
        }
    }
}

/// An owned receipt, signature included.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The signing key: the payer's deposit key, or a session key when `session`.
    pub payer: PayerKey,
    /// Who is paid.
    pub payee: Address,
    /// Amount in the smallest unit of the settlement token.
    pub amount: u64,
    /// Per-channel nonce.
    pub nonce: u64,
    /// Unix time in milliseconds.
    pub timestamp_ms: u64,
    /// Opaque hash of the request paid for.
    pub request_hash: [u8; 32],
    /// `payer` is a session key, charged to the payer whose grant names it.
    pub session: bool,
    /// `R ‖ S`.
    pub signature: [u8; SIGNATURE_BYTES],
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("payer", &self.payer)
            .field("payee", &self.payee)
            .field("amount", &self.amount)
            .field("nonce", &self.nonce)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("request_hash", &hex::encode(self.request_hash))
            .field("session", &self.session)
            .field("signature", &hex::encode(self.signature))
            .finish()
    }
}

impl Receipt {
    /// The fields without the signature.
    pub fn unsigned(&self) -> UnsignedReceipt {
        UnsignedReceipt {
            payer: self.payer,
            payee: self.payee,
            amount: self.amount,
            nonce: self.nonce,
            timestamp_ms: self.timestamp_ms,
            request_hash: self.request_hash,
            session: self.session,
        }
    }

    /// Writes the record into `out`.
    pub fn encode_into(&self, out: &mut [u8; RECEIPT_BYTES]) {
        out[..RECEIPT_BODY_BYTES].copy_from_slice(&self.unsigned().body());
        out[SIGNATURE].copy_from_slice(&self.signature);
    }

    /// The encoded record.
    pub fn to_bytes(&self) -> [u8; RECEIPT_BYTES] {
        let mut out = [0u8; RECEIPT_BYTES];
        self.encode_into(&mut out);
        out
    }

    /// Parses an owned receipt (same rules as [`ReceiptView::parse`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ReceiptError> {
        ReceiptView::parse(bytes).map(|view| view.to_owned())
    }
}

/// A whole number of encoded receipts, back to back, in one shared buffer. Built once from a
/// network frame and passed down the pipeline without copying records out of it.
#[derive(Clone, Default)]
pub struct ReceiptBatch {
    bytes: bytes::Bytes,
}

impl fmt::Debug for ReceiptBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptBatch")
            .field("receipts", &self.len())
            .finish()
    }
}

/// A buffer that is not a whole number of receipts.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0} bytes is not a whole number of {RECEIPT_BYTES}-byte receipts")]
pub struct BatchLengthError(pub usize);

impl ReceiptBatch {
    /// Wraps `bytes`, which must hold a whole number of records. Records are parsed one at a time by
    /// [`ReceiptBatch::get`], so one bad record is that record's problem, not the batch's.
    pub fn new(bytes: bytes::Bytes) -> Result<Self, BatchLengthError> {
        if !bytes.len().is_multiple_of(RECEIPT_BYTES) {
            return Err(BatchLengthError(bytes.len()));
        }
        Ok(Self { bytes })
    }

    /// Encodes owned receipts into a fresh batch.
    pub fn from_receipts(receipts: &[Receipt]) -> Self {
        let mut buf = Vec::with_capacity(receipts.len() * RECEIPT_BYTES);
        for receipt in receipts {
            buf.extend_from_slice(&receipt.to_bytes());
        }
        Self {
            bytes: bytes::Bytes::from(buf),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / RECEIPT_BYTES
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }

    /// Record `index`, parsed. `None` past the end.
    pub fn get(&self, index: usize) -> Option<Result<ReceiptView<'_>, ReceiptError>> {
        let start = index.checked_mul(RECEIPT_BYTES)?;
        let record = self.bytes.get(start..start.checked_add(RECEIPT_BYTES)?)?;
        Some(ReceiptView::parse(record))
    }

    /// Every record in order, parsed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<ReceiptView<'_>, ReceiptError>> {
        self.bytes
            .chunks_exact(RECEIPT_BYTES)
            .map(ReceiptView::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    fn sample(key: &SigningKey) -> UnsignedReceipt {
        UnsignedReceipt {
            payer: PayerKey(key.verifying_key().to_bytes()),
            payee: Address([0x11; 20]),
            amount: 1_500,
            nonce: 7,
            timestamp_ms: 1_764_000_000_000,
            request_hash: [0x22; 32],
            session: false,
        }
    }

    #[test]
    fn encode_then_parse_round_trips_and_signature_verifies() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let domain = Domain {
            chain_id: 31_337,
            contract: Address([0x33; 20]),
        };
        let receipt = sample(&key).sign(&key, &domain);
        let bytes = receipt.to_bytes();
        let view = ReceiptView::parse(&bytes).expect("valid record");
        assert_eq!(view.to_owned(), receipt);
        let signature = ed25519_dalek::Signature::from_bytes(&view.signature());
        key.verifying_key()
            .verify(&view.signing_bytes(&domain), &signature)
            .expect("signature over the signing bytes");
    }

    #[test]
    fn signature_does_not_carry_over_to_another_domain() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let ours = Domain {
            chain_id: 1,
            contract: Address([0x33; 20]),
        };
        let theirs = Domain {
            chain_id: 2,
            ..ours
        };
        let receipt = sample(&key).sign(&key, &ours);
        let signature = ed25519_dalek::Signature::from_bytes(&receipt.signature);
        assert!(
            key.verifying_key()
                .verify(&receipt.unsigned().signing_bytes(&theirs), &signature)
                .is_err()
        );
    }

    #[test]
    fn reserved_bytes_and_length_are_checked() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut bytes = sample(&key).sign(&key, &Domain::default()).to_bytes();
        assert_eq!(
            ReceiptView::parse(&bytes[..175]).err(),
            Some(ReceiptError::Length(175))
        );
        bytes[53] = 1;
        assert_eq!(
            ReceiptView::parse(&bytes).err(),
            Some(ReceiptError::ReservedNotZero)
        );
    }

    #[test]
    fn batch_rejects_partial_records_and_parses_each_alone() {
        assert_eq!(
            ReceiptBatch::new(bytes::Bytes::from(vec![0u8; 177])).err(),
            Some(BatchLengthError(177))
        );
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let good = sample(&key).sign(&key, &Domain::default()).to_bytes();
        let mut bad = good;
        bad[52] = 0xff;
        let batch = ReceiptBatch::new(bytes::Bytes::from([good, bad].concat())).expect("whole");
        let parsed: Vec<_> = batch.iter().map(|r| r.is_ok()).collect();
        assert_eq!(parsed, vec![true, false]);
        assert!(batch.get(2).is_none());
    }
}
