//! The OpenAPI 3.1 document served at `/openapi.json`. Written by hand next to `tollgate_query::model`;
//! the integration test `tools/tests/api.rs` fetches every route listed here from a real server
//! and checks each answer against these schemas, so the two cannot drift apart unnoticed.

use serde_json::{Value, json};

use tollgate_query::model::{
    CHANNELS_LISTED_MAX, EPOCHS_LIMIT_DEFAULT, EPOCHS_LIMIT_MAX, HEADER_NEXT_AFTER,
    RECEIPTS_JSON_LINES, RECEIPTS_OCTET_STREAM, RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX,
};

use tollgate_engine::grant::{GRANT_BYTES, GrantError, REVOCATION_BYTES};
use tollgate_query::auth::{HEADER_PAYER, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use tollgate_query::grants::{GRANTS_PAGE_DEFAULT, GRANTS_PAGE_MAX};

use super::error::ERROR_CODES;
use crate::x402;

fn amount(description: &str) -> Value {
    json!({ "type": "string", "pattern": "^[0-9]+$", "description": description })
}

fn nullable_amount(description: &str) -> Value {
    json!({ "type": ["string", "null"], "pattern": "^[0-9]+$", "description": description })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn path_param(name: &str, description: &str, pattern: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": { "type": "string", "pattern": pattern }
    })
}

fn query_param(name: &str, description: &str, pattern: &str) -> Value {
    json!({
        "name": name, "in": "query", "required": true, "description": description,
        "schema": { "type": "string", "pattern": pattern }
    })
}

const PAYER_PATTERN: &str = "^(0x)?[0-9a-fA-F]{64}$";
const ADDRESS_PATTERN: &str = "^0x[0-9a-fA-F]{40}$";
const HASH_PATTERN: &str = "^0x[0-9a-f]{64}$";

