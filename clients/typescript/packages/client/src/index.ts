// @tollgate/client: Tollgate receipts and the fleet protocol client.

export * from "./errors.js";
export { toHex, fromHex, u64Text } from "./bytes.js";
export { SigningKey, isGoodPayerKey } from "./keys.js";
export * from "./receipt.js";
export * from "./grant.js";
export * from "./wire.js";
export { Client, nextSessionEpoch, type ClientConfig, type ClientStats, type Verdict } from "./client.js";
