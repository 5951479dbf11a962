//! The per-channel anti-replay window over nonces (RFC 6479: a ring of 64-bit words).
//!
//! The window remembers which of the last `window_nonces` nonces below the highest one seen were
//! accepted. A nonce above the highest slides the window forward by clearing only the words it
//! passes, so every check and insert is O(1) and a channel costs `window_nonces / 64 + 1` words
//! whatever its traffic. The extra word is RFC 6479's trick: the ring holds one block more than
//! the window so sliding by a block never clears a bit that is still inside it.

use crate::verdict::Reason;

/// Window sizes must be a whole number of 64-bit words.
pub const WINDOW_WORD_BITS: u32 = 64;

/// The anti-replay state of one channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NonceWindow {
    /// Highest nonce accepted so far; `None` before the first.
    top: Option<u64>,
    words: Box<[u64]>,
}

impl NonceWindow {
    /// An empty window covering `window_nonces` nonces (a non-zero multiple of 64).
    pub fn new(window_nonces: u32) -> Self {
        debug_assert!(window_nonces > 0 && window_nonces % WINDOW_WORD_BITS == 0);
        let words = (window_nonces / WINDOW_WORD_BITS) as usize + 1;
        Self {
            top: None,
            words: vec![0u64; words].into_boxed_slice(),
        }
    }

    /// Rebuilds a window from its stored parts.
    pub fn from_parts(top: Option<u64>, words: Box<[u64]>) -> Self {
        Self { top, words }
    }

    /// Highest nonce accepted so far.
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    /// The ring of words, for storage.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// How many nonces below the top the window still judges.
    pub fn span(&self) -> u64 {
        (self.words.len() as u64 - 1) * u64::from(WINDOW_WORD_BITS)
    }

    fn slot(&self, nonce: u64) -> (usize, u64) {
        let block = nonce / u64::from(WINDOW_WORD_BITS);
        let word = (block % self.words.len() as u64) as usize;
        (word, 1u64 << (nonce % u64::from(WINDOW_WORD_BITS)))
    }

    /// Whether `nonce` may be accepted: `Err(Stale)` below the window, `Err(Duplicate)` when
    /// already accepted.
    pub fn check(&self, nonce: u64) -> Result<(), Reason> {
        let Some(top) = self.top else {
            return Ok(());
        };
        if nonce > top {
            return Ok(());
        }
        if top - nonce >= self.span() {
            return Err(Reason::Stale);
        }
        let (word, bit) = self.slot(nonce);
        if self.words[word] & bit != 0 {
            return Err(Reason::Duplicate);
        }
        Ok(())
    }

    /// Records `nonce` as accepted. The caller has had `check` say yes.
    pub fn insert(&mut self, nonce: u64) {
        debug_assert_eq!(self.check(nonce), Ok(()));
        let words = self.words.len() as u64;
        let new_block = nonce / u64::from(WINDOW_WORD_BITS);
        match self.top {
            None => self.words.fill(0),
            Some(top) if nonce > top => {
                let old_block = top / u64::from(WINDOW_WORD_BITS);
                let passed = new_block - old_block;
                if passed >= words {
                    self.words.fill(0);
                } else {
                    for block in old_block + 1..=new_block {
                        self.words[(block % words) as usize] = 0;
                    }
                }
            }
            Some(_) => {}
        }
        if self.top.is_none_or(|top| nonce > top) {
            self.top = Some(nonce);
        }
        let (word, bit) = self.slot(nonce);
        self.words[word] |= bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn duplicate_stale_and_reordered_nonces() {
        let mut window = NonceWindow::new(128);
        assert_eq!(window.span(), 128);
        for nonce in [500, 450, 499] {
            assert_eq!(window.check(nonce), Ok(()));
            window.insert(nonce);
        }
        assert_eq!(window.check(450), Err(Reason::Duplicate));
        assert_eq!(window.check(373), Ok(()), "inside the window, never seen");
        assert_eq!(window.check(372), Err(Reason::Stale), "500 - 372 = 128");
        window.insert(10_000);
        assert_eq!(window.check(500), Err(Reason::Stale));
        assert_eq!(window.check(9_999), Ok(()));
        assert_eq!(window.check(u64::MAX), Ok(()));
        window.insert(u64::MAX);
        assert_eq!(window.check(u64::MAX), Err(Reason::Duplicate));
    }

    proptest! {
        /// The ring agrees with the obvious model (a set of every accepted nonce) on every check.
        #[test]
        fn ring_matches_a_set_of_accepted_nonces(
            steps in proptest::collection::vec((0u64..3, 0u64..400), 1..300),
        ) {
            let mut window = NonceWindow::new(128);
            let mut seen = BTreeSet::new();
            let mut top: Option<u64> = None;
            for (jump, offset) in steps {
                // Mostly near the top, sometimes far above it.
                let base = top.unwrap_or(1_000);
                let nonce = if jump == 0 { base + offset * 50 } else { (base + 64).saturating_sub(offset) };
                let expected = match top {
                    Some(t) if nonce <= t && t - nonce >= 128 => Err(Reason::Stale),
                    _ if seen.contains(&nonce) => Err(Reason::Duplicate),
                    _ => Ok(()),
                };
                prop_assert_eq!(window.check(nonce), expected);
                if expected.is_ok() {
                    window.insert(nonce);
                    seen.insert(nonce);
                    top = Some(top.map_or(nonce, |t| t.max(nonce)));
                }
            }
        }
    }
}