fn schemas() -> Value {
    let codes: Vec<&str> = ERROR_CODES.iter().map(|(code, _, _)| *code).collect();
    let hash = json!({ "type": "string", "pattern": HASH_PATTERN });
    let nullable_hash = json!({ "type": ["string", "null"], "pattern": HASH_PATTERN });
    let key = json!({ "type": "string", "pattern": "^[0-9a-f]{64}$" });
    let address = json!({ "type": "string", "pattern": "^0x[0-9a-f]{40}$" });
    let grant_reasons: Vec<&str> = GrantError::CODES.iter().map(|(_, name)| *name).collect();
    let grant_table: String = GrantError::CODES
        .iter()
        .map(|(code, name)| format!(" {code} {name};"))
        .collect();
    json!({
        "Error": {
            "type": "object",
            "additionalProperties": false,
            "required": ["error", "message"],
            "properties": {
                "error": { "type": "string", "enum": codes, "description": "Stable machine code." },
                "message": { "type": "string", "description": "What went wrong, for people." },
                "reason": { "type": "string", "enum": grant_reasons,
                            "description": "grant_refused only: the grant error's stable name." },
                "code": { "type": "integer", "minimum": 1, "maximum": GrantError::CODES.len(),
                          "description": format!("grant_refused only: the grant error's stable wire code:{grant_table}") }
            }
        },
        "Allowance": {
            "type": "object",
            "additionalProperties": false,
            "required": ["amount", "period_ms"],
            "properties": {
                "amount": amount("Most the session may spend in one period (u64)."),
                "period_ms": { "type": "integer", "minimum": 1, "description": "Period length; periods count from valid_from_ms." }
            }
        },
        "Position": {
            "type": "object",
            "additionalProperties": false,
            "required": ["epoch", "index"],
            "properties": {
                "epoch": { "type": "integer", "minimum": 1, "description": "The epoch open when it took effect." },
                "index": { "type": "integer", "minimum": 0, "description": "Receipts that epoch had accepted then: an archived receipt at (epoch, index) at or after this position was applied after it." }
            }
        },
        "Spent": {
            "type": "object",
            "additionalProperties": false,
            "required": ["total", "period", "period_total"],
            "properties": {
                "total": amount("Everything the session spent."),
                "period": { "type": "integer", "minimum": 0, "description": "The newest allowance period charged (0 starts at valid_from_ms)." },
                "period_total": amount("Spent in that period.")
            }
        },
        "Revocation": {
            "type": "object",
            "additionalProperties": false,
            "required": ["revocation", "payer", "session_key", "chain_id", "contract", "revoked_at_ms", "effective_at"],
            "properties": {
                "revocation": { "type": "string", "pattern": format!("^[0-9a-f]{{{}}}$", 2 * REVOCATION_BYTES), "description": "The signed revocation (docs/PROTOCOL.md)." },
                "payer": key.clone(),
                "session_key": key.clone(),
                "chain_id": { "type": "integer", "minimum": 0 },
                "contract": address.clone(),
                "revoked_at_ms": { "type": "integer", "minimum": 0, "description": "The payer's clock when it signed: informative only." },
                "effective_at": { "$ref": "#/components/schemas/Position" }
            }
        },
        "Grant": {
            "type": "object",
            "additionalProperties": false,
            "required": ["grant", "payer", "session_key", "chain_id", "contract", "nonce", "cap", "allowance",
                         "valid_from_ms", "valid_until_ms", "payees", "granted_at", "spent", "revocation"],
            "properties": {
                "grant": { "type": "string", "pattern": format!("^[0-9a-f]{{{}}}$", 2 * GRANT_BYTES), "description": "The signed grant (docs/PROTOCOL.md): the payer's signature covers its first 224 bytes. The fields below are decoded from it." },
                "payer": key.clone(),
                "session_key": key,
                "chain_id": { "type": "integer", "minimum": 0 },
                "contract": address.clone(),
                "nonce": amount("The payer's grant nonce (u64)."),
                "cap": amount("Most the session may ever spend (u64)."),
                "allowance": { "oneOf": [{ "$ref": "#/components/schemas/Allowance" }, { "type": "null" }], "description": "Null for none." },
                "valid_from_ms": { "type": "integer", "minimum": 0, "description": "Inclusive." },
                "valid_until_ms": { "type": "integer", "minimum": 0, "description": "Exclusive." },
                "payees": { "type": ["array", "null"], "items": address, "maxItems": 4, "description": "Null for any payee." },
                "granted_at": { "$ref": "#/components/schemas/Position" },
                "spent": { "$ref": "#/components/schemas/Spent" },
                "revocation": { "oneOf": [{ "$ref": "#/components/schemas/Revocation" }, { "type": "null" }], "description": "Null while the grant stands." }
            }
        },
        "GrantList": {
            "type": "object",
            "additionalProperties": false,
            "required": ["grants"],
            "properties": {
                "grants": { "type": "array", "items": { "$ref": "#/components/schemas/Grant" }, "description": "In session key order." }
            }
        },
        "Status": {
            "type": "object",
            "additionalProperties": false,
            "required": ["status"],
            "properties": { "status": { "type": "string", "enum": ["ok", "ready"] } }
        },
        "Channel": {
            "type": "object",
            "additionalProperties": false,
            "required": ["payee", "cumulative", "receipts", "last_timestamp_ms", "highest_nonce"],
            "properties": {
                "payee": { "type": "string", "pattern": "^0x[0-9a-f]{40}$" },
                "cumulative": amount("Total of every accepted receipt on the channel: what its Merkle leaf commits."),
                "receipts": { "type": "integer", "minimum": 0 },
                "last_timestamp_ms": { "type": "integer", "minimum": 0, "description": "Latest accepted receipt's timestamp, ms since the Unix epoch." },
                "highest_nonce": nullable_amount("Highest accepted nonce (a u64, as a decimal string).")
            }
        },
        "Payer": {
            "type": "object",
            "additionalProperties": false,
            "required": ["payer", "deposited", "withdrawal_requested", "withdrawn", "settled", "pending",
                         "available", "shortfall", "receipts", "channel_count", "channels"],
            "properties": {
                "payer": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "ed25519 public key." },
                "deposited": amount("Sum of deposits seen onchain."),
                "withdrawal_requested": amount("Withdrawals requested onchain, not yet completed."),
                "withdrawn": amount("Completed withdrawals."),
                "settled": amount("Debited by committed epochs."),
                "pending": amount("Accepted receipts not yet settled."),
                "available": amount("What the payer may still spend: deposited - withdrawn - withdrawal_requested - settled - pending."),
                "shortfall": amount("Debited in committed epochs beyond what the chain still held (the payer's exit overtook the debits): committed without it and written off, never settled."),
                "receipts": { "type": "integer", "minimum": 0, "description": "Accepted receipts over all channels." },
                "channel_count": { "type": "integer", "minimum": 0, "description": "Channels (payees) in all." },
                "channels": {
                    "type": "array",
                    "maxItems": CHANNELS_LISTED_MAX,
                    "items": { "$ref": "#/components/schemas/Channel" },
                    "description": format!("The first {CHANNELS_LISTED_MAX} channels in payee order.")
                }
            }
        },
        "Payee": {
            "type": "object",
            "additionalProperties": false,
            "required": ["payee", "credited", "settled", "pending", "shortfall", "withdrawable", "withdrawable_source"],
            "properties": {
                "payee": { "type": "string", "pattern": "^0x[0-9a-f]{40}$" },
                "credited": amount("Sum of accepted receipts paying this payee."),
                "settled": amount("Credited by committed epochs."),
                "pending": amount("Credited, not yet settled (nor written off as shortfall)."),
                "shortfall": amount("Credited, but cut from committed epochs because the paying payer's exit overtook its debit: never settled."),
                "withdrawable": nullable_amount("What the settlement contract lets the payee withdraw, read at most 5 seconds ago (the server reuses a contract read that long). Null unless withdrawable_source is chain: a server without a chain view configured reports null."),
                "withdrawable_source": { "type": "string", "enum": ["chain", "not_configured", "chain_error"] }
            }
        },
        "Epoch": {
            "type": "object",
            "additionalProperties": false,
            "required": ["epoch", "status", "root", "tx_hash", "block", "receipts", "leaves",
                         "debit_total", "credit_total", "debit_count", "credit_count", "shortfall"],
            "properties": {
                "epoch": { "type": "integer", "minimum": 1 },
                "status": { "type": "string", "enum": ["open", "sealed", "submitted", "committed", "disputed"],
                            "description": "open: taking receipts; sealed: frozen, nothing onchain yet; submitted: some parts of the commit landed; committed: complete and final onchain; disputed: voided by the arbiter, its amounts carried into a later epoch." },
                "root": nullable_hash,
                "tx_hash": { "type": ["string", "null"], "pattern": HASH_PATTERN, "description": "Transaction of the last part in parts (null while none is recorded)." },
                "block": { "type": ["integer", "null"], "minimum": 0, "description": "Block of that transaction." },
                "receipts": { "type": "integer", "minimum": 0 },
                "leaves": { "type": ["integer", "null"], "minimum": 0, "description": "Merkle leaves (channels that moved); null while open." },
                "debit_total": amount("Total debited from payers."),
                "credit_total": amount("Total credited to payees; always equal to debit_total."),
                "debit_count": { "type": ["integer", "null"], "minimum": 0, "description": "Payers debited, as the seal counted them; null for the open epoch and for epochs sealed before the ledger kept counts." },
                "credit_count": { "type": ["integer", "null"], "minimum": 0, "description": "Payees credited; null as debit_count." },
                "shortfall": amount("Of debit_total, what went onchain uncovered and was cut (debits and credits alike) because a payer's exit overtook its debit; 0 in nearly every epoch."),
                "carried_into": { "type": ["integer", "null"], "minimum": 1, "description": "For a disputed epoch, the epoch its amounts and leaves were carried into to be committed again (an auditor recomputing that epoch adds them); null otherwise." },
                "parts": { "type": "array", "items": { "$ref": "#/components/schemas/EpochPart" },
                           "description": "Every part of the commit recorded as landed onchain, by part number; empty while open or sealed. Parts an earlier run sent without recording them are filled in from the contract's EpochCommitted events when the commit completes." }
            }
        },
        "EpochPart": {
            "type": "object",
            "additionalProperties": false,
            "required": ["part", "tx_hash", "block"],
            "properties": {
                "part": { "type": "integer", "minimum": 0, "description": "Part number (the first is 0)." },
                "tx_hash": hash.clone(),
                "block": { "type": "integer", "minimum": 0, "description": "Block the part landed in." }
            }
        },
        "EpochList": {
            "type": "object",
            "additionalProperties": false,
            "required": ["epochs"],
            "properties": {
                "epochs": { "type": "array", "items": { "$ref": "#/components/schemas/Epoch" },
                            "description": "Newest first; the open epoch is the first." }
            }
        },
        "StandardTree": {
            "type": "object",
            "additionalProperties": false,
            "required": ["format", "leafEncoding", "tree", "values"],
            "properties": {
                "format": { "type": "string", "enum": ["standard-v1"] },
                "leafEncoding": { "type": "array", "items": { "type": "string", "enum": ["uint64", "bytes32", "address", "uint256"] } },
                "tree": { "type": "array", "items": hash.clone(), "description": "Every node, the root first; the sorted leaves fill the end in reverse." },
                "values": { "type": "array", "items": { "$ref": "#/components/schemas/StandardValue" } }
            }
        },
        "StandardValue": {
            "type": "object",
            "additionalProperties": false,
            "required": ["value", "treeIndex"],
            "properties": {
                "value": { "type": "array", "items": { "type": "string" }, "maxItems": 4,
                           "description": "[epoch, payer (0x bytes32), payee (0x address), cumulative], integers as decimal strings." },
                "treeIndex": { "type": "integer", "minimum": 0 }
            }
        },
        "ReceiptLine": {
            "type": "object",
            "additionalProperties": false,
            "required": ["payer", "payee", "amount", "nonce", "timestamp_ms", "request_hash", "signature"],
            "properties": {
                "payer": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                "payee": { "type": "string", "pattern": "^0x[0-9a-f]{40}$" },
                "amount": amount("Token units (u64)."),
                "nonce": amount("Per-channel nonce (u64)."),
                "timestamp_ms": amount("Unix milliseconds (u64)."),
                "request_hash": { "type": "string", "pattern": "^[0-9a-f]{64}$" },
                "signature": { "type": "string", "pattern": "^[0-9a-f]{128}$" },
                "session": { "type": "boolean", "description": "Present (true) when payer is a session key, charged to the payer whose grant names it." }
            }
        },
        "PaymentRequirements": {
            "type": "object",
            "required": ["scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds", "extra"],
            "properties": {
                "scheme": { "type": "string", "enum": [x402::SCHEME] },
                "network": { "type": "string", "pattern": "^eip155:[0-9]+$" },
                "asset": { "type": "string" },
                "amount": amount("The price in token units (u64)."),
                "payTo": { "type": "string", "pattern": "^0x[0-9a-fA-F]{40}$" },
                "maxTimeoutSeconds": { "type": "integer", "minimum": 0 },
                "extra": { "type": "object", "description": "X402Extra, plus resource (a string bound into request_hash) and whatever else the resource server adds." }
            }
        },
        "X402Extra": {
            "type": "object",
            "required": ["chainId", "contract", "windowNonces", "timestampSkewMs"],
            "properties": {
                "chainId": amount("The receipt domain's chain id (u64)."),
                "contract": { "type": "string", "pattern": "^0x[0-9a-f]{40}$", "description": "The receipt domain's Settlement contract." },
                "windowNonces": { "type": "integer", "minimum": 64, "description": "The anti-replay window per channel, in nonces." },
                "timestampSkewMs": { "type": "integer", "minimum": 0, "description": "How far a receipt's timestamp may be from the facilitator's clock." }
            }
        },
        "PaymentPayload": {
            "type": "object",
            "required": ["x402Version", "accepted", "payload"],
            "properties": {
                "x402Version": { "type": "integer", "enum": [x402::X402_VERSION] },
                "resource": { "type": "object" },
                "accepted": { "$ref": "#/components/schemas/PaymentRequirements" },
                "payload": { "$ref": "#/components/schemas/ReceiptLine" },
                "extensions": { "type": "object" }
            }
        },
        "FacilitatorRequest": {
            "type": "object",
            "required": ["x402Version", "paymentPayload", "paymentRequirements"],
            "properties": {
                "x402Version": { "type": "integer", "enum": [x402::X402_VERSION] },
                "paymentPayload": { "$ref": "#/components/schemas/PaymentPayload" },
                "paymentRequirements": { "$ref": "#/components/schemas/PaymentRequirements" }
            }
        },
        "SupportedResponse": {
            "type": "object",
            "additionalProperties": false,
            "required": ["kinds", "extensions", "signers"],
            "properties": {
                "kinds": { "type": "array", "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["x402Version", "scheme", "network", "extra"],
                    "properties": {
                        "x402Version": { "type": "integer", "enum": [x402::X402_VERSION] },
                        "scheme": { "type": "string", "enum": [x402::SCHEME] },
                        "network": { "type": "string", "pattern": "^eip155:[0-9]+$" },
                        "extra": { "$ref": "#/components/schemas/X402Extra" }
                    }
                }},
                "extensions": { "type": "array", "items": { "type": "string" } },
                "signers": { "type": "object" }
            }
        },
        "VerifyResponse": {
            "type": "object",
            "additionalProperties": false,
            "required": ["isValid"],
            "properties": {
                "isValid": { "type": "boolean" },
                "invalidReason": { "type": "string", "description": "x402's reason code (docs/X402.md)." },
                "invalidMessage": { "type": "string", "description": "Tollgate's stable reason name, a colon, and why." },
                "payer": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "The receipt's signing key." }
            }
        },
        "SettleResponse": {
            "type": "object",
            "additionalProperties": false,
            "required": ["success", "transaction", "network"],
            "properties": {
                "success": { "type": "boolean" },
                "errorReason": { "type": "string", "description": "x402's reason code (docs/X402.md)." },
                "errorMessage": { "type": "string", "description": "Tollgate's stable reason name, a colon, and why." },
                "payer": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "The receipt's signing key." },
                "transaction": { "type": "string", "pattern": "^(0x[0-9a-f]{64})?$", "description": "The commitment identifier: 0x and the BLAKE3 hash of the receipt's 176 bytes; empty when not settled." },
                "network": { "type": "string" }
            }
        },
        "Proof": {
            "type": "object",
            "additionalProperties": false,
            "required": ["epoch", "payer", "payee", "cumulative", "leaf", "root", "proof"],
            "properties": {
                "epoch": { "type": "integer", "minimum": 1, "description": "verifyLeaf's uint64 epoch." },
                "payer": { "type": "string", "pattern": "^[0-9a-f]{64}$", "description": "verifyLeaf's bytes32 payer." },
                "payee": { "type": "string", "pattern": "^0x[0-9a-f]{40}$", "description": "verifyLeaf's address payee." },
                "cumulative": amount("verifyLeaf's uint256 cumulative: the channel's all-time total frozen in this epoch."),
                "leaf": hash.clone(),
                "root": hash.clone(),
                "proof": { "type": "array", "items": hash, "description": "verifyLeaf's bytes32[] proof, bottom-up." }
            }
        }
    })
}

