// The server scheme's prices and requirements.

import assert from "node:assert/strict";
import { test } from "node:test";
import { TollgateServerScheme } from "../src/index.js";

const TOKEN = "0x5fbdb2315678afecb367f032d93f642f64180aa3";

test("prices: atomic units, money with decimals, asset amounts of this token only", async () => {
  const units = new TollgateServerScheme({ asset: TOKEN });
  assert.deepEqual(await units.parsePrice(1000, "eip155:31337"), { asset: TOKEN, amount: "1000" });
  assert.deepEqual(await units.parsePrice("$1000", "eip155:31337"), { asset: TOKEN, amount: "1000" });
  await assert.rejects(units.parsePrice("0.5", "eip155:31337"), /decimals/);
  await assert.rejects(units.parsePrice(-1, "eip155:31337"));
  const usd = new TollgateServerScheme({ asset: TOKEN, decimals: 6 });
  assert.deepEqual(await usd.parsePrice("$0.01", "eip155:31337"), { asset: TOKEN, amount: "10000" });
  assert.deepEqual(await usd.parsePrice("0.000001", "eip155:31337"), { asset: TOKEN, amount: "1" });
  assert.deepEqual(await usd.parsePrice({ asset: TOKEN.toUpperCase().replace("0X", "0x"), amount: "7" }, "eip155:31337"), {
    asset: TOKEN,
    amount: "7",
  });
  await assert.rejects(usd.parsePrice({ asset: `0x${"11".repeat(20)}`, amount: "7" }, "eip155:31337"), /not this deployment's token/);
  await assert.rejects(usd.parsePrice({ asset: TOKEN, amount: "18446744073709551616" }, "eip155:31337"));
});

test("requirements take the facilitator's extra and keep the route's resource", async () => {
  const scheme = new TollgateServerScheme({ asset: TOKEN });
  const kindExtra = { chainId: "31337", contract: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512", windowNonces: 1024, timestampSkewMs: 300000 };
  const kind = { x402Version: 2, scheme: "tollgate", network: "eip155:31337" as const, extra: kindExtra };
  const base = {
    scheme: "tollgate",
    network: "eip155:31337" as const,
    asset: TOKEN,
    amount: "5",
    payTo: `0x${"11".repeat(20)}`,
    maxTimeoutSeconds: 60,
    extra: { resource: "https://api.example.com/x" },
  };
  const done = await scheme.enhancePaymentRequirements(base, kind, []);
  assert.deepEqual(done.extra, { resource: "https://api.example.com/x", ...kindExtra });
  assert.equal(scheme.validateFacilitatorSupport("eip155:31337", kind), undefined);
  assert.match(String(scheme.validateFacilitatorSupport("eip155:31337", { ...kind, extra: {} })), /extra\.chainId/);
});
