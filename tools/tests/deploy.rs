//! `tollgate deploy` and `tollgate deposit` as an operator runs them: the real binary against a
//! real anvil.

mod common;

use std::process::{Command, Output};

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use serde_json::Value;
use tollgate_engine::PayerKey;
use tollgate_settle::chain::ContractReader;

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_RPC_URL")
        .env_remove("TOLLGATE_OPERATOR_KEY")
        .output()
        .expect("run tollgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn deploy_on_anvil_prints_addresses_and_the_block_and_the_contract_has_code() {
    let anvil = common::spawn_anvil();
    let endpoint = anvil.endpoint();
    let output = tollgate(&["deploy", "--rpc-url", &endpoint, "--json"]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let dev_account = format!("{:#x}", anvil.addresses()[0]);
    assert!(
        stderr.contains("no --operator-key given") && stderr.contains(&dev_account),
        "says it fell back to the dev key: {stderr}"
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(json["chain_id"], 31_337);
    assert_eq!(json["test_token"], true);
    assert_eq!(json["operator"], dev_account);
    assert_eq!(json["arbiter"], dev_account, "defaults to the operator");
    assert_eq!(json["challenge_window_secs"], 0);
    assert_eq!(json["withdrawal_delay_secs"], 120);

    let provider = ProviderBuilder::new().connect_http(endpoint.parse().expect("url"));
    let address = |field: &str| -> Address {
        json[field]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("{field} is an address: {json}"))
    };
    let block = json["block"].as_u64().expect("block");
    for field in ["settlement", "token"] {
        let code = provider.get_code_at(address(field)).await.expect("code");
        assert!(!code.is_empty(), "{field} has code");
    }
    // The deployment block is the first with the contract's code: the watcher misses nothing.
    let before = provider
        .get_code_at(address("settlement"))
        .number(block - 1)
        .await
        .expect("code");
    assert!(before.is_empty(), "no code before block {block}");
    let at = provider
        .get_code_at(address("settlement"))
        .number(block)
        .await
        .expect("code");
    assert!(!at.is_empty(), "code at block {block}");

    // Deposits for two payer keys through the binary land in the contract.
    let payers = [PayerKey([0xa1; 32]), PayerKey([0xb2; 32])];
    let settlement = json["settlement"].as_str().expect("settlement").to_owned();
    let payer_args: Vec<String> = payers.iter().map(ToString::to_string).collect();
    let mut args = vec![
        "deposit",
        "--rpc-url",
        &endpoint,
        "--contract",
        &settlement,
        "--amount",
        "5000",
        "--mint",
        "--json",
        "--payer",
    ];
    args.extend(payer_args.iter().map(String::as_str));
    let output = tollgate(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let deposited: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(deposited["deposits"], 2);
    assert_eq!(deposited["total"], "10000");
    let contract = ContractReader::connect(&endpoint, 31_337, address("settlement"))
        .await
        .expect("reader");
    for payer in &payers {
        assert_eq!(contract.available(payer).await.expect("call"), 5_000);
    }

    // An explicit key, token, arbiter and window; the table for people.
    let key = hex::encode(anvil.keys()[2].to_bytes());
    let arbiter = format!("{:#x}", anvil.addresses()[3]);
    let token = json["token"].as_str().expect("token").to_owned();
    let output = tollgate(&[
        "deploy",
        "--rpc-url",
        &endpoint,
        "--operator-key",
        &key,
        "--token",
        &token,
        "--arbiter",
        &arbiter,
        "--challenge-window-secs",
        "30",
        "--withdrawal-delay-secs",
        "600",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "no dev-key notice with a key");
    let operator = format!("{:#x}", anvil.addresses()[2]);
    for line in [
        "chain id           31337".to_owned(),
        format!("token              {token}"),
        format!("operator           {operator}"),
        format!("arbiter            {arbiter}"),
        "challenge window   30 s".to_owned(),
        "withdrawal delay   600 s".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("settlement         0x")),
        "{stdout}"
    );
}

#[test]
fn a_node_that_is_down_is_one_line_and_exit_2() {
    // Bind then drop: the port is free and nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = tollgate(&["deploy", "--rpc-url", &url]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = tollgate(&["deploy", "--rpc-url", &url, "--operator-key", "not-a-key"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn outside_a_dev_chain_nothing_defaults_to_a_dev_key_or_dev_parameters() {
    let anvil = common::spawn_anvil_as_chain(10);
    let endpoint = anvil.endpoint();
    let key = hex::encode(anvil.keys()[0].to_bytes());
    let run = |extra: &[&str]| {
        let mut args = vec!["deploy", "--rpc-url", &endpoint];
        args.extend_from_slice(extra);
        let output = tollgate(&args);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output.stdout));
        assert!(output.stdout.is_empty());
        text(&output.stderr)
    };
    let windows = [
        "--challenge-window-secs",
        "3600",
        "--withdrawal-delay-secs",
        "90000",
    ];
    let stderr = run(&windows);
    assert!(stderr.contains("--operator-key"), "{stderr}");
    assert!(!stderr.contains("dev account"), "{stderr}");
    let stderr = run(&["--operator-key", &key]);
    assert!(stderr.contains("--challenge-window-secs"), "{stderr}");
    let mut with_key = vec!["--operator-key", key.as_str()];
    with_key.extend_from_slice(&windows);
    let stderr = run(&with_key);
    assert!(stderr.contains("settlement token"), "{stderr}");
}

