//! Shared by the ledger tests: the production verifier, signing helpers, and a
//! way to wait for the engine's oneshot replies without an async runtime.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tollgate_engine::pipeline::{
    BatchAck, Engine, EngineConfig, EngineError, FundsEvent, FundsKind, SubmitRequest,
};
use tollgate_engine::{
    Address, Domain, PayerKey, Receipt, ReceiptBatch, UnsignedReceipt, Verifier, VerifyConfig,
    VerifyPool,
};

pub const DOMAIN: Domain = Domain {
    chain_id: 31_337,
    contract: Address([0xc0; 20]),
};

/// The production verifier, on one thread: the ledger tests charge only for signatures the
/// engine's own rule accepts, as a server would.
pub fn verifier() -> Arc<VerifyPool> {
    let config = VerifyConfig {
        threads: 1,
        ..VerifyConfig::default()
    };
    Arc::new(VerifyPool::new(Verifier::new(DOMAIN, config.clone()), config).expect("verify pool"))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

pub fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn payer_of(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

pub fn payee(n: u8) -> Address {
    Address([n; 20])
}

pub fn receipt_at(
    key: &SigningKey,
    payee: Address,
    amount: u64,
    nonce: u64,
    timestamp_ms: u64,
) -> Receipt {
    UnsignedReceipt {
        payer: payer_of(key),
        payee,
        amount,
        nonce,
        timestamp_ms,
        request_hash: [7; 32],
    }
    .sign(key, &DOMAIN)
}

pub fn receipt(key: &SigningKey, payee: Address, amount: u64, nonce: u64) -> Receipt {
    receipt_at(key, payee, amount, nonce, now_ms())
}

pub fn open(dir: &Path) -> Engine {
    open_with(EngineConfig::new(dir))
}

pub fn open_with(config: EngineConfig) -> Engine {
    Engine::open(config, verifier()).expect("engine opens")
}

pub fn wait<T>(
    rx: futures_channel::oneshot::Receiver<Result<T, EngineError>>,
) -> Result<T, EngineError> {
    futures::executor::block_on(rx).expect("engine answered")
}

pub fn request(producer_id: u64, batch_seq: u64, receipts: &[Receipt]) -> SubmitRequest {
    SubmitRequest {
        producer_id,
        session_epoch: 1,
        batch_seq,
        receipts: ReceiptBatch::from_receipts(receipts),
        prejudged: Vec::new(),
    }
}

pub fn submit(engine: &Engine, request: SubmitRequest) -> Result<BatchAck, EngineError> {
    wait(engine.submit(request).expect("queued"))
}

pub fn deposit(engine: &Engine, payer: PayerKey, amount: u128, block: u64, log_index: u64) {
    wait(
        engine
            .funds(FundsEvent {
                payer,
                kind: FundsKind::Deposit,
                amount,
                block,
                log_index,
            })
            .expect("queued"),
    )
    .expect("deposit applied");
}
