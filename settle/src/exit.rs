//! Whether a payer's exit can overtake receipts the engine accepted: `serve`'s start-up check of
//! its settings against the contract's `withdrawalDelaySecs` and `challengeWindowSecs`.
//!
//! A receipt accepted just before the engine refuses a payer's spend (it does so as soon as the
//! `WithdrawalRequested` is mined and polled) must be committed before `completeWithdrawal` can
//! run, or its commit reverts with `Overdraft`. From the request being mined that takes at most:
//! the funds poll that sees it, the rest of the open epoch, the previous epoch's challenge window
//! (an epoch commits only once its predecessor is final), the commit itself (the operator's
//! `commit_latency_budget_secs`), and the blocks that make the commit final. The check refuses
//! settings where that sum reaches the delay, and an epoch interval not above the window or the
//! confirmation time, under which sealed epochs queue without bound so no delay is enough.

/// Default of `commit_latency_budget_secs`: sending a commit, fee bumps of a stuck one and a
/// chain that is briefly slow, on top of the window and the confirmations counted separately.
pub const COMMIT_LATENCY_BUDGET_SECS_DEFAULT: u64 = 30;

/// The contract's side, read at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitTerms {
    /// `challengeWindowSecs`.
    pub challenge_window_secs: u64,
    /// `withdrawalDelaySecs`.
    pub withdrawal_delay_secs: u64,
}

/// The engine's side: `serve`'s settings and the chain's block time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitTiming {
    /// `epoch_secs`, in milliseconds.
    pub epoch_interval_ms: u64,
    /// `funds_poll_ms`.
    pub funds_poll_ms: u64,
    /// `commit_latency_budget_secs`.
    pub commit_latency_budget_secs: u64,
    /// `confirmations`.
    pub confirmations: u64,
    /// Seconds per block, measured on the chain, rounded up.
    pub block_secs: u64,
}

/// Settings under which a receipt the engine accepted could be overtaken by a payer's exit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExitTimingError {
    /// Epochs commit one after another, each once the previous one is final: sealed faster than
    /// that, they queue without bound.
    #[error(
        "epoch_secs ({epoch_secs} s) must be above the contract's challengeWindowSecs \
         ({challenge_window_secs} s) and the confirmation time (confirmations {confirmations} x \
         {block_secs} s per block): epochs commit one at a time, each once the previous one is \
         final, so sealed epochs would queue without bound and an accepted receipt could miss the \
         payer exit delay"
    )]
    EpochNotAboveWindow {
        /// `epoch_secs`, rounded down.
        epoch_secs: u64,
        /// `challengeWindowSecs`.
        challenge_window_secs: u64,
        /// `confirmations`.
        confirmations: u64,
        /// Seconds per block.
        block_secs: u64,
    },
    /// The delay is not longer than the worst time from a request to the commit of a receipt
    /// accepted just before it.
    #[error(
        "the contract's withdrawalDelaySecs ({withdrawal_delay_secs} s) is not longer than the \
         time a receipt accepted before a payer's exit request may take to be committed: \
         epoch_secs {epoch_secs} s + challengeWindowSecs {challenge_window_secs} s + \
         commit_latency_budget_secs {commit_latency_budget_secs} s + confirmations \
         {confirmations} x {block_secs} s per block + funds_poll_ms {funds_poll_ms} ms = \
         {needed_ms} ms; the exit could complete first and the commit revert with Overdraft. \
         Lower these settings or deploy with a longer withdrawal delay"
    )]
    DelayTooShort {
        /// `withdrawalDelaySecs`.
        withdrawal_delay_secs: u64,
        /// `epoch_secs`, rounded down.
        epoch_secs: u64,
        /// `challengeWindowSecs`.
        challenge_window_secs: u64,
        /// `commit_latency_budget_secs`.
        commit_latency_budget_secs: u64,
        /// `confirmations`.
        confirmations: u64,
        /// Seconds per block.
        block_secs: u64,
        /// `funds_poll_ms`.
        funds_poll_ms: u64,
        /// The sum, in milliseconds (saturated).
        needed_ms: u64,
    },
}

impl ExitTiming {
    /// Refuses settings under which an accepted receipt could miss the payer exit delay.
    pub fn check(&self, terms: &ExitTerms) -> Result<(), ExitTimingError> {
        let ms = |secs: u64| secs.saturating_mul(1_000);
        let confirmation_ms = ms(self.confirmations.saturating_mul(self.block_secs));
        let window_ms = ms(terms.challenge_window_secs);
        let epoch_secs = self.epoch_interval_ms / 1_000;
        if self.epoch_interval_ms <= window_ms.max(confirmation_ms) {
            return Err(ExitTimingError::EpochNotAboveWindow {
                epoch_secs,
                challenge_window_secs: terms.challenge_window_secs,
                confirmations: self.confirmations,
                block_secs: self.block_secs,
            });
        }
        let needed_ms = [
            self.epoch_interval_ms,
            window_ms,
            ms(self.commit_latency_budget_secs),
            confirmation_ms,
            self.funds_poll_ms,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add);
        if needed_ms >= ms(terms.withdrawal_delay_secs) {
            return Err(ExitTimingError::DelayTooShort {
                withdrawal_delay_secs: terms.withdrawal_delay_secs,
                epoch_secs,
                challenge_window_secs: terms.challenge_window_secs,
                commit_latency_budget_secs: self.commit_latency_budget_secs,
                confirmations: self.confirmations,
                block_secs: self.block_secs,
                funds_poll_ms: self.funds_poll_ms,
                needed_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_must_exceed_every_term_and_the_epoch_the_window() {
        let timing = ExitTiming {
            epoch_interval_ms: 60_000,
            funds_poll_ms: 1_000,
            commit_latency_budget_secs: 30,
            confirmations: 12,
            block_secs: 2,
        };
        let terms = |window, delay| ExitTerms {
            challenge_window_secs: window,
            withdrawal_delay_secs: delay,
        };
        // 60 + 30 + 30 + 24 + 1 = 145 s.
        assert_eq!(timing.check(&terms(30, 146)), Ok(()));
        assert!(matches!(
            timing.check(&terms(30, 145)),
            Err(ExitTimingError::DelayTooShort {
                needed_ms: 145_000,
                ..
            })
        ));
        assert!(matches!(
            timing.check(&terms(60, 10_000)),
            Err(ExitTimingError::EpochNotAboveWindow { .. })
        ));
        let slow_blocks = ExitTiming {
            block_secs: 5,
            ..timing
        };
        assert!(matches!(
            slow_blocks.check(&terms(0, 10_000)),
            Err(ExitTimingError::EpochNotAboveWindow { .. })
        ));
    }
}
