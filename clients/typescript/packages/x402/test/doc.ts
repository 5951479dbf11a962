// The named blocks of docs/X402.md (```json NAME, ```text NAME, ```hex NAME) and its reasons table.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function x402Doc(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "docs", "X402.md"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("docs/X402.md not found above the tests");
    dir = parent;
  }
  return readFileSync(join(dir, "docs", "X402.md"), "utf8");
}

/** Every named block, by name, as its text (hex and text blocks without white space). */
export function docBlocks(): Map<string, string> {
  const blocks = new Map<string, string>();
  for (const match of x402Doc().matchAll(/^```(json|text|hex) ([\w-]+)\n([\s\S]*?)^```/gm)) {
    const body = match[3] as string;
    blocks.set(match[2] as string, match[1] === "json" ? body : body.replace(/\s+/g, ""));
  }
  return blocks;
}

/** A named JSON block, parsed. */
export function docJson<T = Record<string, unknown>>(name: string): T {
  const text = docBlocks().get(name);
  if (text === undefined) throw new Error(`no block ${name} in docs/X402.md`);
  return JSON.parse(text) as T;
}

/** A named text or hex block. */
export function docText(name: string): string {
  const text = docBlocks().get(name);
  if (text === undefined) throw new Error(`no block ${name} in docs/X402.md`);
  return text;
}

/** The "Statuses and reasons" table: each Tollgate name with the x402 codes the doc gives it. */
export function docReasonTable(): Map<string, string[]> {
  const doc = x402Doc();
  const start = doc.indexOf("#### Statuses and reasons");
  const rows = new Map<string, string[]>();
  for (const line of doc.slice(start).split("\n")) {
    if (line.startsWith("## ")) break;
    const cells = line.split("|").map((cell) => cell.trim());
    if (cells.length < 4 || !cells[1]?.startsWith("`")) continue;
    const codes = [...(cells[1] as string).matchAll(/`([a-z0-9_]+)`/g)].map((m) => m[1] as string);
    for (const name of [...(cells[2] as string).matchAll(/`([a-z0-9_]+)`/g)].map((m) => m[1] as string)) {
      rows.set(name, [...(rows.get(name) ?? []), ...codes]);
    }
  }
  return rows;
}
