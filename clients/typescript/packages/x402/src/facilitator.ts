// A facilitator client for API fleets whose request rate makes an HTTP call per payment too
// costly: x402's `FacilitatorClient` (verify / settle / getSupported) over Tollgate's binary fleet
// protocol. Every settle becomes one receipt in the @tollgate/client batcher, so concurrent
// requests share SUBMIT frames (sent when full or after the linger time, W frames in flight), and
// the answer is the receipt's verdict from the ACK, once it is durable in the ledger.
//
// What it checks itself, before anything is sent (the same list and order as the facilitator's
// `/verify`, docs/X402.md): the x402 version, that the requirements are this deployment's kind,
// that the payload was made for them, that the receipt parses, pays `payTo` at least the price
// with the requirements' `request_hash`, that its signature holds under this deployment and its
// timestamp is within the skew. `settle` leaves the signature to the server, which verifies
// every receipt in batches anyway (a bad one comes back `bad_signature`, and under this client's
// own batch numbers it cannot take anyone's), so a settle costs no signature check in
// JavaScript. What it cannot check locally: whether the payer has a deposit
// and enough available funds, whether the nonce is fresh in its channel's window, and a session
// receipt's grant. Those only the ledger knows: `verify` answers valid without them, and `settle`
// gets them from the ACK's verdict (`unknown_payer`, `insufficient_funds`, `duplicate`, `stale`,
// the grant reasons), mapped to x402's reasons by the same table as every other refusal.
//
// As with `POST /settle`, a payment settles once: a caller that settles the same payload twice
// gets `duplicate` the second time. A broken connection is healed by the client, which re-sends
// unacknowledged frames under their original numbers (never counted twice).

import { randomBytes } from "node:crypto";
import { Client, TollgateError, toHex, type ClientConfig, type ClientStats, type Domain } from "@tollgate/client";
import type { FacilitatorClient } from "@x402/core/server";
import type { PaymentPayload, PaymentRequirements, SettleResponse, SupportedResponse, VerifyResponse } from "@x402/core/types";
import {
  SCHEME,
  TIMESTAMP_SKEW_MS_DEFAULT,
  WINDOW_NONCES_DEFAULT,
  X402_VERSION,
  checkPayment,
  deploymentExtra,
  network,
  transactionId,
  type Deployment,
} from "./binding.js";
import { Refusal, X402_REASONS } from "./reasons.js";

/** How the facilitator client reaches `tollgate serve`'s fleet port and batches. */
export interface FleetFacilitatorOptions extends Omit<ClientConfig, "producerId"> {
  /** This process's producer id; default random (each process of a fleet needs its own). */
  producerId?: bigint;
  /** The deployment's anti-replay window (`--window-nonces`), advertised to payers; default 1024. */
  windowNonces?: number;
  /** The deployment's `--timestamp-skew-ms`; default 300,000. */
  timestampSkewMs?: number;
  /** Unix milliseconds for the timestamp check; default `Date.now`. */
  now?: () => number;
}

/** The payer a payload names, when it names one (for answers about a receipt that did not parse). */
function payerOf(payload: PaymentPayload): string | undefined {
  const payer = (payload.payload as { payer?: unknown } | undefined)?.payer;
  return typeof payer === "string" ? payer : undefined;
}

export class FleetFacilitatorClient implements FacilitatorClient {
  private readonly deployment: Deployment;
  private readonly windowNonces: number;

  private constructor(
    private readonly client: Client,
    options: FleetFacilitatorOptions,
  ) {
    this.deployment = {
      domain: options.domain,
      timestampSkewMs: options.timestampSkewMs ?? TIMESTAMP_SKEW_MS_DEFAULT,
      ...(options.now ? { now: options.now } : {}),
    };
    this.windowNonces = options.windowNonces ?? WINDOW_NONCES_DEFAULT;
  }

  /** Connects (CHALLENGE/HELLO) to the fleet port. */
  static async connect(options: FleetFacilitatorOptions): Promise<FleetFacilitatorClient> {
    const producerId = options.producerId ?? randomBytes(8).readBigUInt64LE();
    return new FleetFacilitatorClient(await Client.connect({ ...options, producerId }), options);
  }

  private get domain(): Domain {
    return this.deployment.domain;
  }

  async getSupported(): Promise<SupportedResponse> {
    const extra = deploymentExtra(this.domain, this.windowNonces, this.deployment.timestampSkewMs);
    return {
      kinds: [{ x402Version: X402_VERSION, scheme: SCHEME, network: network(this.domain.chainId), extra: { ...extra } }],
      extensions: [],
      signers: {},
    };
  }

  /** The local checks only: a valid answer says nothing of funds, replay or grants (see above). */
  async verify(payload: PaymentPayload, requirements: PaymentRequirements): Promise<VerifyResponse> {
    try {
      const receipt = checkPayment(this.deployment, payload, requirements);
      return { isValid: true, payer: toHex(receipt.payer) };
    } catch (error) {
      const refusal = asRefusal(error, "verify");
      const payer = payerOf(payload);
      return { isValid: false, invalidReason: refusal.code, invalidMessage: refusal.message, ...(payer ? { payer } : {}) };
    }
  }

  /** The local checks, then the receipt through the batcher; answers with the ACK's verdict. */
  async settle(payload: PaymentPayload, requirements: PaymentRequirements): Promise<SettleResponse> {
    const net = requirements.network;
    const failed = (refusal: Refusal, payer = payerOf(payload)): SettleResponse => ({
      success: false,
      errorReason: refusal.code,
      errorMessage: refusal.message,
      ...(payer ? { payer } : {}),
      transaction: "",
      network: net,
    });
    let receipt;
    try {
      receipt = checkPayment(this.deployment, payload, requirements, false);
    } catch (error) {
      return failed(asRefusal(error, "settle"));
    }
    const payer = toHex(receipt.payer);
    try {
      const verdict = await this.client.submit(receipt);
      if (verdict !== "accepted") {
        return failed(new Refusal(verdict, "the ledger refuses the receipt"), payer);
      }
      return { success: true, payer, transaction: transactionId(receipt), network: net };
    } catch (error) {
      // The receipt may or may not be durable: a new settle of it is never counted twice.
      return failed(asRefusal(error, "settle"), payer);
    }
  }

  /** Waits for every receipt sent to be acknowledged, then disconnects. */
  close(): Promise<ClientStats> {
    return this.client.close();
  }

  /** Counters of the underlying fleet client. */
  stats(): ClientStats {
    return this.client.stats();
  }
}

function asRefusal(error: unknown, phase: "verify" | "settle"): Refusal {
  if (error instanceof Refusal) return error;
  const unexpected = phase === "verify" ? X402_REASONS.unexpectedVerify : X402_REASONS.unexpectedSettle;
  const why = error instanceof TollgateError || error instanceof Error ? error.message : String(error);
  return new Refusal("internal", why, unexpected);
}
