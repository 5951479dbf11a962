//! Tests of the ledger state machine, by job, and what they share: ledgers on a temporary
//! directory, signed receipts, deposits, and the small epochs the seal tests pay into.

mod apply;
mod archive;
mod epochs;
mod grants;
mod seal;

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::error::LedgerError;
use super::format::open_store;
use super::record::{EpochRecord, FormatRecord, batch_digest};
use super::state::{Ledger, SessionId};
use super::window::NonceWindow;
use super::{
    BatchAck, EpochStatus, EpochUpdate, FundsEvent, FundsKind, LedgerConfig, LedgerReader,
    SealedEpoch, UnknownPayers,
};
use crate::receipt::{Address, Domain, PayerKey, Receipt, ReceiptBatch, UnsignedReceipt};
use crate::store::{Cf, FORMAT_KEY, Store, StoreBatch};

/// A ledger with `config` on a new store in `dir`.
pub(super) fn open_ledger(dir: &Path, config: LedgerConfig) -> Ledger {
    let (store, _) = open_store(dir, &config).expect("open");
    Ledger::open(Arc::new(store), config).expect("ledger")
}

/// A ledger with the default configuration.
pub(super) fn ledger(dir: &Path) -> Ledger {
    open_ledger(dir, LedgerConfig::default())
}

/// Seal tests: chunks of two index keys so that a small epoch takes many groups, and payers
/// accepted without deposits so any key can pay.
pub(super) fn sealing_ledger(dir: &Path) -> Ledger {
    open_ledger(
        dir,
        LedgerConfig {
            seal_chunk_keys: 2,
            unknown_payers: UnknownPayers::Accept,
            ..LedgerConfig::default()
        },
    )
}

pub(super) fn receipt(key: &SigningKey, amount: u64, nonce: u64) -> Receipt {
    UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee: Address([5; 20]),
        amount,
        nonce,
        timestamp_ms: 1_000,
        request_hash: [0; 32],
        session: false,
    }
    .sign(key, &Domain::default())
}

pub(super) fn deposit(ledger: &mut Ledger, payer: PayerKey, amount: u128, block: u64) {
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

pub(super) fn session(batch_seq: u64) -> SessionId {
    SessionId {
        client_id: 1,
        producer_id: 1,
        session_epoch: 0,
        batch_seq,
    }
}

pub(super) const PAYERS: u8 = 4;
pub(super) const PAYEES: u8 = 3;

/// What receipt `nonce` of channel (payer `p`, payee `q`) pays: distinct per channel and
/// nonce, so a leaf, debit or credit counted in the wrong epoch changes a total.
pub(super) fn amount(p: u8, q: u8, nonce: u64) -> u64 {
    nonce * 1_000 + u64::from(p) * 10 + u64::from(q)
}

pub(super) fn channel_receipt(p: u8, q: u8, nonce: u64) -> Receipt {
    Receipt {
        payer: PayerKey([p + 1; 32]),
        payee: Address([q + 1; 20]),
        amount: amount(p, q, nonce),
        nonce,
        timestamp_ms: 1_000,
        request_hash: [0; 32],
        session: false,
        // The verdicts passed with the batch are what the ledger trusts.
        signature: [0; 64],
    }
}

/// Applies receipt `nonce` of every channel in `channels`, one batch.
pub(super) fn pay(ledger: &mut Ledger, seq: u64, nonce: u64, channels: &[(u8, u8)]) {
    let receipts: Vec<Receipt> = channels
        .iter()
        .map(|&(p, q)| channel_receipt(p, q, nonce))
        .collect();
    let batch = ReceiptBatch::from_receipts(&receipts);
    let ack = ledger.apply_all(session(seq), &batch).expect("apply");
    assert_eq!(
        ack.accepted as usize,
        receipts.len(),
        "{:?}",
        ack.rejections
    );
}

pub(super) fn all_channels() -> Vec<(u8, u8)> {
    (0..PAYERS)
        .flat_map(|p| (0..PAYEES).map(move |q| (p, q)))
        .collect()
}

/// The sealed epoch an auditor expects: leaves at `cumulative_through` receipts per channel
/// for `channels`, debits and credits of receipt `nonce` only.
pub(super) fn expected(epoch: u64, nonce: u64, channels: &[(u8, u8)]) -> SealedEpoch {
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
        *debits.entry(PayerKey([p + 1; 32])).or_insert(0u128) += u128::from(amount(p, q, nonce));
        *credits.entry(Address([q + 1; 20])).or_insert(0u128) += u128::from(amount(p, q, nonce));
    }
    leaves.sort();
    SealedEpoch {
        epoch,
        leaves,
        debits: debits.into_iter().collect(),
        credits: credits.into_iter().collect(),
    }
}

/// Reads one stored epoch record for assertions.
pub(super) struct LedgerReaderFor<'a>(pub(super) &'a Ledger);

impl LedgerReaderFor<'_> {
    pub(super) fn epoch(&self, epoch: u64) -> EpochRecord {
        LedgerReader::new(self.0.store())
            .epoch(epoch)
            .expect("read")
            .expect("stored")
    }
}

/// The figures [`SealedEpoch`]'s memory bound states.
#[test]
fn sealed_epoch_sizes() {
    assert_eq!(size_of::<(PayerKey, Address, u128)>(), 80);
    assert_eq!(size_of::<(PayerKey, u128)>(), 48);
    assert_eq!(size_of::<(Address, u128)>(), 48);
}

impl Ledger {
    /// Applies `batch` at 1,000 ms with every signature verified.
    pub(super) fn apply_all(
        &mut self,
        session: SessionId,
        batch: &ReceiptBatch,
    ) -> Result<BatchAck, LedgerError> {
        let verdicts = vec![Ok(()); batch.len()];
        self.apply_batch(session, Some(batch_digest(batch)), batch, &verdicts, 1_000)
    }
}

/// `window` as layouts 2 and 3 stored it, before runs: top option<u64>, word count u16, every
/// word u64.
pub(super) fn window_stored_whole(window: &NonceWindow) -> Vec<u8> {
    let mut out = match window.top() {
        None => vec![0],
        Some(top) => [&[1u8][..], &top.to_le_bytes()].concat(),
    };
    out.extend_from_slice(&(window.words().len() as u16).to_le_bytes());
    for word in window.words() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// Marks the data directory of `store` as being of `layout`, as an older build left it.
pub(super) fn mark_layout(store: &Store, layout: u32) {
    let format = super::format::read(store).expect("format");
    let mut batch = StoreBatch::default();
    batch.put(
        Cf::Meta,
        FORMAT_KEY,
        FormatRecord { layout, ..format }.encode(),
    );
    store.write(batch).expect("write");
}

/// A payer whose key is `[seed; 32]`, with 100 deposited at block 1.
pub(super) fn funded_payer(ledger: &mut Ledger, seed: u8) -> (SigningKey, PayerKey) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let payer = PayerKey(key.verifying_key().to_bytes());
    deposit(ledger, payer, 100, 1);
    (key, payer)
}

/// Settle's news that `epoch` is now `status`, without root or part.
pub(super) fn update(epoch: u64, status: EpochStatus) -> EpochUpdate {
    EpochUpdate {
        epoch,
        status,
        root: None,
        part: None,
    }
}
