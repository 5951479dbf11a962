//! Shared set-up for the chain tests: a real anvil from the pinned npm package, one per test on a
//! free loopback port, and the deployed contracts.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use alloy::{
    contract::{CallBuilder, CallDecoder},
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::TransactionReceipt,
    signers::local::PrivateKeySigner,
};
use tollgate_settle::{
    DeployParams, DeployedAddresses,
    chain::wallet_provider,
    contract::{Settlement, TestToken},
    deploy,
    merkle::Leaf,
    submitter::{SubmitConfig, Submitter},
};

/// The workspace root (settle's parent).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("settle lives inside the workspace")
        .to_path_buf()
}

/// Runs `node` (found on PATH) on the workspace file `script` with `args`, from the workspace
/// root; fails the test, saying what node was `needed` for, when it cannot start.
pub fn run_node(script: &str, args: &[&std::ffi::OsStr], needed: &str) -> std::process::Output {
    let root = workspace_root();
    std::process::Command::new("node")
        .arg(root.join(script))
        .args(args)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|error| {
            panic!("could not run node (from PATH; scripts/bootstrap.sh installs it), needed {needed}: {error}")
        })
}

/// Path of the pinned anvil binary; fails the test (never skips it) when `npm ci` has not run.
pub fn anvil_path() -> PathBuf {
    let path = workspace_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.is_file(),
        "anvil not found at {}: run `npm ci` at the repository root (package.json pins @foundry-rs/anvil-linux-amd64)",
        path.display()
    );
    path
}

/// Starts anvil on a free loopback port (port 0: anvil picks one and reports it).
pub fn spawn_anvil() -> AnvilInstance {
    Anvil::at(anvil_path())
        .host("127.0.0.1")
        .port(0u16)
        .try_spawn()
        .unwrap_or_else(|error| panic!("could not start anvil: {error}"))
}

/// Dev key `index` of the instance.
pub fn key(anvil: &AnvilInstance, index: usize) -> PrivateKeySigner {
    PrivateKeySigner::from(anvil.keys()[index].clone())
}

/// Sends `call` and waits for it to be mined; the receipt, reverted or not.
pub async fn mined<D: CallDecoder>(call: CallBuilder<&DynProvider, D>) -> TransactionReceipt {
    call.send()
        .await
        .expect("transaction sent")
        .get_receipt()
        .await
        .expect("transaction mined")
}

/// A running chain with token and Settlement deployed.
pub struct Chain {
    pub anvil: AnvilInstance,
    pub addresses: DeployedAddresses,
}

impl Chain {
    /// Deploys with key 0 as operator and key 1 as arbiter.
    pub async fn start(challenge_window_secs: u64, withdrawal_delay_secs: u64) -> Self {
        let anvil = spawn_anvil();
        let params = DeployParams {
            challenge_window_secs,
            withdrawal_delay_secs,
            arbiter: Some(anvil.addresses()[1]),
            ..DeployParams::dev()
        };
        let addresses = deploy(&anvil.endpoint(), key(&anvil, 0), None, &params)
            .await
            .expect("deploy");
        assert!(
            addresses.test_token,
            "dev chain without --token gets the test token"
        );
        Self { anvil, addresses }
    }

    pub fn endpoint(&self) -> String {
        self.anvil.endpoint()
    }

    /// A provider signing as dev account `index`, polling every 10 ms (anvil mines on send).
    pub fn provider(&self, index: usize) -> DynProvider {
        let provider =
            wallet_provider(&self.endpoint(), key(&self.anvil, index)).expect("provider");
        provider
            .client()
            .set_poll_interval(std::time::Duration::from_millis(10));
        provider
    }

    pub fn settlement(&self, index: usize) -> Settlement::SettlementInstance<DynProvider> {
        Settlement::new(self.addresses.settlement, self.provider(index))
    }

    pub fn token(&self, index: usize) -> TestToken::TestTokenInstance<DynProvider> {
        TestToken::new(self.addresses.token, self.provider(index))
    }

    pub fn address(&self, index: usize) -> Address {
        self.anvil.addresses()[index]
    }

    /// The operator's (key 0) submitter, with exactly `config`.
    pub async fn submitter(&self, config: SubmitConfig) -> Submitter {
        Submitter::connect(
            &self.endpoint(),
            self.anvil.chain_id(),
            self.addresses.settlement,
            key(&self.anvil, 0),
            config,
        )
        .await
        .expect("submitter connects")
    }

    /// The arbiter (key 1) disputes `epoch`; the receipt, reverted or not.
    pub async fn dispute(&self, epoch: u64) -> TransactionReceipt {
        let settlement = self.settlement(1);
        mined(settlement.dispute(epoch)).await
    }

    /// Whether the contract accepts `proof` for `leaf` in `epoch` (`Settlement.verifyLeaf`).
    pub async fn verifies(&self, epoch: u64, leaf: &Leaf, proof: Vec<B256>) -> bool {
        self.settlement(0)
            .verifyLeaf(
                epoch,
                B256::from(leaf.payer.0),
                Address::from(leaf.payee.0),
                U256::from(leaf.cumulative),
                proof,
            )
            .call()
            .await
            .expect("verifyLeaf")
    }

    /// What dev account `index` can withdraw now (`Settlement.withdrawable`).
    pub async fn withdrawable(&self, index: usize) -> U256 {
        self.settlement(0)
            .withdrawable(self.address(index))
            .call()
            .await
            .expect("withdrawable")
    }

    /// Tokens `owner` holds.
    pub async fn token_balance(&self, owner: Address) -> U256 {
        self.token(0)
            .balanceOf(owner)
            .call()
            .await
            .expect("balanceOf")
    }

    /// Mints, approves and deposits `amount` for `payer_key` from account `index`.
    pub async fn deposit(&self, index: usize, payer_key: [u8; 32], amount: u128) {
        let token = self.token(index);
        let amount = U256::from(amount);
        mined(token.mint(self.address(index), amount)).await;
        mined(token.approve(self.addresses.settlement, amount)).await;
        let receipt = mined(self.settlement(index).deposit(payer_key.into(), amount)).await;
        assert!(receipt.status(), "deposit reverted");
    }

    /// Moves chain time forward and mines a block (anvil's evm_increaseTime + evm_mine).
    pub async fn advance_secs(&self, secs: u64) {
        let provider = self.provider(0);
        let _: serde_json::Value = provider
            .raw_request("evm_increaseTime".into(), (secs,))
            .await
            .unwrap();
        self.mine(1).await;
    }

    pub async fn mine(&self, blocks: u64) {
        let provider = self.provider(0);
        for _ in 0..blocks {
            let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
        }
    }
}

/// A deterministic fake ed25519 payer key (the contract treats keys as opaque bytes32).
pub fn payer_key(i: u32) -> [u8; 32] {
    let mut key = [0x5au8; 32];
    key[28..].copy_from_slice(&i.to_be_bytes());
    key
}

/// A payee address that is not a dev account.
pub fn payee(i: u32) -> tollgate_engine::Address {
    let mut address = [0x77u8; 20];
    address[16..].copy_from_slice(&i.to_be_bytes());
    tollgate_engine::Address(address)
}

/// Polls `done` every 10 ms for up to a minute (a bound for a broken build, not a timing claim).
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    for _ in 0..6_000 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}");
}
