//! The batch equation with key coalescing, and bisection when it fails.
//!
//! For candidates i (signatures that passed every per-signature check) with random 128-bit
//! weights z_i, the batch holds when
//! `[8]( -(Σ z_i S_i) B + Σ z_i R_i + Σ_keys (Σ_{i signed by key} z_i k_i) A ) = 0`.
//! Receipts of one payer share one A term, so the multiscalar multiplication has n + k + 1
//! points for n receipts from k payers. Multiplying by the cofactor makes the batch accept
//! exactly when every signature satisfies the cofactored single equation (up to the 2^-128
//! chance a random weight hides a bad one), so batch and single never disagree.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand::RngExt;

use super::rule::{CheckedKey, Prepared, equation_holds};
use crate::verdict::{Reason, Verdict};

/// A signature waiting for the equation: where its verdict goes and which key it uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) index: usize,
    pub(crate) prepared: Prepared,
    pub(crate) key_slot: usize,
}

/// Scratch space for one batch, reused by every equation bisection asks for.
#[derive(Debug, Default)]
pub(crate) struct Equations {
    key_coefficients: Vec<Scalar>,
    key_used: Vec<bool>,
    scalars: Vec<Scalar>,
    /// Equations computed, for tests that check bisection stays cheap.
    pub(crate) computed: usize,
}

impl Equations {
    /// Sets `verdicts[candidate.index]` for every candidate: `Ok` when its signature holds,
    /// `BadSignature` when it does not. Good ones are accepted by whole-batch equations; each bad
    /// one is isolated by bisection and rejected alone.
    pub(crate) fn settle(
        &mut self,
        candidates: &[Candidate],
        keys: &[CheckedKey],
        verdicts: &mut [Verdict],
    ) {
        if candidates.is_empty() || self.holds(candidates, keys) {
            return;
        }
        self.isolate(candidates, keys, verdicts);
    }

    /// `candidates` is known to fail. Splits it until every bad signature stands alone. A half
    /// whose sibling held needs no equation of its own: it must contain the failure.
    fn isolate(&mut self, candidates: &[Candidate], keys: &[CheckedKey], verdicts: &mut [Verdict]) {
        if let [alone] = candidates {
            // One candidate's batch equation is its single equation times a weight invertible
            // mod L, so a failing singleton is exactly a signature the single path rejects.
            verdicts[alone.index] = Err(Reason::BadSignature);
            return;
        }
        let (left, right) = candidates.split_at(candidates.len() / 2);
        if self.holds(left, keys) {
            self.isolate(right, keys, verdicts);
        } else {
            self.isolate(left, keys, verdicts);
            if !self.holds(right, keys) {
                self.isolate(right, keys, verdicts);
            }
        }
    }

    /// True when the batch equation holds for `candidates` (never empty).
    fn holds(&mut self, candidates: &[Candidate], keys: &[CheckedKey]) -> bool {
        self.computed += 1;
        if let [alone] = candidates {
            // The single equation is cheaper than a three-point multiscalar multiplication.
            return equation_holds(&alone.prepared, &keys[alone.key_slot]);
        }
        let mut rng = rand::rng();
        self.key_coefficients.clear();
        self.key_coefficients.resize(keys.len(), Scalar::ZERO);
        self.key_used.clear();
        self.key_used.resize(keys.len(), false);
        self.scalars.clear();
        self.scalars.push(Scalar::ZERO);
        let mut basepoint_coefficient = Scalar::ZERO;
        for candidate in candidates {
            let weight = Scalar::from(nonzero_weight(&mut rng));
            basepoint_coefficient -= weight * candidate.prepared.s;
            self.key_coefficients[candidate.key_slot] += weight * candidate.prepared.k;
            self.key_used[candidate.key_slot] = true;
            self.scalars.push(weight);
        }
        self.scalars[0] = basepoint_coefficient;
        let used = |slot: &usize| self.key_used[*slot];
        let scalars = self.scalars.iter().chain(
            (0..keys.len())
                .filter(used)
                .map(|slot| &self.key_coefficients[slot]),
        );
        let points = std::iter::once(&ED25519_BASEPOINT_POINT)
            .chain(candidates.iter().map(|candidate| &candidate.prepared.r))
            .chain((0..keys.len()).filter(used).map(|slot| &keys[slot].point));
        EdwardsPoint::vartime_multiscalar_mul(scalars, points)
            .mul_by_cofactor()
            .is_identity()
    }
}

/// A uniformly random 128-bit weight from the thread's CSPRNG, never zero (a zero weight would
/// drop its signature from the equation).
fn nonzero_weight(rng: &mut rand::rngs::ThreadRng) -> u128 {
    loop {
        let weight: u128 = rng.random();
        if weight != 0 {
            return weight;
        }
    }
}
