//! The verifiers `tollgate bench verify` runs, each prepared before the clock starts, and which
//! curve25519 arithmetic each uses on this CPU.

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;
use tollgate_engine::receipt::SIGNING_BYTES;
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

/// Inputs of one ed25519-dalek major version, prepared before the clock starts. The versions
/// share their API but not their types, so one definition is stamped out per crate.
macro_rules! dalek_inputs {
    ($(#[$doc:meta])* $name:ident, $dalek:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            messages: Vec<[u8; SIGNING_BYTES]>,
            signatures: Vec<$dalek::Signature>,
            keys: Vec<$dalek::VerifyingKey>,
        }

        impl $name {
            /// Decodes keys and signatures and assembles the messages.
            pub fn new(workload: &Workload) -> anyhow::Result<Self> {
                let views = workload.views()?;
                Ok(Self {
                    messages: workload.signing_bytes()?,
                    signatures: views
                        .iter()
                        .map(|view| $dalek::Signature::from_bytes(&view.signature()))
                        .collect(),
                    keys: views
                        .iter()
                        .map(|view| {
                            $dalek::VerifyingKey::from_bytes(&view.payer().0)
                                .context("generated payer keys decompress")
                        })
                        .collect::<anyhow::Result<_>>()?,
                })
            }

            /// Verifies everything in `batch`-sized chunks on the current rayon pool; returns
            /// the number rejected. A chunk whose batch equation fails is re-checked one
            /// `verify` per receipt, as a caller of `verify_batch` must to find the bad ones.
            pub fn verify(&self, batch: usize) -> usize {
                use $dalek::Verifier as _;
                let chunks = self.messages.len().div_ceil(batch);
                (0..chunks)
                    .into_par_iter()
                    .map(|chunk| {
                        let range = chunk * batch..((chunk + 1) * batch).min(self.messages.len());
                        let messages: Vec<&[u8]> = self.messages[range.clone()]
                            .iter()
                            .map(|m| m.as_slice())
                            .collect();
                        let signatures = &self.signatures[range.clone()];
                        let keys = &self.keys[range];
                        if $dalek::verify_batch(&messages, signatures, keys).is_ok() {
                            return 0;
                        }
                        messages
                            .iter()
                            .zip(signatures)
                            .zip(keys)
                            .filter(|((message, signature), key)| {
                                key.verify(message, signature).is_err()
                            })
                            .count()
                    })
                    .sum()
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

/// Inputs of ed25519-zebra's batch verifier (ZIP-215, one coefficient per distinct key), prepared
/// before the clock starts like the dalek contenders'. Its items hash (R, A, message) when
/// queued, so that hash is timed, as it is inside every other contender.
#[derive(Debug)]
pub struct ZebraInputs {
    messages: Vec<[u8; SIGNING_BYTES]>,
    signatures: Vec<ed25519_zebra::Signature>,
    keys: Vec<ed25519_zebra::VerificationKeyBytes>,
}

impl ZebraInputs {
    /// Takes the keys and signatures as bytes and assembles the messages.
    pub fn new(workload: &Workload) -> anyhow::Result<Self> {
        let views = workload.views()?;
        Ok(Self {
            messages: workload.signing_bytes()?,
            signatures: views
                .iter()
                .map(|view| ed25519_zebra::Signature::from_bytes(&view.signature()))
                .collect(),
            keys: views
                .iter()
                .map(|view| ed25519_zebra::VerificationKeyBytes::from(view.payer().0))
                .collect(),
        })
    }

    /// Verifies everything in `batch`-sized chunks on the current rayon pool; returns the number
    /// rejected. A chunk whose batch equation fails is re-checked one item at a time, as
    /// zebra's documentation tells a caller to find the bad ones.
    pub fn verify(&self, batch: usize) -> usize {
        let chunks = self.messages.len().div_ceil(batch);
        (0..chunks)
            .into_par_iter()
            .map(|chunk| {
                let range = chunk * batch..((chunk + 1) * batch).min(self.messages.len());
                let items: Vec<ed25519_zebra::batch::Item> = range
                    .map(|i| (self.keys[i], self.signatures[i], &self.messages[i]).into())
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
                    .filter(|item| item.clone().verify_single().is_err())
                    .count()
            })
            .sum()
    }
}