/// The document.
pub fn document() -> Value {
    let not_ready = error_response("Not ready yet (not_ready): the server is starting.");
    let internal = error_response("Reading the ledger failed (internal).");
    let payer_param = path_param("payer", "The payer's ed25519 public key.", PAYER_PATTERN);
    let payee_param = path_param("payee", "The payee's EVM address.", ADDRESS_PATTERN);
    let epoch_param = json!({
        "name": "epoch", "in": "path", "required": true,
        "schema": { "type": "integer", "minimum": 1 }
    });
    let error_table: String = ERROR_CODES
        .iter()
        .map(|(code, status, meaning)| format!("\n- `{code}` ({status}): {meaning}"))
        .collect();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Balances, epochs and Merkle proofs from the Tollgate ledger. Amounts are in the \
                 token's smallest unit as decimal strings (they are u128). Ledger routes (/v1/...) \
                 answer 503 until the server is ready, and only to a caller the server knows \
                 (see securitySchemes; /healthz, /readyz, /metrics and this document are open). \
                 A cluster node (serve --cluster) serves /v1/payers/{{payer}} for any payer and \
                 answers the other /v1 routes 501 not_in_cluster. \
                 Every error is {{\"error\": code, \"message\": text}}:{error_table}"
            )
        },
        "paths": {
            "/v1/payers/{payer}": { "get": {
                "summary": "A payer's funds and channels.",
                "parameters": [payer_param.clone()],
                "responses": {
                    "200": json_response("The payer.", "Payer"),
                    "400": error_response("Malformed payer key (malformed_payer)."),
                    "404": error_response("The ledger never heard of this payer (unknown_payer)."),
                    "500": internal.clone(),
                    "503": error_response(
                        "Not ready yet (not_ready): the server is starting; or, on a cluster \
                         node, the payer's partition has no owner right now or its new owner is \
                         still replaying its log (partition_not_owned, with Retry-After)."
                    )
                }
            }},
            "/v1/payees/{payee}": { "get": {
                "summary": "A payee's credits, and what the contract lets it withdraw.",
                "parameters": [payee_param.clone()],
                "responses": {
                    "200": json_response("The payee.", "Payee"),
                    "400": error_response("Malformed address (malformed_address)."),
                    "404": error_response("Nothing was ever credited to this payee (unknown_payee)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/epochs": { "get": {
                "summary": "The latest epochs, newest first, the open one first.",
                "parameters": [{
                    "name": "limit", "in": "query", "required": false,
                    "schema": { "type": "integer", "minimum": 1, "maximum": EPOCHS_LIMIT_MAX, "default": EPOCHS_LIMIT_DEFAULT }
                }],
                "responses": {
                    "200": json_response("The epochs.", "EpochList"),
                    "400": error_response("limit out of range or not a number (bad_query)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/epochs/{epoch}": { "get": {
                "summary": "One epoch, with its debit and credit counts.",
                "parameters": [epoch_param.clone()],
                "responses": {
                    "200": json_response("The epoch.", "Epoch"),
                    "400": error_response("Malformed epoch number (malformed_epoch)."),
                    "404": error_response("No such epoch (unknown_epoch)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/epochs/{epoch}/proof": { "get": {
                "summary": "A channel's leaf in an epoch final onchain and the Merkle proof Settlement.verifyLeaf accepts.",
                "description": "Pass epoch, payer, payee, cumulative and proof to the contract's \
                    verifyLeaf(uint64 epoch, bytes32 payer, address payee, uint256 cumulative, bytes32[] proof). \
                    Only epochs final onchain have proofs: committed in full, not disputed, and past the \
                    challenge window (before that the arbiter may still void the epoch and verifyLeaf \
                    answers false; the contract deletes a disputed epoch's root). A leaf exists only for channels that moved in the epoch, \
                    and commits the channel's all-time cumulative amount at the seal; a channel that did \
                    not move keeps its leaf in an earlier epoch.",
                "parameters": [
                    epoch_param.clone(),
                    query_param("payer", "The payer's ed25519 public key.", PAYER_PATTERN),
                    query_param("payee", "The payee's EVM address.", ADDRESS_PATTERN)
                ],
                "responses": {
                    "200": json_response("The leaf and its proof.", "Proof"),
                    "400": error_response("Malformed epoch, payer or payee, or a missing parameter (malformed_epoch, malformed_payer, malformed_address, bad_query)."),
                    "404": error_response("No such epoch (unknown_epoch), or the channel has no leaf in it: it did not move in that epoch (unknown_leaf)."),
                    "409": error_response("The epoch is open, sealed, submitted or disputed: not committed onchain (epoch_not_committed); or committed but still disputable onchain (epoch_not_final). No proof the contract accepts yet."),
                    "500": internal.clone(),
                    "503": error_response("Not ready yet (not_ready), or the chain cannot say now whether the epoch is final (finality_unknown); retry.")
                }
            }},
            "/v1/epochs/{epoch}/tree": { "get": {
                "summary": "A sealed epoch's Merkle tree as an OpenZeppelin standard-v1 dump.",
                "description": "Exactly what @openzeppelin/merkle-tree's StandardMerkleTree.dump() writes \
                    for the epoch's leaves [epoch, payer, payee, cumulative] with leafEncoding \
                    [uint64, bytes32, address, uint256]: StandardMerkleTree.load(dump).validate() accepts \
                    it and its root is the one committed. Served for every sealed epoch, committed or \
                    not, so an auditor can check it inside the challenge window. A payer gets every node \
                    but only its own values.",
                "parameters": [epoch_param.clone()],
                "responses": {
                    "200": json_response("The dump.", "StandardTree"),
                    "400": error_response("Malformed epoch number (malformed_epoch)."),
                    "404": error_response("No such epoch (unknown_epoch), or it is still open (epoch_not_sealed)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/epochs/{epoch}/receipts": { "get": {
                "summary": "A sealed epoch's archived receipts, exactly as signed, in the order the ledger applied them.",
                "description": format!("JSON lines in the `tollgate receipts` format ({RECEIPTS_JSON_LINES}), or \
                    the raw 176-byte records of docs/PROTOCOL.md concatenated with \
                    `Accept: {RECEIPTS_OCTET_STREAM}`. Paged by archive position: `limit` positions \
                    after position `after`; a page that is not the last carries the `after` of the \
                    next in the {HEADER_NEXT_AFTER} header. A payer gets only its own receipts (a page \
                    still spans `limit` positions)."),
                "parameters": [
                    epoch_param.clone(),
                    { "name": "after", "in": "query", "required": false,
                      "description": "Resume after this archive position (the previous page's next-after).",
                      "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "limit", "in": "query", "required": false,
                      "schema": { "type": "integer", "minimum": 1, "maximum": RECEIPTS_PAGE_MAX, "default": RECEIPTS_PAGE_DEFAULT } }
                ],
                "responses": {
                    "200": {
                        "description": "One page of receipts.",
                        "headers": { HEADER_NEXT_AFTER: {
                            "description": "Present when more receipts follow: pass it as `after`.",
                            "schema": { "type": "integer", "minimum": 0 }
                        }},
                        "content": {
                            RECEIPTS_JSON_LINES: { "schema": { "$ref": "#/components/schemas/ReceiptLine" } },
                            RECEIPTS_OCTET_STREAM: { "schema": { "type": "string", "format": "binary" } }
                        }
                    },
                    "400": error_response("Malformed epoch, after or limit (malformed_epoch, bad_query)."),
                    "404": error_response("No such epoch (unknown_epoch), still open (epoch_not_sealed), or no archive kept (archive_disabled)."),
                    "410": error_response("Pruned after being final onchain for the retention period (epoch_pruned)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/grants": {
                "get": {
                    "summary": "Every session grant the ledger holds, in session key order, paged.",
                    "description": format!("`limit` grants after session key `after`; a page that is not the \
                        last carries the `after` of the next in the {HEADER_NEXT_AFTER} header. A payer \
                        gets only its own grants (a page still spans `limit` grants)."),
                    "parameters": [
                        { "name": "after", "in": "query", "required": false,
                          "description": "Resume after this session key (the previous page's next-after).",
                          "schema": { "type": "string", "pattern": PAYER_PATTERN } },
                        { "name": "limit", "in": "query", "required": false,
                          "schema": { "type": "integer", "minimum": 1, "maximum": GRANTS_PAGE_MAX, "default": GRANTS_PAGE_DEFAULT } }
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of grants.",
                            "headers": { HEADER_NEXT_AFTER: {
                                "description": "Present when more grants follow: pass it as `after`.",
                                "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" }
                            }},
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/GrantList" } } }
                        },
                        "400": error_response("Malformed after or limit (bad_query)."),
                        "500": internal.clone(), "503": not_ready.clone()
                    }
                },
                "post": grant_post(
                    "Hand the engine a session grant signed by its payer; answered once durable.",
                    "grant", GRANT_BYTES, &internal
                )
            },
            "/v1/grants/{session_key}": { "get": {
                "summary": "The grant held for a session key: its signed bytes and terms, when it took effect, what the session spent, and its revocation.",
                "parameters": [path_param("session_key", "The session's ed25519 public key.", PAYER_PATTERN)],
                "responses": {
                    "200": json_response("The grant.", "Grant"),
                    "400": error_response("Malformed session key (malformed_payer)."),
                    "404": error_response("No grant for this session key (unknown_grant)."),
                    "500": internal.clone(), "503": not_ready.clone()
                }
            }},
            "/v1/revocations": {
                "post": grant_post(
                    "Hand the engine a payer's revocation of a session key; answered once durable: receipts the ledger applies from then on are refused (grant_revoked).",
                    "revocation", REVOCATION_BYTES, &internal
                )
            },
            "/supported": { "get": {
                "summary": "x402 facilitator: the payment kind this deployment accepts (scheme tollgate, its network, and the extra a payer signs with). Served when the server has an engine.",
                "responses": {
                    "200": json_response("The kinds.", "SupportedResponse"),
                    "503": not_ready.clone()
                }
            }},
            "/verify": { "post": x402_post(
                "x402 facilitator: whether a payment meets the requirements and the ledger would take it now, applying nothing.",
                "VerifyResponse"
            )},
            "/settle": { "post": x402_post(
                "x402 facilitator: the payment's receipt into the ledger through the engine, answered once durable. A payment settles once: the same payload settled again, or a copy settled at the same moment, is refused `invalid_tollgate_payload_replay` (`duplicate`, with the payload's transaction in the message). A refused settle takes nothing: a forged payment cannot spend its payer's nonce.",
                "SettleResponse"
            )},
            "/healthz": { "get": {
                "summary": "The process is up.",
                "responses": { "200": json_response("Alive.", "Status") }
            }},
            "/readyz": { "get": {
                "summary": "The server answers ledger queries.",
                "responses": {
                    "200": json_response("Ready.", "Status"),
                    "503": error_response("Starting (not_ready).")
                }
            }},
            "/metrics": { "get": {
                "summary": "Prometheus metrics.",
                "responses": { "200": {
                    "description": "Prometheus text exposition format.",
                    "content": { "text/plain": { "schema": { "type": "string" } } }
                }}
            }},
            "/openapi.json": { "get": {
                "summary": "This document.",
                "responses": { "200": {
                    "description": "OpenAPI 3.1.",
                    "content": { "application/json": { "schema": { "type": "object" } } }
                }}
            }}
        },
        "security": [
            { "bearer": [] },
            { "payerKey": [], "payerTimestamp": [], "payerSignature": [] }
        ],
        "components": { "schemas": schemas(), "securitySchemes": security_schemes() }
    });
    guard(&mut doc);
    doc
}

/// `POST /v1/grants` or `/v1/revocations`: the record raw, or in hex in a JSON object.
fn grant_post(summary: &str, field: &str, bytes: usize, internal: &Value) -> Value {
    json!({
        "summary": summary,
        "description": format!("The body is the {bytes}-byte signed record as \
            {RECEIPTS_OCTET_STREAM}, or JSON {{\"{field}\": \"<hex>\"}} (other fields, such as the \
            terms `tollgate grant` prints next to it, are ignored). No credentials: the payer's \
            signature over this deployment authorizes the record, whoever delivers it. Sending \
            the same record again changes nothing and gets the same answer."),
        "security": [],
        "requestBody": {
            "required": true,
            "content": {
                RECEIPTS_OCTET_STREAM: { "schema": { "type": "string", "format": "binary" } },
                "application/json": { "schema": {
                    "type": "object", "required": [field],
                    "properties": { field: { "type": "string", "pattern": format!("^(0x)?[0-9a-fA-F]{{{}}}$", 2 * bytes) } }
                }}
            }
        },
        "responses": {
            "200": json_response("Durable: the grant as the ledger now holds it.", "Grant"),
            "400": error_response("The body is not a record (grant_refused, reason malformed)."),
            "404": error_response("A revocation of a session key nobody granted (grant_refused, reason no_grant)."),
            "409": error_response("At odds with what the ledger holds (grant_refused: session_key_is_payer, granted_by_another_payer, already_granted, revoked, not_the_granter, payer_is_session_key, unknown_payer)."),
            "422": error_response("Fails its own checks (grant_refused: wrong_deployment, bad_signature, bad_payer_key, bad_session_key, zero_cap, bad_allowance, empty_validity)."),
            "500": internal.clone(),
            "503": error_response("Not ready yet, or the engine cannot take it now (not_ready); send it again.")
        }
    })
}

/// `POST /verify` or `/settle`: x402's request, x402's answer (docs/X402.md).
fn x402_post(summary: &str, answer: &str) -> Value {
    json!({
        "summary": summary,
        "description": "Body and answer as x402 v2 defines them, with the tollgate scheme's \
            payload and extra (docs/X402.md). No credentials: the receipt's signature authorizes \
            it, whoever delivers it. A payment that parsed is answered 200, valid or not; the \
            reason is in the body.",
        "security": [],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/FacilitatorRequest" } } }
        },
        "responses": {
            "200": json_response("Judged: valid or settled, or refused with x402's reason and Tollgate's.", answer),
            "400": json_response("The body is not a facilitator request (invalid_payload).", answer),
            "500": json_response("The facilitator's own failure (unexpected_verify_error, unexpected_settle_error).", answer),
            "503": {
                "description": "Not ready (Error, not_ready), or the engine cannot take it now (the answer, unexpected_settle_error); nothing was applied, send it again.",
                "content": { "application/json": { "schema": { "oneOf": [
                    { "$ref": "#/components/schemas/Error" },
                    { "$ref": format!("#/components/schemas/{answer}") }
                ]}}}
            }
        }
    })
}

fn security_schemes() -> Value {
    json!({
        "bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from the server's configuration (`[[api_token]]` or \
                `--api-token NAME:SCOPES:TOKEN`), with scope operator (every route) or auditor \
                (epochs, trees, archived receipts and proofs; no live balances)."
        },
        "payerKey": {
            "type": "apiKey", "in": "header", "name": HEADER_PAYER,
            "description": "The payer's ed25519 public key, 64 hex digits. A payer reads its own \
                balance and the parts of epoch data that are its channels."
        },
        "payerTimestamp": {
            "type": "apiKey", "in": "header", "name": HEADER_TIMESTAMP,
            "description": "Unix milliseconds when the request was signed; refused when further \
                from the server's clock than its receipt skew window (300 s by default)."
        },
        "payerSignature": {
            "type": "apiKey", "in": "header", "name": HEADER_SIGNATURE,
            "description": "128 hex digits: ed25519 by the payer key over \
                \"tollgate-api-v1\" ‖ chain id (u64 LE) ‖ contract (20 bytes) ‖ timestamp (u64 LE) ‖ \
                method ‖ \" \" ‖ path and query as sent."
        }
    })
}

/// Who may call each ledger route, added to its description with the 401 and 403 answers; the
/// routes without ledger data are marked open. With no token configured (open mode, loopback
/// only) the server answers everyone.
fn guard(doc: &mut Value) {
    const WHO: &[(&str, &str)] = &[
        (
            "/v1/payers/{payer}",
            "operators, and the payer itself (signed request)",
        ),
        ("/v1/payees/{payee}", "operators"),
        (
            "/v1/epochs",
            "any authenticated caller (operator, auditor, payer)",
        ),
        (
            "/v1/epochs/{epoch}",
            "any authenticated caller (operator, auditor, payer)",
        ),
        (
            "/v1/epochs/{epoch}/proof",
            "operators, auditors, and the channel's payer",
        ),
        (
            "/v1/grants",
            "operators, auditors, and a payer (its own grants)",
        ),
        (
            "/v1/grants/{session_key}",
            "operators, auditors, and the grant's payer or session key (signed request)",
        ),
    ];
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        // Only reads are guarded; the grant posts say their own (no credentials).
        let Some(get) = item.get_mut("get") else {
            continue;
        };
        match WHO.iter().find(|(guarded, _)| guarded == path) {
            Some((_, who)) => {
                let said = get["description"].as_str().unwrap_or_default().to_owned();
                get["description"] = json!(format!("{said} Who may call: {who}.").trim_start());
                get["responses"]["401"] = error_response(
                    "No bearer token or payer signature the server accepts (unauthenticated).",
                );
                get["responses"]["403"] =
                    error_response("The caller may not read this (forbidden).");
            }
            None => get["security"] = json!([]),
        }
    }
}
