//! Which partition a payer lives in, and the log subject of a partition.
//!
//! The mapping is stored nowhere: every node computes it, so it must never change for a given
//! payer and partition count. The pinned vectors in the tests below guard that.

use std::num::NonZeroU32;

use tollgate_engine::PayerKey;

/// Separates this use of BLAKE3 from every other hash of a payer key in Tollgate.
const CONTEXT: &str = "tollgate 2026-11 payer partition v1";

/// Subject prefix of the receipts log; partition `p` is `tollgate.rx.<p>`.
pub const SUBJECT_PREFIX: &str = "tollgate.rx";

/// The partition (0..partitions) holding every receipt, deposit and exit of `payer`: the first 8
/// bytes of a BLAKE3 derived key of the payer key, little-endian, modulo the count. With 64 bits
/// the modulo bias is below 2^-32 for any count that fits in u32.
pub fn partition_of(payer: &PayerKey, partitions: NonZeroU32) -> u32 {
    let digest = blake3::Hasher::new_derive_key(CONTEXT)
        .update(&payer.0)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    let bucket = u64::from_le_bytes(first) % u64::from(partitions.get());
    // The remainder is below a u32, so it always fits.
    u32::try_from(bucket).unwrap_or(0)
}

/// The log subject of partition `partition`.
pub fn subject_of(partition: u32) -> String {
    format!("{SUBJECT_PREFIX}.{partition}")
}

/// The stream's subject filter covering every partition.
pub(crate) fn all_subjects() -> String {
    format!("{SUBJECT_PREFIX}.*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("nonzero")
    }

    /// These values are the cluster's data layout: a change here moves payers between
    /// partitions under a running cluster. Never update them; add a new context instead.
    #[test]
    fn pinned_vectors() {
        let zero = PayerKey([0u8; 32]);
        let ones = PayerKey([0xff; 32]);
        let mut counting = [0u8; 32];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = u8::try_from(i).expect("small");
        }
        let counting = PayerKey(counting);
        let got: Vec<(u32, u32, u32)> = [3, 16, 1000, u32::MAX]
            .into_iter()
            .map(|n| {
                (
                    partition_of(&zero, count(n)),
                    partition_of(&ones, count(n)),
                    partition_of(&counting, count(n)),
                )
            })
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [(u32, u32, u32); 4] = [
        (2, 1, 0),
        (10, 2, 6),
        (314, 610, 838),
        (2_045_468_069, 1_351_612_285, 3_903_148_233),
    ];

    /// 10,000 keys that look random (BLAKE3 of a counter, so the test never flakes) fill all 16
    /// partitions, none holding more than twice its share.
    #[test]
    fn spreads_keys_over_every_partition() {
        let mut load = [0u32; 16];
        for i in 0u32..10_000 {
            let key = PayerKey(*blake3::hash(&i.to_le_bytes()).as_bytes());
            let p = partition_of(&key, count(16));
            load[usize::try_from(p).expect("small")] += 1;
        }
        let share = 10_000 / 16;
        assert!(load.iter().all(|&n| n > 0 && n < 2 * share), "{load:?}");
    }

    #[test]
    fn subjects_name_the_partition() {
        assert_eq!(subject_of(7), "tollgate.rx.7");
        assert_eq!(all_subjects(), "tollgate.rx.*");
    }
}
