//! The verifiers `tollgate bench verify` runs, each prepared before the clock starts, and which
//! curve25519 arithmetic each uses on this CPU.

use std::ops::Range;

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;
use tollgate_engine::receipt::{SIGNATURE_BYTES, SIGNING_BYTES};
use tollgate_engine::{Domain, Verifier, VerifyConfig, VerifyPool};

use super::Workload;

/// Which curve25519 arithmetic runs on this CPU.
#[derive(Debug, Clone, Serialize)]
pub struct Backends {
    /// CPU reports AVX-512 IFMA.
    pub cpu_avx512ifma: bool,
    /// CPU reports AVX-512 VL.
    pub cpu_avx512vl: bool,
    /// CPU reports AVX2.
    pub cpu_avx2: bool,
    /// This build carries `--cfg curve25519_dalek_backend="avx512"`.
    pub built_with_avx512_cfg: bool,
    /// What curve25519-dalek 5 (Tollgate, ed25519-dalek 3) selects at run time.
    pub curve25519_dalek_5: &'static str,
    /// What curve25519-dalek 4 (ed25519-dalek 2.x, the baseline) selects at run time.
    pub curve25519_dalek_4: &'static str,
}

impl Backends {
    /// Detects the CPU features and states what each curve25519-dalek picks: version 5 takes IFMA
    /// when built with the avx512 cfg and the CPU has avx512ifma and avx512vl, AVX2 otherwise;
    /// version 4 on a stable compiler takes AVX2 at most.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        let (ifma, vl, avx2) = (
            std::is_x86_feature_detected!("avx512ifma"),
            std::is_x86_feature_detected!("avx512vl"),
            std::is_x86_feature_detected!("avx2"),
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (ifma, vl, avx2) = (false, false, false);
        // The cfg comes from the workspace's .cargo/config.toml rustflags, which reach every
        // crate, this one included: so this crate sees what curve25519-dalek saw.
        #[allow(unexpected_cfgs)]
        let built_with_avx512_cfg = cfg!(curve25519_dalek_backend = "avx512");
        let vector = if avx2 { "avx2" } else { "serial" };
        Self {
            cpu_avx512ifma: ifma,
            cpu_avx512vl: vl,
            cpu_avx2: avx2,
            built_with_avx512_cfg,
            curve25519_dalek_5: if built_with_avx512_cfg && ifma && vl {
                "avx512ifma"
            } else {
                vector
            },
            curve25519_dalek_4: vector,
        }
    }
}

/// A Tollgate pool of `threads` threads for `domain`.
pub fn tollgate_pool(domain: &Domain, threads: usize, batch: usize) -> anyhow::Result<VerifyPool> {
    let config = VerifyConfig {
        threads,
        batch_receipts_max: batch,
        ..VerifyConfig::default()
    };
    Ok(VerifyPool::new(
        Verifier::new(*domain, config.clone()),
        config,
    )?)
}

/// What every library contender gets before the clock starts: each receipt's signing bytes, and
/// its signature and key in the library's own types (a caller could cache both).
#[derive(Debug)]
pub struct Prepared<S, K> {
    messages: Vec<[u8; SIGNING_BYTES]>,
    signatures: Vec<S>,
    keys: Vec<K>,
}

