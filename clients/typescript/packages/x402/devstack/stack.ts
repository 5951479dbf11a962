// A whole Tollgate deployment on this machine, for the end-to-end test, the demo and benches: a
// real anvil (the repository's pinned npm package), the Settlement contract and its test token
// deployed by `tollgate deploy`, payers funded by `tollgate deposit --mint`, and `tollgate serve`
// settling to the chain on a short epoch. Everything runs from the binary `TOLLGATE_BIN` names.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { SigningKey, makeDomain, toHex, type Domain } from "@tollgate/client";

const run = promisify(execFile);

/** anvil's first dev account: deployer, operator and depositor on chain 31337. */
const ANVIL_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

export interface StackOptions {
  /** The `tollgate` binary; default `TOLLGATE_BIN`. */
  bin?: string;
  /** How many payer keys to make and fund. */
  payers: number;
  /** Deposit per payer, in the test token's smallest unit. */
  deposit: bigint;
  /** `tollgate serve --epoch-secs`; default 1. */
  epochSecs?: number;
  /** Extra `tollgate serve` flags. */
  serveArgs?: string[];
}

/** A payer's row of `GET /v1/payers/{payer}` (amounts as decimal strings). */
export interface PayerView {
  payer: string;
  deposited: string;
  settled: string;
  pending: string;
  available: string;
  receipts: number;
}

/** A row of `GET /v1/epochs`. */
export interface EpochView {
  epoch: number;
  status: string;
  receipts: number;
  debit_total: string;
  tx_hash: string | null;
}

export interface Stack {
  rpcUrl: string;
  chainId: bigint;
  /** The test token: the requirements' `asset`. */
  token: string;
  /** The Settlement contract. */
  contract: string;
  domain: Domain;
  /** `tollgate serve`'s HTTP API and facilitator, `http://host:port`. */
  http: string;
  /** Its fleet protocol port. */
  fleet: { host: string; port: number };
  /** The funded payers. */
  payers: SigningKey[];
  payer(key: SigningKey): Promise<PayerView>;
  /** The latest epochs (up to 1,000), newest first. */
  epochs(): Promise<EpochView[]>;
  /** The last lines `tollgate serve` logged, for a failure message. */
  serveLog(): string;
  stop(): Promise<void>;
}

/** The repository root: the nearest ancestor holding docs/X402.md. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "docs", "X402.md"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("docs/X402.md not found above the devstack");
    dir = parent;
  }
  return dir;
}

/** Resolves with the first line `match` turns into a value; rejects when the child exits first. */
function awaitLine<T>(child: ChildProcess, stream: NodeJS.ReadableStream, match: (line: string) => T | undefined, tail: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: stream });
    let done = false;
    lines.on("line", (line) => {
      tail.push(line);
      if (tail.length > 60) tail.shift();
      if (done) return;
      const value = match(line);
      if (value !== undefined) {
        done = true;
        resolve(value);
      }
    });
    child.on("exit", (code) => {
      if (!done) reject(new Error(`${String(child.spawnfile)} exited (${code}) before it was ready:\n${tail.join("\n")}`));
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

async function getJson<T>(url: string): Promise<T> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${await response.text()}`);
  return (await response.json()) as T;
}

export async function startStack(options: StackOptions): Promise<Stack> {
  const bin = options.bin ?? process.env.TOLLGATE_BIN;
  if (!bin) throw new Error("TOLLGATE_BIN names no tollgate binary");
  const anvilPath = join(repoRoot(), "node_modules", "@foundry-rs", "anvil-linux-amd64", "bin", "anvil");
  if (!existsSync(anvilPath)) throw new Error(`anvil not found at ${anvilPath}: run npm ci at the repository root`);
  const dir = mkdtempSync(join(tmpdir(), "tollgate-x402-"));
  const children: ChildProcess[] = [];
  const stopAll = async (): Promise<void> => {
    for (const child of children.reverse()) await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const anvil = spawn(anvilPath, ["--host", "127.0.0.1", "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
    children.push(anvil);
    anvil.stderr?.resume();
    const anvilTail: string[] = [];
    const rpcUrl = await awaitLine(anvil, anvil.stdout as NodeJS.ReadableStream, (line) => {
      const match = /Listening on (\S+)/.exec(line);
      return match ? `http://${match[1]}` : undefined;
    }, anvilTail);

    const deployed = JSON.parse((await run(bin, ["deploy", "--rpc-url", rpcUrl, "--json"])).stdout) as {
      chain_id: number;
      token: string;
      settlement: string;
      block: number;
    };
    const payers = Array.from({ length: options.payers }, () => SigningKey.generate());
    if (payers.length > 0) {
      await run(bin, [
        "deposit",
        "--rpc-url",
        rpcUrl,
        "--contract",
        deployed.settlement,
        "--payer",
        ...payers.map((key) => toHex(key.publicKey)),
        "--amount",
        options.deposit.toString(),
        "--mint",
        "--json",
      ]);
    }

    const serve = spawn(
      bin,
      [
        "serve",
        "--rpc-url",
        rpcUrl,
        "--contract",
        deployed.settlement,
        "--chain-id",
        String(deployed.chain_id),
        "--start-block",
        String(deployed.block),
        "--confirmations",
        "0",
        "--funds-poll-ms",
        "200",
        "--epoch-secs",
        String(options.epochSecs ?? 1),
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        join(dir, "data"),
        "--log-format",
        "json",
        ...(options.serveArgs ?? []),
      ],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, TOLLGATE_OPERATOR_KEY: ANVIL_KEY_0 } },
    );
    children.push(serve);
    const serveTail: string[] = [];
    const ready = await awaitLine(serve, serve.stderr as NodeJS.ReadableStream, (line) => {
      try {
        const fields = (JSON.parse(line) as { fields?: Record<string, string> }).fields;
        return fields?.message === "tollgate ready" && fields.listen && fields.http ? fields : undefined;
      } catch {
        return undefined;
      }
    }, serveTail);
    const [host, port] = (ready.listen as string).split(":");
    const http = `http://${ready.http}`;
    const stack: Stack = {
      rpcUrl,
      chainId: BigInt(deployed.chain_id),
      token: deployed.token,
      contract: deployed.settlement,
      domain: makeDomain(BigInt(deployed.chain_id), deployed.settlement),
      http,
      fleet: { host: host as string, port: Number(port) },
      payers,
      payer: (key) => getJson<PayerView>(`${http}/v1/payers/${toHex(key.publicKey)}`),
      epochs: async () => (await getJson<{ epochs: EpochView[] }>(`${http}/v1/epochs?limit=1000`)).epochs,
      serveLog: () => serveTail.join("\n"),
      stop: stopAll,
    };
    // Deposits count once serve has read them from the chain.
    for (const key of payers) {
      while (!(await stack.payer(key).then((view) => BigInt(view.deposited) >= options.deposit, () => false))) {
        await sleep(100);
      }
    }
    return stack;
  } catch (error) {
    await stopAll();
    throw error;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
