// Shared by the tests: the repository's files, and the hex examples of docs/PROTOCOL.md.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root: the nearest ancestor holding docs/PROTOCOL.md. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "docs", "PROTOCOL.md"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("docs/PROTOCOL.md not found above the tests");
    dir = parent;
  }
  return dir;
}

/** Every ```hex NAME block of docs/PROTOCOL.md, by name, as bytes. */
export function protocolHexBlocks(): Map<string, Uint8Array> {
  const text = readFileSync(join(repoRoot(), "docs", "PROTOCOL.md"), "utf8");
  const blocks = new Map<string, Uint8Array>();
  for (const match of text.matchAll(/^```hex ([\w-]+)\n([\s\S]*?)^```/gm)) {
    const digits = (match[2] as string).replace(/\s+/g, "");
    blocks.set(match[1] as string, new Uint8Array(Buffer.from(digits, "hex")));
  }
  return blocks;
}
