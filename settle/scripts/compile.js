#!/usr/bin/env node
// Compiles settle/contracts/*.sol with the pinned solcjs (package.json) into settle/artifacts/*.json
// (ABI + creation and runtime bytecode). The artifacts are committed so `cargo build` needs no node;
// `--check` recompiles in memory and exits 1 if a committed artifact differs (stale or hand-edited).
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..", "..");
const contractsDir = path.join(root, "settle", "contracts");
const artifactsDir = path.join(root, "settle", "artifacts");
const nodeModules = path.join(root, "node_modules");

const settings = {
  optimizer: { enabled: true, runs: 10000 },
  viaIR: true,
  evmVersion: "prague",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function findImports(importPath) {
  const file = path.join(nodeModules, importPath);
  if (!file.startsWith(nodeModules + path.sep) || !fs.existsSync(file)) {
    return { error: `import not found under node_modules: ${importPath}` };
  }
  return { contents: fs.readFileSync(file, "utf8") };
}

function compile() {
  const sources = {};
  for (const name of fs.readdirSync(contractsDir).filter((f) => f.endsWith(".sol")).sort()) {
    sources[`settle/contracts/${name}`] = { content: fs.readFileSync(path.join(contractsDir, name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  // Warnings fail the build too: a shadowed name or unreachable code in a money contract is a bug.
  const problems = (output.errors || []).filter((e) => e.severity !== "info");
  for (const e of problems) process.stderr.write(e.formattedMessage + "\n");
  if (problems.length > 0) throw new Error(`solc reported ${problems.length} error(s) or warning(s)`);

  const artifacts = {};
  for (const sourceName of Object.keys(sources)) {
    for (const [contractName, contract] of Object.entries(output.contracts[sourceName] || {})) {
      artifacts[`${contractName}.json`] =
        JSON.stringify(
          {
            contractName,
            sourceName,
            compiler: { version: solc.version(), settings: { ...settings, outputSelection: undefined } },
            abi: contract.abi,
            bytecode: "0x" + contract.evm.bytecode.object,
            deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
          },
          null,
          2,
        ) + "\n";
    }
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  if (check) {
    const stale = Object.entries(artifacts).filter(([file, text]) => {
      const committed = path.join(artifactsDir, file);
      return !fs.existsSync(committed) || fs.readFileSync(committed, "utf8") !== text;
    });
    if (stale.length > 0) {
      process.stderr.write(
        `stale artifact(s): ${stale.map(([f]) => f).join(", ")}; run \`node settle/scripts/compile.js\` and commit settle/artifacts\n`,
      );
      process.exit(1);
    }
    process.stdout.write(`artifacts up to date (${Object.keys(artifacts).length} contracts, solc ${solc.version()})\n`);
    return;
  }
  fs.mkdirSync(artifactsDir, { recursive: true });
  for (const [file, text] of Object.entries(artifacts)) fs.writeFileSync(path.join(artifactsDir, file), text);
  process.stdout.write(`wrote ${Object.keys(artifacts).join(", ")} (solc ${solc.version()})\n`);
}

main();