#[tokio::test]
async fn outside_a_dev_chain_the_operator_cannot_deploy_as_its_own_unchecked_arbiter() {
    let anvil = common::spawn_anvil_as_chain(10);
    let endpoint = anvil.endpoint();
    let provider = tollgate_settle::chain::wallet_provider(&endpoint, common::dev_key(&anvil, 0))
        .expect("provider");
    let token = tollgate_settle::contract::TestToken::deploy(provider)
        .await
        .expect("a token on chain 10");
    let token = format!("{:#x}", token.address());
    let key = hex::encode(anvil.keys()[0].to_bytes());
    let operator = format!("{:#x}", anvil.addresses()[0]);
    let arbiter = format!("{:#x}", anvil.addresses()[1]);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--rpc-url",
            &endpoint,
            "--operator-key",
            &key,
            "--token",
            &token,
            "--withdrawal-delay-secs",
            "90000",
            "--json",
        ];
        args.extend_from_slice(extra);
        tollgate(&args)
    };
    let refused = |extra: &[&str], why: &str| {
        let output = run(extra);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{extra:?} deployed: {stderr}"
        );
        assert!(output.stdout.is_empty());
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            stderr.contains("--unsafe-operator-can-take-deposits"),
            "names the way out: {stderr}"
        );
    };
    refused(
        &["--challenge-window-secs", "0", "--arbiter", &arbiter],
        "challenge window of 0",
    );
    refused(&["--challenge-window-secs", "3600"], "--arbiter");
    refused(
        &["--challenge-window-secs", "3600", "--arbiter", &operator],
        "--arbiter",
    );

    // An independent arbiter and a real window deploy without a word.
    let output = run(&["--challenge-window-secs", "3600", "--arbiter", &arbiter]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(
        (json["chain_id"].as_u64(), json["arbiter"].as_str()),
        (Some(10), Some(arbiter.as_str()))
    );

    // The operator may still choose to be trusted, loudly.
    let output = run(&[
        "--challenge-window-secs",
        "0",
        "--unsafe-operator-can-take-deposits",
    ]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("WARNING"), "{stderr}");
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(json["arbiter"].as_str(), Some(operator.as_str()));
    assert_eq!(json["challenge_window_secs"], 0);
}

#[tokio::test]
async fn deposit_shows_the_owner_and_refuses_a_key_another_account_owns_unless_told() {
    let anvil = common::spawn_anvil();
    let endpoint = anvil.endpoint();
    let output = tollgate(&["deploy", "--rpc-url", &endpoint, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let deployed: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let settlement = deployed["settlement"]
        .as_str()
        .expect("settlement")
        .to_owned();
    let payer = PayerKey([0xc3; 32]).to_string();
    let first_owner = format!("{:#x}", anvil.addresses()[0]);
    let other_key = hex::encode(anvil.keys()[1].to_bytes());
    let deposit = |extra: &[&str]| {
        let mut args = vec![
            "deposit",
            "--rpc-url",
            &endpoint,
            "--contract",
            &settlement,
            "--amount",
            "700",
            "--mint",
            "--json",
            "--payer",
            &payer,
        ];
        args.extend_from_slice(extra);
        tollgate(&args)
    };

    let output = deposit(&[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(json["owners"][0]["payer"], payer.as_str());
    assert_eq!(json["owners"][0]["owner"], first_owner.as_str(), "{json}");

    let output = deposit(&["--key", &other_key]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "a foreign top-up must be refused");
    assert!(
        stderr.contains(&first_owner) && stderr.contains("--to-foreign-owner"),
        "names the owner and the flag: {stderr}"
    );
    let contract = ContractReader::connect(
        &endpoint,
        31_337,
        settlement.parse().expect("settlement address"),
    )
    .await
    .expect("reader");
    let payer_key = PayerKey([0xc3; 32]);
    assert_eq!(contract.available(&payer_key).await.expect("call"), 700);

    let output = deposit(&["--key", &other_key, "--to-foreign-owner"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(
        json["owners"][0]["owner"],
        first_owner.as_str(),
        "the exit owner stays the first depositor: {json}"
    );
    assert_eq!(contract.available(&payer_key).await.expect("call"), 1_400);
}
