//! The generator against the real engine (verify pool, ledger, RocksDB with fsync) in process:
//! every expected verdict of the workload model must be the engine's, and the ledger's totals
//! must equal what the acks said. The network path is the same driver behind the ingest client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;
use tollgate_engine::grant::SignedRevocation;
use tollgate_engine::pipeline::{Engine, EngineConfig, FundsEvent, FundsKind, SubmitRequest};
use tollgate_engine::{
    Address, Domain, Receipt, ReceiptBatch, Verdict, Verifier, VerifyConfig, VerifyPool,
};
use tollgate_load::driver::Options;
use tollgate_load::{Funds, Planner, Sessions, Transport, Workload, run_with};

/// One producer session on the engine.
struct InProcessEngine {
    engine: Engine,
    producer_id: u64,
    batch_seq: AtomicU64,
}

impl Transport for InProcessEngine {
    type Error = String;
    type Verdicts = BoxFuture<'static, Result<Vec<Verdict>, String>>;

    async fn submit_batch(&self, receipts: Vec<Receipt>) -> Result<Self::Verdicts, String> {
        let n = receipts.len();
        let ack = self
            .engine
            .submit(SubmitRequest {
                client_id: 1,
                producer_id: self.producer_id,
                session_epoch: 1,
                batch_seq: self.batch_seq.fetch_add(1, Ordering::Relaxed),
                receipts: ReceiptBatch::from_receipts(&receipts),
                prejudged: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        Ok(ack
            .map(move |answer| {
                let ack = answer
                    .map_err(|_| "ack dropped".to_owned())?
                    .map_err(|e| e.to_string())?;
                let mut verdicts: Vec<Verdict> = vec![Ok(()); n];
                for (index, reason) in ack.rejections {
                    verdicts[index as usize] = Err(reason);
                }
                Ok(verdicts)
            })
            .boxed())
    }

    async fn close(self) -> Result<(), String> {
        Ok(())
    }

    async fn revoke(&self, revocation: &SignedRevocation) -> Result<(), String> {
        let checked = revocation.check(&DOMAIN).map_err(|e| e.to_string())?;
        self.engine
            .revoke(checked)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|_| "answer dropped".to_owned())?
            .map_err(|e| e.to_string())
    }
}

const DOMAIN: Domain = Domain {
    chain_id: 31_337,
    contract: Address([0x42; 20]),
};

fn workload(payers: u32, deposit: u128) -> Workload {
    let now_ms = tollgate_load::driver::unix_ms();
    Workload {
        seed: 3,
        receipts: Some(12_000),
        payers,
        payees: 6,
        zipf_exponent: 1.1,
        amount: 2,
        bad_signature_pct: 1.0,
        replay_pct: 1.0,
        stale_pct: 1.0,
        overdraft_pct: 1.0,
        window_nonces: 1024,
        nonce_base: now_ms << 20,
        timestamp_ms: now_ms,
        domain: DOMAIN,
        connections: 3,
        funds: Funds::Available(vec![deposit; payers as usize]),
        sessions: Sessions::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_gives_every_expected_verdict_and_the_ledger_adds_up() {
    check_against_engine(
        workload(100, 5_000),
        5_000,
        &["bad_signature", "duplicate", "stale", "insufficient_funds"],
    )
    .await;
}

/// The same with every receipt signed by a session key, and the session kinds injected: a
/// session revoked during the run included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_engine_gives_every_expected_verdict_to_a_session_workload() {
    let sessions = Workload {
        sessions: Sessions {
            per_payer: 3,
            over_cap_pct: 1.0,
            expired_pct: 1.0,
            revoked_pct: 1.0,
            out_of_scope_pct: 1.0,
        },
        ..workload(100, 5_000)
    };
    check_against_engine(
        sessions,
        5_000,
        &[
            "bad_signature",
            "duplicate",
            "stale",
            "insufficient_funds",
            "over_grant_cap",
            "grant_expired",
            "grant_revoked",
            "payee_not_in_grant",
        ],
    )
    .await;
}

/// Runs `workload` against a fresh engine in which every payer deposited `deposit` and the
/// workload's grants are held: no verdict may differ from the model's, each of `reasons` must
/// occur, and each payer's ledger totals must be what the acks accepted.
async fn check_against_engine(workload: Workload, deposit: u128, reasons: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let verify_config = VerifyConfig {
        threads: 2,
        ..VerifyConfig::default()
    };
    let pool = VerifyPool::new(Verifier::new(DOMAIN, verify_config.clone()), verify_config)
        .expect("verify pool");
    let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(pool)).expect("engine");

    let planner = Planner::new(workload).expect("valid workload");
    for (index, payer) in planner.payers().iter().enumerate() {
        engine
            .funds(FundsEvent {
                payer: *payer,
                kind: FundsKind::Deposit,
                amount: deposit,
                block: index as u64 + 1,
                log_index: 0,
            })
            .expect("funds queued")
            .await
            .expect("answer")
            .expect("deposit applied");
    }
    // After the deposits: a payer with nothing deposited may not store grants.
    for grant in planner.grants() {
        engine
            .grant(grant.check(&DOMAIN).expect("a good grant"))
            .expect("grant queued")
            .await
            .expect("answer")
            .expect("grant held");
    }
    let payer_keys = planner.payers().to_vec();
    let options = Options {
        batch_receipts: 128,
        rate_per_s: 0.0,
        duration: None,
        presign: true,
        batches_in_flight_max: 4,
        progress: false,
        acked_log: None,
    };
    let outcome = run_with(planner, &options, |connection| {
        let engine = engine.clone();
        async move {
            Ok::<_, String>(InProcessEngine {
                engine,
                producer_id: 1_000 + u64::from(connection),
                batch_seq: AtomicU64::new(0),
            })
        }
    })
    .await
    .expect("run");
    let s = &outcome.summary;
    assert_eq!((s.sent, s.acked, s.failed), (12_000, 12_000, 0));
    assert_eq!(
        s.verdict_mismatches, 0,
        "{:?}",
        outcome.stats.mismatch_examples
    );
    for reason in reasons {
        assert!(
            s.rejected.get(*reason).copied().unwrap_or(0) > 0,
            "{reason}: {:?}",
            s.rejected
        );
    }

    let reader = engine.reader();
    for (index, payer) in payer_keys.iter().enumerate() {
        let tally = outcome
            .stats
            .payers
            .get(&(index as u32))
            .copied()
            .unwrap_or_default();
        let balance = reader.payer(payer).expect("read").unwrap_or_default();
        assert_eq!(
            balance.pending + balance.settled,
            tally.accepted_amount,
            "payer #{index}"
        );
    }
    engine.shutdown().expect("clean shutdown");
}
