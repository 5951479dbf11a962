//! The JSON bodies of the HTTP API, shared by the server and every client (the CLI, the load
//! generator's `--check`, the demo) so they can never drift apart. Amounts are `u128` in the token's smallest unit and travel as decimal strings: a
//! JSON number loses precision past 2^53. Keys and hashes are lower-case hex, addresses and
//! hashes with `0x`, payer keys without (as `PayerKey` displays them).

use alloy::primitives::B256;
use serde::{Deserialize, Serialize};
use tollgate_settle::merkle::{Leaf, leaf_hash};

/// Epochs `GET /v1/epochs` lists when no `limit` is given.
pub const EPOCHS_LIMIT_DEFAULT: usize = 20;
/// Largest `limit` `GET /v1/epochs` accepts.
pub const EPOCHS_LIMIT_MAX: usize = 1000;

/// Archived receipts one `GET /v1/epochs/{n}/receipts` answers unless `limit` says otherwise.
pub const RECEIPTS_PAGE_DEFAULT: usize = 10_000;
/// The most `limit` may ask for: 17.6 MB of raw records.
pub const RECEIPTS_PAGE_MAX: usize = 100_000;
/// Response header of a receipts page that is not the epoch's last: the `after` that resumes it.
pub const HEADER_NEXT_AFTER: &str = "x-tollgate-next-after";
/// Content type of a receipts page as raw 176-byte records.
pub const RECEIPTS_OCTET_STREAM: &str = "application/octet-stream";
/// Content type of a receipts page as JSON lines.
pub const RECEIPTS_JSON_LINES: &str = "application/x-ndjson";

/// Serde for `u128` as a decimal string.
pub mod decimal {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// `u128` → `"123"`.
    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// `"123"` → `u128`; anything else (a JSON number, a sign, a fraction) is refused.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(D::Error::custom(format!("not a decimal amount: {text:?}")));
        }
        text.parse().map_err(D::Error::custom)
    }

    /// The same for `Option<u128>` (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// `Some(n)` → `"n"`, `None` → `null`.
        pub fn serialize<S: Serializer>(
            value: &Option<u128>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => serializer.collect_str(value),
                None => serializer.serialize_none(),
            }
        }

        /// `"n"` → `Some(n)`, `null` → `None`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u128>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] u128);
            Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(value)| value))
        }
    }
}

/// `GET /v1/payers/{payer}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayerView {
    /// The payer's ed25519 public key, 64 hex digits.
    pub payer: String,
    /// Sum of deposits seen onchain.
    #[serde(with = "decimal")]
    pub deposited: u128,
    /// Withdrawals requested onchain and not yet completed.
    #[serde(with = "decimal")]
    pub withdrawal_requested: u128,
    /// Completed withdrawals.
    #[serde(with = "decimal")]
    pub withdrawn: u128,
    /// Debited by committed epochs.
    #[serde(with = "decimal")]
    pub settled: u128,
    /// Accepted receipts not yet settled.
    #[serde(with = "decimal")]
    pub pending: u128,
    /// What the payer may still spend.
    #[serde(with = "decimal")]
    pub available: u128,
    /// Debited in committed epochs beyond what the chain still held (the payer's exit overtook
    /// the debits): committed without it and written off, never settled.
    #[serde(with = "decimal")]
    pub shortfall: u128,
    /// Accepted receipts over all the payer's channels.
    pub receipts: u64,
    /// Number of channels (payees) the payer has paid.
    pub channel_count: u64,
    /// The first channels in payee order, at most [`CHANNELS_LISTED_MAX`].
    pub channels: Vec<ChannelView>,
}

/// Channels listed in a payer's answer; `channel_count` says how many there are in all.
pub const CHANNELS_LISTED_MAX: usize = 100;

/// One (payer, payee) channel's totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    /// Who is paid, `0x` + 40 hex digits.
    pub payee: String,
    /// Total of every accepted receipt on the channel (the amount its Merkle leaf commits).
    #[serde(with = "decimal")]
    pub cumulative: u128,
    /// Accepted receipts.
    pub receipts: u64,
    /// Latest timestamp among accepted receipts, ms since the Unix epoch.
    pub last_timestamp_ms: u64,
    /// Highest accepted nonce, a decimal string (nonces are any u64).
    #[serde(with = "decimal::option")]
    pub highest_nonce: Option<u128>,
}

