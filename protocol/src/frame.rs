//! Link frames: how packets travel on a QUIC stream.
//!
//! ```text
//! frame = length:u16be  body[length]
//! body  = version:u8=1  kind:u8  key_epoch:u64be  data[len(kind)]
//! ```
//!
//! | kind | name | data | sent by |
//! |---|---|---|---|
//! | 1 | Sphinx | packet (2396) | nodes, to the packet's next hop |
//! | 2 | Inject | first_hop:32, packet (2396) | a client, to its entry gateway |
//! | 3 | Subscribe | address:32 | a client, to its entry gateway: deliver replies for `address` here |
//! | 4 | Deliver | identifier:16, payload (2048) | an entry gateway, to a client: a SURB reply |
//!
//! The length prefix keeps a stream in step after a bad frame: the receiver
//! skips exactly `length` bytes, counts the frame as dropped and goes on.
//! A body whose length is not the one its kind requires, an unknown version
//! or an unknown kind is rejected here, before any crypto runs. `key_epoch`
//! names the Sphinx key the packet was built for, so a node never tries more
//! than one key.

use crate::packet::{IDENTIFIER_LEN, PACKET_SIZE, PAYLOAD_SIZE};
use crate::{Error, NodeId};

/// Current frame version.
pub const FRAME_VERSION: u8 = 1;
/// Bytes before `data` in every body.
pub const BODY_HEADER_LEN: usize = 1 + 1 + 8;
/// Bytes of a Sphinx frame body.
pub const BODY_LEN: usize = BODY_HEADER_LEN + PACKET_SIZE;
/// Bytes of a whole Sphinx frame on the wire, prefix included.
pub const FRAME_LEN: usize = 2 + BODY_LEN;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum FrameKind {
    /// A Sphinx packet for the receiver to peel.
    Sphinx = 1,
    /// A client's packet for its entry gateway to pass, unpeeled, to `first_hop`.
    Inject = 2,
    /// A client asks its entry gateway for the replies addressed to it.
    Subscribe = 3,
    /// A SURB reply handed by the entry gateway to its client.
    Deliver = 4,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(FrameKind::Sphinx),
            2 => Some(FrameKind::Inject),
            3 => Some(FrameKind::Subscribe),
            4 => Some(FrameKind::Deliver),
            _ => None,
        }
    }

    /// Bytes of `data` this kind requires.
    pub fn data_len(self) -> usize {
        match self {
            FrameKind::Sphinx => PACKET_SIZE,
            FrameKind::Inject => 32 + PACKET_SIZE,
            FrameKind::Subscribe => 32,
            FrameKind::Deliver => IDENTIFIER_LEN + PAYLOAD_SIZE,
        }
    }
}

/// A decoded frame borrowing its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Epoch of the Sphinx key the packet was built for (0 where no packet).
    pub epoch: u64,
    /// Exactly `kind.data_len()` bytes.
    pub data: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The Sphinx packet of a Sphinx or Inject frame.
    pub fn packet(&self) -> Option<&'a [u8]> {
        match self.kind {
            FrameKind::Sphinx => Some(self.data),
            FrameKind::Inject => Some(&self.data[32..]),
            _ => None,
        }
    }

    /// The first hop of an Inject frame, or the address of a Subscribe frame.
    pub fn node_or_address(&self) -> Option<NodeId> {
        match self.kind {
            FrameKind::Inject | FrameKind::Subscribe => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&self.data[..32]);
                Some(a)
            }
            _ => None,
        }
    }

    /// Identifier and payload of a Deliver frame.
    pub fn delivery(&self) -> Option<([u8; IDENTIFIER_LEN], &'a [u8])> {
        if self.kind != FrameKind::Deliver {
            return None;
        }
        let mut id = [0u8; IDENTIFIER_LEN];
        id.copy_from_slice(&self.data[..IDENTIFIER_LEN]);
        Some((id, &self.data[IDENTIFIER_LEN..]))
    }
}

/// Appends one whole frame (prefix included) whose data is the concatenation of `parts`.
pub fn encode_parts_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    epoch: u64,
    parts: &[&[u8]],
) -> Result<(), Error> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len != kind.data_len() {
        return Err(Error::InvalidArgument(format!(
            "{kind:?} frames carry {} bytes, got {len}",
            kind.data_len()
        )));
    }
    let body = BODY_HEADER_LEN + len;
    out.reserve(2 + body);
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.push(FRAME_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&epoch.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(())
}

/// Appends one whole frame (prefix included) to `out`.
pub fn encode_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    epoch: u64,
    data: &[u8],
) -> Result<(), Error> {
    encode_parts_into(out, kind, epoch, &[data])
}

/// One whole frame, prefix included.
pub fn encode(kind: FrameKind, epoch: u64, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::with_capacity(2 + BODY_HEADER_LEN + data.len());
    encode_into(&mut v, kind, epoch, data)?;
    Ok(v)
}

/// One whole frame from parts, prefix included.
pub fn encode_parts(kind: FrameKind, epoch: u64, parts: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    encode_parts_into(&mut v, kind, epoch, parts)?;
    Ok(v)
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame<'_>, Error> {
    if body.len() < BODY_HEADER_LEN {
        return Err(Error::MalformedFrame("wrong length"));
    }
    if body[0] != FRAME_VERSION {
        return Err(Error::MalformedFrame("unknown version"));
    }
    let kind = FrameKind::from_u8(body[1]).ok_or(Error::MalformedFrame("unknown kind"))?;
    if body.len() != BODY_HEADER_LEN + kind.data_len() {
        return Err(Error::MalformedFrame("wrong length"));
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&body[2..10]);
    Ok(Frame {
        kind,
        epoch: u64::from_be_bytes(e),
        data: &body[BODY_HEADER_LEN..],
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
            prop_assert_eq!(d.packet().unwrap(), &p[..]);
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
        fn every_kind_round_trips(epoch in any::<u64>(), fill in any::<u8>()) {
            for kind in [FrameKind::Sphinx, FrameKind::Inject, FrameKind::Subscribe, FrameKind::Deliver] {
                let data = vec![fill; kind.data_len()];
                let f = encode(kind, epoch, &data).unwrap();
                let d = decode_body(&f[2..]).unwrap();
                prop_assert_eq!(d.kind, kind);
                prop_assert_eq!(d.data, &data[..]);
                // one byte short or long is refused for every kind
                prop_assert!(decode_body(&f[2..f.len() - 1]).is_err());
                let mut long = f[2..].to_vec();
                long.push(0);
                prop_assert!(decode_body(&long).is_err());
            }
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
