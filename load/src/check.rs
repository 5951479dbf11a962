//! `--check URL` and `--deposit api`: payers' balances from the HTTP API (`GET /v1/payers/{hex}`),
//! and the comparison of what the server counted with what the acks said.
//!
//! The comparison is on deltas: a baseline is read before the run, so a server that already holds
//! earlier runs (or settled epochs) is checked just as well. Total accepted spend is
//! `pending + settled`, which settling an epoch does not change.

use tollgate_engine::PayerKey;
use tollgate_query::model::PayerView;
use tollgate_query::{QueryClient, QueryError};

use super::stats::PayerTally;

/// One payer's balance as the server reports it (amounts in the token's smallest unit): the
/// figures of [`PayerView`] the comparison needs.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PayerBalance {
    /// Deposited onchain.
    pub deposited: u128,
    /// Settled in committed epochs.
    pub settled: u128,
    /// Accepted, not yet settled.
    pub pending: u128,
    /// deposited − settled − pending.
    pub available: u128,
    /// Receipts accepted; `None` for a payer the server has never heard of (only compared
    /// when known).
    pub receipts: Option<u128>,
}

impl PayerBalance {
    /// Everything accepted for this payer, settled or not.
    pub fn spent(&self) -> Option<u128> {
        self.pending.checked_add(self.settled)
    }
}

impl From<&PayerView> for PayerBalance {
    fn from(view: &PayerView) -> Self {
        Self {
            deposited: view.deposited,
            settled: view.settled,
            pending: view.pending,
            available: view.available,
            receipts: Some(u128::from(view.receipts)),
        }
    }
}

/// Reads the balance of every payer, in order, from the query API at `base_url`. A payer the
/// server has never heard of (404) has a zero balance.
pub async fn fetch_balances(
    base_url: &str,
    payers: &[PayerKey],
) -> Result<Vec<PayerBalance>, QueryError> {
    let views = QueryClient::new(base_url)?.payers(payers).await?;
    Ok(views
        .iter()
        .map(|view| view.as_ref().map(PayerBalance::from).unwrap_or_default())
        .collect())
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
            "withdrawal_requested":"0","withdrawn":"0","settled":"5","pending":"7",
            "available":"0","shortfall":"0","receipts":3,"channel_count":1,"channels":[]}"#;
        let view: PayerView = serde_json::from_str(body).expect("API body");
        let parsed = PayerBalance::from(&view);
        assert_eq!(parsed.deposited, u128::MAX);
        assert_eq!(parsed.spent(), Some(12));
        assert_eq!(parsed.receipts, Some(3));
        // A payer the server never heard of counts as zero, with no receipt count to compare.
        assert_eq!(PayerBalance::default().receipts, None);
        assert!(serde_json::from_str::<PayerView>(&body.replace(r#""5""#, r#""x""#)).is_err());
        // The exact decimal of the shared model: a JSON number is not an amount.
        assert!(serde_json::from_str::<PayerView>(&body.replace(r#""5""#, "5")).is_err());
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
