//! The presigned receipts every contender verifies: payers drawn Zipf, a share of signatures
//! broken on purpose at random positions.

use anyhow::{Context, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use tollgate_engine::receipt::{RECEIPT_BYTES, SIGNING_BYTES};
use tollgate_engine::{Address, Domain, PayerKey, ReceiptView, UnsignedReceipt};
use tollgate_load::population::Zipf;

/// Presigned receipts for a verification benchmark.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The domain every receipt is signed under.
    pub domain: Domain,
    /// Encoded receipts.
    pub records: Vec<[u8; RECEIPT_BYTES]>,
    /// `bad[i]`: receipt i's signature was broken on purpose.
    pub bad: Vec<bool>,
    /// Distinct payers that signed at least one receipt.
    pub payers_used: usize,
}

impl Workload {
    /// `receipts` receipts from `payers` keys drawn Zipf(`zipf`) (round robin when `zipf` is 0),
    /// with `bad_pct` percent of signatures broken. Signing runs on rayon's global pool.
    pub fn generate(
        receipts: usize,
        payers: usize,
        zipf: f64,
        bad_pct: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        Self::generate_with_sessions(receipts, payers, zipf, bad_pct, seed, 0)
    }

    /// [`Workload::generate`]'s draw, each receipt signed instead by one of its payer's
    /// `sessions_per_payer` session keys (in turn), with the session flag; 0 signs with the
    /// payer keys. The same payers, amounts and broken positions either way, so the two
    /// workloads differ only in who signs.
    pub fn generate_with_sessions(
        receipts: usize,
        payers: usize,
        zipf: f64,
        bad_pct: f64,
        seed: u64,
        sessions_per_payer: usize,
    ) -> anyhow::Result<Self> {
        ensure!(payers >= 1, "--payers must be at least 1");
        ensure!(
            (0.0..=100.0).contains(&bad_pct),
            "--bad-pct must be within 0..=100"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let draw: Vec<usize> = if zipf == 0.0 {
            (0..receipts).map(|n| n % payers).collect()
        } else {
            ensure!(
                zipf.is_finite() && zipf > 0.0,
                "--zipf must be finite and >= 0"
            );
            let law = Zipf::new(
                u32::try_from(payers).context("--payers must fit in u32")?,
                zipf,
            );
            (0..receipts)
                .map(|_| law.sample(&mut rng) as usize)
                .collect()
        };
        let mut used = vec![false; payers];
        for &payer in &draw {
            used[payer] = true;
        }
        let payers_used = used.iter().filter(|&&u| u).count();
        let domain = Domain {
            chain_id: 31_337,
            contract: Address([0x7a; 20]),
        };
        let signers_per_payer = sessions_per_payer.max(1);
        // Key `payer * signers_per_payer + s`: the payer's own key, or its session s.
        let keys: Vec<Option<ed25519_dalek::SigningKey>> = (0..payers * signers_per_payer)
            .into_par_iter()
            .map(|signer| {
                used[signer / signers_per_payer].then(|| {
                    let mut secret = [0u8; 32];
                    secret[..8].copy_from_slice(&(signer as u64).to_le_bytes());
                    secret[8..16].copy_from_slice(&seed.to_le_bytes());
                    secret[31] = if sessions_per_payer == 0 { 0xb5 } else { 0x5e };
                    ed25519_dalek::SigningKey::from_bytes(&secret)
                })
            })
            .collect();
        let records: Vec<[u8; RECEIPT_BYTES]> = draw
            .par_iter()
            .enumerate()
            .map(|(n, &payer)| {
                let key = keys[payer * signers_per_payer + n % signers_per_payer]
                    .as_ref()
                    .context("every drawn payer has a key")?;
                let unsigned = UnsignedReceipt {
                    payer: PayerKey(key.verifying_key().to_bytes()),
                    payee: Address([(n % 251) as u8; 20]),
                    amount: 1_000 + n as u64,
                    nonce: n as u64,
                    timestamp_ms: 1_764_000_000_000 + n as u64,
                    request_hash: *blake3::hash(&(n as u64).to_le_bytes()).as_bytes(),
                    session: sessions_per_payer > 0,
                };
                Ok(unsigned.sign(key, &domain).to_bytes())
            })
            .collect::<anyhow::Result<_>>()?;
        let mut workload = Self {
            domain,
            records,
            bad: vec![false; receipts],
            payers_used,
        };
        let bad_count = ((receipts as f64) * bad_pct / 100.0).round() as usize;
        let mut positions: Vec<usize> = (0..receipts).collect();
        for i in 0..bad_count {
            let j = rng.random_range(i..receipts);
            positions.swap(i, j);
            let position = positions[i];
            // Flip a low bit of S: still canonical, no longer a signature.
            workload.records[position][RECEIPT_BYTES - 32] ^= 1;
            workload.bad[position] = true;
        }
        Ok(workload)
    }

    /// Receipts with a broken signature.
    pub fn bad_count(&self) -> usize {
        self.bad.iter().filter(|&&b| b).count()
    }

    /// The bytes each payer signed, in order.
    pub fn signing_bytes(&self) -> anyhow::Result<Vec<[u8; SIGNING_BYTES]>> {
        self.views()?
            .iter()
            .map(|view| Ok(view.signing_bytes(&self.domain)))
            .collect()
    }

    /// Views of every record.
    pub fn views(&self) -> anyhow::Result<Vec<ReceiptView<'_>>> {
        self.records
            .iter()
            .map(|record| ReceiptView::parse(record).context("a generated record parses"))
            .collect()
    }
}
