//! `tollgate bench verify`: Tollgate's verifier against ed25519-dalek's `verify_batch`, over the
//! same presigned receipts, in one run, so the ratio is honest on any machine.
//!
//! Contenders, each on a rayon pool of `--threads` threads, chunked by the same batch size:
//! - `dalek2_default`: ed25519-dalek 2.x `verify_batch` on curve25519-dalek 4, built the default
//!   way (its AVX2 backend; its IFMA path needs a nightly compiler). The baseline.
//! - `dalek3_same_backend`: ed25519-dalek 3 `verify_batch` on curve25519-dalek 5, with the
//!   backend Tollgate uses.
//! - `zebra_batch`: ed25519-zebra's batch verifier (ZIP-215, coalescing the terms of each
//!   distinct key, as Tollgate does) on the same curve25519-dalek 5 backend.
//! - `tollgate`: [`tollgate_engine::VerifyPool`] over the raw receipt bytes.
//! - `ed25519_simd` and `ed25519_simd_hot_keys` (with `--simd-bin`, on a CPU with AVX-512
//!   IFMA): the `ed25519-simd` crate (eight signatures per vector, ZIP-215), in its own binary
//!   because it needs IFMA at compile time; without a key cache (its default) and with a
//!   `HotKeyCache` holding every payer key of the workload (its analogue of key coalescing).
//! - `tollgate_sessions` (with `--sessions-per-payer N`): the same, over the same draw signed
//!   by N session keys per payer instead of the payer keys: what delegating to agents costs
//!   the verifier (more distinct keys, so less coalescing per batch equation).
//!
//! The dalek contenders get their keys decompressed and their messages assembled before the clock
//! starts (a caller could cache both); a dalek batch that fails falls back to `verify` per
//! receipt, which is what a caller of `verify_batch` has to do to find the bad ones. Tollgate
//! starts from the 176-byte records with a warm key cache (a first, untimed pass fills it, as
//! traffic does).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use serde::Serialize;
use tollgate_engine::verify::BATCH_RECEIPTS_DEFAULT;

mod contenders;
mod simd;
mod workload;

pub use contenders::{Backends, Dalek2Inputs, Dalek3Inputs, ZebraInputs, tollgate_pool};
pub use workload::Workload;

/// Flags of `tollgate bench verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchVerifyArgs {
    /// Receipts to presign and verify.
    #[arg(long, default_value_t = 100_000)]
    pub receipts: usize,
    /// Distinct payer keys to draw from.
    #[arg(long, default_value_t = 10_000)]
    pub payers: usize,
    /// Zipf exponent of the payer draw; 0 gives each payer in turn (all keys distinct when
    /// `--payers` >= `--receipts`).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Verification threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Percentage of receipts whose signature is broken, at random positions.
    #[arg(long, default_value_t = 0.0)]
    pub bad_pct: f64,
    /// Receipts per batch equation, for every contender.
    #[arg(long, default_value_t = BATCH_RECEIPTS_DEFAULT)]
    pub batch: usize,
    /// Timed passes per contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seed for payers, amounts and bad positions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also verify the same receipts signed by this many session keys per payer, and report
    /// the rate against the payer-signed one (0: payer keys only).
    #[arg(long, default_value_t = 0)]
    pub sessions_per_payer: usize,
    /// The `ed25519-simd` contender's binary (`make bench-simd` builds it, on a CPU with AVX-512
    /// IFMA only); runs it twice, without and with a key cache.
    #[arg(long)]
    pub simd_bin: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One contender's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Contender name.
    pub name: String,
    /// Threads it ran on.
    pub threads: usize,
    /// Median receipts per second over the timed passes.
    pub receipts_per_s: f64,
    /// `receipts_per_s` over the baseline's, measured in this run.
    pub ratio_vs_dalek_default: f64,
    /// Every pass, receipts per second.
    pub passes_receipts_per_s: Vec<f64>,
}

