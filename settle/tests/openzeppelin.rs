//! The epoch trees against the real `@openzeppelin/merkle-tree` (the version package.json pins,
//! installed by scripts/bootstrap.sh), not a copy of its code: `openzeppelin.js` runs the package
//! over the trees built here, all cases in one Node process per test. A missing `node` or package
//! fails the tests, never skips them.
#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{B256, keccak256};
use serde_json::{Value, json};
use tollgate_engine::{Address, PayerKey};
use tollgate_settle::merkle::{DumpError, EpochTree, Leaf, StandardDump};

/// A count well past the small ones' depths (15 levels) that still runs in seconds in Node.
const LARGE: u32 = 20_000;

/// Distinct leaves spread over the whole value range: payers and payees from keccak, amounts up
/// to `u128::MAX` (beyond JavaScript's 2^53, so the decimal strings must survive as uint256).
fn leaves(n: u32) -> Vec<Leaf> {
    (0..n)
        .map(|i| {
            let seed = keccak256([n.to_be_bytes(), i.to_be_bytes()].concat());
            let payee = keccak256(seed);
            let cumulative = match i % 3 {
                0 => u128::MAX - u128::from(i),
                1 => u128::from(i),
                _ => u128::from_be_bytes(payee.0[..16].try_into().unwrap()),
            };
            Leaf {
                payer: PayerKey(seed.0),
                payee: Address(payee.0[12..].try_into().unwrap()),
                cumulative,
            }
        })
        .collect()
}

/// Epochs from 0 to `u64::MAX`, one per count.
fn epoch(n: u32) -> u64 {
    match n % 4 {
        0 => u64::MAX - u64::from(n),
        _ => u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    }
}

/// The version package.json pins: the reference must be that one, not whatever is installed.
fn pinned_version() -> String {
    let path = common::workspace_root().join("package.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let package: Value = serde_json::from_str(&text).unwrap();
    package["devDependencies"]["@openzeppelin/merkle-tree"]
        .as_str()
        .expect("package.json pins @openzeppelin/merkle-tree")
        .to_owned()
}

/// Runs `openzeppelin.js` once over every case (`{dump, proofs}`), returning its result per case.
fn run_package(cases: Vec<Value>) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({ "cases": cases })).unwrap(),
    )
    .unwrap();
    let script = "settle/tests/openzeppelin.js";
    let output = common::run_node(
        script,
        &[input.as_os_str()],
        "to run @openzeppelin/merkle-tree",
    );
    assert!(
        output.status.success(),
        "{script} failed ({}); if @openzeppelin/merkle-tree is missing, run scripts/bootstrap.sh:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let pinned = pinned_version();
    for result in &results {
        assert_eq!(
            result["version"],
            pinned.as_str(),
            "installed package is not the pinned one"
        );
    }
    results
}

fn hex_list(hashes: &[B256]) -> Value {
    hashes.iter().map(|hash| hash.to_string()).collect()
}

#[test]
fn trees_dumps_and_proofs_equal_the_package_for_1_to_300_leaves_and_a_large_count() {
    let counts: Vec<u32> = (1..=300).chain([LARGE]).collect();
    let trees: Vec<EpochTree> = counts
        .iter()
        .map(|&n| EpochTree::build(epoch(n), leaves(n)).unwrap())
        .collect();
    let cases = trees
        .iter()
        .map(|tree| {
            let proofs: Vec<Value> = (0..tree.len())
                .map(|i| hex_list(&tree.proof_at(i)))
                .collect();
            json!({ "dump": tree.standard_dump(), "proofs": proofs })
        })
        .collect();
    let results = run_package(cases);
    assert_eq!(results.len(), trees.len());

    for (tree, result) in trees.iter().zip(&results) {
        let n = tree.len();
        assert_eq!(result["load"], "ok", "n = {n}: load(rustDump) refused it");
        let theirs = &result["dump"];
        assert_eq!(theirs["tree"][0], tree.root().to_string(), "root, n = {n}");
        let their_nodes = theirs["tree"].as_array().unwrap();
        assert_eq!(their_nodes.len(), tree.nodes().len(), "node count, n = {n}");
        for (index, (ours, theirs)) in tree.nodes().iter().zip(their_nodes).enumerate() {
            assert_eq!(*theirs, ours.to_string(), "node {index}, n = {n}");
        }
        let ours = serde_json::to_value(tree.standard_dump()).unwrap();
        for (index, (ours, theirs)) in ours["values"]
            .as_array()
            .unwrap()
            .iter()
            .zip(theirs["values"].as_array().unwrap())
            .enumerate()
        {
            assert_eq!(
                ours["treeIndex"], theirs["treeIndex"],
                "treeIndex of value {index}, n = {n}"
            );
        }
        assert_eq!(ours, *theirs, "whole standard-v1 dump, n = {n}");
        for (index, their_proof) in result["proofs"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                hex_list(&tree.proof_at(index)),
                *their_proof,
                "proof {index}, n = {n}"
            );
        }
        let verified = result["verified"].as_array().unwrap();
        assert_eq!(verified.len(), n);
        for (index, accepted) in verified.iter().enumerate() {
            assert_eq!(
                accepted.as_bool(),
                Some(true),
                "verify(rustRoot, value {index}, rustProof), n = {n}"
            );
        }
        // And the other direction: the package's own dump loads here into the same tree.
        let loaded = serde_json::from_value::<StandardDump>(theirs.clone())
            .unwrap()
            .into_tree()
            .unwrap();
        assert_eq!(loaded.root(), tree.root(), "n = {n}");
    }
}

#[test]
fn a_tampered_dump_is_refused_by_the_package_and_the_loader() {
    let tree = EpochTree::build(epoch(37), leaves(37)).unwrap();
    let good = tree.standard_dump();
    let mut node = good.clone();
    node.tree[5].0[31] ^= 1;
    let mut value = good.clone();
    value.values[11].value.leaf.cumulative ^= 1;

    assert!(matches!(
        node.clone().into_tree(),
        Err(DumpError::Node { index: 5 })
    ));
    assert!(matches!(
        value.clone().into_tree(),
        Err(DumpError::Value { index: 11, .. })
    ));

    let cases = [&good, &node, &value]
        .into_iter()
        .map(|dump| json!({ "dump": dump, "proofs": null }))
        .collect();
    let results = run_package(cases);
    assert_eq!(results[0]["load"], "ok", "the untampered dump loads");
    for (what, result) in ["node 5", "value 11"].iter().zip(&results[1..]) {
        let refusal = result["load"].as_str().unwrap();
        assert_ne!(
            refusal, "ok",
            "the package accepted a dump with {what} tampered"
        );
    }
    assert_eq!(
        results[2]["load"],
        "Merkle tree does not contain the expected value"
    );
    assert_eq!(results[1]["load"], "Merkle tree is invalid");
}
