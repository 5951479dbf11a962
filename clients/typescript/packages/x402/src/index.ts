// @tollgate/x402: Tollgate as an x402 v2 payment scheme (docs/X402.md).

export * from "./binding.js";
export * from "./reasons.js";
export { TollgateClientScheme, type TollgateClientOptions } from "./client_scheme.js";
export { TollgateServerScheme, type TollgateServerOptions, type TollgateFlow } from "./server_scheme.js";
export { FleetFacilitatorClient, type FleetFacilitatorOptions } from "./facilitator.js";
