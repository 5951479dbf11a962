//! Root of a 1M-leaf epoch tree (issue 6 target: at most 1 s on one core), against the floor of
//! hashing the leaves alone, and what an auditor pays to check a served 1M-leaf dump
//! (`StandardDump::into_tree`: the same build plus a node-by-node comparison), all measured in the
//! same run. The summary line also gives the root's CPU time on its thread, which on a shared
//! machine says what the budget means (one core's work) where wall time also counts waiting.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_engine::{Address, PayerKey};
use tollgate_settle::merkle::{EpochTree, Leaf, leaf_hash};

const LEAVES: u32 = 1_000_000;

fn leaves() -> Vec<Leaf> {
    (0..LEAVES)
        .map(|i| {
            let mut payer = [0x11u8; 32];
            payer[..4].copy_from_slice(&(i / 8).to_be_bytes());
            let mut payee = [0x22u8; 20];
            payee[..4].copy_from_slice(&(i % 4096).to_be_bytes());
            payee[4..8].copy_from_slice(&i.to_be_bytes());
            Leaf {
                payer: PayerKey(payer),
                payee: Address(payee),
                cumulative: u128::from(i) * 1_000,
            }
        })
        .collect()
}

/// CPU time this thread has run so far (Linux's schedstat, in nanoseconds); `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn merkle(c: &mut Criterion) {
    let leaves = leaves();
    let mut group = c.benchmark_group("merkle_1m_leaves");
    group.sample_size(10);
    group.bench_function("leaf_hashes_only", |b| {
        b.iter(|| {
            leaves
                .iter()
                .map(|leaf| leaf_hash(1, leaf))
                .collect::<Vec<_>>()
        })
    });
    group.bench_function("epoch_tree_root", |b| {
        b.iter(|| {
            EpochTree::build(1, leaves.iter().copied())
                .expect("1M leaves")
                .root()
        })
    });
    group.finish();

    let start = Instant::now();
    black_box(
        leaves
            .iter()
            .map(|leaf| leaf_hash(1, leaf))
            .collect::<Vec<_>>(),
    );
    let hashes = start.elapsed();
    let (start, cpu_start) = (Instant::now(), thread_cpu());
    let tree = EpochTree::build(1, leaves.iter().copied()).expect("1M leaves");
    black_box(tree.root());
    let root = start.elapsed();
    let root_cpu = thread_cpu()
        .zip(cpu_start)
        .map_or("unknown".to_owned(), |(end, start)| {
            format!("{:.3} s", (end - start).as_secs_f64())
        });
    let dump = tree.standard_dump();
    let start = Instant::now();
    black_box(dump.into_tree().expect("valid dump").root());
    let check = start.elapsed();
    println!(
        "1M leaves: root {:.3} s (CPU {root_cpu}), leaf hashes alone {:.3} s, ratio {:.2}x (sort + {} internal nodes on top of the leaves); checking the standard-v1 dump (into_tree) {:.3} s",
        root.as_secs_f64(),
        hashes.as_secs_f64(),
        root.as_secs_f64() / hashes.as_secs_f64(),
        LEAVES - 1,
        check.as_secs_f64(),
    );
}

criterion_group!(benches, merkle);
criterion_main!(benches);
