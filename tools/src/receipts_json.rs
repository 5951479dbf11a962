//! Receipts as JSON lines, for shells and auditors: `tollgate receipts sign` and
//! `tollgate receipts verify`.
//!
//! One JSON object per line. Byte fields are hex (`payee` with or without `0x`); integers are
//! decimal strings on output, because u64 nonces and amounts do not survive a trip through a JSON
//! number in most tools (jq and JavaScript read them as doubles). Input accepts strings or numbers.
//!
//! ```json
//! {"payer":"<64 hex>","payee":"0x<40 hex>","amount":"1500","nonce":"7","timestamp_ms":"1764000000000","request_hash":"<64 hex>","signature":"<128 hex>"}
//! ```
//! `payer` may be left out of an unsigned line (it is the signing key's); `signature` is required
//! only by `verify`. `"session": true` marks a receipt signed by a session key (in `payer`),
//! charged to the payer whose grant names it; absent means false.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Deserializer, Serialize};
use tollgate_engine::receipt::parse_hex;
use tollgate_engine::{Address, Domain, PayerKey, Receipt, ReceiptView, UnsignedReceipt, Verdict};

/// One line of the format, as read or written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptLine {
    /// Payer public key, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Payee EVM address, 40 hex digits.
    pub payee: String,
    /// Amount in the token's smallest unit.
    #[serde(deserialize_with = "u64_text")]
    pub amount: String,
    /// Per-channel nonce.
    #[serde(deserialize_with = "u64_text")]
    pub nonce: String,
    /// Unix milliseconds.
    #[serde(deserialize_with = "u64_text")]
    pub timestamp_ms: String,
    /// Request hash, 64 hex digits.
    pub request_hash: String,
    /// `R ‖ S`, 128 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The key in `payer` is a session key (the receipt's flag bit, signed like the rest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
}

/// Accepts `7` or `"7"`, keeps the decimal text; range is checked on conversion.
fn u64_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    Ok(match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(n) => n.to_string(),
        NumberOrText::Text(text) => text,
    })
}

fn parse_u64(field: &str, text: &str) -> anyhow::Result<u64> {
    text.parse()
        .with_context(|| format!("{field}: {text:?} is not an unsigned 64-bit integer"))
}

impl ReceiptLine {
    /// The line for a signed receipt.
    pub fn from_receipt(receipt: &Receipt) -> Self {
        Self {
            payer: Some(receipt.payer.to_string()),
            payee: receipt.payee.to_string(),
            amount: receipt.amount.to_string(),
            nonce: receipt.nonce.to_string(),
            timestamp_ms: receipt.timestamp_ms.to_string(),
            request_hash: hex::encode(receipt.request_hash),
            signature: Some(hex::encode(receipt.signature)),
            session: receipt.session,
        }
    }

    /// The unsigned fields; `payer_default` fills a missing payer.
    pub fn to_unsigned(&self, payer_default: Option<PayerKey>) -> anyhow::Result<UnsignedReceipt> {
        let payer = match (&self.payer, payer_default) {
            (Some(text), _) => text.parse::<PayerKey>().context("payer")?,
            (None, Some(payer)) => payer,
            (None, None) => bail!("payer is missing"),
        };
        Ok(UnsignedReceipt {
            payer,
            payee: self.payee.parse::<Address>().context("payee")?,
            amount: parse_u64("amount", &self.amount)?,
            nonce: parse_u64("nonce", &self.nonce)?,
            timestamp_ms: parse_u64("timestamp_ms", &self.timestamp_ms)?,
            request_hash: parse_hex::<32>(&self.request_hash).context("request_hash")?,
            session: self.session,
        })
    }

    /// The signed receipt this line describes.
    pub fn to_receipt(&self) -> anyhow::Result<Receipt> {
        let unsigned = self.to_unsigned(None)?;
        let signature = self.signature.as_deref().context("signature is missing")?;
        Ok(unsigned.with_signature(parse_hex::<64>(signature).context("signature")?))
    }
}

/// What a stream command saw: lines handled, lines refused or malformed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Lines read (blank lines are skipped and not counted).
    pub lines: u64,
    /// Lines that were malformed, or (for verify) whose receipt was rejected.
    pub failed: u64,
}

/// Runs `handle` on every non-blank line of `input` with its line number; a line it answers
/// `false` for counts as failed, an error stops the stream.
pub(crate) fn each_line(
    input: impl BufRead,
    mut handle: impl FnMut(u64, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<StreamSummary> {
    let mut summary = StreamSummary::default();
    for (index, line) in input.lines().enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let line_number = index as u64 + 1;
        if !handle(line_number, &line)? {
            summary.failed += 1;
        }
    }
    Ok(summary)
}

/// Signs every unsigned line of `input` with `key` under `domain`, writing signed lines to
/// `output`. A malformed line is reported on `errors` with its line number and skipped.
pub fn sign_stream(
    key: &SigningKey,
    domain: &Domain,
    input: impl BufRead,
    mut output: impl Write,
    mut errors: impl Write,
) -> anyhow::Result<StreamSummary> {
    let own_payer = PayerKey(key.verifying_key().to_bytes());
    let summary = each_line(input, |line_number, line| {
        let signed = serde_json::from_str::<ReceiptLine>(line)
            .map_err(anyhow::Error::from)
            .and_then(|parsed| parsed.to_unsigned(Some(own_payer)))
            .and_then(|unsigned| {
                if unsigned.payer != own_payer {
                    bail!(
                        "payer {} is not the signing key's ({own_payer})",
                        unsigned.payer
                    );
                }
                Ok(unsigned.sign(key, domain))
            });
        match signed {
            Ok(receipt) => {
                serde_json::to_writer(&mut output, &ReceiptLine::from_receipt(&receipt))?;
                writeln!(output)?;
                Ok(true)
            }
            Err(error) => {
                writeln!(errors, "line {line_number}: {error:#}")?;
                Ok(false)
            }
        }
    })?;
    output.flush()?;
    Ok(summary)
}

/// How `verify_stream` prints each verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictFormat {
    /// `line 3: rejected bad_signature (code 2)`
    Text,
    /// `{"line":3,"verdict":"rejected","reason":"bad_signature","code":2}`
    Json,
}

