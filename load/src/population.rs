//! Who takes part in a run: the payers' signing keys and the payees' EVM accounts, all derived
//! from the seed (so the demo, the tests and a later run derive the same ones), and how often each
//! payer is drawn (Zipf popularity).

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use ed25519_dalek::SigningKey;
use rand::RngExt;
use rayon::prelude::*;
use tollgate_engine::Address;

fn derived(context: &str, seed: u64, index: u32) -> [u8; 32] {
    let mut material = [0u8; 12];
    material[..8].copy_from_slice(&seed.to_le_bytes());
    material[8..].copy_from_slice(&index.to_le_bytes());
    blake3::derive_key(context, &material)
}

/// The signing key of payer `index` under `seed`. Anyone with the seed (the demo depositing for
/// these payers, a test) derives the same keys.
pub fn payer_key(seed: u64, index: u32) -> SigningKey {
    SigningKey::from_bytes(&derived("tollgate-load v1 payer signing key", seed, index))
}

/// The session key in `slot` of payer `index` under `seed` (see `workload::Sessions`).
pub fn session_key(seed: u64, index: u32, slot: u32) -> SigningKey {
    let mut material = [0u8; 16];
    material[..8].copy_from_slice(&seed.to_le_bytes());
    material[8..12].copy_from_slice(&index.to_le_bytes());
    material[12..].copy_from_slice(&slot.to_le_bytes());
    SigningKey::from_bytes(&blake3::derive_key(
        "tollgate-load v1 session signing key",
        &material,
    ))
}

/// The signing keys of payers `0..count`, derived in parallel (each costs a scalar multiplication).
pub fn payer_keys(seed: u64, count: u32) -> Vec<SigningKey> {
    (0..count)
        .into_par_iter()
        .map(|index| payer_key(seed, index))
        .collect()
}

/// The EVM account of payee `index` under `seed`. Its key is derived like the payers', so whoever
/// holds the seed (the demo) can sign that payee's `withdraw`.
pub fn payee_signer(seed: u64, index: u32) -> PrivateKeySigner {
    let mut secret = derived("tollgate-load v1 payee secp256k1 key", seed, index);
    loop {
        match PrivateKeySigner::from_bytes(&B256::from(secret)) {
            Ok(signer) => return signer,
            // Zero or past the curve order (odds about 2^-128): rehash, deterministically.
            Err(_) => secret = *blake3::hash(&secret).as_bytes(),
        }
    }
}

/// The address of payee `index` under `seed`: [`payee_signer`]'s account.
pub fn payee_address(seed: u64, index: u32) -> Address {
    Address(payee_signer(seed, index).address().0.0)
}

/// Samples indices `0..n` with probability proportional to `1 / (i + 1)^s`.
///
/// A cumulative table and a binary search: exact for any exponent (rand_distr's rejection sampler is
/// not in the workspace and would not be faster at the sizes used here), O(log n) per draw.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks with exponent `s` (0 is uniform).
    pub fn new(n: u32, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += (f64::from(rank)).powf(-s);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let point = rng.random::<f64>() * total;
        let index = self.cumulative.partition_point(|&c| c <= point);
        // partition_point can only reach len() through float rounding at the very top.
        u32::try_from(index.min(self.cumulative.len().saturating_sub(1))).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_zero_is_uniform() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let count = |zipf: &Zipf, rng: &mut Xoshiro256PlusPlus| {
            let mut counts = vec![0u32; 100];
            for _ in 0..100_000 {
                counts[zipf.sample(rng) as usize] += 1;
            }
            counts
        };
        let skewed = count(&Zipf::new(100, 1.1), &mut rng);
        // P(rank 1) / P(rank 10) = 10^1.1 ≈ 12.6
        let ratio = f64::from(skewed[0]) / f64::from(skewed[9]);
        assert!((9.0..17.0).contains(&ratio), "ratio {ratio}");
        let uniform = count(&Zipf::new(100, 0.0), &mut rng);
        assert!(
            uniform.iter().all(|&c| (800..1200).contains(&c)),
            "{uniform:?}"
        );
    }
}
