//! The watchtower against an operator that commits a wrong epoch, on a real anvil and a real
//! ledger: `tollgate watch`'s loop audits the commit from the archived receipts, disputes it
//! inside the challenge window, the engine carries the epoch and commits it again correctly, and
//! the payees withdraw exactly what the receipts paid them.
//!
//! Alice also pays through a session key she granted: the watchtower charges that receipt to
//! her, as the ledger does, and finds nothing wrong with it.
//!
//! The fault is injected here, in the test, by sending the operator's commit with an inflated
//! debit and credit (and a root over leaves to match) through settle's own submitter: nothing in
//! the server's code or configuration can produce it.
#![allow(clippy::unwrap_used)]

#[path = "../../settle/tests/common/mod.rs"]
mod chain_fixture;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use alloy::primitives::{B256, U256};
use chain_fixture::{Chain, eventually};
use ed25519_dalek::SigningKey;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;
use tollgate_engine::grant::{Grant, PayeeScope};
use tollgate_engine::pipeline::{Engine, EngineConfig, SubmitRequest};
use tollgate_engine::{
    Address, Domain, PayerKey, ReceiptBatch, UnsignedReceipt, Verifier, VerifyConfig, VerifyPool,
};
use tollgate_load::cli::DomainArgs;
use tollgate_settle::epoch::{EpochConfig, EpochLoop, FundsLoop};
use tollgate_settle::merkle::{EpochTree, Leaf};
use tollgate_settle::submitter::{EpochCommit, SubmitConfig};
use tollgate_settle::watcher::{WatchConfig, Watcher};
use tollgate_tools::api::{ApiState, router};
use tollgate_tools::audit::watch::{WatchArgs, Watched, watch};
use tollgate_tools::query::{CallerArgs, ServerArgs};

