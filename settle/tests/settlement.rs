//! The Settlement contract on a real anvil, driven through the Rust submitter and Merkle code.
#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{Address, B256, U256};
use common::{Chain, eventually, key, mined, payer_key};
use tollgate_engine::PayerKey;
use tollgate_settle::{
    EpochTree, Leaf,
    contract::{Settlement, Settlement::SettlementErrors, pack_credit},
    merkle::leaf_hash,
    submitter::{EpochCommit, OnchainEpoch, SubmitConfig, SubmitError, Submitter},
};

fn engine_address(address: Address) -> tollgate_engine::Address {
    tollgate_engine::Address(address.0.0)
}

async fn submitter_with_parts(chain: &Chain, part_entries_max: usize) -> Submitter {
    let config = SubmitConfig {
        part_entries_max,
        backoff_initial_ms: 20,
        receipt_timeout_ms: 20_000,
        receipt_poll_ms: 10,
        ..SubmitConfig::default()
    };
    chain.submitter(config).await
}

/// Net debits and credits of an epoch from the channels' growth since the previous epoch.
fn commit_for(epoch: u64, tree: &EpochTree, previous: &[Leaf]) -> EpochCommit {
    use std::collections::BTreeMap;
    let mut debits: BTreeMap<[u8; 32], u128> = BTreeMap::new();
    let mut credits: BTreeMap<[u8; 20], u128> = BTreeMap::new();
    for (_, leaf) in tree.leaves() {
        let before = previous
            .iter()
            .find(|old| old.payer == leaf.payer && old.payee == leaf.payee)
            .map_or(0, |old| old.cumulative);
        let delta = leaf.cumulative - before;
        *debits.entry(leaf.payer.0).or_default() += delta;
        *credits.entry(leaf.payee.0).or_default() += delta;
    }
    EpochCommit {
        epoch,
        root: tree.root(),
        debits: debits.into_iter().map(|(k, v)| (PayerKey(k), v)).collect(),
        credits: credits
            .into_iter()
            .map(|(k, v)| (tollgate_engine::Address(k), v))
            .collect(),
    }
}

fn revert_of(error: &alloy::contract::Error) -> SettlementErrors {
    error
        .as_decoded_interface_error::<SettlementErrors>()
        .unwrap_or_else(|| panic!("expected a Settlement custom error, got {error}"))
}

