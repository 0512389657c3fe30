//! Dropbox derivation: from the secret two contacts share to the id of the
//! box each direction uses in each period, the gateway that hosts it, the
//! capability that proves the right to fetch it, and the content key.
//!
//! ```text
//! pair     = HKDF-SHA256(salt="umbra-pair-v1", ikm=X25519(a, B), info=min(A,B)||max(A,B)) [32]
//! okm      = HKDF-SHA256(salt="umbra-dropbox-v1", ikm=pair, info=sender||recipient||period:u64be[||index:u32be]) [96]
//! cap_seed = okm[0..32]   capability = ed25519 key from cap_seed
//! content  = okm[32..64]  ChaCha20-Poly1305 key of the messages in this box
//! gw_seed  = okm[64..96]  gateway = argmax over gateways g of SHA-256(gw_seed||g)
//! id       = SHA-256("umbra-dropbox-id-v1" || capability public key)
//! ```
//!
//! A contact key of small order makes `X25519(a, B)` all-zero, so the pair
//! secret would follow from public keys; [`PairSecret::derive`] refuses it.
//!
//! A period has a run of boxes per direction, `index` 0, 1, 2, …: a sender
//! moves to the next once [`BOX_STORES`] of its stores to one were
//! acknowledged, so no gateway holds more than about that many linkable
//! messages of one sender. Index 0 omits the index from `info`. A box is
//! named by its *slot*, [`slot`]`(period, index)`, which equals the period
//! for index 0.
//!
//! The id names the box; it does not authorise. Fetching needs a signature
//! by the capability key, whose public half hashes to the id.

use crate::{Error, NodeId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// Length of a dropbox period: ids rotate this often.
pub const PERIOD_MS: u64 = 3_600_000;

/// The period containing `now_ms`.
pub fn period_at(now_ms: u64) -> u64 {
    now_ms / PERIOD_MS
}

/// A sender moves to its next box of a period once this many of its stores
/// to one box were acknowledged. The gateway of a box links the messages in
/// it (they share an id); the long-term attack that combines them needs
/// many (docs/anonymity.md), so a box holds about this many of one sender.
pub const BOX_STORES: u64 = 300;

/// A reader also fetches box `index + 1` of a period once it has seen this
/// many messages in box `index` (half of [`BOX_STORES`]: it errs early, as
/// messages may expire or be confirmed away before it counts them).
pub const NEXT_BOX_AFTER: u64 = BOX_STORES / 2;

/// Bits of a slot that hold the period.
const PERIOD_BITS: u32 = 40;

/// The slot naming box `index` of `period`: `index × 2^40 + period`, so
/// the slot of box 0 is the period itself.
pub fn slot(period: u64, index: u32) -> u64 {
    (u64::from(index) << PERIOD_BITS) | (period & ((1 << PERIOD_BITS) - 1))
}

/// The period of a slot.
pub fn slot_period(slot: u64) -> u64 {
    slot & ((1 << PERIOD_BITS) - 1)
}

/// The index of a slot's box within its period.
pub fn slot_index(slot: u64) -> u32 {
    (slot >> PERIOD_BITS) as u32
}

/// The slot of the box after `slot`'s in the same period.
pub fn next_slot(slot: u64) -> u64 {
    self::slot(slot_period(slot), slot_index(slot).saturating_add(1))
}

/// The secret two contacts share. Never logged; wiped when dropped.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct PairSecret([u8; 32]);

impl std::fmt::Debug for PairSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairSecret(<redacted>)")
    }
}

