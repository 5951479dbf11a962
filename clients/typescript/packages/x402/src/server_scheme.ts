// The resource server's side: an x402 `SchemeNetworkServer` for `x402ResourceServer.register`.
// It turns a route's price into a Tollgate amount of the deployment's token and completes the
// requirements with the `extra` the facilitator's `GET /supported` advertises (chain id,
// contract, window, skew), which is what a payer signs against.

import type {
  AssetAmount,
  Network,
  PaymentFlowConfig,
  PaymentRequirements,
  Price,
  SchemeNetworkServer,
  SupportedKind,
} from "@x402/core/types";
import { u64Text } from "@tollgate/client";
import { SCHEME } from "./binding.js";

/** The x402 payment flows this scheme can run (see `TollgateServerOptions.flow`). */
export type TollgateFlow = "upfront" | "authorization";

export interface TollgateServerOptions {
  /** The settlement token's address (`tollgate deploy` prints it): the requirements' `asset`. */
  asset: string;
  /**
   * The token's decimals, for prices given as money (`"$0.01"`, `"0.01"`, `0.01`). Without it,
   * money must be a whole number of the token's smallest unit.
   */
  decimals?: number;
  /**
   * `authorization` (default, x402's own default): the facilitator verifies before the handler
   * runs and settles after it, so nothing is charged when the handler fails, and a payload
   * presented again is refused by `/verify` (its nonce is taken). `upfront`: one settle before
   * the handler, which then runs only for a payment the ledger holds; both facilitators refuse
   * a payload settled before (`duplicate`), so a replayed header is refused in either flow.
   */
  flow?: TollgateFlow;
}

const EXTRA_FROM_KIND = ["chainId", "contract", "windowNonces", "timestampSkewMs"] as const;

/** `text` (decimal, optionally with a leading `$`) times 10^decimals, exactly, as a u64. */
function moneyToUnits(text: string, decimals: number): bigint {
  const match = /^\$?\s*(\d+)(?:\.(\d+))?$/.exec(text.trim());
  if (!match) throw new Error(`tollgate: price ${JSON.stringify(text)} is not a decimal amount`);
  const [, whole, fraction = ""] = match;
  if (fraction.replace(/0+$/, "").length > decimals) {
    throw new Error(`tollgate: price ${text} has more than ${decimals} decimals`);
  }
  return u64Text("price", `${whole}${fraction.padEnd(decimals, "0")}`.replace(/^0+(?=\d)/, ""));
}

export class TollgateServerScheme implements SchemeNetworkServer {
  readonly scheme = SCHEME;
  readonly defaultAssetTransferMethod = "default";
  readonly paymentFlows: Readonly<Record<string, PaymentFlowConfig>>;
  private readonly asset: string;
  private readonly decimals: number;

  constructor(options: TollgateServerOptions) {
    this.asset = options.asset;
    this.decimals = options.decimals ?? 0;
    this.paymentFlows = { default: { supported: ["upfront", "authorization"], default: options.flow ?? "authorization" } };
  }

  async parsePrice(price: Price, _network: Network): Promise<AssetAmount> {
    if (typeof price === "object") {
      if (price.asset.toLowerCase() !== this.asset.toLowerCase()) {
        throw new Error(`tollgate: asset ${price.asset} is not this deployment's token ${this.asset}`);
      }
      return { asset: this.asset, amount: u64Text("price", price.amount).toString() };
    }
    return { asset: this.asset, amount: moneyToUnits(String(price), this.decimals).toString() };
  }

  getAssetDecimals(asset: string, _network: Network): number | undefined {
    return asset.toLowerCase() === this.asset.toLowerCase() ? this.decimals : undefined;
  }

  async enhancePaymentRequirements(
    requirements: PaymentRequirements,
    kind: SupportedKind,
    _facilitatorExtensions: string[],
  ): Promise<PaymentRequirements> {
    const extra: Record<string, unknown> = { ...requirements.extra };
    for (const field of EXTRA_FROM_KIND) extra[field] = kind.extra?.[field];
    return { ...requirements, extra };
  }

  validateFacilitatorSupport(_network: Network, kind: SupportedKind): string | void {
    const missing = EXTRA_FROM_KIND.filter((field) => kind.extra?.[field] === undefined);
    if (missing.length > 0) return `tollgate: the facilitator's kind has no extra.${missing.join(", extra.")}`;
  }
}
