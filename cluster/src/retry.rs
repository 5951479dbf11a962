//! How long to wait before the next try after a streak of NATS failures: doubling from a short
//! first pause, so a blip costs little and an outage is not hammered (nor logged) in a loop.

use std::time::Duration;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The pause after the `failures`-th failure in a row (1 for the first).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_PAUSE
        .saturating_mul(1u32 << doublings)
        .min(LONGEST_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest() {
        let pauses: Vec<Duration> = [1, 2, 3, 6, 7, 1_000, u32::MAX].map(backoff).to_vec();
        assert_eq!(
            pauses,
            [100, 200, 400, 3_200, 5_000, 5_000, 5_000].map(Duration::from_millis)
        );
    }
}