impl PairSecret {
    /// Derives the pair secret from my x25519 secret and their public key.
    /// Both sides get the same value.
    ///
    /// Refuses ([`Error::Rejected`], the peer's fault) a key of small order:
    /// the DH would be all-zero and the pair secret would follow from the
    /// two public keys alone.
    pub fn derive(mine: &StaticSecret, theirs: &[u8; 32]) -> Result<Self, Error> {
        let my_pub = PublicKey::from(mine).to_bytes();
        let dh = mine.diffie_hellman(&PublicKey::from(*theirs));
        if !dh.was_contributory() {
            return Err(Error::Rejected(
                "contact key is of small order (non-contributory X25519)".into(),
            ));
        }
        let (lo, hi) = if my_pub <= *theirs {
            (my_pub, *theirs)
        } else {
            (*theirs, my_pub)
        };
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(&lo);
        info.extend_from_slice(&hi);
        let mut out = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length. (`dh` wipes
        // itself when dropped.)
        let _ = Hkdf::<Sha256>::new(Some(b"umbra-pair-v1"), dh.as_bytes()).expand(&info, &mut out);
        Ok(Self(out))
    }

    /// A pair secret from raw bytes (a group secret, or tests).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The dropbox `sender` writes and `recipient` reads at `slot` (see
    /// [`slot`]; a bare period is the slot of its box 0).
    pub fn dropbox(&self, sender: &[u8; 32], recipient: &[u8; 32], slot: u64) -> Dropbox {
        let (period, index) = (slot_period(slot), slot_index(slot));
        let mut info = Vec::with_capacity(76);
        info.extend_from_slice(sender);
        info.extend_from_slice(recipient);
        info.extend_from_slice(&period.to_be_bytes());
        if index > 0 {
            info.extend_from_slice(&index.to_be_bytes());
        }
        let mut okm = zeroize::Zeroizing::new([0u8; 96]);
        let _ = Hkdf::<Sha256>::new(Some(b"umbra-dropbox-v1"), &self.0).expand(&info, okm.as_mut());
        let mut cap = zeroize::Zeroizing::new([0u8; 32]);
        let mut content_key = [0u8; 32];
        let mut gateway_seed = [0u8; 32];
        cap.copy_from_slice(&okm[..32]);
        content_key.copy_from_slice(&okm[32..64]);
        gateway_seed.copy_from_slice(&okm[64..]);
        let capability = SigningKey::from_bytes(&cap);
        let id = dropbox_id(&capability.verifying_key().to_bytes());
        Dropbox {
            id,
            period,
            index,
            capability,
            content_key,
            gateway_seed,
        }
    }
}

/// `SHA-256("umbra-dropbox-id-v1" || capability_public)`.
pub fn dropbox_id(capability_public: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"umbra-dropbox-id-v1");
    h.update(capability_public);
    h.finalize().into()
}

/// One direction's dropbox in one period.
pub struct Dropbox {
    /// The box id the gateway stores under.
    pub id: [u8; 32],
    /// The period.
    pub period: u64,
    /// Which of the period's boxes (0 first).
    pub index: u32,
    /// Signs fetch requests.
    pub capability: SigningKey,
    /// Encrypts the messages in this box.
    pub content_key: [u8; 32],
    /// Chooses the hosting gateway.
    pub gateway_seed: [u8; 32],
}

impl Drop for Dropbox {
    fn drop(&mut self) {
        // The capability wipes itself (ed25519-dalek's zeroize feature).
        zeroize::Zeroize::zeroize(&mut self.content_key);
        zeroize::Zeroize::zeroize(&mut self.gateway_seed);
    }
}

impl std::fmt::Debug for Dropbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dropbox")
            .field("period", &self.period)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Dropbox {
    /// The gateway hosting this box: rendezvous hashing over the gateway list,
    /// so adding a gateway moves only the boxes it wins.
    pub fn gateway(&self, gateways: &[NodeId]) -> Option<NodeId> {
        gateways
            .iter()
            .max_by_key(|g| {
                let mut h = Sha256::new();
                h.update(self.gateway_seed);
                h.update(g);
                <[u8; 32]>::from(h.finalize())
            })
            .copied()
    }

    /// Signs a fetch request's signing input.
    pub fn sign(&self, input: &[u8]) -> [u8; 64] {
        self.capability.sign(input).to_bytes()
    }
}

