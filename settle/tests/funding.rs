//! Funding many payers on a dev chain with one account: every payer's deposit is exact.
#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{B256, U256, aliases::U96};
use alloy::providers::Provider;
use common::{Chain, key, payer_key};
use tollgate_engine::PayerKey;
use tollgate_settle::chain::{ContractReader, load_signer};
use tollgate_settle::devchain::{FundParams, fund_payers};

#[tokio::test]
async fn fund_payers_deposits_for_fifty_payers_and_the_contract_holds_each() {
    let chain = Chain::start(0, 60).await;
    let payers: Vec<PayerKey> = (0..50).map(|i| PayerKey(payer_key(i))).collect();
    let params = FundParams {
        token: chain.addresses.token,
        settlement: chain.addresses.settlement,
        amount_each: 1_234_567,
        mint: true,
    };
    let funded = fund_payers(&chain.endpoint(), key(&chain.anvil, 4), &payers, &params)
        .await
        .unwrap();
    assert_eq!(funded.deposits, 50);
    assert_eq!(funded.total, 50 * 1_234_567);
    let head = chain.provider(0).get_block_number().await.unwrap();
    assert!(funded.last_block > chain.addresses.block && funded.last_block <= head);

    let settlement = chain.settlement(0);
    let reader = ContractReader::connect(
        &chain.endpoint(),
        chain.anvil.chain_id(),
        chain.addresses.settlement,
    )
    .await
    .unwrap();
    for payer in &payers {
        let account = settlement.payers(B256::from(payer.0)).call().await.unwrap();
        assert_eq!(account.settled, U96::from(1_234_567u64));
        assert_eq!(reader.available(payer).await.unwrap(), 1_234_567);
        let owner = settlement
            .payerOwner(B256::from(payer.0))
            .call()
            .await
            .unwrap();
        assert_eq!(owner, chain.address(4), "the funder owns the exit");
    }
    let held = chain.token_balance(chain.addresses.settlement).await;
    assert_eq!(held, U256::from(funded.total));

    // Without minting, a funder that holds nothing is refused, and nothing is deposited.
    let unfunded = FundParams {
        mint: false,
        ..params
    };
    let stranger = PayerKey(payer_key(1_000_000));
    fund_payers(
        &chain.endpoint(),
        key(&chain.anvil, 5),
        &[stranger],
        &unfunded,
    )
    .await
    .expect_err("no tokens to deposit");
    assert_eq!(reader.available(&stranger).await.unwrap(), 0);
}

#[test]
fn operator_keys_load_from_hex_or_a_file_and_errors_never_echo_the_key() {
    let hex_key = tollgate_settle::devchain::ANVIL_FIRST_DEV_KEY;
    let expected: alloy::primitives::Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        .parse()
        .unwrap();
    assert_eq!(load_signer(hex_key).unwrap().address(), expected);
    assert_eq!(
        load_signer(&format!("0x{hex_key}")).unwrap().address(),
        expected
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.key");
    std::fs::write(&path, format!("{hex_key}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(
        load_signer(path.to_str().unwrap()).unwrap().address(),
        expected
    );
    let secret_looking = "ab".repeat(31);
    let error = load_signer(&secret_looking).unwrap_err().to_string();
    assert!(!error.contains(&secret_looking), "{error}");
    assert!(load_signer(&"00".repeat(32)).is_err(), "zero is no key");
}
