//! A million receipts through the pool: verdicts in input order, bad ones exactly where they were
//! put, and no allocation larger than the verdict vector while the pool works (the input is split
//! into batch-sized chunks, never copied or gathered into one giant buffer).

// A counting allocator is the only way to observe allocation sizes; it forwards every call to
// the system allocator unchanged.
#![allow(unsafe_code)]

mod verify_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tollgate_engine::{Reason, ReceiptView, Verdict, Verifier, VerifyConfig, VerifyPool};

struct LargestAllocation;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) {
            LARGEST_BYTES.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

const RECEIPTS: usize = 1_000_000;

#[test]
fn a_million_receipts_are_chunked_and_come_back_in_order() {
    let mut rng = verify_support::rng(0x1e6);
    // 512 distinct records, many payers; the million views point into them (repeats are fine:
    // dedup is the ledger's job, the verifier checks each one).
    let mut records: Vec<[u8; 176]> = verify_support::honest(512, 64, &mut rng)
        .iter()
        .map(|receipt| receipt.to_bytes())
        .collect();
    let bad_records = 8;
    for record in records.iter_mut().take(bad_records) {
        record[120] ^= 0x10;
    }
    let parsed: Vec<ReceiptView<'_>> = records
        .iter()
        .map(|record| ReceiptView::parse(record).expect("a v1 record"))
        .collect();
    // Record 0..8 are bad; put them at scattered positions, everything else is good.
    let mut views = Vec::with_capacity(RECEIPTS);
    let mut expected = Vec::with_capacity(RECEIPTS);
    for n in 0..RECEIPTS {
        let bad = n % 99_991 == 17;
        let index = if bad {
            n % bad_records
        } else {
            bad_records + n % (records.len() - bad_records)
        };
        views.push(parsed[index]);
        expected.push(if bad {
            Err(Reason::BadSignature)
        } else {
            Ok(())
        });
    }
    let config = VerifyConfig {
        threads: 2,
        ..VerifyConfig::default()
    };
    let pool = VerifyPool::new(
        Verifier::new(verify_support::domain(), config.clone()),
        config,
    )
    .expect("pool starts");

    WATCHING.store(true, Ordering::SeqCst);
    let verdicts: Vec<Verdict> = pool.verify(&views);
    WATCHING.store(false, Ordering::SeqCst);

    assert_eq!(verdicts.len(), RECEIPTS);
    assert!(
        verdicts == expected,
        "verdicts differ from the expected ones"
    );
    let verdict_vec_bytes = RECEIPTS * std::mem::size_of::<Verdict>();
    let largest = LARGEST_BYTES.load(Ordering::SeqCst);
    assert!(
        largest <= verdict_vec_bytes,
        "largest allocation {largest} bytes exceeds the verdict vector ({verdict_vec_bytes} bytes)"
    );
}