/// Everything one run prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Receipts verified per pass.
    pub receipts: usize,
    /// Payer keys drawn from.
    pub payers: usize,
    /// Distinct payers that signed something.
    pub payers_used: usize,
    /// Zipf exponent.
    pub zipf: f64,
    /// Threads per contender.
    pub threads: usize,
    /// Percentage of broken signatures.
    pub bad_pct: f64,
    /// Receipts per batch equation.
    pub batch: usize,
    /// Backend detection.
    pub backend: Backends,
    /// The `ed25519-simd` contender's arithmetic, when it ran (fixed at its compile time).
    pub simd_backend: Option<&'static str>,
    /// The contenders, baseline first.
    pub results: Vec<Measurement>,
    /// Session keys per payer of the `tollgate_sessions` contender (0: not run).
    pub sessions_per_payer: usize,
    /// `tollgate_sessions` over `tollgate`, measured in this run.
    pub session_vs_payer: Option<f64>,
    /// Tollgate on one thread, when `threads` > 1.
    pub tollgate_one_thread_receipts_per_s: Option<f64>,
    /// Tollgate at `threads` over Tollgate on one thread.
    pub thread_scaling: Option<f64>,
    /// Tollgate on the same receipts with no broken signature, when `bad_pct` > 0.
    pub tollgate_clean_receipts_per_s: Option<f64>,
    /// Throughput lost to the bad mix: 1 - bad / clean.
    pub bad_mix_cost: Option<f64>,
    /// Per-receipt work every ed25519 verifier does whatever its batch equation, one thread.
    pub floor: Floor,
}

/// The per-receipt work no batch equation removes: decompressing R (a field square root) and
/// hashing the challenge k. Timed alone on one thread, it bounds what coalescing can gain.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Microseconds to decompress one R.
    pub r_decompress_us: f64,
    /// Microseconds to compute one k = SHA-512(R ‖ A ‖ M) mod L.
    pub challenge_hash_us: f64,
    /// Receipts per second per thread if the multiscalar multiplication cost nothing.
    pub receipts_per_s_per_thread_max: f64,
}

impl Floor {
    fn measure(workload: &Workload) -> anyhow::Result<Self> {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let views = workload.views()?;
        let separator = workload.domain.separator();
        let n = views.len() as f64;
        let r_decompress = timed(|| {
            views
                .iter()
                .filter(|view| {
                    let mut r = [0u8; 32];
                    r.copy_from_slice(&view.signature()[..32]);
                    CompressedEdwardsY(r).decompress().is_some()
                })
                .count()
        });
        let challenge_hash = timed(|| {
            views
                .iter()
                .map(|view| {
                    let mut hasher = Sha512::new();
                    hasher.update(&view.signature()[..32]);
                    hasher.update(view.payer().0);
                    hasher.update(separator);
                    hasher.update(view.body());
                    Scalar::from_hash(hasher).to_bytes()[0]
                })
                .fold(0u8, |acc, byte| acc ^ byte)
        });
        Ok(Self {
            r_decompress_us: r_decompress / n * 1e6,
            challenge_hash_us: challenge_hash / n * 1e6,
            receipts_per_s_per_thread_max: n / (r_decompress + challenge_hash),
        })
    }
}