#[tokio::test]
async fn deposits_two_epochs_withdrawal_proofs_and_refusals() {
    let window_secs = 30;
    let chain = Chain::start(window_secs, 600).await;
    let settlement = chain.settlement(0);

    // Three payers, each deposited from its own EVM account (which becomes the key's exit owner).
    let deposits = [1_000_000u128, 2_000_000, 500_000];
    for (i, amount) in deposits.iter().enumerate() {
        chain.deposit(2 + i, payer_key(i as u32), *amount).await;
    }
    for (i, amount) in deposits.iter().enumerate() {
        let key = B256::from(payer_key(i as u32));
        assert_eq!(
            settlement.available(key).call().await.unwrap(),
            U256::from(*amount)
        );
        assert_eq!(
            settlement.payerOwner(key).call().await.unwrap(),
            chain.address(2 + i)
        );
    }

    // Payees are dev accounts 5 and 6 so they can withdraw.
    let payee_a = engine_address(chain.address(5));
    let payee_b = engine_address(chain.address(6));
    let p = |i: u32| PayerKey(payer_key(i));
    let epoch1 = vec![
        Leaf {
            payer: p(0),
            payee: payee_a,
            cumulative: 100_000,
        },
        Leaf {
            payer: p(1),
            payee: payee_a,
            cumulative: 250_000,
        },
        Leaf {
            payer: p(1),
            payee: payee_b,
            cumulative: 50_000,
        },
        Leaf {
            payer: p(2),
            payee: payee_b,
            cumulative: 400_000,
        },
    ];
    let tree1 = EpochTree::build(1, epoch1.clone()).unwrap();
    let submitter = submitter_with_parts(&chain, 1_500).await;
    let outcome = submitter
        .submit(&commit_for(1, &tree1, &[]))
        .await
        .expect("epoch 1 commits");
    assert_eq!(outcome.landed.len(), 1);
    assert_eq!(settlement.lastEpoch().call().await.unwrap(), 1);
    assert_eq!(settlement.roots(1).call().await.unwrap(), tree1.root());

    // Inside the window: debits are reserved, credits are not yet withdrawable.
    assert_eq!(
        settlement
            .available(B256::from(payer_key(1)))
            .call()
            .await
            .unwrap(),
        U256::from(2_000_000 - 300_000)
    );
    assert_eq!(chain.withdrawable(5).await, U256::ZERO);
    let early = chain.settlement(5).withdraw().call().await.unwrap_err();
    assert!(matches!(
        revert_of(&early),
        SettlementErrors::NothingToWithdraw(_)
    ));

    // Epoch 2 cannot start while epoch 1 can still be disputed.
    let epoch2 = vec![
        Leaf {
            payer: p(0),
            payee: payee_a,
            cumulative: 180_000,
        },
        Leaf {
            payer: p(1),
            payee: payee_a,
            cumulative: 250_000,
        },
        Leaf {
            payer: p(1),
            payee: payee_b,
            cumulative: 90_000,
        },
        Leaf {
            payer: p(2),
            payee: payee_b,
            cumulative: 450_000,
        },
        Leaf {
            payer: p(2),
            payee: payee_a,
            cumulative: 10_000,
        },
    ];
    let tree2 = EpochTree::build(2, epoch2.clone()).unwrap();
    let commit2 = commit_for(2, &tree2, &epoch1);
    let too_early = settlement
        .commitEpoch(2, 0, 1, tree2.root(), vec![], vec![])
        .call()
        .await
        .unwrap_err();
    assert!(matches!(
        revert_of(&too_early),
        SettlementErrors::PreviousEpochNotFinal(_)
    ));

    // After the window the payees withdraw epoch 1's credits.
    chain.advance_secs(window_secs + 1).await;
    assert_eq!(chain.withdrawable(5).await, U256::from(350_000));
    let receipt = mined(chain.settlement(5).withdraw()).await;
    assert!(receipt.status());
    assert_eq!(
        chain.token_balance(chain.address(5)).await,
        U256::from(350_000)
    );
    assert_eq!(chain.withdrawable(5).await, U256::ZERO);

    // Epoch 2 in parts of two entries (3 debits + 2 credits: three parts).
    let submitter_parts = submitter_with_parts(&chain, 2).await;
    let outcome = submitter_parts
        .submit(&commit2)
        .await
        .expect("epoch 2 commits");
    assert_eq!(outcome.parts, 3);
    assert_eq!(
        outcome.landed.iter().map(|l| l.part).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    // Every onchain balance equals what the epochs say.
    let debited = |i: u32| {
        epoch2
            .iter()
            .filter(|l| l.payer == p(i))
            .map(|l| l.cumulative)
            .sum::<u128>()
    };
    for (i, amount) in deposits.iter().enumerate() {
        let onchain = settlement
            .available(B256::from(payer_key(i as u32)))
            .call()
            .await
            .unwrap();
        assert_eq!(onchain, U256::from(amount - debited(i as u32)), "payer {i}");
    }
    chain.advance_secs(window_secs + 1).await;
    let credited = |payee: tollgate_engine::Address| {
        epoch2
            .iter()
            .filter(|l| l.payee == payee)
            .map(|l| l.cumulative)
            .sum::<u128>()
    };
    assert_eq!(
        chain.withdrawable(5).await,
        U256::from(credited(payee_a) - 350_000)
    );
    assert_eq!(chain.withdrawable(6).await, U256::from(credited(payee_b)));

    // A Rust-built proof verifies onchain; a tampered leaf or proof does not.
    for leaf in &epoch2 {
        let (proved, proof) = tree2.proof(&leaf.payer, &leaf.payee).unwrap();
        let ok = chain.verifies(2, &proved, proof.clone()).await;
        assert!(ok, "leaf {leaf:?}");
        let inflated_leaf = Leaf {
            cumulative: proved.cumulative + 1,
            ..proved
        };
        let inflated = chain.verifies(2, &inflated_leaf, proof.clone()).await;
        assert!(!inflated, "tampered cumulative must fail");
        if let Some(first) = proof.first() {
            let mut bad = proof.clone();
            bad[0] = B256::from(first.0.map(|b| b ^ 0x01));
            let tampered = chain.verifies(2, &proved, bad).await;
            assert!(!tampered, "tampered proof must fail");
        }
        let wrong_epoch = chain.verifies(1, &proved, proof).await;
        assert!(!wrong_epoch);
    }

    // A resubmitted epoch reverts onchain; the submitter sees it is done and sends nothing.
    let resent = settlement
        .commitEpoch(2, 0, 3, tree2.root(), vec![], vec![])
        .call()
        .await
        .unwrap_err();
    match revert_of(&resent) {
        SettlementErrors::UnexpectedPart(e) => {
            assert_eq!((e.expectedEpoch, e.expectedPart), (3, 0))
        }
        other => panic!("unexpected revert {other:?}"),
    }
    let again = submitter_parts.submit(&commit2).await.expect("idempotent");
    assert!(again.landed.is_empty(), "nothing re-sent");
    // A different root for an epoch the chain already has is a conflict, not a silent success.
    let conflicting = EpochCommit {
        root: B256::repeat_byte(9),
        ..commit2.clone()
    };
    assert!(matches!(
        submitter.submit(&conflicting).await,
        Err(SubmitError::RootConflict { .. })
    ));

    // An overdraft debit is refused by the contract and reported as a rejection.
    let payer2_left = settlement
        .available(B256::from(payer_key(2)))
        .call()
        .await
        .unwrap();
    let over = u128::try_from(payer2_left).unwrap() + 1;
    let epoch3 = EpochCommit {
        epoch: 3,
        root: B256::repeat_byte(3),
        debits: vec![(p(2), over)],
        credits: vec![(payee_b, over)],
    };
    match submitter.submit(&epoch3).await {
        Err(SubmitError::Overdraft(overdraft)) => {
            assert_eq!((overdraft.epoch, overdraft.part), (3, 0));
            assert_eq!(overdraft.payer, p(2));
            assert_eq!(overdraft.amount, over);
        }
        other => panic!("expected an overdraft, got {other:?}"),
    }
    assert_eq!(settlement.lastEpoch().call().await.unwrap(), 2);

    // Conservation: the contract holds exactly deposits minus withdrawals.
    let held = chain.token_balance(chain.addresses.settlement).await;
    assert_eq!(held, U256::from(deposits.iter().sum::<u128>() - 350_000));
}

/// A commit for `n` leaves, all owed by one payer that has deposited enough.
async fn commit_leaves(chain: &Chain, epoch: u64, n: u32) -> (EpochTree, Vec<Leaf>) {
    let payer = PayerKey(payer_key(42));
    let leaves: Vec<Leaf> = (0..n)
        .map(|i| Leaf {
            payer,
            payee: common::payee(i),
            cumulative: u128::from(i) + u128::from(epoch) * 10_000,
        })
        .collect();
    let tree = EpochTree::build(epoch, leaves.clone()).unwrap();
    let total: u128 = leaves.iter().map(|l| l.cumulative).sum();
    let commit = EpochCommit {
        epoch,
        root: tree.root(),
        debits: vec![(payer, total)],
        credits: leaves.iter().map(|l| (l.payee, l.cumulative)).collect(),
    };
    submitter_with_parts(chain, 1_500)
        .await
        .submit(&commit)
        .await
        .expect("commit");
    (tree, leaves)
}

#[tokio::test]
async fn rust_proofs_verify_onchain_for_1_2_3_and_1000_leaves() {
    let chain = Chain::start(0, 60).await;
    chain.deposit(2, payer_key(42), 10_000_000_000).await;
    let settlement = chain.settlement(0);
    for (epoch, n) in [(1u64, 1u32), (2, 2), (3, 3), (4, 1_000)] {
        let (tree, leaves) = commit_leaves(&chain, epoch, n).await;
        assert_eq!(settlement.roots(epoch).call().await.unwrap(), tree.root());
        // Every leaf for small trees; for 1,000 leaves the first, the last and every 37th.
        let sample: Vec<&Leaf> = leaves
            .iter()
            .enumerate()
            .filter(|(i, _)| n < 10 || i % 37 == 0 || *i as u32 == n - 1)
            .map(|(_, l)| l)
            .collect();
        for leaf in sample {
            let (_, proof) = tree.proof(&leaf.payer, &leaf.payee).unwrap();
            assert!(
                chain.verifies(epoch, leaf, proof.clone()).await,
                "n={n} {leaf:?}"
            );
            let inflated = Leaf {
                cumulative: leaf.cumulative + 1,
                ..*leaf
            };
            assert!(
                !chain.verifies(epoch, &inflated, proof.clone()).await,
                "tampered leaf, n={n}"
            );
            let mut shortened = proof.clone();
            if shortened.pop().is_some() {
                assert!(
                    !chain.verifies(epoch, leaf, shortened).await,
                    "tampered proof, n={n}"
                );
            }
            // The leaf hash the contract computes is the one the Rust tree holds.
            assert!(tree.leaves().any(|(h, _)| h == leaf_hash(epoch, leaf)));
        }
    }
}

#[tokio::test]
async fn arbiter_voids_the_open_epoch_and_its_amounts_go_in_the_next() {
    let chain = Chain::start(60, 600).await;
    chain.deposit(2, payer_key(7), 1_000).await;
    let settlement = chain.settlement(0);
    let payee = common::payee(1);
    let payer = PayerKey(payer_key(7));
    let available = || async {
        settlement
            .available(B256::from(payer.0))
            .call()
            .await
            .unwrap()
    };
    let wrong = EpochCommit {
        epoch: 1,
        root: B256::repeat_byte(1),
        debits: vec![(payer, 900)],
        credits: vec![(payee, 900)],
    };
    let submitter = submitter_with_parts(&chain, 1_500).await;
    submitter.submit(&wrong).await.unwrap();
    assert_eq!(available().await, U256::from(100));

    // Only the arbiter may dispute, and only once.
    let not_arbiter = chain.settlement(3).dispute(1).call().await.unwrap_err();
    assert!(matches!(
        revert_of(&not_arbiter),
        SettlementErrors::NotArbiter(_)
    ));
    let receipt = chain.dispute(1).await;
    assert!(receipt.status());
    assert_eq!(
        settlement.roots(1).call().await.unwrap(),
        B256::ZERO,
        "voided root is gone"
    );
    assert_eq!(available().await, U256::from(1_000), "debit voided");
    let again = chain.settlement(1).dispute(1).call().await.unwrap_err();
    assert!(matches!(
        revert_of(&again),
        SettlementErrors::NotDisputable(_)
    ));

    // Epoch numbers are never reused: resending epoch 1 sends nothing and reports it voided, the
    // corrected amounts go in as epoch 2, and the voided credit never becomes withdrawable.
    let reused = submitter
        .submit(&EpochCommit {
            root: B256::repeat_byte(2),
            ..wrong.clone()
        })
        .await
        .unwrap();
    assert_eq!(reused.onchain, OnchainEpoch::Voided);
    assert!(reused.landed.is_empty());
    let right = EpochCommit {
        epoch: 2,
        root: B256::repeat_byte(2),
        debits: vec![(payer, 300)],
        credits: vec![(payee, 300)],
    };
    submitter.submit(&right).await.unwrap();
    chain.advance_secs(61).await;
    assert_eq!(
        settlement
            .withdrawable(Address::from(payee.0))
            .call()
            .await
            .unwrap(),
        U256::from(300)
    );
    assert_eq!(available().await, U256::from(700));
    // Past the window the epoch is final: no more disputes.
    let late = chain.settlement(1).dispute(2).call().await.unwrap_err();
    assert!(matches!(
        revert_of(&late),
        SettlementErrors::NotDisputable(_)
    ));
}

#[tokio::test]
async fn payer_exit_belongs_to_the_first_depositor_and_waits_for_the_delay() {
    let chain = Chain::start(0, 100).await;
    let key = B256::from(payer_key(9));
    chain.deposit(2, payer_key(9), 1_000).await;
    chain.deposit(3, payer_key(9), 500).await; // a top-up from someone else: still owned by account 2
    let owner = chain.settlement(2);
    let stranger = chain
        .settlement(3)
        .requestWithdrawal(key, U256::from(1))
        .call()
        .await
        .unwrap_err();
    assert!(matches!(
        revert_of(&stranger),
        SettlementErrors::NotPayerOwner(_)
    ));

    mined(owner.requestWithdrawal(key, U256::from(1_200))).await;
    let early = owner.completeWithdrawal(key).call().await.unwrap_err();
    assert!(matches!(
        revert_of(&early),
        SettlementErrors::WithdrawalNotReady(_)
    ));

    // Spend committed during the delay is honoured first: the payout is capped at what is left.
    let submitter = submitter_with_parts(&chain, 1_500).await;
    let spend = EpochCommit {
        epoch: 1,
        root: B256::repeat_byte(5),
        debits: vec![(PayerKey(payer_key(9)), 400)],
        credits: vec![(common::payee(3), 400)],
    };
    submitter.submit(&spend).await.unwrap();
    chain.advance_secs(101).await;
    let before = chain.token_balance(chain.address(2)).await;
    mined(owner.completeWithdrawal(key)).await;
    let after = chain.token_balance(chain.address(2)).await;
    assert_eq!(after - before, U256::from(1_100));
    assert_eq!(
        chain.settlement(0).available(key).call().await.unwrap(),
        U256::ZERO
    );
    // The unpaid 100 stays requested, as the engine's ledger keeps it, and is paid from a top-up.
    assert_eq!(
        owner
            .withdrawalRequests(key)
            .call()
            .await
            .unwrap()
            .amount
            .to::<u128>(),
        100
    );
    let empty = owner.completeWithdrawal(key).call().await.unwrap_err();
    assert!(matches!(
        revert_of(&empty),
        SettlementErrors::NothingToWithdraw(_)
    ));
    chain.deposit(2, payer_key(9), 60).await;
    mined(owner.completeWithdrawal(key)).await;
    assert_eq!(
        owner
            .withdrawalRequests(key)
            .call()
            .await
            .unwrap()
            .amount
            .to::<u128>(),
        40
    );
    assert_eq!(
        chain.token_balance(chain.address(2)).await - after,
        U256::from(60)
    );
}

#[tokio::test]
async fn submitter_refuses_a_wrong_chain_id_or_operator_at_start() {
    let chain = Chain::start(0, 60).await;
    let wrong_chain = Submitter::connect(
        &chain.endpoint(),
        1,
        chain.addresses.settlement,
        key(&chain.anvil, 0),
        SubmitConfig::default(),
    )
    .await;
    assert!(matches!(
        wrong_chain,
        Err(tollgate_settle::ChainError::ChainIdMismatch { expected: 1, .. })
    ));
    let wrong_key = Submitter::connect(
        &chain.endpoint(),
        chain.anvil.chain_id(),
        chain.addresses.settlement,
        key(&chain.anvil, 4),
        SubmitConfig::default(),
    )
    .await;
    assert!(matches!(
        wrong_key,
        Err(tollgate_settle::ChainError::NotOperator { .. })
    ));
    let no_contract = Submitter::connect(
        &chain.endpoint(),
        chain.anvil.chain_id(),
        Address::repeat_byte(0x42),
        key(&chain.anvil, 0),
        SubmitConfig::default(),
    )
    .await;
    assert!(matches!(
        no_contract,
        Err(tollgate_settle::ChainError::NoContract(_))
    ));
    // An epoch that skips ahead is refused before anything is sent.
    let submitter = submitter_with_parts(&chain, 10).await;
    let gap = EpochCommit {
        epoch: 5,
        root: B256::repeat_byte(5),
        debits: vec![],
        credits: vec![],
    };
    assert!(matches!(
        submitter.submit(&gap).await,
        Err(SubmitError::Gap {
            epoch: 5,
            next_expected: 1
        })
    ));
}

#[tokio::test]
async fn an_rpc_endpoint_that_answers_garbage_is_refused_at_start() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An HTTP server that answers every request with 200 and a body that is not JSON-RPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let body = "<html>502 bad gateway</html>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    let chain = Chain::start(0, 60).await;
    let refused = Submitter::connect(
        &endpoint,
        chain.anvil.chain_id(),
        chain.addresses.settlement,
        key(&chain.anvil, 0),
        SubmitConfig::default(),
    )
    .await;
    match refused {
        Err(error @ tollgate_settle::ChainError::Rpc(_)) => {
            assert!(
                error.is_transient(),
                "a garbled answer may be a passing proxy fault"
            );
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// `commitEpoch(epoch, 0, 1, root, debits, credits)` as calldata, for refusals the submitter
/// would only report as a string.
fn debits_of(debits: &[([u8; 32], u128)]) -> Vec<Settlement::Debit> {
    debits
        .iter()
        .map(|(payer, amount)| Settlement::Debit {
            payerKey: B256::from(*payer),
            amount: U256::from(*amount),
        })
        .collect()
}

fn credits_of(credits: &[(Address, u128)]) -> Vec<U256> {
    credits
        .iter()
        .map(|(payee, amount)| pack_credit(*payee, *amount).expect("fits 96 bits"))
        .collect()
}

#[tokio::test]
async fn a_credit_that_would_overflow_a_payees_slot_is_refused_at_commit_and_never_locks_it() {
    let chain = Chain::start(0, 60).await;
    let max = (1u128 << 96) - 1;
    chain.deposit(2, payer_key(1), max).await;
    chain.deposit(3, payer_key(2), 100).await;
    let payee = chain.address(5);
    let settlement = chain.settlement(0);
    let commit = |epoch: u64, payer: [u8; 32], amount: u128| {
        settlement.commitEpoch(
            epoch,
            0,
            1,
            B256::repeat_byte(epoch as u8),
            debits_of(&[(payer, amount)]),
            credits_of(&[(payee, amount)]),
        )
    };
    let receipt = mined(commit(1, payer_key(1), max)).await;
    assert!(receipt.status());

    // The payee's slot holds 2^96 - 1 once epoch 1 folds in: 100 more cannot fit. Landing it would
    // make every later fold of that slot revert, in `withdraw()` and in every commit touching it.
    match commit(2, payer_key(2), 100).call().await {
        Err(error) => assert!(
            matches!(revert_of(&error), SettlementErrors::AmountTooLarge(_)),
            "{error}"
        ),
        Ok(_) => panic!("epoch 2 would land and lock the payee's slot (settled + pending > 2^96)"),
    }

    // The payee is not locked out: it withdraws, and then the same credit fits.
    let receipt = mined(chain.settlement(5).withdraw()).await;
    assert!(receipt.status());
    let receipt = mined(commit(2, payer_key(2), 100)).await;
    assert!(receipt.status());
    assert_eq!(
        settlement.withdrawable(payee).call().await.unwrap(),
        U256::from(100)
    );
    assert_eq!(chain.token_balance(payee).await, U256::from(max));
}

#[tokio::test]
async fn verify_leaf_answers_only_for_final_epochs() {
    let window_secs = 30;
    let chain = Chain::start(window_secs, 600).await;
    chain.deposit(2, payer_key(1), 10_000).await;
    let settlement = chain.settlement(0);
    let payer = PayerKey(payer_key(1));
    let leaves = [
        Leaf {
            payer,
            payee: engine_address(chain.address(5)),
            cumulative: 300,
        },
        Leaf {
            payer,
            payee: engine_address(chain.address(6)),
            cumulative: 200,
        },
    ];
    let chain = &chain;
    let verifies = |epoch: u64, tree: &EpochTree| {
        let (leaf, proof) = tree.proof(&leaves[0].payer, &leaves[0].payee).unwrap();
        async move { chain.verifies(epoch, &leaf, proof).await }
    };

    // Epoch 1 in two parts: the debit first, the credits second.
    let tree1 = EpochTree::build(1, leaves).unwrap();
    let send = |part: u16, debits: Vec<Settlement::Debit>, credits: Vec<U256>| {
        settlement.commitEpoch(1, part, 2, tree1.root(), debits, credits)
    };
    let receipt = mined(send(0, debits_of(&[(payer.0, 500)]), vec![])).await;
    assert!(receipt.status());
    assert!(
        !verifies(1, &tree1).await,
        "an incomplete epoch is not final"
    );
    let credits = credits_of(&[(chain.address(5), 300), (chain.address(6), 200)]);
    let receipt = mined(send(1, vec![], credits)).await;
    assert!(receipt.status());
    assert!(
        !verifies(1, &tree1).await,
        "an epoch inside its challenge window can still be voided"
    );
    assert!(!settlement.isFinal(1).call().await.unwrap());
    chain.advance_secs(window_secs).await;
    assert!(
        verifies(1, &tree1).await,
        "final once the window has passed"
    );
    assert!(settlement.isFinal(1).call().await.unwrap());

    // Epoch 2 is voided by the arbiter: its proofs never verify, epoch 1's still do.
    let grown: Vec<Leaf> = leaves
        .iter()
        .map(|leaf| Leaf {
            cumulative: leaf.cumulative + 10,
            ..*leaf
        })
        .collect();
    let tree2 = EpochTree::build(2, grown).unwrap();
    let receipt = mined(settlement.commitEpoch(
        2,
        0,
        1,
        tree2.root(),
        debits_of(&[(payer.0, 20)]),
        credits_of(&[(chain.address(5), 10), (chain.address(6), 10)]),
    ))
    .await;
    assert!(receipt.status());
    let receipt = chain.dispute(2).await;
    assert!(receipt.status());
    chain.advance_secs(window_secs).await;
    assert!(!verifies(2, &tree2).await, "voided");
    assert!(!settlement.isFinal(2).call().await.unwrap());
    assert!(verifies(1, &tree1).await);
    assert!(settlement.isFinal(1).call().await.unwrap());
    assert!(
        !settlement.isFinal(3).call().await.unwrap(),
        "never committed"
    );
}

alloy::sol!(
    #[sol(rpc)]
    FeeOnTransferToken,
    "artifacts/FeeOnTransferToken.json"
);

#[tokio::test]
async fn a_deposit_credits_what_arrived_not_what_was_named() {
    use tollgate_settle::watcher::{FundsChange, WatchConfig, Watcher};

    let anvil = common::spawn_anvil();
    let provider =
        tollgate_settle::chain::wallet_provider(&anvil.endpoint(), key(&anvil, 0)).unwrap();
    let fee_token = FeeOnTransferToken::deploy(provider).await.unwrap();
    let params = tollgate_settle::DeployParams {
        challenge_window_secs: 0,
        withdrawal_delay_secs: 60,
        arbiter: Some(anvil.addresses()[1]),
        ..tollgate_settle::DeployParams::dev()
    };
    let addresses = tollgate_settle::deploy(
        &anvil.endpoint(),
        key(&anvil, 0),
        Some(*fee_token.address()),
        &params,
    )
    .await
    .unwrap();
    let chain = Chain { anvil, addresses };
    let settlement = chain.settlement(0);

    // The token burns 1% of each transfer: 9,900 and 4,950 arrive.
    chain.deposit(2, payer_key(1), 10_000).await;
    chain.deposit(3, payer_key(2), 5_000).await;
    let available = |i: u32| settlement.available(B256::from(payer_key(i)));
    assert_eq!(available(1).call().await.unwrap(), U256::from(9_900));
    assert_eq!(available(2).call().await.unwrap(), U256::from(4_950));
    assert_eq!(
        chain.token_balance(chain.addresses.settlement).await,
        U256::from(9_900 + 4_950),
        "the contract owes exactly what it holds"
    );

    // The engine learns the same figures from the Deposited events.
    let watcher = Watcher::connect(
        &chain.endpoint(),
        chain.anvil.chain_id(),
        chain.addresses.settlement,
        WatchConfig {
            confirmations: 0,
            blocks_per_poll_max: 1_000,
        },
    )
    .await
    .unwrap();
    let batch = watcher.poll(chain.addresses.block).await.unwrap();
    let changes: Vec<FundsChange> = batch.events.iter().map(|e| e.change).collect();
    assert_eq!(
        changes,
        vec![
            FundsChange::Deposit {
                payer: PayerKey(payer_key(1)),
                amount: 9_900
            },
            FundsChange::Deposit {
                payer: PayerKey(payer_key(2)),
                amount: 4_950
            },
        ]
    );

    // Both payers exit in full: the contract can pay every credit it gave.
    for (index, payer) in [(2usize, 1u32), (3, 2)] {
        let owner = chain.settlement(index);
        let left = available(payer).call().await.unwrap();
        let receipt = mined(owner.requestWithdrawal(B256::from(payer_key(payer)), left)).await;
        assert!(receipt.status());
    }
    chain.advance_secs(61).await;
    for (index, payer) in [(2usize, 1u32), (3, 2)] {
        let receipt = mined(
            chain
                .settlement(index)
                .completeWithdrawal(B256::from(payer_key(payer))),
        )
        .await;
        assert!(receipt.status(), "payer {payer} exits");
    }
}

/// Anvil's (or geth's) JSON-RPC method `method` with `params`.
async fn rpc(chain: &Chain, method: &'static str, params: serde_json::Value) -> serde_json::Value {
    use alloy::providers::Provider;
    chain
        .provider(0)
        .raw_request(method.into(), params)
        .await
        .unwrap_or_else(|error| panic!("{method}: {error}"))
}

/// `(nonce, hash, max fee per gas)` of every transaction waiting in anvil's pool.
async fn pool(chain: &Chain) -> Vec<(u64, String, u128)> {
    let content = rpc(chain, "txpool_content", serde_json::json!([])).await;
    let hex_u128 = |value: &serde_json::Value| {
        let text = value.as_str().unwrap_or_else(|| panic!("not hex: {value}"));
        u128::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
    };
    let mut txs = Vec::new();
    for (_, by_nonce) in content["pending"].as_object().unwrap() {
        for tx in by_nonce.as_object().unwrap().values() {
            txs.push((
                u64::try_from(hex_u128(&tx["nonce"])).unwrap(),
                tx["hash"].as_str().unwrap().to_owned(),
                hex_u128(&tx["maxFeePerGas"]),
            ));
        }
    }
    txs.sort();
    txs
}

/// One payer pays `n` payees 10 each in epoch 1.
fn small_epoch(n: u32) -> EpochCommit {
    EpochCommit {
        epoch: 1,
        root: B256::repeat_byte(1),
        debits: (1..=n).map(|i| (PayerKey(payer_key(i)), 10)).collect(),
        credits: (1..=n).map(|i| (common::payee(i), 10)).collect(),
    }
}

#[tokio::test]
async fn a_stuck_commit_is_replaced_at_its_own_nonce_with_a_higher_fee() {
    use alloy::providers::Provider;
    let chain = Chain::start(0, 60).await;
    chain.deposit(2, payer_key(1), 1_000).await;
    let operator = chain.address(0);
    let nonce = chain
        .provider(0)
        .get_transaction_count(operator)
        .await
        .unwrap();
    rpc(&chain, "evm_setAutomine", serde_json::json!([false])).await;
    let submitter = chain
        .submitter(SubmitConfig {
            receipt_timeout_ms: 100,
            receipt_poll_ms: 10,
            backoff_initial_ms: 10,
            attempts_max: 1_000,
            ..SubmitConfig::default()
        })
        .await;
    let commit = small_epoch(1);
    let submitting = tokio::spawn({
        let commit = commit.clone();
        async move { submitter.submit(&commit).await }
    });

    // Nothing is mined: the commit is stuck, and the submitter gives up waiting for it.
    eventually("the commit never reached the pool", || async {
        !pool(&chain).await.is_empty()
    })
    .await;
    let first = pool(&chain).await;
    eventually("the submitter never acted on its stuck commit", || async {
        pool(&chain).await != first
    })
    .await;
    let now = pool(&chain).await;
    assert_eq!(
        now.iter().map(|tx| tx.0).collect::<Vec<_>>(),
        vec![nonce],
        "a stuck commit is replaced at its own nonce, never queued behind: {first:?} -> {now:?}"
    );
    assert!(
        now[0].2 > first[0].2,
        "the replacement pays more: {first:?} -> {now:?}"
    );

    rpc(&chain, "evm_mine", serde_json::json!([])).await;
    let outcome = submitting.await.unwrap().expect("committed");
    assert_eq!(outcome.landed.len(), 1);
    assert_eq!(
        chain
            .provider(0)
            .get_transaction_count(operator)
            .await
            .unwrap(),
        nonce + 1,
        "exactly one transaction was mined"
    );
    assert_eq!(chain.settlement(0).lastEpoch().call().await.unwrap(), 1);
}

#[tokio::test]
async fn a_restart_with_another_part_entries_max_adopts_the_part_count_onchain() {
    let chain = Chain::start(0, 60).await;
    for i in 1..=3 {
        chain.deposit(2, payer_key(i), 1_000).await;
    }
    // Six entries in parts of two: three parts. The process dies once part 0 is sent.
    let commit = small_epoch(3);
    rpc(&chain, "evm_setAutomine", serde_json::json!([false])).await;
    let first = submitter_with_parts(&chain, 2).await;
    let dying = tokio::spawn({
        let commit = commit.clone();
        async move { first.submit(&commit).await }
    });
    eventually("part 0 never reached the pool", || async {
        !pool(&chain).await.is_empty()
    })
    .await;
    dying.abort();
    rpc(&chain, "evm_mine", serde_json::json!([])).await;
    rpc(&chain, "evm_setAutomine", serde_json::json!([true])).await;
    let settlement = chain.settlement(0);
    let open = settlement
        .commits(settlement.liveSeq().call().await.unwrap())
        .call()
        .await
        .unwrap();
    assert_eq!((open.parts, open.partsDone), (3, 1));

    // Restarted with room for the whole epoch in one part: it finishes the three parts.
    let outcome = submitter_with_parts(&chain, 100)
        .await
        .submit(&commit)
        .await
        .expect("the epoch completes");
    assert_eq!(outcome.parts, 3);
    let done = settlement
        .commits(settlement.liveSeq().call().await.unwrap())
        .call()
        .await
        .unwrap();
    assert_eq!((done.epoch, done.parts, done.partsDone), (1, 3, 3));
    for i in 1..=3 {
        assert_eq!(
            settlement
                .available(B256::from(payer_key(i)))
                .call()
                .await
                .unwrap(),
            U256::from(990),
            "payer {i} debited once"
        );
        assert_eq!(
            settlement
                .withdrawable(Address::from(common::payee(i).0))
                .call()
                .await
                .unwrap(),
            U256::from(10),
            "payee {i} credited once"
        );
    }
}
