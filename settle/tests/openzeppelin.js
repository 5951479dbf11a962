// The reference side of settle/tests/openzeppelin.rs: runs the pinned @openzeppelin/merkle-tree
// (package.json; scripts/bootstrap.sh installs it) over the trees the Rust side built, in one
// process for every case.
//
// Input (the file named by argv[2]): JSON { "cases": [ { "dump": <Rust's standard-v1 dump>,
// "proofs": [[hex, ...], ...] | null } ] }.
// Output (stdout): JSON [ { "version", "load", "dump", "proofs", "verified" } ], one per case:
// - load: "ok" when StandardMerkleTree.load(rustDump) accepts Rust's dump (load runs validate(),
//   which rehashes every value and node), else the package's error message;
// - dump / proofs: StandardMerkleTree.of(values, leafEncoding).dump() and the proof of every
//   value, built from the dump's values alone (only for cases with proofs);
// - verified: for each value, whether StandardMerkleTree.verify(rustRoot, leafEncoding, value,
//   rustProof) accepts Rust's proof.
'use strict';

// @metamask/abi-utils constructs an Error for every assertion it checks, failing or not, and
// capturing their stack traces was most of the run time; no error here needs a stack.
Error.stackTraceLimit = 0;

const fs = require('fs');
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');
// tree.getProof(i) is this function over the tree and the value's treeIndex, followed by a
// check of the proof against the tree's own root; every Rust proof goes through
// StandardMerkleTree.verify below, so the same proofs come from here at half the hashing.
const { getProof } = require('@openzeppelin/merkle-tree/dist/core');
const { version } = require('@openzeppelin/merkle-tree/package.json');

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const results = input.cases.map(({ dump, proofs }) => {
  let load = 'ok';
  try {
    StandardMerkleTree.load(dump);
  } catch (error) {
    load = error.message;
  }
  if (proofs === null) {
    return { version, load };
  }
  const values = dump.values.map(({ value }) => value);
  const theirs = StandardMerkleTree.of(values, dump.leafEncoding).dump();
  return {
    version,
    load,
    dump: theirs,
    proofs: theirs.values.map(({ treeIndex }) => getProof(theirs.tree, treeIndex)),
    verified: values.map((value, index) =>
      StandardMerkleTree.verify(dump.tree[0], dump.leafEncoding, value, proofs[index]),
    ),
  };
});
process.stdout.write(JSON.stringify(results));
