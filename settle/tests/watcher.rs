//! The funds watcher against a real anvil: order, confirmations, resuming from a height.
#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{B256, U256};
use common::{Chain, mined, payer_key};
use tollgate_engine::PayerKey;
use tollgate_settle::{
    submitter::{EpochCommit, SubmitConfig},
    watcher::{FundsChange, WatchConfig, Watcher},
};

#[tokio::test]
async fn watcher_reads_funds_events_in_order_only_once_confirmed() {
    let chain = Chain::start(60, 120).await;
    let confirmations = 3;
    let config = WatchConfig {
        confirmations,
        blocks_per_poll_max: 4,
    };
    let watcher = Watcher::connect(
        &chain.endpoint(),
        chain.anvil.chain_id(),
        chain.addresses.settlement,
        config,
    )
    .await
    .unwrap();
    let payer = PayerKey(payer_key(1));
    chain.deposit(2, payer.0, 5_000).await;
    chain.deposit(3, payer_key(2), 7_000).await;
    mined(
        chain
            .settlement(2)
            .requestWithdrawal(B256::from(payer.0), U256::from(1_000)),
    )
    .await;
    let submitter = chain
        .submitter(SubmitConfig {
            receipt_poll_ms: 10,
            ..SubmitConfig::default()
        })
        .await;
    let epoch = EpochCommit {
        epoch: 1,
        root: B256::repeat_byte(1),
        debits: vec![(payer, 10)],
        credits: vec![(common::payee(1), 10)],
    };
    submitter.submit(&epoch).await.unwrap();
    chain.dispute(1).await;
    chain.advance_secs(121).await;
    mined(chain.settlement(2).completeWithdrawal(B256::from(payer.0))).await;

    // Follow from genesis as a restarted engine would, a few blocks per poll.
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let batch = watcher.poll(from).await.unwrap();
        assert!(batch.next_block >= from);
        if batch.next_block == from {
            break;
        }
        seen.extend(batch.events);
        from = batch.next_block;
    }
    // The last `confirmations` blocks are not read yet: the withdrawal completion is the newest.
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e.change, FundsChange::WithdrawalCompleted { .. })),
        "an unconfirmed block was read: {seen:?}"
    );
    chain.mine(confirmations).await;
    let batch = watcher.poll(from).await.unwrap();
    seen.extend(batch.events);
    let again = watcher.poll(batch.next_block).await.unwrap();
    assert!(again.events.is_empty(), "no event is returned twice");

    let changes: Vec<FundsChange> = seen.iter().map(|e| e.change).collect();
    assert_eq!(
        changes,
        vec![
            FundsChange::Deposit {
                payer,
                amount: 5_000
            },
            FundsChange::Deposit {
                payer: PayerKey(payer_key(2)),
                amount: 7_000
            },
            FundsChange::WithdrawalRequested {
                payer,
                amount: 1_000,
                ready_at: changes_ready_at(&seen)
            },
            FundsChange::Disputed { epoch: 1 },
            FundsChange::WithdrawalCompleted {
                payer,
                amount: 1_000,
                remaining: 0
            },
        ]
    );
    assert!(
        seen.windows(2)
            .all(|w| (w[0].block, w[0].log_index) < (w[1].block, w[1].log_index))
    );
}

fn changes_ready_at(seen: &[tollgate_settle::watcher::ChainEvent]) -> u64 {
    seen.iter()
        .find_map(|e| match e.change {
            FundsChange::WithdrawalRequested { ready_at, .. } => Some(ready_at),
            _ => None,
        })
        .expect("a withdrawal request was seen")
}