/// Where the withdrawable figure of a payee came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawableSource {
    /// Read from the settlement contract, at most the server's withdrawable TTL ago (5 s by
    /// default).
    Chain,
    /// This server has no chain view configured: `withdrawable` is null.
    NotConfigured,
    /// The chain could not be read: `withdrawable` is null, the ledger figures still hold.
    ChainError,
}

/// `GET /v1/payees/{address}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayeeView {
    /// The payee, `0x` + 40 hex digits.
    pub payee: String,
    /// Sum of accepted receipts paying this payee.
    #[serde(with = "decimal")]
    pub credited: u128,
    /// Credited by committed epochs.
    #[serde(with = "decimal")]
    pub settled: u128,
    /// Credited, not yet settled (nor written off as `shortfall`).
    #[serde(with = "decimal")]
    pub pending: u128,
    /// Credited, but cut from committed epochs because the paying payer's exit overtook its
    /// debit: never settled.
    #[serde(with = "decimal")]
    pub shortfall: u128,
    /// What the contract lets the payee withdraw now; null unless `withdrawable_source` is `chain`.
    #[serde(with = "decimal::option")]
    pub withdrawable: Option<u128>,
    /// Where `withdrawable` came from.
    pub withdrawable_source: WithdrawableSource,
}

/// Where settlement has got to with an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochStatusView {
    /// Still taking receipts.
    Open,
    /// Frozen, not yet sent.
    Sealed,
    /// Part of the commit landed onchain; not complete and final yet.
    Submitted,
    /// Commit onchain: proofs verify against its root.
    Committed,
    /// Voided by the arbiter; its amounts were carried into the open epoch.
    Disputed,
}

impl EpochStatusView {
    /// The lower-case word used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Sealed => "sealed",
            Self::Submitted => "submitted",
            Self::Committed => "committed",
            Self::Disputed => "disputed",
        }
    }
}

/// One epoch, in `GET /v1/epochs` and `GET /v1/epochs/{n}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochView {
    /// Epoch number (the first is 1).
    pub epoch: u64,
    /// Where settlement has got to.
    pub status: EpochStatusView,
    /// Merkle root, once settle has computed it.
    pub root: Option<String>,
    /// Transaction hash of the commit's last part (the highest-numbered one recorded), once a
    /// part landed.
    pub tx_hash: Option<String>,
    /// Block of that transaction.
    pub block: Option<u64>,
    /// Receipts accepted into the epoch.
    pub receipts: u64,
    /// Merkle leaves (channels that moved); null while open.
    pub leaves: Option<u64>,
    /// Total debited from payers (equal to `credit_total`).
    #[serde(with = "decimal")]
    pub debit_total: u128,
    /// Total credited to payees.
    #[serde(with = "decimal")]
    pub credit_total: u128,
    /// Payers debited, as the seal counted them; null while open and for epochs sealed before
    /// the ledger kept counts.
    pub debit_count: Option<u64>,
    /// Payees credited; null as `debit_count`.
    pub credit_count: Option<u64>,
    /// Of `debit_total`, what went onchain uncovered and was cut (debits and credits alike)
    /// because a payer's exit overtook its debit; 0 in nearly every epoch.
    #[serde(with = "decimal")]
    pub shortfall: u128,
    /// Every part of the commit recorded as landed onchain, by part number. Absent from servers
    /// that predate it, hence the default.
    #[serde(default)]
    pub parts: Vec<PartView>,
    /// For a disputed epoch, the epoch its amounts and leaves were carried into (to be
    /// committed again there); null otherwise. An auditor recomputing that epoch adds these.
    #[serde(default)]
    pub carried_into: Option<u64>,
}

/// One landed part of an epoch's commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartView {
    /// Part number (the first is 0).
    pub part: u16,
    /// Hash of the transaction that carried it.
    pub tx_hash: String,
    /// Block it landed in.
    pub block: u64,
}

/// `GET /v1/epochs`: newest first, the open epoch included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochList {
    /// The epochs.
    pub epochs: Vec<EpochView>,
}

