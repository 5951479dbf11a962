//! Criterion: Tollgate's verify pool over presigned receipts, 10,000 payers drawn Zipf(1.1) and
//! all keys distinct, batch sizes 64 / 256 / 1024, one thread and every core; ed25519-dalek 2.x
//! `verify_batch` (the default a user gets) measured alongside at batch 256 as the baseline.
//! `cargo bench -p tollgate-benches --bench verify`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_tools::bench_verify::{Dalek2Inputs, Workload, tollgate_pool};

const RECEIPTS: usize = 8_192;

fn verify(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    let workloads = [
        ("zipf1.1_10k_payers", 10_000, 1.1),
        ("all_distinct", RECEIPTS, 0.0),
    ];
    for (name, payers, zipf) in workloads {
        let workload =
            Workload::generate(RECEIPTS, payers, zipf, 0.0, 1).expect("workload generates");
        let views = workload.views().expect("records parse");
        let baseline = Dalek2Inputs::new(&workload).expect("dalek inputs");
        let mut group = c.benchmark_group(format!("verify/{name}"));
        group.throughput(Throughput::Elements(RECEIPTS as u64));
        group.sample_size(10);
        for &threads in &thread_counts {
            let rayon_pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            group.bench_function(BenchmarkId::new("dalek2_default_batch256", threads), |b| {
                b.iter(|| rayon_pool.install(|| baseline.verify(256)))
            });
            for batch in [64, 256, 1024] {
                let pool = tollgate_pool(&workload.domain, threads, batch).expect("pool");
                pool.verify(&views);
                group.bench_function(
                    BenchmarkId::new(format!("tollgate_batch{batch}"), threads),
                    |b| b.iter(|| pool.verify(&views)),
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