/// Checks a fetch capability: the key hashes to the box id and signed `input`.
pub fn verify_capability(
    id: &[u8; 32],
    capability_public: &[u8; 32],
    signature: &[u8; 64],
    input: &[u8],
) -> bool {
    if dropbox_id(capability_public) != *id {
        return false;
    }
    let Ok(vk) = VerifyingKey::from_bytes(capability_public) else {
        return false;
    };
    vk.verify_strict(input, &Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(b: u8) -> (StaticSecret, [u8; 32]) {
        let s = StaticSecret::from([b; 32]);
        let p = PublicKey::from(&s).to_bytes();
        (s, p)
    }

    #[test]
    fn both_sides_derive_the_same_boxes() {
        let (a, ap) = keys(1);
        let (b, bp) = keys(2);
        let ab = PairSecret::derive(&a, &bp).unwrap();
        let ba = PairSecret::derive(&b, &ap).unwrap();
        let x = ab.dropbox(&ap, &bp, 7);
        let y = ba.dropbox(&ap, &bp, 7);
        assert_eq!(x.id, y.id);
        assert_eq!(x.content_key, y.content_key);
        // directions and periods differ
        assert_ne!(x.id, ab.dropbox(&bp, &ap, 7).id);
        assert_ne!(x.id, ab.dropbox(&ap, &bp, 8).id);
        // a third party gets another secret
        let (c, _) = keys(3);
        assert_ne!(
            PairSecret::derive(&c, &bp).unwrap().dropbox(&ap, &bp, 7).id,
            x.id
        );
    }

    #[test]
    fn a_period_has_a_run_of_unrelated_boxes_and_box_0_is_the_period() {
        let pair = PairSecret::from_bytes([6; 32]);
        let p = 493_812;
        assert_eq!(slot(p, 0), p);
        assert_eq!((slot_period(slot(p, 3)), slot_index(slot(p, 3))), (p, 3));
        assert_eq!(next_slot(p), slot(p, 1));
        let zero = pair.dropbox(&[1; 32], &[2; 32], slot(p, 0));
        let one = pair.dropbox(&[1; 32], &[2; 32], slot(p, 1));
        let two = pair.dropbox(&[1; 32], &[2; 32], slot(p, 2));
        assert_eq!((one.period, one.index), (p, 1));
        let ids = [
            zero.id,
            one.id,
            two.id,
            pair.dropbox(&[1; 32], &[2; 32], p + 1).id,
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(zero.content_key, one.content_key);
        // Box 0 is derived without the index: what older clients derive.
        let mut info = Vec::new();
        info.extend_from_slice(&[1; 32]);
        info.extend_from_slice(&[2; 32]);
        info.extend_from_slice(&p.to_be_bytes());
        let mut okm = [0u8; 96];
        Hkdf::<Sha256>::new(Some(b"umbra-dropbox-v1"), &[6; 32])
            .expand(&info, &mut okm)
            .unwrap();
        assert_eq!(zero.content_key[..], okm[32..64]);
        info.extend_from_slice(&1u32.to_be_bytes());
        Hkdf::<Sha256>::new(Some(b"umbra-dropbox-v1"), &[6; 32])
            .expand(&info, &mut okm)
            .unwrap();
        assert_eq!(one.content_key[..], okm[32..64]);
    }

    #[test]
    fn small_order_contact_keys_are_refused() {
        let (a, _) = keys(1);
        let mut p = [0xff; 32]; // p = 2^255 − 19, little-endian
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut order8 = [0u8; 32];
        order8.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap(),
        );
        for bad in [[0u8; 32], one, order8, p] {
            let err = PairSecret::derive(&a, &bad).unwrap_err();
            assert!(matches!(err, Error::Rejected(_)), "{err:?}");
            assert_eq!(err.fault(), crate::Fault::Peer);
            assert!(!crate::keys::is_contributory_key(&bad));
        }
    }

    #[test]
    fn capability_is_bound_to_the_box() {
        let pair = PairSecret::from_bytes([4; 32]);
        let bx = pair.dropbox(&[1; 32], &[2; 32], 1);
        let other = pair.dropbox(&[1; 32], &[2; 32], 2);
        let cap = bx.capability.verifying_key().to_bytes();
        let sig = bx.sign(b"fetch");
        assert!(verify_capability(&bx.id, &cap, &sig, b"fetch"));
        assert!(!verify_capability(&bx.id, &cap, &sig, b"fetch2"));
        assert!(!verify_capability(&other.id, &cap, &sig, b"fetch"));
        let ocap = other.capability.verifying_key().to_bytes();
        assert!(!verify_capability(&other.id, &ocap, &sig, b"fetch"));
    }

    #[test]
    fn gateway_choice_is_stable_when_one_is_added() {
        let pair = PairSecret::from_bytes([5; 32]);
        let gws: Vec<NodeId> = (0..5u8).map(|i| [i; 32]).collect();
        let mut moved = 0;
        for p in 0..200 {
            let b = pair.dropbox(&[1; 32], &[2; 32], p);
            let before = b.gateway(&gws).unwrap();
            let mut more = gws.clone();
            more.push([99; 32]);
            let after = b.gateway(&more).unwrap();
            if after != before {
                assert_eq!(after, [99; 32], "only moves to the new gateway");
                moved += 1;
            }
        }
        assert!(moved > 10 && moved < 70, "about 1/6 move, got {moved}/200");
        assert!(pair.dropbox(&[1; 32], &[2; 32], 0).gateway(&[]).is_none());
    }
}