/// `GET /v1/epochs/{n}/proof`: what `Settlement.verifyLeaf(epoch, payer, payee, cumulative,
/// proof)` takes, and the hashes to check it by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofView {
    /// The committed epoch.
    pub epoch: u64,
    /// The payer key (`bytes32`), 64 hex digits.
    pub payer: String,
    /// The payee address.
    pub payee: String,
    /// The channel's cumulative amount frozen in the epoch (`uint256`).
    #[serde(with = "decimal")]
    pub cumulative: u128,
    /// The leaf hash, `keccak256(keccak256(abi.encode(epoch, payer, payee, cumulative)))`.
    pub leaf: String,
    /// The epoch's root as committed.
    pub root: String,
    /// Sibling hashes bottom-up (`bytes32[]`).
    pub proof: Vec<String>,
}

/// A proof answer whose fields do not parse (a server bug, or not a Tollgate server).
#[derive(Debug, thiserror::Error)]
#[error("malformed proof answer: {0}")]
pub struct ProofDecodeError(String);

impl ProofView {
    /// The leaf and the proof as settle takes them, e.g. for
    /// `tollgate_settle::ContractReader::verify_leaf(view.epoch, &leaf, &proof)`.
    pub fn decode(&self) -> Result<(Leaf, Vec<B256>), ProofDecodeError> {
        let hash = |text: &str| {
            text.parse::<B256>()
                .map_err(|e| ProofDecodeError(format!("hash {text:?}: {e}")))
        };
        let leaf = Leaf {
            payer: self
                .payer
                .parse()
                .map_err(|e| ProofDecodeError(format!("payer {:?}: {e}", self.payer)))?,
            payee: self
                .payee
                .parse()
                .map_err(|e| ProofDecodeError(format!("payee {:?}: {e}", self.payee)))?,
            cumulative: self.cumulative,
        };
        if hash(&self.leaf)? != leaf_hash(self.epoch, &leaf) {
            return Err(ProofDecodeError(format!(
                "leaf {} is not the hash of the leaf's fields",
                self.leaf
            )));
        }
        let proof = self
            .proof
            .iter()
            .map(|text| hash(text))
            .collect::<Result<_, _>>()?;
        Ok((leaf, proof))
    }
}

/// Every error: a stable machine code and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code, e.g. `unknown_payer` (the OpenAPI document lists them).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// For `grant_refused`: the stable name of the grant error (`bad_signature`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `grant_refused`: its stable wire code (docs/PROTOCOL.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    /// `ok`, `ready`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_travel_as_decimal_strings_and_only_as_such() {
        let channel = ChannelView {
            payee: "0x01".into(),
            cumulative: u128::MAX,
            receipts: 3,
            last_timestamp_ms: 9,
            highest_nonce: None,
        };
        let json = serde_json::to_value(&channel).expect("serializes");
        assert_eq!(json["cumulative"], u128::MAX.to_string());
        assert!(json["highest_nonce"].is_null());
        assert_eq!(
            serde_json::from_value::<ChannelView>(json.clone()).ok(),
            Some(channel)
        );

        for bad in [
            serde_json::json!(5),
            serde_json::json!("-5"),
            serde_json::json!("1.5"),
            serde_json::json!(""),
            serde_json::json!("340282366920938463463374607431768211456"),
        ] {
            let mut json = json.clone();
            json["cumulative"] = bad.clone();
            assert!(
                serde_json::from_value::<ChannelView>(json).is_err(),
                "{bad} accepted as an amount"
            );
        }
    }

    #[test]
    fn a_proof_decodes_only_when_its_leaf_hash_matches_its_fields() {
        let leaf = Leaf {
            payer: tollgate_engine::PayerKey([3; 32]),
            payee: tollgate_engine::Address([4; 20]),
            cumulative: 77,
        };
        let hex = |hash: B256| format!("0x{}", hex::encode(hash));
        let mut view = ProofView {
            epoch: 5,
            payer: leaf.payer.to_string(),
            payee: leaf.payee.to_string(),
            cumulative: leaf.cumulative,
            leaf: hex(leaf_hash(5, &leaf)),
            root: hex(B256::ZERO),
            proof: vec![hex(B256::repeat_byte(9))],
        };
        let (decoded, proof) = view.decode().expect("decodes");
        assert_eq!((decoded, proof), (leaf, vec![B256::repeat_byte(9)]));
        view.cumulative += 1;
        assert!(view.decode().is_err(), "leaf hash no longer matches");
        view.cumulative -= 1;
        view.proof.push("0x12".into());
        assert!(view.decode().is_err(), "short hash");
    }
}
