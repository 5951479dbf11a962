//! Receipts applied per second by the ledger writer alone, with group commit on a real RocksDB.
//!
//! The verifier is replaced by one that trusts every record, so the figure is the writer's:
//! replay window, funds bookkeeping, cache, one synced `WriteBatch` per group. Batches are kept
//! in flight so groups fill while each fsync runs, as under load. Also prints the process RSS
//! after 1M distinct channels went through the default-sized cache, and what sealing an epoch of
//! 1M channels costs while receipts keep flowing (`seal` below).
//!
//! Run: `cargo bench -p tollgate-benches --bench ledger`; `... --bench ledger -- seal` runs only
//! the seal figures (it uses only the engine's public API, so the same file measures an older
//! engine in a worktree of it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::executor::block_on;
use tollgate_engine::pipeline::{
    BatchVerifier, Engine, EngineConfig, SubmitRequest, UnknownPayers,
};
use tollgate_engine::{Address, PayerKey, Receipt, ReceiptBatch, ReceiptView, Verdict};

/// Bench-only: trusts every signature so only the writer is measured. Never in library code.
struct TrustEverySignature;

impl BatchVerifier for TrustEverySignature {
    fn verify(&self, receipts: &[ReceiptView<'_>]) -> Vec<Verdict> {
        vec![Ok(()); receipts.len()]
    }
}

const BATCH_RECEIPTS: usize = 256;
/// Batches kept in flight, below the engine's default queue of 256.
const IN_FLIGHT_BATCHES: usize = 128;

fn open(dir: &std::path::Path) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.ledger.unknown_payers = UnknownPayers::Accept;
    Engine::open(config, Arc::new(TrustEverySignature)).expect("engine opens")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Receipt `i` of a stream spread over `channels` channels (payers × 16 payees), nonces
/// increasing per channel.
fn receipt(i: u64, channels: u64, timestamp_ms: u64) -> Receipt {
    let channel = i % channels;
    let mut payer = [0u8; 32];
    payer[..8].copy_from_slice(&(channel / 16).to_le_bytes());
    let mut payee = [0u8; 20];
    payee[0] = (channel % 16) as u8;
    Receipt {
        payer: PayerKey(payer),
        payee: Address(payee),
        amount: 1 + i % 1_000,
        nonce: i / channels,
        timestamp_ms,
        request_hash: [0; 32],
        signature: [0; 64],
        session: false,
    }
}

/// Pushes `receipts` receipts starting at stream position `start` through the engine and
/// waits for every ack.
fn push(engine: &Engine, seq: &mut u64, start: u64, receipts: u64, channels: u64) {
    let timestamp_ms = now_ms();
    let mut pending = std::collections::VecDeque::new();
    let mut next = start;
    while next < start + receipts {
        let end = (next + BATCH_RECEIPTS as u64).min(start + receipts);
        let batch: Vec<Receipt> = (next..end)
            .map(|i| receipt(i, channels, timestamp_ms))
            .collect();
        next = end;
        *seq += 1;
        let ack = engine
            .submit(SubmitRequest {
                client_id: 1,
                producer_id: 1,
                session_epoch: 1,
                batch_seq: *seq,
                receipts: ReceiptBatch::from_receipts(&batch),
                prejudged: Vec::new(),
            })
            .expect("queue has room");
        pending.push_back(ack);
        if pending.len() >= IN_FLIGHT_BATCHES
            && let Some(ack) = pending.pop_front()
        {
            let ack = block_on(ack).expect("answered").expect("acked");
            assert!(ack.rejections.is_empty(), "{:?}", ack.rejections.first());
        }
    }
    for ack in pending {
        let ack = block_on(ack).expect("answered").expect("acked");
        assert!(ack.rejections.is_empty(), "{:?}", ack.rejections.first());
    }
}

/// A `/proc/self/status` figure in KiB: `VmRSS` (now) or `VmHWM` (peak so far).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn rss_at_a_million_channels() {
    const CHANNELS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let before = rss_kib();
    let started = Instant::now();
    let mut seq = 0;
    push(&engine, &mut seq, 0, CHANNELS, CHANNELS);
    let elapsed = started.elapsed();
    let after = rss_kib();
    println!(
        "ledger rss: {CHANNELS} distinct channels in {:.1} s ({:.0} receipts/s); RSS {} MiB before, \
         {} MiB after (default cache: {} channels)",
        elapsed.as_secs_f64(),
        CHANNELS as f64 / elapsed.as_secs_f64(),
        before / 1024,
        after / 1024,
        tollgate_engine::pipeline::LedgerConfig::default().channels_cached_max,
    );
    engine.shutdown().expect("shutdown");
}

/// One batch of the steady producer that runs beside a seal: submitted, acked, and when.
struct Timed {
    sent: Instant,
    acked: Instant,
}

