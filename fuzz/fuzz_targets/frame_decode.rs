//! Any bytes into the frame decoder: it must never panic, never allocate past the frame limit,
//! and every frame it accepts must re-encode to exactly the bytes it was decoded from (v1 has one
//! encoding per frame, which is what makes "nothing of a bad frame is applied" checkable). The
//! grant or revocation a GRANT or REVOKE carries goes through the parser the server runs on it,
//! under the same rule.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate_engine::grant::{SignedGrant, SignedRevocation};
use tollgate_ingest::wire::{Decoded, Frame, decode_frame};

// Small enough that the fuzzer reaches the size check with short inputs.
const FRAME_BYTES_MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    while let Ok(Decoded::Frame(frame)) = decode_frame(&mut buf, FRAME_BYTES_MAX) {
        let consumed = data.len() - buf.len() - offset;
        assert_eq!(&frame.to_bytes()[..], &data[offset..offset + consumed]);
        offset += consumed;
        match &frame {
            Frame::Grant(registration) => {
                if let Ok(grant) = SignedGrant::decode(&registration.record) {
                    assert_eq!(&grant.to_bytes()[..], &registration.record[..]);
                }
            }
            Frame::Revoke(registration) => {
                if let Ok(revocation) = SignedRevocation::decode(&registration.record) {
                    assert_eq!(&revocation.to_bytes()[..], &registration.record[..]);
                }
            }
            _ => {}
        }
    }
});
