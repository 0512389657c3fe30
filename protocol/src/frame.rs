//! Link frames: how packets travel on a QUIC stream.
//!
//! ```text
//! frame = length:u16be  body[length]
//! body  = version:u8=1  kind:u8  key_epoch:u64be  packet[PACKET_SIZE]
//! ```
//!
//! The length prefix keeps a stream in step after a bad frame: the receiver
//! skips exactly `length` bytes, counts the frame as dropped and goes on.
//! A body of any other length, an unknown version or an unknown kind is
//! rejected here, before any crypto runs. `key_epoch` names the Sphinx key
//! the packet was built for, so a node never tries more than one key.

use crate::Error;
use crate::packet::PACKET_SIZE;

/// Current frame version.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of a frame body.
pub const BODY_LEN: usize = 1 + 1 + 8 + PACKET_SIZE;
/// Bytes of a whole frame on the wire, prefix included.
pub const FRAME_LEN: usize = 2 + BODY_LEN;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum FrameKind {
    /// A Sphinx packet for the receiver to peel.
    Sphinx = 1,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Sphinx),
            _ => None,
        }
    }
}

/// A decoded frame borrowing its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What the packet is.
    pub kind: FrameKind,
    /// Epoch of the Sphinx key the packet was built for.
    pub epoch: u64,
    /// Exactly [`PACKET_SIZE`] bytes.
    pub packet: &'a [u8],
}

/// Appends one whole frame (prefix included) to `out`.
pub fn encode_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    epoch: u64,
    packet: &[u8],
) -> Result<(), Error> {
    if packet.len() != PACKET_SIZE {
        return Err(Error::InvalidArgument(format!(
            "packet of {} bytes, frames carry {PACKET_SIZE}",
            packet.len()
        )));
    }
    out.reserve(FRAME_LEN);
    out.extend_from_slice(&(BODY_LEN as u16).to_be_bytes());
    out.push(FRAME_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// One whole frame, prefix included.
pub fn encode(kind: FrameKind, epoch: u64, packet: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::with_capacity(FRAME_LEN);
    encode_into(&mut v, kind, epoch, packet)?;
    Ok(v)
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame<'_>, Error> {
    if body.len() != BODY_LEN {
        return Err(Error::MalformedFrame("wrong length"));
    }
    if body[0] != FRAME_VERSION {
        return Err(Error::MalformedFrame("unknown version"));
    }
    let kind = FrameKind::from_u8(body[1]).ok_or(Error::MalformedFrame("unknown kind"))?;
    let mut e = [0u8; 8];
    e.copy_from_slice(&body[2..10]);
    Ok(Frame {
        kind,
        epoch: u64::from_be_bytes(e),
        packet: &body[10..],
    })
}

/// Splits a byte stream into frame bodies. Sans-IO: feed it what the stream
/// delivers; it holds at most one partial frame (≤ 64 KiB) plus one input chunk.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete body, if one is buffered. Bodies may be malformed:
    /// pass them to [`decode_body`].
    pub fn next_body(&mut self) -> Option<&[u8]> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([avail[0], avail[1]]));
        if avail.len() < 2 + len {
            return None;
        }
        let start = self.pos + 2;
        self.pos = start + len;
        Some(&self.buf[start..start + len])
    }

    /// Bytes held but not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(fill: u8) -> Vec<u8> {
        vec![fill; PACKET_SIZE]
    }

    proptest! {
        #[test]
        fn round_trip(epoch in any::<u64>(), fill in any::<u8>()) {
            let p = packet(fill);
            let f = encode(FrameKind::Sphinx, epoch, &p).unwrap();
            prop_assert_eq!(f.len(), FRAME_LEN);
            let d = decode_body(&f[2..]).unwrap();
            prop_assert_eq!(d.epoch, epoch);
            prop_assert_eq!(d.kind, FrameKind::Sphinx);
            prop_assert_eq!(d.packet, &p[..]);
        }

        #[test]
        fn truncated_or_extended_bodies_are_rejected(cut in 0usize..BODY_LEN, extra in 1usize..64) {
            let f = encode(FrameKind::Sphinx, 1, &packet(1)).unwrap();
            prop_assert!(decode_body(&f[2..2 + cut]).is_err());
            let mut long = f[2..].to_vec();
            long.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(decode_body(&long).is_err());
        }

        #[test]
        fn header_bit_flips_are_rejected_or_change_only_the_epoch(bit in 0usize..16) {
            let f = encode(FrameKind::Sphinx, 1, &packet(1)).unwrap();
            let mut body = f[2..].to_vec();
            body[bit / 8] ^= 1 << (bit % 8);
            // version and kind bytes: any flip is an unknown value
            prop_assert!(decode_body(&body).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = decode_body(&bytes);
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            while let Some(b) = d.next_body() { let _ = decode_body(b); }
        }

        #[test]
        fn decoder_resynchronises_after_junk(
            junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..5),
            chunk in 1usize..5000,
        ) {
            let good = encode(FrameKind::Sphinx, 9, &packet(3)).unwrap();
            let mut stream = Vec::new();
            for j in &junk {
                stream.extend_from_slice(&(j.len() as u16).to_be_bytes());
                stream.extend_from_slice(j);
            }
            stream.extend_from_slice(&good);
            let mut d = FrameDecoder::new();
            let mut bodies = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c);
                while let Some(b) = d.next_body() { bodies.push(b.to_vec()); }
            }
            prop_assert_eq!(bodies.len(), junk.len() + 1);
            let last = decode_body(bodies.last().unwrap()).unwrap();
            prop_assert_eq!(last.epoch, 9);
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}
