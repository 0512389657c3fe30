//! Link frames between nodes (`protocol::frame`): `decode_body` on any
//! bytes, and the streaming `FrameDecoder` fed the same stream in chunks of
//! a size the input picks.
//!
//! Checks: a body that decodes re-encodes to the same bytes; the decoder
//! returns the same bodies however the stream is cut; it never holds more
//! than one partial frame plus one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::{self, FrameDecoder};

fn bodies(stream: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    for c in stream.chunks(chunk) {
        dec.push(c);
        while let Some(b) = dec.next_body() {
            out.push(b.to_vec());
        }
        assert!(dec.buffered() <= 2 + usize::from(u16::MAX) + chunk);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = frame::decode_body(data) {
        assert_eq!(f.data.len(), f.kind.data_len());
        let again = frame::encode(f.kind, f.epoch, f.data).expect("a decoded frame re-encodes");
        assert_eq!(&again[2..], data);
        let _ = (f.packet(), f.node_or_address(), f.delivery());
    }
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = bodies(stream, stream.len().max(1));
    let cut = 1 + usize::from(cut) * 37;
    assert_eq!(bodies(stream, cut), whole);
    for b in &whole {
        let _ = frame::decode_body(b);
    }
});
