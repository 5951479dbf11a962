//! `tollgate-bench-simd WORKLOAD THREADS BATCH CACHE`: the `ed25519-simd` contender of
//! `tollgate bench verify`, a child process it drives so this contender's passes interleave with
//! the in-process ones.
//!
//! WORKLOAD is the file `tollgate bench verify` wrote: `TGSIMD1\n`, the receipt count and the
//! signed message length (u32 little-endian each), then per receipt the payer key (32 bytes), the
//! signature (64) and the signed message. THREADS verifiers, one per thread, each take a
//! contiguous share in chunks of BATCH; CACHE is the capacity of each verifier's `HotKeyCache`
//! (retained decoded keys, its analogue of key coalescing), 0 for the crate's default
//! `NullKeyCache`. ZIP-215 policy: Tollgate's cofactored equation (Tollgate is stricter on
//! encodings and keys, which the workload's receipts meet either way).
//!
//! Protocol on stdin/stdout: after an untimed pass it prints `ready <rejected>`; then for each
//! line `pass` it verifies every receipt and prints `<rejected>`; end of input ends it. The
//! parent times each exchange (a pipe round trip is microseconds, a pass tenths of a second).
//!
//! Four positional arguments and no other dependency than the contender itself: an argument
//! parser would be the only other crate this binary builds.

use std::io::{BufRead, Write};
use std::sync::mpsc;

use ed25519_simd::{HotKeyCache, KeyCache, NullKeyCache, Verifier, VerifyInput, Zip215Policy};

const MAGIC: &[u8; 8] = b"TGSIMD1\n";

struct Workload {
    count: usize,
    message_len: usize,
    records: Vec<u8>,
}

impl Workload {
    fn read(path: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        let header = bytes
            .get(..16)
            .filter(|header| header.starts_with(MAGIC))
            .ok_or_else(|| format!("{path} is not a TGSIMD1 workload"))?;
        let word = |at: usize| {
            let mut le = [0u8; 4];
            le.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(le) as usize
        };
        let (count, message_len) = (word(8), word(12));
        let records = bytes[16..].to_vec();
        if records.len() != count * (96 + message_len) {
            return Err(format!(
                "{path}: {} record bytes for {count} receipts of {message_len}-byte messages",
                records.len()
            ));
        }
        Ok(Self {
            count,
            message_len,
            records,
        })
    }

    fn inputs(&self) -> Vec<VerifyInput<'_>> {
        self.records
            .chunks_exact(96 + self.message_len)
            .map(|record| {
                let mut public_key = [0u8; 32];
                let mut signature = [0u8; 64];
                public_key.copy_from_slice(&record[..32]);
                signature.copy_from_slice(&record[32..96]);
                VerifyInput {
                    public_key,
                    signature,
                    message: &record[96..],
                }
            })
            .collect()
    }
}

/// Serves passes until stdin ends: `threads` workers, each building its own verifier with
/// `new_verifier` (a verifier is not `Send`, and keeps its key cache across passes), each owning
/// a contiguous share of `inputs`.
fn serve<C: KeyCache>(
    new_verifier: impl Fn() -> Verifier<Zip215Policy, C> + Sync,
    inputs: &[VerifyInput<'_>],
    threads: usize,
    batch: usize,
) -> Result<(), String> {
    let share = inputs.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let workers: Vec<mpsc::Sender<()>> = inputs
            .chunks(share)
            .map(|inputs| {
                let (go_tx, go_rx) = mpsc::channel::<()>();
                let (done_tx, new_verifier) = (done_tx.clone(), &new_verifier);
                scope.spawn(move || {
                    let mut verifier = new_verifier();
                    let mut verdicts = vec![false; inputs.len()];
                    while go_rx.recv().is_ok() {
                        for (inputs, verdicts) in
                            inputs.chunks(batch).zip(verdicts.chunks_mut(batch))
                        {
                            verifier.verify_batch(inputs, verdicts);
                        }
                        let rejected = verdicts.iter().filter(|&&valid| !valid).count();
                        if done_tx.send(rejected).is_err() {
                            return;
                        }
                    }
                });
                go_tx
            })
            .collect();
        let pass = || -> Result<usize, String> {
            for worker in &workers {
                worker.send(()).map_err(|_| "a worker stopped".to_owned())?;
            }
            (0..workers.len())
                .map(|_| done_rx.recv().map_err(|_| "a worker stopped".to_owned()))
                .sum()
        };
        let mut out = std::io::stdout().lock();
        let io = |e: std::io::Error| format!("stdout: {e}");
        writeln!(out, "ready {}", pass()?).map_err(io)?;
        out.flush().map_err(io)?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("stdin: {e}"))?;
            if line.trim() != "pass" {
                return Err(format!("unexpected command {line:?}"));
            }
            writeln!(out, "{}", pass()?).map_err(io)?;
            out.flush().map_err(io)?;
        }
        // Dropping the senders ends the workers before the scope joins them.
        drop(workers);
        Ok(())
    })
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, threads, batch, cache] = args.as_slice() else {
        return Err("usage: tollgate-bench-simd WORKLOAD THREADS BATCH CACHE".to_owned());
    };
    let number = |name: &str, value: &str| {
        value
            .parse::<usize>()
            .map_err(|e| format!("{name} {value:?}: {e}"))
    };
    let (threads, batch, cache) = (
        number("THREADS", threads)?.max(1),
        number("BATCH", batch)?.max(1),
        number("CACHE", cache)?,
    );
    let workload = Workload::read(path)?;
    let inputs = workload.inputs();
    debug_assert_eq!(inputs.len(), workload.count);
    if cache == 0 {
        serve(
            || Verifier::with_cache(NullKeyCache),
            &inputs,
            threads,
            batch,
        )
    } else {
        let new_verifier = || Verifier::with_cache(HotKeyCache::with_capacity(cache));
        serve(new_verifier, &inputs, threads, batch)
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tollgate-bench-simd: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