/// Seals an epoch of 1,000,000 channels (62,500 payers × 16 payees) while a second producer
/// keeps sending 16-receipt batches one at a time, each to channels of the epoch being sealed
/// (their second receipt), so they land on entries the seal may not have reached. Prints the
/// seal's duration, the longest ack wait of a batch in flight during the seal against the
/// longest in the seconds before it, and the process's peak RSS.
fn seal_under_load() {
    const CHANNELS: u64 = 1_000_000;
    const BATCH: u64 = 16;
    const BASELINE: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut seq = 0;
    let filled = Instant::now();
    push(&engine, &mut seq, 0, CHANNELS, CHANNELS);
    let fill_s = filled.elapsed().as_secs_f64();
    let peak_before_kib = status_kib("VmHWM:");

    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let engine = engine.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut timed = Vec::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let timestamp_ms = now_ms();
                // 7,919 is prime to 1,000,000: a walk over distinct channels, scattered over the
                // index, each paid once more.
                let batch: Vec<Receipt> = (next..next + BATCH)
                    .map(|j| {
                        let mut r = receipt((j * 7_919) % CHANNELS, CHANNELS, timestamp_ms);
                        r.nonce = 1;
                        r
                    })
                    .collect();
                next += BATCH;
                let sent = Instant::now();
                let ack = engine
                    .submit(SubmitRequest {
                        client_id: 1,
                        producer_id: 2,
                        session_epoch: 1,
                        batch_seq: next / BATCH,
                        receipts: ReceiptBatch::from_receipts(&batch),
                        prejudged: Vec::new(),
                    })
                    .expect("queue has room");
                let ack = block_on(ack).expect("answered").expect("acked");
                assert!(ack.rejections.is_empty(), "{:?}", ack.rejections.first());
                timed.push(Timed {
                    sent,
                    acked: Instant::now(),
                });
            }
            timed
        })
    };
    std::thread::sleep(BASELINE);
    let seal_started = Instant::now();
    let sealed = block_on(engine.seal_epoch().expect("queued"))
        .expect("answered")
        .expect("sealed");
    let seal_ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let timed = producer.join().expect("producer");
    let peak_after_kib = status_kib("VmHWM:");
    assert_eq!(sealed.epoch, 1);
    assert_eq!(sealed.leaves.len() as u64, CHANNELS);

    let wait = |t: &Timed| t.acked - t.sent;
    let before = timed.iter().filter(|t| t.acked < seal_started);
    let during: Vec<&Timed> = timed
        .iter()
        .filter(|t| t.acked >= seal_started && t.sent <= seal_ended)
        .collect();
    let longest_before = before.map(wait).max().unwrap_or_default();
    let longest_during = during.iter().map(|t| wait(t)).max().unwrap_or_default();
    let acked_during = during.iter().filter(|t| t.acked <= seal_ended).count();
    println!(
        "ledger seal: epoch of {CHANNELS} channels (filled in {fill_s:.1} s) sealed in {:.2} s \
         while a producer kept sending {BATCH}-receipt batches one at a time: {acked_during} \
         batches acked during the seal; longest ack wait {:.1} ms during the seal, {:.1} ms in \
         the {} s before; peak RSS {} MiB before the seal, {} MiB after (the reply holds \
         {} leaves)",
        (seal_ended - seal_started).as_secs_f64(),
        longest_during.as_secs_f64() * 1e3,
        longest_before.as_secs_f64() * 1e3,
        BASELINE.as_secs(),
        peak_before_kib / 1024,
        peak_after_kib / 1024,
        sealed.leaves.len(),
    );
    drop(sealed);
    engine.shutdown().expect("shutdown");
}

fn writer_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger_writer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    const RECEIPTS: u64 = 32 * 1024;
    group.throughput(Throughput::Elements(RECEIPTS));
    for channels in [1_000u64, 100_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        let mut seq = 0;
        let mut position = 0;
        group.bench_with_input(
            BenchmarkId::new("receipts", format!("{channels}_channels")),
            &channels,
            |b, &channels| {
                b.iter(|| {
                    push(&engine, &mut seq, position, RECEIPTS, channels);
                    position += RECEIPTS;
                })
            },
        );
        engine.shutdown().expect("shutdown");
    }
    group.finish();
}

fn main() {
    // Names given on the command line (as for criterion) pick what runs; none runs everything.
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |bench: &str| names.is_empty() || names.iter().any(|n| bench.contains(n.as_str()));
    if wanted("rss") {
        rss_at_a_million_channels();
    }
    if wanted("seal") {
        seal_under_load();
    }
    let mut criterion = Criterion::default().configure_from_args();
    writer_throughput(&mut criterion);
    criterion.final_summary();
}
