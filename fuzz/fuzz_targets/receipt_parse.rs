//! Any bytes into the receipt parser, alone and as a batch: no panic, and a record that parses
//! re-encodes to the same 176 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_engine::{ReceiptBatch, ReceiptView};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = ReceiptView::parse(data) {
        assert_eq!(&view.to_owned().to_bytes()[..], data);
    }
    if let Ok(batch) = ReceiptBatch::new(bytes::Bytes::copy_from_slice(data)) {
        for (index, record) in batch.iter().enumerate() {
            if let Ok(view) = record {
                assert_eq!(view.as_bytes(), &data[index * 176..(index + 1) * 176]);
            }
        }
    }
});
