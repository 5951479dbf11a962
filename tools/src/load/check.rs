//! `--check URL` and `--deposit api`: payers' balances from the HTTP API (`GET /v1/payers/{hex}`),
//! and the comparison of what the server counted with what the acks said.
//!
//! The comparison is on deltas: a baseline is read before the run, so a server that already holds
//! earlier runs (or settled epochs) is checked just as well. Total accepted spend is
//! `pending + settled`, which settling an epoch does not change.

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use thiserror::Error;
use tollgate_engine::PayerKey;

use super::stats::PayerTally;

/// Balance requests in flight at once: enough to hide a loopback round trip, few enough not to
/// compete with the engine.
const REQUESTS_IN_FLIGHT_MAX: usize = 16;

/// The balance API could not be read.
#[derive(Debug, Error)]
pub enum CheckError {
    /// The request failed (connection refused, timeout, ...).
    #[error("GET {url}: {source}")]
    Request {
        /// the URL asked
        url: String,
        /// what went wrong
        source: reqwest::Error,
    },
    /// The server answered with an unexpected status.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// the URL asked
        url: String,
        /// the status returned
        status: u16,
        /// the start of the body, for the error message the API put there
        body: String,
    },
    /// The body is not the payer JSON of issue 7.
    #[error("GET {url}: unexpected body: {reason}")]
    Body {
        /// the URL asked
        url: String,
        /// what did not parse
        reason: String,
    },
}

/// One payer's balance as the server reports it (amounts in the token's smallest unit).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Deserialize)]
pub struct PayerBalance {
    /// Deposited onchain.
    #[serde(deserialize_with = "decimal")]
    pub deposited: u128,
    /// Settled in committed epochs.
    #[serde(deserialize_with = "decimal")]
    pub settled: u128,
    /// Accepted, not yet settled.
    #[serde(deserialize_with = "decimal")]
    pub pending: u128,
    /// deposited − settled − pending.
    #[serde(deserialize_with = "decimal")]
    pub available: u128,
    /// Receipts accepted, when the API reports it (only compared then).
    #[serde(default, deserialize_with = "optional_decimal")]
    pub receipts: Option<u128>,
}

impl PayerBalance {
    /// Everything accepted for this payer, settled or not.
    pub fn spent(&self) -> Option<u128> {
        self.pending.checked_add(self.settled)
    }
}

