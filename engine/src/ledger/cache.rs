//! The writer's bounded cache of hot state, in front of RocksDB.
//!
//! Only the writer thread touches it. An entry changed since the last write is dirty: it stays
//! until the group's write has put it on disk, after which any entry may be evicted. Eviction is
//! CLOCK-like (one reference bit): entries used since the last sweep survive one sweep. A sweep
//! runs only when the cache is over capacity and takes it down to 7/8 of it, so its cost is
//! amortised over many groups. Between writes the cache may exceed its capacity by what one group
//! touches, which the writer bounds.

use std::collections::HashMap;
use std::hash::Hash;

use foldhash::fast::RandomState;

use crate::store::{Cf, Store, StoreBatch, StoreError};

use super::error::{DecodeError, corrupt};

/// A value the cache can hold.
pub(crate) trait CacheValue: Sized {
    /// Key type. For a stored value, its order is the order of its stored bytes
    /// ([`Cached::key_bytes`]): dirty values are written in it.
    type Key: Copy + Eq + Hash + Ord;
    /// The money this value holds that only accepted receipts change, for the pair assertion
    /// around every write (zero for values that hold none).
    fn receipt_money(&self) -> u128;
}

/// A value the cache can load and store: one record per key.
pub(crate) trait Cached: CacheValue {
    /// Column family the values live in.
    const CF: Cf;
    /// A storage key, held without allocating.
    type KeyBytes: AsRef<[u8]>;
    /// Storage key.
    fn key_bytes(key: &Self::Key) -> Self::KeyBytes;
    /// Appends the storage form to `out`.
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Storage form.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
    /// Inverse of `encode`.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

struct Slot<V> {
    value: V,
    /// `receipt_money` when the entry became dirty in this group; `None` when clean.
    dirty_base: Option<u128>,
    referenced: bool,
}

/// Bounded map from keys to hot values, loaded from the store on a miss.
pub(crate) struct Cache<V: CacheValue> {
    /// foldhash rather than std's SipHash: a receipt looks up several 32-52-byte keys here, and
    /// SipHash was about a tenth of the writer thread's time. Each map draws its own random
    /// seed, so nobody outside can choose keys that collide without first learning it.
    map: HashMap<V::Key, Slot<V>, RandomState>,
    dirty: Vec<V::Key>,
    capacity: usize,
}

impl<V: CacheValue> Cache<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::default(),
            dirty: Vec::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a value for a key that neither the cache nor the store holds (the caller checked
    /// with [`Cache::load_existing`]); it will be written with the group.
    pub(crate) fn insert_new(&mut self, key: V::Key, value: V) {
        self.map.insert(
            key,
            Slot {
                value,
                dirty_base: Some(0),
                referenced: true,
            },
        );
        self.dirty.push(key);
    }

    /// The cached value; `None` unless `load` ran for it in this group.
    pub(crate) fn get(&self, key: &V::Key) -> Option<&V> {
        self.map.get(key).map(|slot| &slot.value)
    }

    /// The cached value for changing; it will be written with the group.
    pub(crate) fn get_mut(&mut self, key: &V::Key) -> Option<&mut V> {
        let slot = self.map.get_mut(key)?;
        if slot.dirty_base.is_none() {
            slot.dirty_base = Some(slot.value.receipt_money());
            self.dirty.push(*key);
        }
        Some(&mut slot.value)
    }

    /// True when nothing changed since the last drain.
    pub(crate) fn is_clean(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Evicts clean entries when over capacity. Call after a successful write only.
    pub(crate) fn evict(&mut self) {
        if self.map.len() <= self.capacity {
            return;
        }
        let target = self.capacity - self.capacity / 8;
        let mut excess = self.map.len() - target;
        for second_chance in [true, false] {
            self.map.retain(|_, slot| {
                if excess == 0 || slot.dirty_base.is_some() {
                    return true;
                }
                if second_chance && slot.referenced {
                    slot.referenced = false;
                    return true;
                }
                excess -= 1;
                false
            });
            if excess == 0 {
                break;
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Makes sure `key` is in the cache, computing its value with `derive` on a miss: for
    /// values the cache holds but never stores (see [`Cache::forget_dirty`]).
    pub(crate) fn load_with<E>(
        &mut self,
        key: &V::Key,
        derive: impl FnOnce() -> Result<V, E>,
    ) -> Result<(), E> {
        if let Some(slot) = self.map.get_mut(key) {
            slot.referenced = true;
            return Ok(());
        }
        let value = derive()?;
        self.hold(*key, value);
        Ok(())
    }

    /// Ends the group for values that are never stored: what changed stays cached, evictable
    /// once [`Cache::evict`] runs after the group's write, exactly like a stored value drained
    /// into that write.
    pub(crate) fn forget_dirty(&mut self) {
        for key in self.dirty.drain(..) {
            if let Some(slot) = self.map.get_mut(&key) {
                slot.dirty_base = None;
            }
        }
    }

    /// Holds a value just read or derived, clean and referenced.
    fn hold(&mut self, key: V::Key, value: V) {
        self.map.insert(
            key,
            Slot {
                value,
                dirty_base: None,
                referenced: true,
            },
        );
    }
}

impl<V: Cached> Cache<V> {
    /// Makes sure `key` is in the cache: from the store, or `default()` when the store has none.
    pub(crate) fn load(
        &mut self,
        store: &Store,
        key: &V::Key,
        default: impl FnOnce() -> V,
    ) -> Result<(), StoreError> {
        if let Some(slot) = self.map.get_mut(key) {
            slot.referenced = true;
            return Ok(());
        }
        let value = match store.get(V::CF, V::key_bytes(key).as_ref())? {
            Some(bytes) => V::decode(&bytes).map_err(corrupt(V::CF))?,
            None => default(),
        };
        self.hold(*key, value);
        Ok(())
    }

    /// Makes sure `key` is in the cache if the store has it; false when it has not (nothing is
    /// cached for an absent key: a later [`Cache::insert_new`] adds it).
    pub(crate) fn load_existing(
        &mut self,
        store: &Store,
        key: &V::Key,
    ) -> Result<bool, StoreError> {
        if let Some(slot) = self.map.get_mut(key) {
            slot.referenced = true;
            return Ok(true);
        }
        let Some(bytes) = store.get(V::CF, V::key_bytes(key).as_ref())? else {
            return Ok(false);
        };
        let value = V::decode(&bytes).map_err(corrupt(V::CF))?;
        self.hold(*key, value);
        Ok(true)
    }

    /// Reads `key` through `read` without caching it: from the cache when held (it may be newer
    /// than the store), else from the store. For one-off reads, like a seal's, that would
    /// otherwise push hot entries out.
    pub(crate) fn peek<T>(
        &self,
        store: &Store,
        key: &V::Key,
        read: impl FnOnce(&V) -> T,
    ) -> Result<Option<T>, StoreError> {
        if let Some(slot) = self.map.get(key) {
            return Ok(Some(read(&slot.value)));
        }
        store
            .get(V::CF, V::key_bytes(key).as_ref())?
            .map(|bytes| {
                V::decode(&bytes)
                    .map(|value| read(&value))
                    .map_err(corrupt(V::CF))
            })
            .transpose()
    }

    /// Puts every dirty value into `batch` and returns the total change of `receipt_money` since
    /// the values became dirty. `None` when that total is negative or overflows (a broken
    /// invariant: receipt money only grows, and an epoch commit moves it, never removes it).
    pub(crate) fn drain_dirty(&mut self, batch: &mut StoreBatch) -> Option<u128> {
        let mut delta: Option<u128> = Some(0);
        // In key order, RocksDB's memtable resumes each insert from where the previous one ended
        // instead of descending its skip list from the top: the insert was the writer's largest
        // single cost. Each key is dirty at most once, so the order changes nothing else.
        self.dirty.sort_unstable();
        for key in self.dirty.drain(..) {
            let Some(slot) = self.map.get_mut(&key) else {
                continue;
            };
            let Some(base) = slot.dirty_base.take() else {
                continue;
            };
            delta =
                delta.and_then(|d| d.checked_add(slot.value.receipt_money().checked_sub(base)?));
            batch.put_with(V::CF, V::key_bytes(&key).as_ref(), |out| {
                slot.value.encode_into(out)
            });
        }
        delta
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::record::PayeeState;
    use crate::receipt::Address;

    #[test]
    fn evicts_only_clean_entries_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), |b| {
            b.put(Cf::Meta, crate::store::FORMAT_KEY, b"x")
        })
        .expect("open");
        let mut cache: Cache<PayeeState> = Cache::new(16);
        for i in 0..64u8 {
            let key = Address([i; 20]);
            cache.load(&store, &key, PayeeState::default).expect("load");
            cache.get_mut(&key).expect("loaded").credited = u128::from(i);
        }
        // Dirty entries are never evicted.
        cache.evict();
        assert_eq!(cache.len(), 64);
        let mut batch = StoreBatch::default();
        assert_eq!(cache.drain_dirty(&mut batch), Some((0..64u128).sum()));
        store.write(batch).expect("write");
        cache.evict();
        assert!(cache.len() <= 16, "{}", cache.len());
        // An evicted entry comes back from the store.
        let key = Address([63; 20]);
        cache.load(&store, &key, PayeeState::default).expect("load");
        assert_eq!(cache.get(&key).map(|p| p.credited), Some(63));
    }

    proptest::proptest! {
        /// Dirty entries are written in key order, which RocksDB's memtable inserts depend on
        /// for their speed: the keys' order must be their stored bytes' order.
        #[test]
        fn key_order_is_stored_byte_order(
            a in proptest::array::uniform32(0u8..4),
            b in proptest::array::uniform32(0u8..4),
            x in proptest::array::uniform20(0u8..4),
            y in proptest::array::uniform20(0u8..4),
            client in 0u64..3,
            producers in (0u64..300, 0u64..300),
        ) {
            use crate::ledger::record::{ChannelKey, ChannelState, PayerState, ProducerKey, ProducerState, SessionWindow, HeldGrant};
            use crate::receipt::PayerKey;
            fn agrees<V: Cached>(one: V::Key, two: V::Key) -> bool {
                one.cmp(&two) == V::key_bytes(&one).as_ref().cmp(V::key_bytes(&two).as_ref())
            }
            let channel = |payer, payee| ChannelKey { payer: PayerKey(payer), payee: Address(payee) };
            let (first, second) = (channel(a, x), channel(b, y));
            // Channels of one payer differ by payee alone.
            proptest::prop_assert!(agrees::<ChannelState>(channel(a, x), channel(a, y)));
            proptest::prop_assert!(agrees::<SessionWindow>(channel(a, x), channel(a, y)));
            proptest::prop_assert!(agrees::<ChannelState>(first, second));
            proptest::prop_assert!(agrees::<SessionWindow>(first, second));
            proptest::prop_assert!(agrees::<PayerState>(PayerKey(a), PayerKey(b)));
            proptest::prop_assert!(agrees::<HeldGrant>(PayerKey(a), PayerKey(b)));
            proptest::prop_assert!(agrees::<PayeeState>(Address(x), Address(y)));
            let producer = |client_id, producer_id| ProducerKey { client_id, producer_id };
            proptest::prop_assert!(agrees::<ProducerState>(
                producer(client, producers.0),
                producer(2 - client, producers.1),
            ));
        }
    }
}
