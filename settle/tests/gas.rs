//! Gas per settled entry on a real anvil, for docs/BENCHMARKS.md. Gas is deterministic, so the
//! steady-state budget from issue 6 (8,000 gas per entry) is checked as behaviour; the table is
//! printed with `cargo test -p tollgate-settle --test gas -- --nocapture`.
#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{B256, U256};
use common::{Chain, mined, payee, payer_key};
use tollgate_engine::PayerKey;
use tollgate_settle::submitter::{EpochCommit, SubmitConfig};

const STEADY_GAS_PER_ENTRY_MAX: u64 = 8_000;

#[tokio::test]
async fn gas_per_settled_entry_first_time_and_steady_state() {
    let chain = Chain::start(0, 60).await;
    let funder = 2;
    let token = chain.token(funder);
    mined(token.mint(chain.address(funder), U256::from(u64::MAX))).await;
    mined(token.approve(chain.addresses.settlement, U256::MAX)).await;
    let settlement = chain.settlement(funder);
    let submitter = chain
        .submitter(SubmitConfig {
            part_entries_max: 2_000,
            receipt_poll_ms: 10,
            ..SubmitConfig::default()
        })
        .await;

    let mut epoch = 0u64;
    let mut first_id = 0u32;
    let mut rows = Vec::new();
    for entries in [10u32, 100, 1_000] {
        // Half debits, half credits, on payers and payees no earlier epoch touched.
        let half = entries / 2;
        let ids: Vec<u32> = (first_id..first_id + half).collect();
        first_id += half;
        for id in &ids {
            mined(settlement.deposit(B256::from(payer_key(*id)), U256::from(1_000_000))).await;
        }
        let mut gas = Vec::new();
        for _round in 0..2 {
            epoch += 1;
            let commit = EpochCommit {
                epoch,
                root: B256::repeat_byte(epoch as u8),
                debits: ids.iter().map(|id| (PayerKey(payer_key(*id)), 7)).collect(),
                credits: ids.iter().map(|id| (payee(*id), 7)).collect(),
            };
            let outcome = submitter.submit(&commit).await.unwrap();
            assert_eq!(outcome.landed.len(), 1, "one transaction per epoch");
            gas.push(outcome.landed[0].gas_used);
        }
        rows.push((entries, gas[0], gas[1]));
    }

    println!("| entries | first-time gas | per entry | steady-state gas | per entry |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for (entries, first, steady) in &rows {
        let n = u64::from(*entries);
        println!(
            "| {entries} | {first} | {} | {steady} | {} |",
            first / n,
            steady / n
        );
    }
    let (_, _, steady_100) = rows[1];
    let (_, _, steady_1000) = rows[2];
    println!(
        "marginal steady-state gas per entry (1000 vs 100): {}",
        (steady_1000 - steady_100) / 900
    );
    for (entries, first, steady) in &rows {
        assert!(
            steady < first,
            "steady state must be cheaper than first-time ({entries} entries)"
        );
    }
    assert!(
        steady_1000 / 1_000 <= STEADY_GAS_PER_ENTRY_MAX,
        "steady-state gas per entry {} exceeds {STEADY_GAS_PER_ENTRY_MAX}",
        steady_1000 / 1_000
    );
}
