// The one table from Tollgate's refusal names to x402's reason codes (docs/X402.md, "Statuses and
// reasons"), used by the local checks and the binary facilitator client alike, so a resource
// server sees the same `invalidReason` / `errorReason` whichever facilitator client it uses; and
// the reading of a 402 answer back into that reason, for payers.

import type { ReasonName } from "@tollgate/client";
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from "@x402/core/http";

/** x402's reason codes this binding answers with. */
export const X402_REASONS = {
  version: "invalid_x402_version",
  scheme: "unsupported_scheme",
  network: "invalid_network",
  payload: "invalid_payload",
  requirements: "invalid_payment_requirements",
  funds: "insufficient_funds",
  signature: "invalid_tollgate_payload_signature",
  amount: "invalid_tollgate_payload_amount",
  recipient: "invalid_tollgate_payload_recipient_mismatch",
  requestHash: "invalid_tollgate_payload_request_hash",
  replay: "invalid_tollgate_payload_replay",
  timestamp: "invalid_tollgate_payload_timestamp",
  grant: "invalid_tollgate_payload_grant",
  unexpectedVerify: "unexpected_verify_error",
  unexpectedSettle: "unexpected_settle_error",
} as const;
export type X402Reason = (typeof X402_REASONS)[keyof typeof X402_REASONS];

/** The names this binding refuses with before a receipt reaches the ledger. */
export type BindingName =
  | "wrong_version"
  | "wrong_scheme"
  | "wrong_network"
  | "wrong_deployment"
  | "wrong_kind"
  | "wrong_payee"
  | "underpaid"
  | "wrong_request_hash"
  | "internal"
  | "engine_busy"
  | "not_ready";

/** Every Tollgate name a refusal can carry: the binding's and the ledger's verdict names. */
export type TollgateName = BindingName | ReasonName;

const BY_NAME: Record<Exclude<TollgateName, "internal" | "engine_busy" | "not_ready">, X402Reason> = {
  wrong_version: X402_REASONS.version,
  wrong_scheme: X402_REASONS.scheme,
  wrong_network: X402_REASONS.network,
  wrong_deployment: X402_REASONS.requirements,
  wrong_kind: X402_REASONS.requirements,
  wrong_payee: X402_REASONS.recipient,
  underpaid: X402_REASONS.amount,
  wrong_request_hash: X402_REASONS.requestHash,
  malformed: X402_REASONS.payload,
  overflow: X402_REASONS.payload,
  bad_signature: X402_REASONS.signature,
  bad_payer_key: X402_REASONS.signature,
  duplicate: X402_REASONS.replay,
  stale: X402_REASONS.replay,
  timestamp_skew: X402_REASONS.timestamp,
  unknown_payer: X402_REASONS.funds,
  insufficient_funds: X402_REASONS.funds,
  payee_not_allowed: X402_REASONS.recipient,
  no_grant: X402_REASONS.grant,
  grant_not_yet_valid: X402_REASONS.grant,
  grant_expired: X402_REASONS.grant,
  grant_revoked: X402_REASONS.grant,
  over_grant_cap: X402_REASONS.grant,
  over_grant_allowance: X402_REASONS.grant,
  payee_not_in_grant: X402_REASONS.grant,
};

/** The x402 code for a Tollgate name; `phase` picks the code of the facilitator's own trouble. */
export function x402Reason(name: TollgateName, phase: "verify" | "settle" = "verify"): X402Reason {
  if (name === "internal" || name === "engine_busy" || name === "not_ready") {
    return phase === "verify" ? X402_REASONS.unexpectedVerify : X402_REASONS.unexpectedSettle;
  }
  return BY_NAME[name];
}

/** Why a payment is refused: x402's code, and a message opening with Tollgate's name. */
export class Refusal extends Error {
  readonly code: X402Reason;

  /** `code` overrides the name's own (a `malformed` price is the requirements' fault, not the payload's). */
  constructor(
    readonly tollgateName: TollgateName,
    why: string,
    code?: X402Reason,
  ) {
    super(`${tollgateName}: ${why}`);
    this.name = "Refusal";
    this.code = code ?? x402Reason(tollgateName);
  }
}

/** What a 402 answer says went wrong, read from its headers. */
export interface PaymentFailure {
  /** x402's reason code (`errorReason` of a refused settle, or `error` of a PAYMENT-REQUIRED). */
  reason: string;
  /** `<tollgate name>: <why>` when the facilitator gave one. */
  message?: string;
}

/**
 * The reason of a 402 answer: a settle refused after the payment was presented carries a
 * PAYMENT-RESPONSE with `errorReason`; a refusal before settling (no payment, a header that does
 * not decode, requirements that do not match, a failed verify) carries a PAYMENT-REQUIRED whose
 * `error` is the reason. Undefined when the answer carries neither.
 */
export function paymentFailure(headers: { get(name: string): string | null }): PaymentFailure | undefined {
  const response = headers.get("PAYMENT-RESPONSE");
  if (response) {
    const settle = decodePaymentResponseHeader(response);
    if (!settle.success) {
      return { reason: settle.errorReason ?? "", ...(settle.errorMessage ? { message: settle.errorMessage } : {}) };
    }
  }
  const required = headers.get("PAYMENT-REQUIRED");
  if (required) {
    const asked = decodePaymentRequiredHeader(required);
    if (asked.error !== undefined) return { reason: asked.error };
  }
  return undefined;
}
