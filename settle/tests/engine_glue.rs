//! The engine glue on a real anvil and a real RocksDB ledger: deposits reach the funds check,
//! sealed epochs are committed exactly once (also after a "crash" between seal and commit), and
//! every onchain balance equals the engine's.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use alloy::primitives::{Address as EvmAddress, B256, U256};
use common::{Chain, eventually, mined};
use ed25519_dalek::SigningKey;
use tollgate_engine::{
    Address, Domain, PayerKey, Reason, Receipt, ReceiptBatch, UnsignedReceipt, Verifier,
    VerifyConfig, VerifyPool,
    ledger::EpochStatus,
    pipeline::{BatchAck, Engine, EngineConfig, SubmitRequest},
};
use tollgate_settle::{
    epoch::{EpochConfig, EpochLoop, FundsLoop},
    merkle::EpochTree,
    submitter::{SubmitConfig, Submitter},
    watcher::{WatchConfig, Watcher},
};

struct Setup {
    chain: Chain,
    engine: Engine,
    domain: Domain,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    setup_with_window(0).await
}

async fn setup_with_window(challenge_window_secs: u64) -> Setup {
    let chain = Chain::start(challenge_window_secs, 60).await;
    let domain = Domain {
        chain_id: chain.anvil.chain_id(),
        contract: Address(chain.addresses.settlement.0.0),
    };
    let dir = tempfile::tempdir().unwrap();
    let verify = VerifyConfig::default();
    let verifier = VerifyPool::new(Verifier::new(domain, verify.clone()), verify).unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(verifier)).unwrap();
    Setup {
        chain,
        engine,
        domain,
        _dir: dir,
    }
}

async fn submitter(chain: &Chain) -> Submitter {
    submitter_with(chain, SubmitConfig::default()).await
}

async fn submitter_with(chain: &Chain, config: SubmitConfig) -> Submitter {
    let config = SubmitConfig {
        receipt_poll_ms: 10,
        backoff_initial_ms: 10,
        ..config
    };
    chain.submitter(config).await
}

async fn funds_loop(setup: &Setup) -> FundsLoop {
    funds_loop_at(setup, 0).await
}

async fn funds_loop_at(setup: &Setup, confirmations: u64) -> FundsLoop {
    let config = WatchConfig {
        confirmations,
        blocks_per_poll_max: 1_000,
    };
    let watcher = Watcher::connect(
        &setup.chain.endpoint(),
        setup.chain.anvil.chain_id(),
        setup.chain.addresses.settlement,
        config,
    )
    .await
    .unwrap();
    FundsLoop::new(setup.engine.clone(), watcher, 0, 10)
}

