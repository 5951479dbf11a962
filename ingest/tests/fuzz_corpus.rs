//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the same checks as the fuzz targets,
//! so every input the fuzzer ever found interesting stays a regression test in the normal suite.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tollgate_engine::{ReceiptBatch, ReceiptView};
use tollgate_ingest::wire::{Decoded, FrameType, decode_frame};

/// The limit the `frame_decode` target uses.
const FRAME_BYTES_MAX: u32 = 4096;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("corpus file is readable");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

#[test]
fn frame_corpus_decodes_without_panic_and_re_encodes_exactly() {
    let mut types_seen = HashSet::new();
    for (path, data) in corpus("frame_decode") {
        let mut buf = BytesMut::from(&data[..]);
        let mut offset = 0;
        while let Ok(Decoded::Frame(frame)) = decode_frame(&mut buf, FRAME_BYTES_MAX) {
            let consumed = data.len() - buf.len() - offset;
            assert_eq!(
                &frame.to_bytes()[..],
                &data[offset..offset + consumed],
                "{}",
                path.display()
            );
            types_seen.insert(frame.frame_type());
            offset += consumed;
        }
    }
    // The corpus is only worth replaying if it reaches every body decoder.
    for frame_type in FrameType::ALL {
        assert!(
            types_seen.contains(&frame_type),
            "no valid {frame_type} in the corpus"
        );
    }
}

#[test]
fn receipt_corpus_parses_without_panic_and_re_encodes_exactly() {
    let mut parsed = 0;
    for (path, data) in corpus("receipt_parse") {
        if let Ok(view) = ReceiptView::parse(&data) {
            assert_eq!(
                &view.to_owned().to_bytes()[..],
                &data[..],
                "{}",
                path.display()
            );
            parsed += 1;
        }
        if let Ok(batch) = ReceiptBatch::new(bytes::Bytes::copy_from_slice(&data)) {
            for record in batch.iter() {
                let _ = record.map(|view| view.to_owned());
            }
        }
    }
    assert!(parsed > 0, "no valid receipt in the corpus");
}
