//! A bounded, sharded cache of checked payer keys, and a bounded set of refused ones.
//!
//! Hot payers sign most receipts (Zipf-like traffic), so a decompressed key is worth keeping: a
//! decompression is a field square root, and the torsion check a full scalar multiplication.
//! Each shard keeps two generations: lookups hit the young one, or promote from the old one;
//! when the young one fills up it becomes the old one and the previous old one is dropped. Keys
//! in use survive, keys not seen for a generation go, and memory never exceeds the capacity.
//! A working set of up to half the capacity is always kept; a larger one cycled through in order
//! (every payer once per round) can miss on every lookup, so size the capacity at twice the
//! payers expected.
//! Refused keys live in their own bounded generations: refusing a key is a pure function of its
//! bytes, so a key refused once is refused for good whether or not it is still remembered; the set
//! only spares the work, and an attacker spraying fresh bad keys cannot grow it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;

use super::rule::{CheckedKey, check_key};
use crate::verdict::Reason;

/// Shards spread lock traffic from the pool's threads; a power of two so a mask picks one.
const SHARDS: usize = 16;

#[derive(Debug)]
struct Generations<V> {
    young: HashMap<[u8; 32], V>,
    old: HashMap<[u8; 32], V>,
    generation_max: usize,
}

impl<V: Copy> Generations<V> {
    fn new(generation_max: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            generation_max,
        }
    }

    fn get(&mut self, key: &[u8; 32]) -> Option<V> {
        if let Some(value) = self.young.get(key) {
            return Some(*value);
        }
        let value = self.old.remove(key)?;
        self.insert(*key, value);
        Some(value)
    }

    fn insert(&mut self, key: [u8; 32], value: V) {
        if self.generation_max == 0 {
            return;
        }
        if self.young.len() >= self.generation_max {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[derive(Debug)]
struct Shard {
    accepted: Generations<CheckedKey>,
    refused: Generations<()>,
}

/// The cache shared by every clone of a `Verifier`.
#[derive(Debug)]
pub(crate) struct KeyCache {
    shards: Box<[Mutex<Shard>]>,
    shard_hasher: RandomState,
}

impl KeyCache {
    /// Holds at most `keys_max` checked keys and `refused_keys_max` refused ones.
    pub(crate) fn new(keys_max: usize, refused_keys_max: usize) -> Self {
        // Two generations per shard: each generation gets half of the shard's share.
        let per_generation = |total: usize| total / SHARDS / 2;
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    accepted: Generations::new(per_generation(keys_max)),
                    refused: Generations::new(per_generation(refused_keys_max)),
                })
            })
            .collect();
        Self {
            shards,
            // Keys are chosen by clients: a keyed hash keeps them from piling onto one shard.
            shard_hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> &Mutex<Shard> {
        let index = self.shard_hasher.hash_one(key) as usize & (SHARDS - 1);
        &self.shards[index]
    }

    /// The checked key, from the cache or checked now (outside the lock) and remembered.
    pub(crate) fn get_or_check(&self, key: &[u8; 32]) -> Result<CheckedKey, Reason> {
        let shard = self.shard(key);
        {
            let mut guard = lock(shard);
            if let Some(checked) = guard.accepted.get(key) {
                return Ok(checked);
            }
            if guard.refused.get(key).is_some() {
                return Err(Reason::BadPayerKey);
            }
        }
        let outcome = check_key(key);
        let mut guard = lock(shard);
        match outcome {
            Ok(checked) => guard.accepted.insert(*key, checked),
            Err(_) => guard.refused.insert(*key, ()),
        }
        outcome
    }

    /// Keys currently remembered, accepted and refused (for tests and metrics).
    pub(crate) fn len(&self) -> (usize, usize) {
        self.shards
            .iter()
            .fold((0, 0), |(accepted, refused), shard| {
                let guard = lock(shard);
                (
                    accepted + guard.accepted.len(),
                    refused + guard.refused.len(),
                )
            })
    }
}

/// A panic while a shard was held cannot leave it inconsistent (every update is one map
/// operation), so a poisoned lock is taken over rather than spreading the panic.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::scalar::Scalar;

    fn key(seed: u64) -> [u8; 32] {
        (ED25519_BASEPOINT_POINT * Scalar::from(seed + 1))
            .compress()
            .to_bytes()
    }

    #[test]
    fn cache_stays_within_capacity_and_keeps_hot_keys() {
        let cache = KeyCache::new(64, 64);
        let hot = key(0);
        for seed in 1..2_000 {
            assert!(cache.get_or_check(&key(seed)).is_ok());
            assert!(cache.get_or_check(&hot).is_ok());
            assert!(cache.len().0 <= 64);
        }
        let shard = cache.shard(&hot);
        assert!(lock(shard).accepted.get(&hot).is_some(), "hot key evicted");
    }

    #[test]
    fn refused_keys_stay_refused_after_eviction() {
        let cache = KeyCache::new(32, 32);
        let identity = {
            let mut bytes = [0u8; 32];
            bytes[0] = 1;
            bytes
        };
        for seed in 0..500u64 {
            let mut bad = identity;
            bad[31] = 0x80;
            assert_eq!(cache.get_or_check(&bad).err(), Some(Reason::BadPayerKey));
            // Fill with other refused keys: y ≥ p encodings, all refused.
            let mut other = [0xffu8; 32];
            other[31] = 0x7f;
            other[0] = 0xee + (seed % 17) as u8;
            assert_eq!(cache.get_or_check(&other).err(), Some(Reason::BadPayerKey));
            assert!(cache.len().1 <= 32);
        }
        assert_eq!(
            cache.get_or_check(&identity).err(),
            Some(Reason::BadPayerKey)
        );
    }
}
