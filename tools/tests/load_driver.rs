//! The driver against an in-process reference ledger: the generator's bookkeeping (expected
//! verdicts, mismatches, failures, the acked log) checked without sockets. The same driver runs
//! against the real server in `load_server.rs`.

use std::collections::{HashMap, HashSet};
use std::future::Ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tollgate_engine::{Address, Domain, PayerKey, Reason, Receipt, Verdict};
use tollgate_load::driver::Options;
use tollgate_load::{Funds, Planner, Sessions, Transport, Workload, run_with};

const WINDOW: u64 = 1024;

/// Applies the ledger's rules in arrival order, as the engine would.
#[derive(Default)]
struct ReferenceLedger {
    highest: HashMap<(PayerKey, Address), u64>,
    seen: HashSet<(PayerKey, Address, u64)>,
    spent: HashMap<PayerKey, u128>,
    deposits: HashMap<PayerKey, u128>,
    /// A deliberately broken engine: accepts every signature.
    skip_signatures: bool,
}

impl ReferenceLedger {
    fn apply(&mut self, r: &Receipt, domain: &Domain) -> Verdict {
        let signature_ok = ed25519_dalek::VerifyingKey::from_bytes(&r.payer.0)
            .and_then(|key| {
                key.verify_strict(
                    &r.unsigned().signing_bytes(domain),
                    &ed25519_dalek::Signature::from_bytes(&r.signature),
                )
            })
            .is_ok();
        let channel = (r.payer, r.payee);
        if !signature_ok && !self.skip_signatures {
            return Err(Reason::BadSignature);
        }
        if self
            .highest
            .get(&channel)
            .is_some_and(|&h| r.nonce + WINDOW <= h)
        {
            return Err(Reason::Stale);
        }
        if self.seen.contains(&(r.payer, r.payee, r.nonce)) {
            return Err(Reason::Duplicate);
        }
        let spent = self.spent.get(&r.payer).copied().unwrap_or(0) + u128::from(r.amount);
        if self.deposits.get(&r.payer).is_some_and(|&d| spent > d) {
            return Err(Reason::InsufficientFunds);
        }
        self.seen.insert((r.payer, r.payee, r.nonce));
        let h = self.highest.entry(channel).or_insert(r.nonce);
        *h = (*h).max(r.nonce);
        self.spent.insert(r.payer, spent);
        Ok(())
    }
}

#[derive(Debug)]
struct Refused;
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by the engine")
    }
}

/// One connection to the reference ledger; fails every batch after `batches_ok`.
struct InProcess {
    ledger: Arc<Mutex<ReferenceLedger>>,
    domain: Domain,
    batches_ok: u64,
    batches: AtomicU64,
}

impl Transport for InProcess {
    type Error = Refused;
    type Verdicts = Ready<Result<Vec<Verdict>, Refused>>;

    async fn submit_batch(&self, receipts: Vec<Receipt>) -> Result<Self::Verdicts, Refused> {
        if self.batches.fetch_add(1, Ordering::Relaxed) >= self.batches_ok {
            return Err(Refused);
        }
        let mut ledger = self.ledger.lock().expect("ledger lock");
        Ok(std::future::ready(Ok(receipts
            .iter()
            .map(|r| ledger.apply(r, &self.domain))
            .collect())))
    }

    async fn close(self) -> Result<(), Refused> {
        Ok(())
    }
}

fn workload(deposit: u128) -> Workload {
    Workload {
        seed: 42,
        receipts: Some(20_000),
        payers: 200,
        payees: 8,
        zipf_exponent: 1.1,
        amount: 3,
        bad_signature_pct: 1.0,
        replay_pct: 1.0,
        stale_pct: 1.0,
        overdraft_pct: 1.0,
        window_nonces: WINDOW,
        nonce_base: 1 << 40,
        timestamp_ms: 1_764_000_000_000,
        domain: Domain {
            chain_id: 31_337,
            contract: Address([7; 20]),
        },
        connections: 4,
        funds: Funds::Available(vec![deposit; 200]),
        sessions: Sessions::default(),
    }
}

fn options(presign: bool) -> Options {
    Options {
        batch_receipts: 256,
        rate_per_s: 0.0,
        duration: None,
        presign,
        batches_in_flight_max: 4,
        progress: false,
        acked_log: None,
    }
}

