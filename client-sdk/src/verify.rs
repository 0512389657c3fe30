//! Contact verification: safety numbers and QR codes of invites.
//!
//! An invite (`umbra1:<64 hex>:<name>`) holds nothing secret, but whoever
//! carries it can swap the key inside. Two people close that gap by
//! comparing, over a channel the attacker does not control (in person, a
//! call where they know each other's voice), either:
//!
//! - the **safety number** of their two public keys: 60 digits, the same on
//!   both phones, read aloud or compared by eye ([`safety_number`]); or
//! - a **QR code** of the invite itself, scanned from the other's screen
//!   ([`qr_svg`], [`qr_text`]). The code carries the invite string as it is,
//!   with no other framing.
//!
//! The safety number covers the keys only: the display name in an invite is
//! chosen by whoever wrote it and proves nothing.
//!
//! # Safety number construction (version 1)
//!
//! Adapted from Signal's safety numbers, without Signal's stable identifier
//! (in Umbra the key *is* the identity). All hashes are SHA-512; `||` is
//! concatenation; `DOMAIN` is the 15 ASCII bytes `umbra-safety-v1`.
//!
//! ```text
//! fingerprint(key):                    key = 32-byte x25519 public key
//!     h = ""                           (empty byte string)
//!     repeat 5200 times:
//!         h = SHA-512(DOMAIN || key || h)
//!     digits = ""
//!     for i in 0..6:
//!         chunk = h[5*i .. 5*i + 5]    (5 bytes; bytes 0..30 of h are used)
//!         n = chunk read as a 40-bit unsigned big-endian integer
//!         digits += decimal(n mod 100000), left-padded with '0' to 5 digits
//!     return digits                    (30 ASCII digits)
//!
//! safety_number(a, b):
//!     fa = fingerprint(a); fb = fingerprint(b)
//!     if fa <= fb (byte-wise string comparison): return fa || fb
//!     else:                                      return fb || fa
//!                                      (60 ASCII digits)
//! ```
//!
//! The first hash input is therefore `DOMAIN || key` (47 bytes) and every
//! later one `DOMAIN || key || previous 64-byte digest` (111 bytes). Sorting
//! the two halves makes the number independent of who computes it. It is
//! shown as 12 groups of 5 digits (see [`SafetyNumber`]'s `Display`).
//! Each half carries about 99.6 bits; the `mod 100000` bias is below 10⁻⁷
//! per group. A future construction must change `DOMAIN`.

use qrcode::bits::Bits;
use qrcode::render::{svg, unicode::Dense1x2};
use qrcode::{EcLevel, QrCode, Version};
use sha2::{Digest, Sha512};
use std::fmt;

/// Domain separation prefix of safety number version 1.
pub const SAFETY_DOMAIN: &[u8] = b"umbra-safety-v1";
/// SHA-512 iterations per fingerprint half (as Signal).
pub const SAFETY_ITERATIONS: usize = 5200;
/// Digits in a safety number (two halves of 30).
pub const SAFETY_NUMBER_DIGITS: usize = 60;

const GROUP_DIGITS: usize = 5;
const GROUP_BYTES: usize = 5;
const GROUPS_PER_HALF: usize = 6;
const GROUPS_PER_LINE: usize = 4;

/// The safety number of two contacts: 60 decimal digits, the same whichever
/// side computes it. Build it with [`safety_number`].
///
/// `Display` gives 12 groups of 5 digits separated by single spaces; the
/// alternate form (`{:#}`) gives 3 lines of 4 groups, separated by `\n`
/// (no trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber {
    /// Always exactly [`SAFETY_NUMBER_DIGITS`] ASCII digits.
    digits: String,
}

impl SafetyNumber {
    /// The 60 digits, without spaces.
    pub fn as_digits(&self) -> &str {
        &self.digits
    }

    /// Whether `typed` is this safety number: the same 60 digits, with any
    /// whitespace (spaces, tabs, newlines) anywhere. Anything else (a wrong,
    /// missing or extra digit, dashes, letters) does not match.
    pub fn matches(&self, typed: &str) -> bool {
        typed
            .chars()
            .filter(|c| !c.is_whitespace())
            .eq(self.digits.chars())
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = self.digits.len() / GROUP_DIGITS;
        for i in 0..groups {
            if i > 0 {
                let sep = if f.alternate() && i % GROUPS_PER_LINE == 0 {
                    "\n"
                } else {
                    " "
                };
                f.write_str(sep)?;
            }
            // ASCII digits only, so byte offsets are character boundaries.
            f.write_str(&self.digits[i * GROUP_DIGITS..(i + 1) * GROUP_DIGITS])?;
        }
        Ok(())
    }
}

