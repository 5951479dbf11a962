//! What payees may withdraw, as the contract said recently: `GET /v1/payees/{payee}` reuses a
//! contract read for [`WITHDRAWABLE_TTL_DEFAULT`] instead of making an `eth_call` per request.
//! The figure changes only with the chain (a commit, its challenge window passing, a
//! withdrawal), so an answer at most that old is what a client polling the chain would see.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tollgate_engine::Address;

/// How long a contract read of a payee's withdrawable amount is reused by default: about one
/// block on most chains.
pub const WITHDRAWABLE_TTL_DEFAULT: Duration = Duration::from_secs(5);

/// Payees whose figure is kept: a bound on memory whatever addresses clients ask about.
const PAYEES_CACHED_MAX: usize = 10_000;

/// Recent contract reads by payee, each with when it was read. Only successful reads go in: a
/// failed read is retried by the next request.
#[derive(Debug)]
pub(super) struct WithdrawableCache {
    ttl: Duration,
    read: Mutex<HashMap<Address, (u128, Instant)>>,
}

impl WithdrawableCache {
    /// Reads are reused for `ttl`; zero reuses nothing.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            read: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Address, (u128, Instant)>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `payee`'s figure if it was read less than the TTL ago.
    pub(super) fn get(&self, payee: &Address) -> Option<u128> {
        self.lock()
            .get(payee)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(amount, _)| *amount)
    }

    /// Keeps `amount` as read just now; when full, drops the expired figures first, and all of
    /// them if none has expired.
    pub(super) fn insert(&self, payee: Address, amount: u128) {
        if self.ttl.is_zero() {
            return;
        }
        let mut read = self.lock();
        if read.len() >= PAYEES_CACHED_MAX && !read.contains_key(&payee) {
            read.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if read.len() >= PAYEES_CACHED_MAX {
                read.clear();
            }
        }
        read.insert(payee, (amount, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_reused_within_its_ttl_and_a_zero_ttl_keeps_nothing() {
        let cache = WithdrawableCache::new(Duration::from_secs(3_600));
        assert_eq!(cache.get(&Address([1; 20])), None);
        cache.insert(Address([1; 20]), 7);
        assert_eq!(cache.get(&Address([1; 20])), Some(7));
        assert_eq!(cache.get(&Address([2; 20])), None);
        for seed in 0..PAYEES_CACHED_MAX as u32 {
            let mut payee = [0; 20];
            payee[..4].copy_from_slice(&seed.to_le_bytes());
            payee[19] = 9;
            cache.insert(Address(payee), 1);
        }
        assert!(cache.lock().len() <= PAYEES_CACHED_MAX, "bounded");

        let off = WithdrawableCache::new(Duration::ZERO);
        off.insert(Address([1; 20]), 7);
        assert_eq!(off.get(&Address([1; 20])), None);
    }
}