/// Amounts are decimal strings (a u128 does not fit a JSON number); counts may be plain numbers.
fn decimal<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(u64),
    }
    match Either::deserialize(deserializer)? {
        Either::Number(n) => Ok(u128::from(n)),
        Either::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

fn optional_decimal<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u128>, D::Error> {
    decimal(deserializer).map(Some)
}

/// Reads the balance of every payer, in order. A payer the server has never heard of (404) has a
/// zero balance.
pub async fn fetch_balances(
    base_url: &str,
    payers: &[PayerKey],
) -> Result<Vec<PayerBalance>, CheckError> {
    let http = reqwest::Client::new();
    let base = base_url.trim_end_matches('/');
    futures::stream::iter(payers.iter().map(|payer| {
        let http = http.clone();
        let url = format!("{base}/v1/payers/{payer}");
        async move { fetch_one(&http, url).await }
    }))
    .buffered(REQUESTS_IN_FLIGHT_MAX)
    .try_collect()
    .await
}

async fn fetch_one(http: &reqwest::Client, url: String) -> Result<PayerBalance, CheckError> {
    let response = match http.get(&url).send().await {
        Ok(response) => response,
        Err(source) => return Err(CheckError::Request { url, source }),
    };
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(PayerBalance::default());
    }
    let body = match response.text().await {
        Ok(body) => body,
        Err(source) => return Err(CheckError::Request { url, source }),
    };
    if !status.is_success() {
        return Err(CheckError::Status {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    serde_json::from_str(&body).map_err(|e| CheckError::Body {
        url,
        reason: e.to_string(),
    })
}

/// A payer whose server-side totals moved differently from what the acks said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The payer.
    pub payer: PayerKey,
    /// What the field is.
    pub field: &'static str,
    /// Lowest acceptable change: what was acked as accepted.
    pub expected_min: u128,
    /// Highest acceptable change: plus what was in failed batches and should have been accepted.
    pub expected_max: u128,
    /// The change the server shows, or `None` when it went down.
    pub got: Option<u128>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let got = self
            .got
            .map_or_else(|| "a decrease".to_owned(), |g| g.to_string());
        if self.expected_min == self.expected_max {
            write!(
                f,
                "payer {}: {} grew by {}, expected {}",
                self.payer, self.field, got, self.expected_min
            )
        } else {
            write!(
                f,
                "payer {}: {} grew by {}, expected {}..={}",
                self.payer, self.field, got, self.expected_min, self.expected_max
            )
        }
    }
}

/// Compares the change in each payer's accepted spend and receipt count between `before` and
/// `after` with the tallies from the acks. All three are indexed like `payers`.
pub fn compare(
    payers: &[PayerKey],
    before: &[PayerBalance],
    after: &[PayerBalance],
    tally: impl Fn(u32) -> PayerTally,
) -> Vec<Difference> {
    let mut differences = Vec::new();
    for (index, (payer, (before, after))) in payers.iter().zip(before.iter().zip(after)).enumerate()
    {
        let tally = tally(index as u32);
        let spend = before
            .spent()
            .zip(after.spent())
            .and_then(|(b, a)| a.checked_sub(b));
        let receipts = match (before.receipts, after.receipts) {
            (Some(b), Some(a)) => Some(a.checked_sub(b)),
            // A 404 before the run (payer unseen) counts as zero receipts.
            (None, Some(a)) if before == &PayerBalance::default() => Some(Some(a)),
            _ => None,
        };
        let mut fields = vec![(
            "pending + settled",
            spend,
            tally.accepted_amount,
            tally.unknown_amount,
        )];
        if let Some(receipts) = receipts {
            fields.push((
                "receipts",
                receipts,
                u128::from(tally.accepted_receipts),
                u128::from(tally.unknown_receipts),
            ));
        }
        for (field, got, min, unknown) in fields {
            let max = min.saturating_add(unknown);
            if got.is_none_or(|g| g < min || g > max) {
                differences.push(Difference {
                    payer: *payer,
                    field,
                    expected_min: min,
                    expected_max: max,
                    got,
                });
            }
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(pending: u128, settled: u128, receipts: u128) -> PayerBalance {
        PayerBalance {
            deposited: 1_000,
            settled,
            pending,
            available: 1_000 - settled - pending,
            receipts: Some(receipts),
        }
    }

    #[test]
    fn payer_json_of_the_api_parses() {
        let body = r#"{"payer":"ab","deposited":"340282366920938463463374607431768211455",
            "settled":"5","pending":"7","available":"0","receipts":3,"channels":1}"#;
        let parsed: PayerBalance = serde_json::from_str(body).expect("API body");
        assert_eq!(parsed.deposited, u128::MAX);
        assert_eq!(parsed.spent(), Some(12));
        assert_eq!(parsed.receipts, Some(3));
        let without_count: PayerBalance = serde_json::from_str(
            r#"{"deposited":"1","settled":"0","pending":"0","available":"1"}"#,
        )
        .expect("receipts is optional");
        assert_eq!(without_count.receipts, None);
        assert!(serde_json::from_str::<PayerBalance>(r#"{"deposited":"x"}"#).is_err());
    }

    #[test]
    fn deltas_are_compared_with_acks_and_failed_batches_widen_the_range() {
        let payers = [PayerKey([1; 32]), PayerKey([2; 32]), PayerKey([3; 32])];
        let before = [balance(0, 0, 0), balance(100, 0, 10), balance(0, 0, 0)];
        // payer 0 exact; payer 1 settled an epoch meanwhile (pending moved to settled) and got one
        // receipt of a failed batch applied; payer 2 was charged twice.
        let after = [balance(30, 0, 3), balance(20, 100, 12), balance(20, 0, 2)];
        let tallies = [
            PayerTally {
                accepted_amount: 30,
                accepted_receipts: 3,
                ..Default::default()
            },
            PayerTally {
                accepted_amount: 10,
                accepted_receipts: 1,
                unknown_amount: 30,
                unknown_receipts: 3,
            },
            PayerTally {
                accepted_amount: 10,
                accepted_receipts: 1,
                ..Default::default()
            },
        ];
        let differences = compare(&payers, &before, &after, |i| tallies[i as usize]);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences.iter().all(|d| d.payer == payers[2]));
        assert_eq!(
            differences[0].to_string(),
            format!(
                "payer {}: pending + settled grew by 20, expected 10",
                payers[2]
            )
        );
    }
}