/// The safety number of two x25519 public keys (see the module docs for the
/// exact construction). Order-independent: `safety_number(a, b) ==
/// safety_number(b, a)`. Costs 2 × 5200 SHA-512 compressions (a few
/// milliseconds).
pub fn safety_number(a: &[u8; 32], b: &[u8; 32]) -> SafetyNumber {
    let fa = fingerprint(a);
    let fb = fingerprint(b);
    let (first, second) = if fa <= fb { (fa, fb) } else { (fb, fa) };
    let mut digits = first;
    digits.push_str(&second);
    debug_assert_eq!(digits.len(), SAFETY_NUMBER_DIGITS);
    SafetyNumber { digits }
}

/// One half of a safety number: 30 digits derived from one key.
fn fingerprint(key: &[u8; 32]) -> String {
    let mut h = Sha512::new()
        .chain_update(SAFETY_DOMAIN)
        .chain_update(key)
        .finalize();
    for _ in 1..SAFETY_ITERATIONS {
        h = Sha512::new()
            .chain_update(SAFETY_DOMAIN)
            .chain_update(key)
            .chain_update(h)
            .finalize();
    }
    let mut digits = String::with_capacity(GROUPS_PER_HALF * GROUP_DIGITS);
    for chunk in h[..GROUPS_PER_HALF * GROUP_BYTES].chunks_exact(GROUP_BYTES) {
        let n = chunk.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
        digits.push_str(&format!("{:05}", n % 100_000));
    }
    digits
}

/// Longest text [`qr_svg`] and [`qr_text`] accept, in bytes. The longest
/// invite is 7 + 64 + 1 + 4 × 64 = 328 bytes (a 64-character name of 4-byte
/// characters). The QR format itself would take up to 2331 bytes at error
/// correction level M, but such codes (version 40, 177 × 177 modules) are
/// too dense to scan from a screen and too wide for a terminal.
pub const MAX_QR_TEXT_LEN: usize = 512;

/// Smallest width and height of the SVG from [`qr_svg`], in pixels.
pub const QR_SVG_MIN_PX: u32 = 256;

/// Why a QR code could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QrError {
    /// The text is longer than [`MAX_QR_TEXT_LEN`] bytes (or does not fit a
    /// QR code at all).
    #[error("text too long for a QR code: {len} bytes, at most {max}")]
    TooLong {
        /// Length of the text, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The QR encoder refused the text for another reason (not expected for
    /// text within the limit).
    #[error("QR encoding failed: {0}")]
    Encoding(String),
}

/// Terminal colour scheme that [`qr_text_for`] draws for.
///
/// Text characters can only paint the foreground colour, so no single
/// rendering shows a dark-on-light QR code in both schemes: in the other
/// scheme the code appears inverted (light modules on dark), which many but
/// not all phone scanners read. When the scheme is unknown, offer the other
/// rendering as a fallback ("code not scanning? press i").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TerminalTheme {
    /// Light text on a dark background (the default of most terminals).
    /// Light modules and the quiet zone are drawn with block characters,
    /// dark modules are left as spaces (like `qrencode -t UTF8`).
    #[default]
    LightOnDark,
    /// Dark text on a light background. Dark modules are drawn with block
    /// characters, light modules and the quiet zone are spaces (like
    /// `qrencode -t UTF8i`). Also right for paper and for light UI widgets.
    DarkOnLight,
}

/// A QR code of `text` (normally an invite string, encoded as-is) as an SVG
/// document: black modules on a white background, with the standard 4-module
/// quiet zone, square, at least [`QR_SVG_MIN_PX`] pixels wide with whole
/// pixels per module. Error correction level M.
pub fn qr_svg(text: &str) -> Result<String, QrError> {
    let code = encode(text)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(QR_SVG_MIN_PX, QR_SVG_MIN_PX)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

/// A QR code of `text` for a terminal with light text on a dark background:
/// the same as [`qr_text_for`] with [`TerminalTheme::LightOnDark`].
pub fn qr_text(text: &str) -> Result<String, QrError> {
    qr_text_for(text, TerminalTheme::LightOnDark)
}

/// A QR code of `text` as terminal text: two rows of modules per line, drawn
/// with `▀`, `▄`, `█` and spaces, with the 4-module quiet zone, for the
/// given terminal colour scheme. All lines have the same number of
/// characters; lines are separated by `\n`, with no trailing newline. Needs a
/// monospace font whose line height is about twice the character width (the
/// usual case). An invite takes 45 to 77 columns and 23 to 39 lines (49 × 25
/// for a typical 100-byte one). Error correction level M.
pub fn qr_text_for(text: &str, theme: TerminalTheme) -> Result<String, QrError> {
    let code = encode(text)?;
    let mut renderer = code.render::<Dense1x2>();
    renderer.quiet_zone(true);
    if theme == TerminalTheme::LightOnDark {
        // The glyphs paint the (light) foreground: they stand for light
        // modules and the quiet zone.
        renderer
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark);
    }
    Ok(renderer.build())
}