/// Runs the benchmark and prints the report (text, or JSON with `--json`).
pub fn run(args: &BenchVerifyArgs) -> anyhow::Result<()> {
    let report = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Runs the benchmark and returns the figures.
pub fn measure(args: &BenchVerifyArgs) -> anyhow::Result<Report> {
    ensure!(args.receipts >= 1, "--receipts must be at least 1");
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    ensure!(threads >= 1, "--threads must be at least 1");
    let workload = Workload::generate(
        args.receipts,
        args.payers,
        args.zipf,
        args.bad_pct,
        args.seed,
    )?;
    let expected_bad = workload.bad_count();
    let sessions = (args.sessions_per_payer > 0)
        .then(|| {
            Workload::generate_with_sessions(
                args.receipts,
                args.payers,
                args.zipf,
                args.bad_pct,
                args.seed,
                args.sessions_per_payer,
            )
        })
        .transpose()?;
    let session_views = sessions.as_ref().map(Workload::views).transpose()?;

    let dalek2 = Dalek2Inputs::new(&workload)?;
    let dalek3 = Dalek3Inputs::new(&workload)?;
    let zebra = ZebraInputs::new(&workload)?;
    let views = workload.views()?;
    let pool = tollgate_pool(&workload.domain, threads, args.batch)?;
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // Started before the contenders that borrow them; each reads the file once, at its start.
    let simd_children = match &args.simd_bin {
        Some(binary) => {
            // Without IFMA the child would die of SIGILL with nothing to say.
            ensure!(
                Backends::detect().cpu_avx512ifma,
                "--simd-bin: ed25519-simd needs AVX-512 IFMA, which this CPU does not have"
            );
            let simd_file = tempfile::NamedTempFile::new()?;
            simd::write_workload(&workload, simd_file.path())?;
            let start = |cache| {
                let (child, rejected) =
                    simd::SimdChild::start(binary, simd_file.path(), threads, args.batch, cache)?;
                ensure!(
                    rejected == expected_bad,
                    "ed25519-simd rejected {rejected}, expected {expected_bad}"
                );
                anyhow::Ok(child)
            };
            vec![
                ("ed25519_simd", start(0)?),
                ("ed25519_simd_hot_keys", start(workload.payers_used.max(1))?),
            ]
        }
        None => {
            if Backends::detect().cpu_avx512ifma {
                eprintln!(
                    "this CPU has AVX-512 IFMA: `make bench-simd` builds the ed25519-simd \
                     contender, and --simd-bin contenders/ed25519-simd/target/release/\
                     tollgate-bench-simd runs it"
                );
            }
            Vec::new()
        }
    };
    // Each contender verifies every receipt and answers how many it rejected; the first is the
    // baseline every ratio is taken against.
    let mut contenders: Vec<(&str, Contender)> = vec![
        (
            "dalek2_default",
            Box::new(|| Ok(rayon_pool.install(|| dalek2.verify(args.batch)))),
        ),
        (
            "dalek3_same_backend",
            Box::new(|| Ok(rayon_pool.install(|| dalek3.verify(args.batch)))),
        ),
        (
            "zebra_batch",
            Box::new(|| Ok(rayon_pool.install(|| zebra.verify(args.batch)))),
        ),
        ("tollgate", Box::new(|| Ok(count_bad(&pool.verify(&views))))),
    ];
    if let Some(session_views) = &session_views {
        contenders.push((
            "tollgate_sessions",
            Box::new(|| Ok(count_bad(&pool.verify(session_views)))),
        ));
    }
    for (name, child) in &simd_children {
        contenders.push((*name, Box::new(|| child.pass())));
    }

    // Untimed pass: warms Tollgate's key cache and checks every contender finds the bad ones.
    for (name, verify) in &contenders {
        let rejected = verify()?;
        ensure!(
            rejected == expected_bad,
            "{name} rejected {rejected}, expected {expected_bad}"
        );
    }

    let n = args.receipts as f64;
    let mut passes = vec![Vec::with_capacity(args.rounds); contenders.len()];
    // Interleave the contenders so a noisy neighbour slows them alike.
    for _ in 0..args.rounds {
        for ((name, verify), passes) in contenders.iter().zip(&mut passes) {
            let started = Instant::now();
            let rejected = verify()?;
            passes.push(n / started.elapsed().as_secs_f64());
            ensure!(
                rejected == expected_bad,
                "{name} rejected {rejected} in a timed pass, expected {expected_bad}"
            );
        }
    }
    let baseline = median(&passes[0]);
    let results = contenders
        .iter()
        .zip(passes)
        .map(|((name, _), passes)| Measurement {
            name: (*name).to_owned(),
            threads,
            receipts_per_s: median(&passes),
            ratio_vs_dalek_default: median(&passes) / baseline,
            passes_receipts_per_s: passes,
        })
        .collect::<Vec<_>>();
    let rate_of = |name: &str| {
        results
            .iter()
            .find(|measured| measured.name == name)
            .map(|measured| measured.receipts_per_s)
    };
    let tollgate_rate = rate_of("tollgate").context("the tollgate contender always runs")?;
    let session_vs_payer = rate_of("tollgate_sessions").map(|sessions| sessions / tollgate_rate);

    let tollgate_one_thread_receipts_per_s = if threads > 1 {
        let single = tollgate_pool(&workload.domain, 1, args.batch)?;
        single.verify(&views);
        Some(median_rate(args.rounds, n, || single.verify(&views).len()))
    } else {
        None
    };
    let tollgate_clean_receipts_per_s = if expected_bad > 0 {
        let clean = Workload::generate(args.receipts, args.payers, args.zipf, 0.0, args.seed)?;
        let clean_views = clean.views()?;
        pool.verify(&clean_views);
        Some(median_rate(args.rounds, n, || {
            pool.verify(&clean_views).len()
        }))
    } else {
        None
    };
    Ok(Report {
        receipts: args.receipts,
        payers: args.payers,
        payers_used: workload.payers_used,
        zipf: args.zipf,
        threads,
        bad_pct: args.bad_pct,
        batch: args.batch,
        backend: Backends::detect(),
        simd_backend: (!simd_children.is_empty())
            .then_some("avx512ifma, 8 signatures per vector (fixed at compile time)"),
        results,
        sessions_per_payer: args.sessions_per_payer,
        session_vs_payer,
        tollgate_one_thread_receipts_per_s,
        thread_scaling: tollgate_one_thread_receipts_per_s.map(|one| tollgate_rate / one),
        tollgate_clean_receipts_per_s,
        bad_mix_cost: tollgate_clean_receipts_per_s.map(|clean| 1.0 - tollgate_rate / clean),
        floor: Floor::measure(&workload)?,
    })
}

/// Verifies every receipt once and answers how many it rejected.
type Contender<'a> = Box<dyn Fn() -> anyhow::Result<usize> + Sync + 'a>;

fn count_bad(verdicts: &[tollgate_engine::Verdict]) -> usize {
    verdicts.iter().filter(|verdict| verdict.is_err()).count()
}

/// Seconds `work` took.
fn timed<T>(work: impl FnOnce() -> T) -> f64 {
    let start = Instant::now();
    std::hint::black_box(work());
    start.elapsed().as_secs_f64()
}

/// Median over `rounds` timed passes of `work`, in receipts per second for `receipts` receipts.
fn median_rate<T>(rounds: usize, receipts: f64, work: impl Fn() -> T) -> f64 {
    let rates: Vec<f64> = (0..rounds).map(|_| receipts / timed(&work)).collect();
    median(&rates)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn print_text(report: &Report) {
    println!(
        "bench verify: {} receipts, {} payers ({} used), zipf {}, {} threads, {}% bad, batch {}",
        report.receipts,
        report.payers,
        report.payers_used,
        report.zipf,
        report.threads,
        report.bad_pct,
        report.batch
    );
    let b = &report.backend;
    println!(
        "backend: curve25519-dalek 5 (tollgate, dalek 3) = {}, curve25519-dalek 4 (dalek 2) = {} \
         [cpu avx512ifma={} avx512vl={} avx2={}; built with avx512 cfg={}]",
        b.curve25519_dalek_5,
        b.curve25519_dalek_4,
        b.cpu_avx512ifma,
        b.cpu_avx512vl,
        b.cpu_avx2,
        b.built_with_avx512_cfg
    );
    if let Some(simd) = report.simd_backend {
        println!("backend: ed25519-simd = {simd}");
    }
    for m in &report.results {
        println!(
            "{:<22} {:>10.0} receipts/s  ratio_vs_dalek_default {:.2}",
            m.name, m.receipts_per_s, m.ratio_vs_dalek_default
        );
    }
    if let Some(ratio) = report.session_vs_payer {
        println!(
            "tollgate_sessions over tollgate (same draw, {} session keys per payer): {ratio:.3}",
            report.sessions_per_payer
        );
    }
    if let (Some(one), Some(scaling)) = (
        report.tollgate_one_thread_receipts_per_s,
        report.thread_scaling,
    ) {
        println!(
            "tollgate 1 thread      {one:>10.0} receipts/s  scaling at {} threads {scaling:.2}",
            report.threads
        );
    }
    if let (Some(clean), Some(cost)) = (report.tollgate_clean_receipts_per_s, report.bad_mix_cost) {
        println!(
            "tollgate clean         {clean:>10.0} receipts/s  bad mix costs {:.1}%",
            cost * 100.0
        );
    }
    let floor = &report.floor;
    println!(
        "floor per receipt, 1 thread: R decompress {:.2} us + challenge hash {:.2} us = at most {:.0} receipts/s per thread",
        floor.r_decompress_us, floor.challenge_hash_us, floor.receipts_per_s_per_thread_max
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_engine::{Verifier, VerifyConfig};

    #[test]
    fn workload_breaks_exactly_the_requested_share() {
        let workload = Workload::generate(400, 50, 1.1, 5.0, 3).expect("generates");
        assert_eq!(workload.bad_count(), 20);
        let verifier = Verifier::new(workload.domain, VerifyConfig::default());
        let views = workload.views().expect("parse");
        let verdicts = verifier.verify_batch(&views);
        for (verdict, bad) in verdicts.iter().zip(&workload.bad) {
            assert_eq!(verdict.is_err(), *bad);
        }
    }

    #[test]
    fn tiny_run_reports_every_contender() {
        let args = BenchVerifyArgs {
            receipts: 300,
            payers: 20,
            zipf: 1.1,
            threads: Some(2),
            bad_pct: 1.0,
            batch: 64,
            rounds: 1,
            seed: 9,
            json: true,
            sessions_per_payer: 3,
            simd_bin: None,
        };
        let report = measure(&args).expect("runs");
        let names: Vec<&str> = report.results.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dalek2_default",
                "dalek3_same_backend",
                "zebra_batch",
                "tollgate",
                "tollgate_sessions"
            ]
        );
        assert!(report.session_vs_payer.is_some());
        assert!(report.thread_scaling.is_some());
        assert!(report.bad_mix_cost.is_some());
    }
}