impl<S: Sync, K: Sync> Prepared<S, K> {
    fn new(
        workload: &Workload,
        signature: impl Fn(&[u8; SIGNATURE_BYTES]) -> S,
        key: impl Fn(&[u8; 32]) -> anyhow::Result<K>,
    ) -> anyhow::Result<Self> {
        let views = workload.views()?;
        Ok(Self {
            messages: workload.signing_bytes()?,
            signatures: views
                .iter()
                .map(|view| signature(&view.signature()))
                .collect(),
            keys: views
                .iter()
                .map(|view| key(&view.payer().0))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Runs `verify_chunk` over `batch`-sized ranges of the receipts on the current rayon pool
    /// and sums the receipts each rejected.
    fn rejected_by_chunks(
        &self,
        batch: usize,
        verify_chunk: impl Fn(Range<usize>) -> usize + Sync,
    ) -> usize {
        let receipts = self.messages.len();
        (0..receipts.div_ceil(batch))
            .into_par_iter()
            .map(|chunk| verify_chunk(chunk * batch..((chunk + 1) * batch).min(receipts)))
            .sum()
    }
}

/// Inputs of one ed25519-dalek major version. The versions share their API but not their types,
/// so one definition is stamped out per crate.
macro_rules! dalek_inputs {
    ($(#[$doc:meta])* $name:ident, $dalek:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(Prepared<$dalek::Signature, $dalek::VerifyingKey>);

        impl $name {
            /// Decodes keys and signatures and assembles the messages.
            pub fn new(workload: &Workload) -> anyhow::Result<Self> {
                Prepared::new(workload, $dalek::Signature::from_bytes, |key| {
                    $dalek::VerifyingKey::from_bytes(key).context("generated payer keys decompress")
                })
                .map(Self)
            }

            /// Verifies everything in `batch`-sized chunks on the current rayon pool; returns
            /// the number rejected. A chunk whose batch equation fails is re-checked one
            /// `verify` per receipt, as a caller of `verify_batch` must to find the bad ones.
            pub fn verify(&self, batch: usize) -> usize {
                use $dalek::Verifier as _;
                let inputs = &self.0;
                inputs.rejected_by_chunks(batch, |range| {
                    let messages: Vec<&[u8]> = inputs.messages[range.clone()]
                        .iter()
                        .map(|m| m.as_slice())
                        .collect();
                    let signatures = &inputs.signatures[range.clone()];
                    let keys = &inputs.keys[range];
                    if $dalek::verify_batch(&messages, signatures, keys).is_ok() {
                        return 0;
                    }
                    messages
                        .iter()
                        .zip(signatures)
                        .zip(keys)
                        .filter(|((message, signature), key)| key.verify(message, signature).is_err())
                        .count()
                })
            }
        }
    };
}

dalek_inputs!(
    /// The baseline: ed25519-dalek 2.x on curve25519-dalek 4.
    Dalek2Inputs,
    ed25519_dalek_2
);
dalek_inputs!(
    /// ed25519-dalek 3 on curve25519-dalek 5, the backend Tollgate uses.
    Dalek3Inputs,
    ed25519_dalek
);

/// Inputs of ed25519-zebra's batch verifier (ZIP-215, one coefficient per distinct key). Its
/// items hash (R, A, message) when queued, so that hash is timed, as it is inside every other
/// contender.
#[derive(Debug)]
pub struct ZebraInputs(Prepared<ed25519_zebra::Signature, ed25519_zebra::VerificationKeyBytes>);

impl ZebraInputs {
    /// Takes the keys and signatures as bytes and assembles the messages.
    pub fn new(workload: &Workload) -> anyhow::Result<Self> {
        Prepared::new(workload, ed25519_zebra::Signature::from_bytes, |key| {
            Ok(ed25519_zebra::VerificationKeyBytes::from(*key))
        })
        .map(Self)
    }

    /// Verifies everything in `batch`-sized chunks on the current rayon pool; returns the number
    /// rejected. A chunk whose batch equation fails is re-checked one item at a time, as
    /// zebra's documentation tells a caller to find the bad ones.
    pub fn verify(&self, batch: usize) -> usize {
        let inputs = &self.0;
        inputs.rejected_by_chunks(batch, |range| {
            let items: Vec<ed25519_zebra::batch::Item> = range
                .map(|i| (inputs.keys[i], inputs.signatures[i], &inputs.messages[i]).into())
                .collect();
            let mut verifier = ed25519_zebra::batch::Verifier::new();
            for item in &items {
                verifier.queue(item.clone());
            }
            if verifier.verify(rand::rng()).is_ok() {
                return 0;
            }
            items
                .into_iter()
                .map(ed25519_zebra::batch::Item::verify_single)
                .filter(Result::is_err)
                .count()
        })
    }
}