fn encode(text: &str) -> Result<QrCode, QrError> {
    let too_long = QrError::TooLong {
        len: text.len(),
        max: MAX_QR_TEXT_LEN,
    };
    if text.len() > MAX_QR_TEXT_LEN {
        return Err(too_long);
    }
    let code = data_bits(text).and_then(|bits| QrCode::with_bits(bits, EcLevel::M));
    code.map_err(|e| match e {
        qrcode::types::QrError::DataTooLong => too_long,
        other => QrError::Encoding(other.to_string()),
    })
}

/// The code's data, in the smallest version that holds it at level M.
///
/// ASCII text takes the segments the `qrcode` crate picks. Other text is
/// one byte segment after an ECI designator for UTF-8 (26): left to
/// itself, the crate encodes UTF-8 byte pairs that fall in Shift JIS's
/// double-byte ranges (most CJK characters do) as Kanji segments, and
/// readers decode those as Shift JIS, not as the bytes they were.
fn data_bits(text: &str) -> qrcode::types::QrResult<Bits> {
    if text.is_ascii() {
        return qrcode::bits::encode_auto(text.as_bytes(), EcLevel::M);
    }
    for v in 1..=40 {
        let mut bits = Bits::new(Version::Normal(v));
        let pushed = bits
            .push_eci_designator(ECI_UTF8)
            .and_then(|()| bits.push_byte_data(text.as_bytes()))
            .and_then(|()| bits.push_terminator(EcLevel::M));
        match pushed {
            Ok(()) => return Ok(bits),
            Err(qrcode::types::QrError::DataTooLong) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(qrcode::types::QrError::DataTooLong)
}

/// The ECI assignment number of UTF-8.
const ECI_UTF8: u32 = 26;

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 6.1: Alice's and Bob's X25519 public keys.
    const ALICE: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    fn key(hex: &str) -> [u8; 32] {
        assert_eq!(hex.len(), 64);
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        k
    }

    fn counting(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    fn invite(public: &[u8; 32], name: &str) -> String {
        let hex: String = public.iter().map(|b| format!("{b:02x}")).collect();
        format!("umbra1:{hex}:{name}")
    }

    #[test]
    fn known_answer() {
        let sn = safety_number(&key(ALICE), &key(BOB));
        assert_eq!(
            sn.as_digits(),
            "232635738806347555334434516690752160327421235161374281607083",
            "the safety number construction changed: bump SAFETY_DOMAIN and \
             tell users their numbers changed"
        );
    }

    #[test]
    fn order_independent() {
        let pairs = [
            (key(ALICE), key(BOB)),
            (counting(0), counting(100)),
            ([0u8; 32], [0xff; 32]),
            ([9u8; 32], [9u8; 32]),
        ];
        for (a, b) in pairs {
            assert_eq!(safety_number(&a, &b), safety_number(&b, &a));
        }
    }

    #[test]
    fn any_bit_flip_changes_the_number() {
        for (a, b) in [(key(ALICE), key(BOB)), (counting(0), [0u8; 32])] {
            let base = safety_number(&a, &b);
            for bit in 0..256 {
                let mut a2 = a;
                a2[bit / 8] ^= 1 << (bit % 8);
                assert_ne!(safety_number(&a2, &b), base, "bit {bit} of a");
                let mut b2 = b;
                b2[bit / 8] ^= 1 << (bit % 8);
                assert_ne!(safety_number(&a, &b2), base, "bit {bit} of b");
            }
        }
    }

    #[test]
    fn sixty_digits_and_display() {
        let sn = safety_number(&counting(1), &counting(2));
        assert_eq!(sn.as_digits().len(), SAFETY_NUMBER_DIGITS);
        assert!(sn.as_digits().bytes().all(|b| b.is_ascii_digit()));

        let shown = sn.to_string();
        let groups: Vec<&str> = shown.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert_eq!(groups.concat(), sn.as_digits());

        let alt = format!("{sn:#}");
        let lines: Vec<&str> = alt.split('\n').collect();
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            let groups: Vec<&str> = line.split(' ').collect();
            assert_eq!(groups.len(), 4);
            assert_eq!(groups.concat(), sn.as_digits()[i * 20..(i + 1) * 20]);
        }
    }

    #[test]
    fn matches_spacing_but_not_a_wrong_digit() {
        let sn = safety_number(&key(ALICE), &key(BOB));
        let d = sn.as_digits().to_string();
        assert!(sn.matches(&d));
        assert!(sn.matches(&sn.to_string()));
        assert!(sn.matches(&format!("{sn:#}")));
        assert!(sn.matches(&format!("  {}\n", sn.to_string().replace(' ', "\t  "))));
        let one_per_char: String = d.chars().flat_map(|c| [c, ' ']).collect();
        assert!(sn.matches(&one_per_char));
        assert!(sn.matches(&format!("{sn:#}").replace('\n', "\r\n")));

        for i in 0..d.len() {
            let mut wrong = d.clone().into_bytes();
            wrong[i] = b'0' + (wrong[i] - b'0' + 1) % 10;
            assert!(
                !sn.matches(std::str::from_utf8(&wrong).unwrap()),
                "digit {i}"
            );
        }
        assert!(!sn.matches(&d[1..]));
        assert!(!sn.matches(&format!("{d}0")));
        assert!(!sn.matches(&sn.to_string().replace(' ', "-")));
        assert!(!sn.matches(""));
        assert!(!sn.matches("   "));
    }

    #[test]
    fn svg_document() {
        let svg = qr_svg(&invite(&key(ALICE), "alice")).unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"));
        assert!(svg.contains("<path") || svg.contains("<rect"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("#000000") && svg.contains("#ffffff"));
        let width: u32 = svg
            .split(" width=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .expect("a width attribute");
        assert!(width >= QR_SVG_MIN_PX, "{width}");
    }

    #[test]
    fn terminal_text() {
        let text = invite(&key(BOB), "bob");
        let modules = encode(&text).unwrap().width();
        let side = modules + 8; // 4-module quiet zone on each side
        for theme in [TerminalTheme::LightOnDark, TerminalTheme::DarkOnLight] {
            let out = qr_text_for(&text, theme).unwrap();
            let lines: Vec<&str> = out.split('\n').collect();
            assert_eq!(lines.len(), side.div_ceil(2), "{theme:?}");
            for line in &lines {
                assert_eq!(line.chars().count(), side, "{theme:?}");
                assert!(line.chars().all(|c| matches!(c, ' ' | '▀' | '▄' | '█')));
            }
            // Quiet zone: the first two lines (4 module rows) and the first
            // and last 4 columns are light.
            let light = match theme {
                TerminalTheme::LightOnDark => '█',
                TerminalTheme::DarkOnLight => ' ',
            };
            for line in &lines[..2] {
                assert!(line.chars().all(|c| c == light), "{theme:?}");
            }
            for line in &lines[..lines.len() - 1] {
                let chars: Vec<char> = line.chars().collect();
                assert!(chars[..4].iter().all(|&c| c == light), "{theme:?}");
                assert!(chars[side - 4..].iter().all(|&c| c == light), "{theme:?}");
            }
        }
        assert_eq!(
            qr_text(&text).unwrap(),
            qr_text_for(&text, TerminalTheme::LightOnDark).unwrap()
        );
        // The two themes are each other's negative (but for the last line,
        // half of which lies outside the code when the side is odd).
        let dark = qr_text_for(&text, TerminalTheme::LightOnDark).unwrap();
        let light = qr_text_for(&text, TerminalTheme::DarkOnLight).unwrap();
        let negative = |c: char| match c {
            ' ' => '█',
            '█' => ' ',
            '▀' => '▄',
            _ => '▀',
        };
        for (d, l) in dark.lines().zip(light.lines()).take(side / 2) {
            assert_eq!(d, l.chars().map(negative).collect::<String>());
        }
    }

    /// The segments of a code's data stream: their modes in order, and the
    /// bytes of its byte segments (QR mode indicators: 1 numeric, 2
    /// alphanumeric, 4 byte, 7 ECI, 8 Kanji).
    fn segments(bits: Bits) -> (Vec<u8>, Vec<u8>) {
        let Version::Normal(v) = bits.version() else {
            panic!("a micro code")
        };
        let class = usize::from(v > 9) + usize::from(v > 26);
        let stream = bits.into_bytes();
        let mut pos = 0;
        let mut take = |n: usize| {
            let mut x = 0usize;
            for _ in 0..n {
                let bit = stream.get(pos / 8).map_or(0, |b| (b >> (7 - pos % 8)) & 1);
                x = x << 1 | usize::from(bit);
                pos += 1;
            }
            x
        };
        let (mut modes, mut bytes) = (Vec::new(), Vec::new());
        loop {
            let mode = take(4) as u8;
            let skip = match mode {
                0 => break,
                7 => {
                    assert_eq!(take(8) & 0x80, 0, "a one-byte ECI designator");
                    0
                }
                1 => {
                    let n = take([10, 12, 14][class]);
                    10 * (n / 3) + [0, 4, 7][n % 3]
                }
                2 => {
                    let n = take([9, 11, 13][class]);
                    11 * (n / 2) + 6 * (n % 2)
                }
                4 => {
                    let n = take([8, 16, 16][class]);
                    bytes.extend((0..n).map(|_| take(8) as u8));
                    0
                }
                8 => 13 * take([8, 10, 12][class]),
                _ => panic!("mode {mode}"),
            };
            take(skip);
            modes.push(mode);
        }
        (modes, bytes)
    }

    /// Names in other scripts go into the code as their UTF-8 bytes in one
    /// byte segment, marked UTF-8. Left to the `qrcode` crate, CJK names
    /// became Kanji segments, which readers decode as Shift JIS.
    #[test]
    fn non_ascii_names_are_one_utf8_byte_segment() {
        for name in ["李小龍", "やまだ はなこ", "Мария", "Zoë", "😀"] {
            let text = invite(&key(ALICE), name);
            let (modes, bytes) = segments(data_bits(&text).unwrap());
            assert_eq!(modes, [7, 4], "{name}");
            assert_eq!(bytes, text.as_bytes(), "{name}");
            assert!(encode(&text).is_ok());
        }
        // A name of 17 CJK characters (a long one, but names may have 64).
        let cjk = invite(&key(ALICE), "北京市朝阳区的张伟先生和他的朋友们");
        let auto = qrcode::bits::encode_auto(cjk.as_bytes(), EcLevel::M).unwrap();
        assert!(segments(auto).0.contains(&8), "the crate's own choice");
        let (modes, bytes) = segments(data_bits(&cjk).unwrap());
        assert_eq!((modes, bytes), (vec![7, 4], cjk.into_bytes()));
        // ASCII keeps the crate's segmentation, which has no Kanji.
        let ascii = invite(&key(ALICE), "alice");
        let (modes, _) = segments(data_bits(&ascii).unwrap());
        assert!(!modes.contains(&7) && !modes.contains(&8), "{modes:?}");
    }

    #[test]
    fn too_long_text_is_refused() {
        let long = "x".repeat(2048);
        let err = QrError::TooLong {
            len: 2048,
            max: MAX_QR_TEXT_LEN,
        };
        assert_eq!(qr_svg(&long), Err(err.clone()));
        assert_eq!(qr_text(&long), Err(err.clone()));
        assert_eq!(
            qr_text_for(&long, TerminalTheme::DarkOnLight),
            Err(err.clone())
        );
        assert!(err.to_string().contains("too long"));
        let just_over = "x".repeat(MAX_QR_TEXT_LEN + 1);
        assert!(matches!(qr_svg(&just_over), Err(QrError::TooLong { .. })));
        assert!(qr_svg(&"x".repeat(MAX_QR_TEXT_LEN)).is_ok());
        // The longest invite: a 64-character name of 4-byte characters.
        let longest = invite(&[0xab; 32], &"😀".repeat(64));
        assert_eq!(longest.len(), 328);
        assert!(qr_svg(&longest).is_ok() && qr_text(&longest).is_ok());
    }

    #[test]
    fn typical_invite_is_a_small_code() {
        // 7 + 64 + 1 + 28 = 100 characters.
        let text = invite(&key(ALICE), "Alice Liddell, Oxford branch");
        assert_eq!(text.len(), 100);
        let code = encode(&text).unwrap();
        assert_eq!(code.error_correction_level(), EcLevel::M);
        match code.version() {
            Version::Normal(v) => assert!(v <= 6, "version {v}"),
            Version::Micro(v) => panic!("micro QR version {v}"),
        }
    }
}