/// Prints one verdict per signed line of `input`, judged by `verify` (the engine's single-receipt
/// rule). A malformed line gets the verdict `invalid` with its error and does not stop the rest.
pub fn verify_stream(
    verify: impl Fn(&ReceiptView<'_>) -> Verdict,
    input: impl BufRead,
    mut output: impl Write,
    format: VerdictFormat,
) -> anyhow::Result<StreamSummary> {
    let summary = each_line(input, |line_number, line| {
        let verdict = serde_json::from_str::<ReceiptLine>(line)
            .map_err(anyhow::Error::from)
            .and_then(|parsed| parsed.to_receipt())
            .map(|receipt| {
                let bytes = receipt.to_bytes();
                ReceiptView::parse(&bytes).map_or(Err(tollgate_engine::Reason::Malformed), |view| {
                    verify(&view)
                })
            });
        let json = match &verdict {
            Ok(Ok(())) => serde_json::json!({"line": line_number, "verdict": "accepted"}),
            Ok(Err(reason)) => serde_json::json!({
                "line": line_number, "verdict": "rejected",
                "reason": reason.name(), "code": reason.code(),
            }),
            Err(error) => serde_json::json!({
                "line": line_number, "verdict": "invalid", "error": format!("{error:#}"),
            }),
        };
        match format {
            VerdictFormat::Json => writeln!(output, "{json}")?,
            VerdictFormat::Text => match &verdict {
                Ok(Ok(())) => writeln!(output, "line {line_number}: accepted")?,
                Ok(Err(reason)) => writeln!(
                    output,
                    "line {line_number}: rejected {reason} (code {})",
                    reason.code()
                )?,
                Err(error) => writeln!(output, "line {line_number}: invalid: {error:#}")?,
            },
        }
        Ok(matches!(verdict, Ok(Ok(()))))
    })?;
    output.flush()?;
    Ok(summary)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::Verifier;
    use tollgate_engine::Reason;

    /// The deployment the unit tests of the JSON forms sign for.
    pub(crate) fn domain() -> Domain {
        Domain {
            chain_id: 31_337,
            contract: Address([0x44; 20]),
        }
    }

    // Plain RFC 8032 verification: enough to test the plumbing. The CLI passes the engine's rule.
    fn check(view: &ReceiptView<'_>) -> Verdict {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&view.payer().0)
            .map_err(|_| Reason::BadPayerKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&view.signature());
        key.verify(&view.signing_bytes(&domain()), &signature)
            .map_err(|_| Reason::BadSignature)
    }

    const UNSIGNED: &str = r#"{"payee":"0x1111111111111111111111111111111111111111","amount":1500,"nonce":"7","timestamp_ms":1764000000000,"request_hash":"2222222222222222222222222222222222222222222222222222222222222222"}"#;

    #[test]
    fn signed_lines_verify_and_a_tampered_line_is_flagged() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let input = format!("{UNSIGNED}\nnot json\n\n{UNSIGNED}\n");
        let (mut signed, mut errors) = (Vec::new(), Vec::new());
        let summary =
            sign_stream(&key, &domain(), input.as_bytes(), &mut signed, &mut errors).expect("io");
        assert_eq!(
            summary,
            StreamSummary {
                lines: 3,
                failed: 1
            }
        );
        assert!(String::from_utf8_lossy(&errors).starts_with("line 2: "));

        let signed = String::from_utf8(signed).expect("utf-8");
        let tampered = signed
            .lines()
            .nth(1)
            .expect("second line")
            .replace("\"1500\"", "\"1501\"");
        let stream = format!(
            "{}\n{tampered}\n{{\"payee\":1}}\n",
            signed.lines().next().expect("line")
        );
        let mut verdicts = Vec::new();
        let summary = verify_stream(check, stream.as_bytes(), &mut verdicts, VerdictFormat::Json)
            .expect("io");
        assert_eq!(
            summary,
            StreamSummary {
                lines: 3,
                failed: 2
            }
        );
        let verdicts: Vec<serde_json::Value> = String::from_utf8(verdicts)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("json verdict"))
            .collect();
        assert_eq!(verdicts[0]["verdict"], "accepted");
        assert_eq!(verdicts[1]["reason"], "bad_signature");
        assert_eq!(verdicts[1]["code"], 2);
        assert_eq!(verdicts[2]["verdict"], "invalid");
        assert_eq!(verdicts[2]["line"], 3);
    }

    #[test]
    fn signing_for_another_payer_is_refused() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let other = PayerKey([9u8; 32]);
        let line = UNSIGNED.replacen('{', &format!("{{\"payer\":\"{other}\","), 1);
        let (mut signed, mut errors) = (Vec::new(), Vec::new());
        let summary =
            sign_stream(&key, &domain(), line.as_bytes(), &mut signed, &mut errors).expect("io");
        assert_eq!(summary.failed, 1);
        assert!(signed.is_empty());
    }
}