const WINDOW_SECS: u64 = 30;
const INFLATED_BY: u128 = 4_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn payer(key: &SigningKey) -> PayerKey {
    PayerKey(key.verifying_key().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchtower_disputes_a_wrong_epoch_and_the_engine_commits_it_again_right() {
    let chain = Chain::start(WINDOW_SECS, 3 * WINDOW_SECS).await;
    let domain = Domain {
        chain_id: chain.anvil.chain_id(),
        contract: Address(chain.addresses.settlement.0.0),
    };
    let dir = tempfile::tempdir().unwrap();
    let verify = VerifyConfig::default();
    let engine = Engine::open(
        EngineConfig::new(dir.path()),
        Arc::new(VerifyPool::new(Verifier::new(domain, verify.clone()), verify).unwrap()),
    )
    .unwrap();
    let (alice, bob) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    chain.deposit(2, payer(&alice).0, 10_000).await;
    chain.deposit(3, payer(&bob).0, 10_000).await;
    let watcher = Watcher::connect(
        &chain.endpoint(),
        domain.chain_id,
        chain.addresses.settlement,
        WatchConfig {
            confirmations: 0,
            blocks_per_poll_max: 1_000,
        },
    )
    .await
    .unwrap();
    let funds = FundsLoop::new(engine.clone(), watcher, 0, 10);
    while !funds.step().await.unwrap() {}

    // Alice grants her agent's session key up to 1,000.
    let agent = SigningKey::from_bytes(&[9; 32]);
    let grant = Grant {
        domain,
        payer: payer(&alice),
        session: payer(&agent),
        nonce: 1,
        cap: 1_000,
        allowance: None,
        valid_from_ms: now_ms() - 60_000,
        valid_until_ms: now_ms() + 3_600_000,
        payees: PayeeScope::Any,
    }
    .sign(&alice);
    engine
        .grant(grant.check(&domain).unwrap())
        .unwrap()
        .await
        .unwrap()
        .unwrap();

    // Epoch 1: alice pays P5 1,000 and P6 500 (100 of it through her agent), bob pays P5 250.
    let (p5, p6) = (Address(chain.address(5).0.0), Address(chain.address(6).0.0));
    let receipts: Vec<_> = [
        (&alice, p5, 1_000, 1, false),
        (&alice, p6, 400, 1, false),
        (&agent, p6, 100, 1, true),
        (&bob, p5, 250, 1, false),
    ]
    .into_iter()
    .map(|(key, payee, amount, nonce, session)| {
        UnsignedReceipt {
            payer: payer(key),
            payee,
            amount,
            nonce,
            timestamp_ms: now_ms(),
            request_hash: [3; 32],
            session,
        }
        .sign(key, &domain)
    })
    .collect();
    let ack = engine
        .submit(SubmitRequest {
            client_id: 1,
            producer_id: 1,
            session_epoch: 1,
            batch_seq: 1,
            receipts: ReceiptBatch::from_receipts(&receipts),
            prejudged: Vec::new(),
        })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.accepted, 4, "{ack:?}");
    let submit_config = SubmitConfig {
        receipt_poll_ms: 10,
        backoff_initial_ms: 10,
        ..SubmitConfig::default()
    };
    let epochs = EpochLoop::new(
        engine.clone(),
        chain.submitter(submit_config.clone()).await,
        EpochConfig::default(),
    );
    assert_eq!(epochs.seal().await.unwrap(), 1);

    // The faulty operator: alice's debit and P5's credit inflated, the leaf and root to match.
    let sealed = engine.reader().sealed_epoch(1).unwrap().unwrap();
    let inflate = |amount: u128, hit: bool| if hit { amount + INFLATED_BY } else { amount };
    let leaves: Vec<Leaf> = sealed
        .leaves
        .iter()
        .map(|(leaf_payer, payee, cumulative)| Leaf {
            payer: *leaf_payer,
            payee: *payee,
            cumulative: inflate(*cumulative, *leaf_payer == payer(&alice) && *payee == p5),
        })
        .collect();
    let wrong = EpochCommit {
        epoch: 1,
        root: EpochTree::build(1, leaves).unwrap().root(),
        debits: sealed
            .debits
            .iter()
            .map(|(debited, amount)| (*debited, inflate(*amount, *debited == payer(&alice))))
            .collect(),
        credits: sealed
            .credits
            .iter()
            .map(|(credited, amount)| (*credited, inflate(*amount, *credited == p5)))
            .collect(),
    };
    chain
        .submitter(submit_config.clone())
        .await
        .submit(&wrong)
        .await
        .unwrap();

    // The operator's API, and the watchtower reading it.
    let recorder = PrometheusBuilder::new().build_recorder();
    let api = ApiState::new(
        engine.reader(),
        Arc::new(AtomicBool::new(true)),
        recorder.handle(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(api)).await });
    let args = WatchArgs {
        server: ServerArgs {
            server: api_url,
            json: false,
            caller: CallerArgs::default(),
            domain: DomainArgs {
                chain_id: domain.chain_id,
                contract: domain.contract,
            },
        },
        rpc_url: chain.endpoint(),
        arbiter_key: hex::encode(chain.anvil.keys()[1].to_bytes())
            .as_str()
            .into(),
        from_block: 0,
        window_nonces: 1_024,
        poll_ms: 50,
        audit_budget_secs: 5,
        metrics: "127.0.0.1:0".parse().unwrap(),
    };
    // A window no longer than the audit budget plus a poll: the watchtower will not pretend.
    let too_slow = WatchArgs {
        audit_budget_secs: WINDOW_SECS,
        ..args.clone()
    };
    let refused = watch(
        &too_slow,
        CancellationToken::new(),
        tokio::sync::watch::channel(Watched::default()).0,
    )
    .await
    .expect_err("a window too short for the audit");
    assert!(
        refused.to_string().contains("challenge window is 30 s"),
        "{refused:#}"
    );

    let shutdown = CancellationToken::new();
    let (progress, mut watched) = tokio::sync::watch::channel(Watched::default());
    let watching = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { watch(&args, shutdown, progress).await }
    });
    let settlement = chain.settlement(0);
    eventually("the watchtower disputes epoch 1", || async {
        settlement.roots(1).call().await.unwrap() == B256::ZERO
    })
    .await;

    // The engine carries the voided epoch into epoch 2 and commits it right.
    epochs.commit_backlog().await.unwrap();
    while !funds.step().await.unwrap() {}
    assert_eq!(epochs.seal().await.unwrap(), 2);
    epochs.commit_backlog().await.unwrap();
    let honest = EpochTree::from_sealed(&engine.reader().sealed_epoch(2).unwrap().unwrap())
        .unwrap()
        .root();
    assert_eq!(settlement.roots(2).call().await.unwrap(), honest);

    // The watchtower audits epoch 2 (with epoch 1 carried into it) and lets it stand.
    watched
        .wait_for(|watched| watched.audited.contains(&2))
        .await
        .expect("the watch is running");
    shutdown.cancel();
    let watched = watching
        .await
        .unwrap()
        .expect("the watch ran without error");
    assert_eq!(watched.disputed, [1]);
    assert_eq!(watched.audited, [1, 2]);

    // Past the window, the payees withdraw exactly what the receipts paid them.
    chain.advance_secs(WINDOW_SECS + 1).await;
    assert_eq!(chain.withdrawable(5).await, U256::from(1_250));
    assert_eq!(chain.withdrawable(6).await, U256::from(500));
}