async fn run(
    w: Workload,
    options: &Options,
    ledger: ReferenceLedger,
    batches_ok: u64,
) -> tollgate_load::Outcome {
    let planner = Planner::new(w.clone()).expect("valid workload");
    let mut ledger = ledger;
    if let Funds::Available(deposits) = &w.funds {
        for (payer, &deposit) in planner.payers().iter().zip(deposits) {
            ledger.deposits.insert(*payer, deposit);
        }
    }
    let ledger = Arc::new(Mutex::new(ledger));
    let domain = w.domain;
    run_with(planner, options, |_| {
        let ledger = ledger.clone();
        async move {
            Ok(InProcess {
                ledger,
                domain,
                batches_ok,
                batches: AtomicU64::new(0),
            })
        }
    })
    .await
    .expect("run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_engine_gets_no_mismatches_presigned_or_streamed() {
    for presign in [true, false] {
        let outcome = run(
            workload(10_000),
            &options(presign),
            ReferenceLedger::default(),
            u64::MAX,
        )
        .await;
        let s = &outcome.summary;
        assert_eq!(
            (s.sent, s.acked, s.failed),
            (20_000, 20_000, 0),
            "presign {presign}"
        );
        assert_eq!(
            s.verdict_mismatches, 0,
            "{:?}",
            outcome.stats.mismatch_examples
        );
        for reason in ["bad_signature", "duplicate", "stale", "insufficient_funds"] {
            let n = s.rejected.get(reason).copied().unwrap_or(0);
            assert!((100..320).contains(&n), "{reason}: {n}");
        }
        assert_eq!(s.accepted + s.rejected.values().sum::<u64>(), s.acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payers_that_spend_their_deposit_stop_and_nothing_is_refused_for_funds_by_surprise() {
    // 200 payers x 300 / 3 = at most 20,000 valid receipts: the hot payers run dry mid-run.
    let outcome = run(
        workload(300),
        &options(true),
        ReferenceLedger::default(),
        u64::MAX,
    )
    .await;
    assert_eq!(
        outcome.summary.verdict_mismatches, 0,
        "{:?}",
        outcome.stats.mismatch_examples
    );
    for tally in outcome.stats.payers.values() {
        assert!(tally.accepted_amount <= 300);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_accepts_bad_signatures_is_caught() {
    let broken = ReferenceLedger {
        skip_signatures: true,
        ..Default::default()
    };
    // Deposits deep enough that the wrongly accepted receipts cannot starve a payer: each bad
    // signature is then exactly one mismatch.
    let outcome = run(workload(1_000_000), &options(true), broken, u64::MAX).await;
    let s = &outcome.summary;
    assert_eq!(s.rejected.get("bad_signature"), None);
    assert_eq!(s.verdict_mismatches, s.injected["bad_signature"]);
    assert!(outcome.stats.mismatch_examples[0].contains("expected bad_signature, got accepted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_fail_still_add_up() {
    let outcome = run(
        workload(10_000),
        &options(false),
        ReferenceLedger::default(),
        3,
    )
    .await;
    let s = &outcome.summary;
    assert_eq!(s.sent, s.acked + s.failed);
    // 4 connections x 3 batches of 256 acked, then one failed batch each.
    assert_eq!(s.acked, 4 * 3 * 256);
    assert_eq!(s.failed, 4 * 256);
    assert_eq!(s.verdict_mismatches, 0);
    assert!(
        outcome
            .stats
            .errors
            .iter()
            .any(|e| e.contains("closed by the engine"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_duration_bound_the_run() {
    let options = Options {
        rate_per_s: 20_000.0,
        duration: Some(std::time::Duration::from_millis(300)),
        ..options(false)
    };
    let w = Workload {
        receipts: None,
        ..workload(u128::from(u32::MAX))
    };
    // Unbounded plan: only the duration can end this run, so returning at all is the first check.
    let outcome = run(w, &options, ReferenceLedger::default(), u64::MAX).await;
    let s = &outcome.summary;
    // 300 ms at 20k/s is 6,000 receipts, plus at most the batch each connection had already
    // been given its slot for. How many fewer a machine sends depends on its speed (a starved
    // machine may not have signed its first batch within 300 ms), so only the bound is checked.
    assert!(s.sent <= 6_000 + 4 * 256, "{}", s.sent);
    assert_eq!(s.sent, s.acked);
    assert_eq!(s.verdict_mismatches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_log_has_one_line_per_ack_and_matches_the_tallies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acked.jsonl");
    let options = Options {
        acked_log: Some(path.clone()),
        ..options(true)
    };
    let outcome = run(
        workload(10_000),
        &options,
        ReferenceLedger::default(),
        u64::MAX,
    )
    .await;
    let text = std::fs::read_to_string(&path).expect("log");
    let mut accepted_amount: u128 = 0;
    let mut lines = 0u64;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        lines += 1;
        if v["verdict"] == "accepted" {
            accepted_amount += u128::from(v["amount"].as_u64().expect("amount"));
        }
    }
    assert_eq!(lines, outcome.summary.acked);
    let tallied: u128 = outcome
        .stats
        .payers
        .values()
        .map(|t| t.accepted_amount)
        .sum();
    assert_eq!(accepted_amount, tallied);
}
