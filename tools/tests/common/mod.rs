//! A real anvil from the pinned npm package, one per test on a free loopback port.
#![allow(dead_code)]

use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::signers::local::PrivateKeySigner;

/// Path of the pinned anvil binary; fails the test (never skips it) when `npm ci` has not run.
pub fn anvil_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.is_file(),
        "anvil not found at {}: run `npm ci` at the repository root",
        path.display()
    );
    path
}

/// Starts anvil on a free loopback port (port 0: anvil picks one and reports it).
pub fn spawn_anvil() -> AnvilInstance {
    spawn(Anvil::at(anvil_path()))
}

/// The same, posing as chain `chain_id` (to look like a chain that is not a dev chain).
pub fn spawn_anvil_as_chain(chain_id: u64) -> AnvilInstance {
    spawn(Anvil::at(anvil_path()).chain_id(chain_id))
}

fn spawn(anvil: Anvil) -> AnvilInstance {
    anvil
        .host("127.0.0.1")
        .port(0u16)
        .try_spawn()
        .unwrap_or_else(|error| panic!("could not start anvil: {error}"))
}

/// Dev key `index` of the instance.
pub fn dev_key(anvil: &AnvilInstance, index: usize) -> PrivateKeySigner {
    PrivateKeySigner::from(anvil.keys()[index].clone())
}