async fn catch_up(funds: &FundsLoop) {
    for _ in 0..100 {
        if funds.step().await.unwrap() {
            return;
        }
    }
    panic!("the funds loop never caught up");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn signed(key: &SigningKey, payee: Address, amount: u64, nonce: u64, domain: &Domain) -> Receipt {
    UnsignedReceipt {
        payer: PayerKey(key.verifying_key().to_bytes()),
        payee,
        amount,
        nonce,
        timestamp_ms: now_ms() + nonce,
        request_hash: [1; 32],
        session: false,
    }
    .sign(key, domain)
}

async fn submit(engine: &Engine, batch_seq: u64, receipts: &[Receipt]) -> BatchAck {
    let request = SubmitRequest {
        client_id: 1,
        producer_id: 1,
        session_epoch: 1,
        batch_seq,
        receipts: ReceiptBatch::from_receipts(receipts),
        prejudged: Vec::new(),
    };
    engine.submit(request).unwrap().await.unwrap().unwrap()
}

#[tokio::test]
async fn deposits_fund_receipts_and_epochs_commit_exactly_once_with_matching_balances() {
    let setup = setup().await;
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let payers: Vec<SigningKey> = (1..=3u8)
        .map(|seed| SigningKey::from_bytes(&[seed; 32]))
        .collect();
    let payer_key = |i: usize| PayerKey(payers[i].verifying_key().to_bytes());
    for (i, amount) in [10_000u128, 20_000, 5_000].into_iter().enumerate() {
        chain.deposit(2 + i, payer_key(i).0, amount).await;
    }
    let funds = funds_loop(&setup).await;
    catch_up(&funds).await;
    assert_eq!(
        engine
            .reader()
            .payer(&payer_key(1))
            .unwrap()
            .unwrap()
            .deposited,
        20_000
    );

    let payee_a = Address(chain.address(5).0.0);
    let payee_b = Address(chain.address(6).0.0);
    let ack = submit(
        engine,
        1,
        &[
            signed(&payers[0], payee_a, 1_000, 1, domain),
            signed(&payers[1], payee_a, 2_500, 1, domain),
            signed(&payers[1], payee_b, 500, 2, domain),
            signed(&payers[2], payee_b, 4_000, 1, domain),
            // Beyond what payer 2 has left: refused before it can reach the chain.
            signed(&payers[2], payee_a, 1_001, 2, domain),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 4, "{ack:?}");
    assert_eq!(ack.rejections, vec![(4, Reason::InsufficientFunds)]);

    let epochs = EpochLoop::new(
        engine.clone(),
        submitter(chain).await,
        EpochConfig::default(),
    );
    assert_eq!(epochs.seal().await.unwrap(), 1);
    epochs.commit_backlog().await.unwrap();
    assert_eq!(
        engine.reader().epoch(1).unwrap().unwrap().status,
        EpochStatus::Committed
    );

    // Epoch 2 is sealed, then the process "dies" before committing: a fresh loop (new submitter,
    // same ledger) commits it from the stored leaves, and running it again sends nothing.
    submit(
        engine,
        2,
        &[
            signed(&payers[0], payee_b, 700, 2, domain),
            signed(&payers[1], payee_a, 300, 3, domain),
        ],
    )
    .await;
    assert_eq!(epochs.seal().await.unwrap(), 2);
    drop(epochs);
    let restarted = EpochLoop::new(
        engine.clone(),
        submitter(chain).await,
        EpochConfig::default(),
    );
    restarted.commit_backlog().await.unwrap();
    restarted.commit_backlog().await.unwrap();
    let settlement = chain.settlement(0);
    assert_eq!(settlement.lastEpoch().call().await.unwrap(), 2);
    let record = engine.reader().epoch(2).unwrap().unwrap();
    assert_eq!(record.status, EpochStatus::Committed);
    assert!(record.tx_hash.is_some() && record.block.is_some());

    // Every onchain balance equals the engine's.
    for i in 0..3 {
        let engine_payer = engine.reader().payer(&payer_key(i)).unwrap().unwrap();
        let onchain = settlement
            .available(B256::from(payer_key(i).0))
            .call()
            .await
            .unwrap();
        assert_eq!(
            onchain,
            U256::from(engine_payer.deposited - engine_payer.settled),
            "payer {i}"
        );
        assert_eq!(engine_payer.pending, 0, "payer {i} fully settled");
    }
    for payee in [payee_a, payee_b] {
        let engine_payee = engine.reader().payee(&payee).unwrap().unwrap();
        let onchain = settlement
            .withdrawable(EvmAddress::from(payee.0))
            .call()
            .await
            .unwrap();
        assert_eq!(onchain, U256::from(engine_payee.settled));
    }

    // A proof built from the stored epoch verifies onchain.
    let sealed = engine.reader().sealed_epoch(2).unwrap().unwrap();
    let tree = EpochTree::from_sealed(&sealed).unwrap();
    assert_eq!(settlement.roots(2).call().await.unwrap(), tree.root());
    let (leaf, proof) = tree.proof(&payer_key(0), &payee_b).unwrap();
    assert_eq!(leaf.cumulative, 700);
    assert!(chain.verifies(2, &leaf, proof).await);

    // A payee withdraws what the engine says it earned.
    let before = chain.token_balance(chain.address(5)).await;
    mined(chain.settlement(5).withdraw()).await;
    let after = chain.token_balance(chain.address(5)).await;
    assert_eq!(
        after - before,
        U256::from(engine.reader().payee(&payee_a).unwrap().unwrap().settled)
    );

    mined(
        // A withdrawal request reaches the funds check: that much is no longer spendable.
        chain
            .settlement(3)
            .requestWithdrawal(B256::from(payer_key(1).0), U256::from(15_000)),
    )
    .await;
    catch_up(&funds).await;
    let payer1 = engine.reader().payer(&payer_key(1)).unwrap().unwrap();
    assert_eq!(payer1.withdrawal_requested, 15_000);
    let over = submit(engine, 3, &[signed(&payers[1], payee_a, 2_000, 4, domain)]).await;
    assert_eq!(
        over.rejections,
        vec![(0, Reason::InsufficientFunds)],
        "20,000 - 3,300 settled - 15,000 requested < 2,000"
    );
}

#[tokio::test]
async fn a_commit_counts_only_after_its_confirmations_and_a_reorg_gets_it_resubmitted() {
    let setup = setup().await;
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let payer = SigningKey::from_bytes(&[9; 32]);
    let payer_key = PayerKey(payer.verifying_key().to_bytes());
    chain.deposit(2, payer_key.0, 10_000).await;
    catch_up(&funds_loop(&setup).await).await;
    let payee = Address(chain.address(5).0.0);
    let ack = submit(engine, 1, &[signed(&payer, payee, 1_000, 1, domain)]).await;
    assert_eq!(ack.accepted, 1, "{ack:?}");

    let confirmations = 2;
    let submitter = submitter_with(
        chain,
        SubmitConfig {
            confirmations,
            // After the reorg anvil may take the identical re-signed copy as already known
            // without mining it: the submitter replaces it once this runs out.
            receipt_timeout_ms: 500,
            ..SubmitConfig::default()
        },
    )
    .await;
    let epochs = EpochLoop::new(engine.clone(), submitter, EpochConfig::default());
    assert_eq!(epochs.seal().await.unwrap(), 1);
    let committing = tokio::spawn(async move { epochs.commit_backlog().await });

    let settlement = chain.settlement(0);
    let last_epoch = || async { settlement.lastEpoch().call().await.unwrap() };
    eventually("epoch 1 never landed", || async { last_epoch().await == 1 }).await;
    let status = || engine.reader().epoch(1).unwrap().unwrap().status;
    let pending = || engine.reader().payer(&payer_key).unwrap().unwrap().pending;
    // Sealed until the part's receipt is back, Submitted once it is recorded: never Committed.
    assert_ne!(
        status(),
        EpochStatus::Committed,
        "landed at 0 confirmations is not final: the ledger must not settle it yet"
    );
    assert_eq!(pending(), 1_000);

    // The block holding the commit is replaced by one without it.
    use alloy::providers::Provider;
    let _: serde_json::Value = chain
        .provider(0)
        .raw_request(
            "anvil_reorg".into(),
            (1u64, Vec::<serde_json::Value>::new()),
        )
        .await
        .unwrap();
    eventually(
        "epoch 1 was not resubmitted after a reorg dropped it",
        || async { last_epoch().await == 1 },
    )
    .await;
    assert_ne!(status(), EpochStatus::Committed);
    assert_eq!(pending(), 1_000);

    chain.mine(confirmations).await;
    committing.await.unwrap().unwrap();
    let record = engine.reader().epoch(1).unwrap().unwrap();
    assert_eq!(record.status, EpochStatus::Committed);
    // The one part is recorded where it landed after the reorg, not where the reorg dropped it.
    let [part] = record.parts.as_slice() else {
        panic!("one part expected: {record:?}");
    };
    let receipt = chain
        .provider(0)
        .get_transaction_receipt(B256::from(part.tx_hash))
        .await
        .unwrap()
        .expect("the recorded transaction is onchain");
    assert_eq!(receipt.block_number, Some(part.block));
    assert_eq!(
        (record.tx_hash, record.block),
        (Some(part.tx_hash), Some(part.block))
    );
    let engine_payer = engine.reader().payer(&payer_key).unwrap().unwrap();
    assert_eq!(engine_payer.pending, 0);
    assert_eq!(
        settlement
            .available(B256::from(payer_key.0))
            .call()
            .await
            .unwrap(),
        U256::from(engine_payer.deposited - engine_payer.settled)
    );
    assert_eq!(engine_payer.settled, 1_000);
}

/// One payer pays two payees (1,000 and 2,000) in the open epoch and the epoch is sealed: one
/// debit and two credits, the payer's key.
async fn seal_one_payer_two_payees(setup: &Setup, epochs: &EpochLoop) -> PayerKey {
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let payer = SigningKey::from_bytes(&[11; 32]);
    let payer_key = PayerKey(payer.verifying_key().to_bytes());
    chain.deposit(2, payer_key.0, 10_000).await;
    catch_up(&funds_loop(setup).await).await;
    let (a, b) = (Address(chain.address(5).0.0), Address(chain.address(6).0.0));
    let receipts = [
        signed(&payer, a, 1_000, 1, domain),
        signed(&payer, b, 2_000, 2, domain),
    ];
    assert_eq!(submit(engine, 1, &receipts).await.accepted, 2);
    assert_eq!(epochs.seal().await.unwrap(), 1);
    payer_key
}

/// The engine's payer and payees against the chain, once every epoch is committed and final.
async fn assert_balances_match_the_chain(setup: &Setup, payer: PayerKey, payees: &[usize]) {
    let (chain, engine) = (&setup.chain, &setup.engine);
    let settlement = chain.settlement(0);
    let engine_payer = engine.reader().payer(&payer).unwrap().unwrap();
    assert_eq!(engine_payer.pending, 0, "everything settled");
    assert_eq!(
        settlement
            .available(B256::from(payer.0))
            .call()
            .await
            .unwrap(),
        U256::from(engine_payer.deposited - engine_payer.settled)
    );
    for &index in payees {
        let payee = chain.address(index);
        let engine_payee = engine.reader().payee(&Address(payee.0.0)).unwrap().unwrap();
        assert_eq!(
            settlement.withdrawable(payee).call().await.unwrap(),
            U256::from(engine_payee.settled),
            "payee {payee}"
        );
    }
}

/// The arbiter voids an epoch between its parts (the process that sent part 0 died): the commit
/// loop must not stop on the root the dispute deleted, and the voided amounts settle in the next
/// epoch, once.
#[tokio::test]
async fn an_epoch_voided_between_its_parts_is_carried_and_settling_goes_on() {
    let window_secs = 30;
    let setup = setup_with_window(window_secs).await;
    let (chain, engine) = (&setup.chain, &setup.engine);
    let two_parts = SubmitConfig {
        part_entries_max: 2,
        ..SubmitConfig::default()
    };
    let epochs = EpochLoop::new(
        engine.clone(),
        submitter_with(chain, two_parts).await,
        EpochConfig::default(),
    );
    let payer = seal_one_payer_two_payees(&setup, &epochs).await;

    // An earlier run sent part 0 (the debit and one credit) and died; the arbiter voids epoch 1.
    let sealed = engine.reader().sealed_epoch(1).unwrap().unwrap();
    let root = B256::from(engine.reader().epoch(1).unwrap().unwrap().root.unwrap());
    let settlement = chain.settlement(0);
    let debit = tollgate_settle::contract::Settlement::Debit {
        payerKey: B256::from(payer.0),
        amount: U256::from(sealed.debits[0].1),
    };
    let (payee, amount) = sealed.credits[0];
    let credit = tollgate_settle::contract::pack_credit(EvmAddress::from(payee.0), amount).unwrap();
    let receipt = mined(settlement.commitEpoch(1, 0, 2, root, vec![debit], vec![credit])).await;
    assert!(receipt.status());
    let receipt = chain.dispute(1).await;
    assert!(receipt.status());

    // The commit loop meets the voided epoch before the funds loop has read the dispute.
    epochs
        .commit_backlog()
        .await
        .expect("a voided epoch does not stop the commit loop");
    let status = |epoch| engine.reader().epoch(epoch).unwrap().unwrap().status;
    assert_eq!(status(1), EpochStatus::Disputed);
    // The funds loop then reads the same dispute: nothing moves twice.
    catch_up(&funds_loop(&setup).await).await;

    assert_eq!(epochs.seal().await.unwrap(), 2);
    let carried = engine.reader().sealed_epoch(2).unwrap().unwrap();
    assert_eq!(
        carried.debits, sealed.debits,
        "epoch 2 carries epoch 1 whole"
    );
    assert_eq!(carried.credits, sealed.credits);
    epochs.commit_backlog().await.expect("epoch 2 commits");
    assert_eq!(status(2), EpochStatus::Committed);
    chain.advance_secs(window_secs + 1).await;
    assert_balances_match_the_chain(&setup, payer, &[5, 6]).await;
    assert_eq!(chain.withdrawable(6).await, U256::from(2_000));
}

/// The arbiter voids a complete epoch inside its window while the commit loop waits for its
/// confirmations: the loop must see the dispute at that depth instead of waiting forever for a
/// root that is gone.
#[tokio::test]
async fn an_epoch_voided_while_awaiting_confirmations_is_carried_and_settling_goes_on() {
    let window_secs = 30;
    let setup = setup_with_window(window_secs).await;
    let (chain, engine) = (&setup.chain, &setup.engine);
    let confirmations = 2;
    let deep = SubmitConfig {
        confirmations,
        ..SubmitConfig::default()
    };
    let epochs = std::sync::Arc::new(EpochLoop::new(
        engine.clone(),
        submitter_with(chain, deep).await,
        EpochConfig::default(),
    ));
    let payer = seal_one_payer_two_payees(&setup, &epochs).await;
    let committing = tokio::spawn({
        let epochs = epochs.clone();
        async move { epochs.commit_backlog().await }
    });
    let settlement = chain.settlement(0);
    eventually("epoch 1 never landed", || async {
        settlement.lastEpoch().call().await.unwrap() == 1
    })
    .await;
    let receipt = chain.dispute(1).await;
    assert!(receipt.status());
    chain.mine(confirmations).await;
    // A bound for a broken build, not a timing claim: the old loop waited here forever.
    tokio::time::timeout(std::time::Duration::from_secs(60), committing)
        .await
        .expect("the commit loop saw the dispute")
        .unwrap()
        .expect("a voided epoch does not stop the commit loop");
    let status = |epoch| engine.reader().epoch(epoch).unwrap().unwrap().status;
    assert_eq!(status(1), EpochStatus::Disputed);
    assert_eq!(engine.reader().payer(&payer).unwrap().unwrap().settled, 0);

    assert_eq!(epochs.seal().await.unwrap(), 2);
    let committing = tokio::spawn({
        let epochs = epochs.clone();
        async move { epochs.commit_backlog().await }
    });
    eventually("epoch 2 never landed", || async {
        settlement.lastEpoch().call().await.unwrap() == 2
    })
    .await;
    chain.mine(confirmations).await;
    committing.await.unwrap().expect("epoch 2 commits");
    assert_eq!(status(2), EpochStatus::Committed);
    catch_up(&funds_loop(&setup).await).await;
    chain.advance_secs(window_secs + 1).await;
    assert_balances_match_the_chain(&setup, payer, &[5, 6]).await;
}

async fn request_withdrawal(chain: &Chain, owner: usize, payer: PayerKey, amount: u128) {
    mined(
        chain
            .settlement(owner)
            .requestWithdrawal(B256::from(payer.0), U256::from(amount)),
    )
    .await;
}

/// Deposits 10,000 for `payer_key` from account 2, confirms it `confirmations` blocks deep and
/// returns a funds loop that has read it.
async fn deposited_and_confirmed(
    setup: &Setup,
    payer_key: PayerKey,
    confirmations: u64,
) -> FundsLoop {
    setup.chain.deposit(2, payer_key.0, 10_000).await;
    setup.chain.mine(confirmations).await;
    let funds = funds_loop_at(setup, confirmations).await;
    catch_up(&funds).await;
    funds
}

#[tokio::test]
async fn a_withdrawal_request_is_refused_spend_before_it_is_confirmed_and_counted_once() {
    let setup = setup().await;
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let payer = SigningKey::from_bytes(&[7; 32]);
    let payer_key = PayerKey(payer.verifying_key().to_bytes());
    let payee = Address(chain.address(5).0.0);
    let confirmations = 3;
    let funds = deposited_and_confirmed(&setup, payer_key, confirmations).await;
    let balance = || engine.reader().payer(&payer_key).unwrap().unwrap();
    assert_eq!(balance().deposited, 10_000);

    // Mined, not yet confirmed: the deposit rule would not count it yet, the funds check must.
    request_withdrawal(chain, 2, payer_key, 8_000).await;
    catch_up(&funds).await;
    assert_eq!(balance().available, 2_000, "{:?}", balance());
    let ack = submit(engine, 1, &[signed(&payer, payee, 3_000, 1, domain)]).await;
    assert_eq!(
        ack.rejections,
        vec![(0, Reason::InsufficientFunds)],
        "10,000 deposited - 8,000 requested at the head < 3,000"
    );

    // Once confirmed it is counted once: not skipped, not added to its head copy.
    chain.mine(confirmations).await;
    catch_up(&funds).await;
    assert_eq!(balance().withdrawal_requested, 8_000);
    assert_eq!(balance().available, 2_000);
    let ack = submit(engine, 2, &[signed(&payer, payee, 2_000, 2, domain)]).await;
    assert_eq!(ack.accepted, 1, "{ack:?}");
}

#[tokio::test]
async fn a_withdrawal_request_a_reorg_drops_stops_refusing_spend() {
    let setup = setup().await;
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let payer = SigningKey::from_bytes(&[8; 32]);
    let payer_key = PayerKey(payer.verifying_key().to_bytes());
    let payee = Address(chain.address(5).0.0);
    let confirmations = 3;
    let funds = deposited_and_confirmed(&setup, payer_key, confirmations).await;
    request_withdrawal(chain, 2, payer_key, 8_000).await;
    catch_up(&funds).await;
    let balance = || engine.reader().payer(&payer_key).unwrap().unwrap();
    assert_eq!(balance().available, 2_000, "refused at the head");

    // The block holding the request is replaced by an empty one.
    use alloy::providers::Provider;
    let _: serde_json::Value = chain
        .provider(0)
        .raw_request(
            "anvil_reorg".into(),
            (1u64, Vec::<serde_json::Value>::new()),
        )
        .await
        .unwrap();
    assert_eq!(
        chain
            .settlement(0)
            .withdrawalRequests(B256::from(payer_key.0))
            .call()
            .await
            .unwrap()
            .amount,
        0,
        "the reorg dropped the request"
    );
    catch_up(&funds).await;
    chain.mine(confirmations).await;
    catch_up(&funds).await;
    assert_eq!(balance().withdrawal_requested, 0);
    assert_eq!(balance().available, 10_000);
    let ack = submit(engine, 1, &[signed(&payer, payee, 3_000, 1, domain)]).await;
    assert_eq!(ack.accepted, 1, "{ack:?}");
}

/// A payer whose exit overtakes its accepted debits (issue 14, item 2): the epoch is committed
/// without the uncovered amount, cut from what that payer paid its payees in the epoch (in payee
/// order), another payer's debits in the same epoch settle in full, later epochs go on, and
/// every balance still equals the chain's.
#[tokio::test]
async fn an_exit_that_overtakes_accepted_debits_is_committed_as_a_shortfall_and_settling_goes_on() {
    exit_overtakes_debits(SubmitConfig::default().part_entries_max).await;
}

/// The same with one entry per part: the overdraft reverts a later part, after parts already
/// sent, and only the parts not yet sent change.
#[tokio::test]
async fn an_exit_that_overtakes_a_debit_mid_commit_changes_only_the_parts_not_yet_sent() {
    exit_overtakes_debits(1).await;
}

async fn exit_overtakes_debits(part_entries_max: usize) {
    let setup = setup().await;
    let (chain, engine, domain) = (&setup.chain, &setup.engine, &setup.domain);
    let exiting = SigningKey::from_bytes(&[11; 32]);
    let staying = SigningKey::from_bytes(&[12; 32]);
    let exiting_key = PayerKey(exiting.verifying_key().to_bytes());
    let staying_key = PayerKey(staying.verifying_key().to_bytes());
    // Debits go in payer order: with one entry per part the staying payer's debit is part 0,
    // already sent when the exiting payer's part 1 reverts.
    assert!(staying_key < exiting_key);
    chain.deposit(2, exiting_key.0, 10_000).await;
    chain.deposit(3, staying_key.0, 10_000).await;
    let funds = funds_loop(&setup).await;
    catch_up(&funds).await;
    // Payee order decides where the cut falls: a before b.
    let payee_a = Address([0x0a; 20]);
    let payee_b = Address([0x0b; 20]);
    let submitter = submitter_with(
        chain,
        SubmitConfig {
            part_entries_max,
            ..SubmitConfig::default()
        },
    )
    .await;
    let epochs = EpochLoop::new(engine.clone(), submitter, EpochConfig::default());

    let ack = submit(
        engine,
        1,
        &[
            signed(&exiting, payee_a, 3_000, 1, domain),
            signed(&staying, payee_a, 2_000, 1, domain),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 2, "{ack:?}");
    assert_eq!(epochs.seal().await.unwrap(), 1);
    epochs.commit_backlog().await.unwrap();

    // Epoch 2: the exiting payer pays a 2,000 more (its leaf grows from 3,000 to 5,000) and b
    // 4,000; the staying payer pays both too.
    let ack = submit(
        engine,
        2,
        &[
            signed(&exiting, payee_a, 2_000, 2, domain),
            signed(&exiting, payee_b, 4_000, 3, domain),
            signed(&staying, payee_a, 1_000, 2, domain),
            signed(&staying, payee_b, 500, 3, domain),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 4, "{ack:?}");
    assert_eq!(epochs.seal().await.unwrap(), 2);

    // Before epoch 2 is committed the owner exits with 5,000 of the 7,000 the chain still holds,
    // and the funds loop has not seen it: the chain covers 2,000 of the 6,000 debit.
    request_withdrawal(chain, 2, exiting_key, 5_000).await;
    chain.advance_secs(61).await;
    let completed = mined(
        chain
            .settlement(2)
            .completeWithdrawal(B256::from(exiting_key.0)),
    )
    .await;
    assert!(completed.status(), "the exit completed");

    epochs.commit_backlog().await.unwrap();
    assert_eq!(
        engine.reader().epoch(2).unwrap().unwrap().status,
        EpochStatus::Committed
    );
    // 4,000 uncovered: all 2,000 the payer paid a in this epoch (not its 5,000 cumulative), then
    // 2,000 of b's 4,000.
    assert_eq!(
        engine.reader().epoch_shortfalls(2).unwrap(),
        vec![(exiting_key, payee_a, 2_000), (exiting_key, payee_b, 2_000)]
    );

    // Settling goes on.
    submit(engine, 3, &[signed(&staying, payee_b, 700, 4, domain)]).await;
    assert_eq!(epochs.seal().await.unwrap(), 3);
    epochs.commit_backlog().await.unwrap();
    assert_eq!(
        engine.reader().epoch(3).unwrap().unwrap().status,
        EpochStatus::Committed
    );

    catch_up(&funds).await;
    let settlement = chain.settlement(0);
    for (payer, settled, shortfall) in [(exiting_key, 5_000, 4_000), (staying_key, 4_200, 0)] {
        let balance = engine.reader().payer(&payer).unwrap().unwrap();
        assert_eq!(
            (balance.settled, balance.shortfall, balance.pending),
            (settled, shortfall, 0),
            "{payer}: {balance:?}"
        );
        let onchain = settlement
            .available(B256::from(payer.0))
            .call()
            .await
            .unwrap();
        assert_eq!(
            onchain,
            U256::from(balance.deposited - balance.withdrawn - balance.settled),
            "{payer}"
        );
    }
    for (payee, settled, shortfall) in [(payee_a, 6_000, 2_000), (payee_b, 3_200, 2_000)] {
        let balance = engine.reader().payee(&payee).unwrap().unwrap();
        assert_eq!(
            (balance.settled, balance.shortfall),
            (settled, shortfall),
            "{payee}: {balance:?}"
        );
        assert_eq!(balance.credited, settled + shortfall);
        let onchain = settlement
            .withdrawable(EvmAddress::from(payee.0))
            .call()
            .await
            .unwrap();
        assert_eq!(onchain, U256::from(settled), "{payee}");
    }
}
