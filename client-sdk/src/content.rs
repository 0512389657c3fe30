//! Typed messages: text, pictures, voice notes and files with their
//! metadata, compressed when that pays (zstd), and a small preview sent
//! first so that a chat shows something at once. protocol.md §13.12
//! specifies the encoding. Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};

/// Version byte of a content encoding.
pub const CONTENT_VERSION: u8 = 1;
/// Largest thumbnail a preview carries: it should fit one or two fragments.
pub const MAX_THUMBNAIL: usize = 16 * 1024;
/// zstd level: fast, and most of what zstd gains on text and documents.
const ZSTD_LEVEL: i32 = 3;
/// Compressed data is kept only if it saves at least this share.
const MIN_SAVING: f64 = 0.05;
/// Flag bit: the data is zstd-compressed.
const FLAG_ZSTD: u8 = 1;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ContentKind {
    /// Text (UTF-8).
    Text,
    /// A picture.
    Image,
    /// A voice note or other audio.
    Audio,
    /// Any other file.
    File,
    /// The preview of an attachment still on its way: metadata and a
    /// thumbnail, no data; [`Attachment::preview_of`] names the message.
    Preview,
}

impl ContentKind {
    fn byte(self) -> u8 {
        match self {
            ContentKind::Text => 0,
            ContentKind::Image => 1,
            ContentKind::Audio => 2,
            ContentKind::File => 3,
            ContentKind::Preview => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => ContentKind::Text,
            1 => ContentKind::Image,
            2 => ContentKind::Audio,
            3 => ContentKind::File,
            4 => ContentKind::Preview,
            _ => return None,
        })
    }
}

/// What describes an attachment: shown before (or instead of) its data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// File name, as the sender gave it (at most 255 bytes).
    pub name: String,
    /// MIME type, e.g. `image/jpeg`, `audio/ogg` (at most 255 bytes).
    pub mime: String,
    /// Length of the data in bytes (before compression).
    pub size: u64,
    /// Pictures: width and height in pixels (0 if not given).
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// Audio: length in milliseconds (0 if not given).
    pub duration_ms: u32,
    /// A small picture to show at once (at most [`MAX_THUMBNAIL`] bytes).
    pub thumbnail: Vec<u8>,
    /// In a preview: the id of the message that carries the data.
    pub preview_of: Option<[u8; 16]>,
}

/// A decoded message: its kind, its metadata (not for text) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// What it is.
    pub kind: ContentKind,
    /// Its metadata (`None` for text).
    pub attachment: Option<Attachment>,
    /// Its data, decompressed.
    pub data: Vec<u8>,
}

/// Why content did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Not a content encoding this SDK reads (the sender's fault).
    #[error("malformed content: {0}")]
    Malformed(&'static str),
}

/// Types whose data is compressed already: not worth a zstd pass.
fn precompressed(mime: &str) -> bool {
    let m = mime.to_ascii_lowercase();
    [
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/gif",
        "image/avif",
        "image/heic",
    ]
    .iter()
    .any(|p| m == *p)
        || m.starts_with("audio/")
        || m.starts_with("video/")
        || [
            "application/zip",
            "application/gzip",
            "application/zstd",
            "application/x-7z-compressed",
        ]
        .iter()
        .any(|p| m == *p)
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let n = (0..=s.len().min(255))
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    v.push(n as u8);
    v.extend_from_slice(&s.as_bytes()[..n]);
}

/// Encodes content (protocol.md §13.12):
///
/// ```text
/// content = 0x01 || kind:u8 || flags:u8 || size:u32 || meta_len:u16 || meta || data
/// meta    = name || mime || size:u64 || width:u16 || height:u16 || duration_ms:u32
///           || of[16] || thumb_len:u16 || thumbnail          (empty for text)
/// ```
///
/// `data` is zstd-compressed (flag bit 0) when that saves at least 5 %
/// and the type is not compressed already.
pub fn encode(kind: ContentKind, attachment: Option<&Attachment>, data: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    let mime = attachment.map(|a| a.mime.as_str()).unwrap_or("");
    if let (Some(a), true) = (attachment, kind != ContentKind::Text) {
        put_str(&mut meta, &a.name);
        put_str(&mut meta, &a.mime);
        // The attachment's size: a preview names the size of the data to come.
        let size = if kind == ContentKind::Preview {
            a.size
        } else {
            data.len() as u64
        };
        meta.extend_from_slice(&size.to_be_bytes());
        meta.extend_from_slice(&a.width.to_be_bytes());
        meta.extend_from_slice(&a.height.to_be_bytes());
        meta.extend_from_slice(&a.duration_ms.to_be_bytes());
        meta.extend_from_slice(&a.preview_of.unwrap_or([0; 16]));
        let t = &a.thumbnail[..a.thumbnail.len().min(MAX_THUMBNAIL)];
        meta.extend_from_slice(&(t.len() as u16).to_be_bytes());
        meta.extend_from_slice(t);
    }
    let mut flags = 0;
    let mut body = std::borrow::Cow::Borrowed(data);
    if data.len() >= 64
        && !precompressed(mime)
        && let Ok(z) = zstd::bulk::compress(data, ZSTD_LEVEL)
        && (z.len() as f64) <= data.len() as f64 * (1.0 - MIN_SAVING)
    {
        flags |= FLAG_ZSTD;
        body = std::borrow::Cow::Owned(z);
    }
    let mut v = Vec::with_capacity(10 + meta.len() + body.len());
    v.push(CONTENT_VERSION);
    v.push(kind.byte());
    v.push(flags);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(&(meta.len() as u16).to_be_bytes());
    v.extend_from_slice(&meta);
    v.extend_from_slice(&body);
    v
}

/// Decodes [`encode`]'s output; data is decompressed to at most
/// `max_len` bytes (the size field is checked first, so a small message
/// cannot expand into a large one). Never panics.
pub fn decode(b: &[u8], max_len: usize) -> Result<Content, ContentError> {
    let bad = ContentError::Malformed;
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, ContentError> {
        if b.len() < n {
            return Err(bad("truncated"));
        }
        let (x, y) = b.split_at(n);
        *b = y;
        Ok(x.to_vec())
    };
    let mut r = b;
    let head = take(&mut r, 9)?;
    if head[0] != CONTENT_VERSION {
        return Err(bad("unknown version"));
    }
    let kind = ContentKind::from_byte(head[1]).ok_or(bad("unknown kind"))?;
    let flags = head[2];
    if flags & !FLAG_ZSTD != 0 {
        return Err(bad("unknown flags"));
    }
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let meta_len = u16::from_be_bytes([head[7], head[8]]) as usize;
    if size > max_len {
        return Err(bad("larger than allowed"));
    }
    let meta = take(&mut r, meta_len)?;
    let attachment = if meta.is_empty() {
        None
    } else {
        let mut m = meta.as_slice();
        let s = |m: &mut &[u8]| -> Result<String, ContentError> {
            let n = take(m, 1)?[0] as usize;
            String::from_utf8(take(m, n)?).map_err(|_| bad("name or type not UTF-8"))
        };
        let name = s(&mut m)?;
        let mime = s(&mut m)?;
        let fixed = take(&mut m, 8 + 2 + 2 + 4 + 16)?;
        let mut size8 = [0u8; 8];
        size8.copy_from_slice(&fixed[..8]);
        let asize = u64::from_be_bytes(size8);
        let fixed = &fixed[8..];
        let width = u16::from_be_bytes([fixed[0], fixed[1]]);
        let height = u16::from_be_bytes([fixed[2], fixed[3]]);
        let duration_ms = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let mut of = [0u8; 16];
        of.copy_from_slice(&fixed[8..24]);
        let tl = take(&mut m, 2)?;
        let tl = u16::from_be_bytes([tl[0], tl[1]]) as usize;
        if tl > MAX_THUMBNAIL {
            return Err(bad("thumbnail too large"));
        }
        let thumbnail = take(&mut m, tl)?;
        if !m.is_empty() {
            return Err(bad("bytes after the metadata"));
        }
        Some(Attachment {
            name,
            mime,
            size: asize,
            width,
            height,
            duration_ms,
            thumbnail,
            preview_of: (of != [0; 16]).then_some(of),
        })
    };
    if kind != ContentKind::Text && attachment.is_none() {
        return Err(bad("an attachment without metadata"));
    }
    let data = if flags & FLAG_ZSTD != 0 {
        let d = zstd::bulk::decompress(r, size).map_err(|_| bad("bad zstd data"))?;
        if d.len() != size {
            return Err(bad("size does not match the data"));
        }
        d
    } else {
        if r.len() != size {
            return Err(bad("size does not match the data"));
        }
        r.to_vec()
    };
    Ok(Content {
        kind,
        attachment,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo() -> Attachment {
        Attachment {
            name: "cat.jpg".into(),
            mime: "image/jpeg".into(),
            size: 0,
            width: 1600,
            height: 1200,
            duration_ms: 0,
            thumbnail: vec![7; 900],
            preview_of: None,
        }
    }

    #[test]
    fn round_trips_and_compresses_only_what_pays() {
        let text = "hello ".repeat(500);
        let enc = encode(ContentKind::Text, None, text.as_bytes());
        assert!(enc.len() < text.len() / 5, "{} bytes", enc.len());
        let c = decode(&enc, 1 << 20).unwrap();
        assert_eq!(
            (c.kind, c.data.as_slice(), c.attachment),
            (ContentKind::Text, text.as_bytes(), None)
        );
        // A JPEG is not compressed again, even if it would shrink.
        let jpeg = vec![0u8; 10_000];
        let enc = encode(ContentKind::Image, Some(&photo()), &jpeg);
        assert!(enc.len() > 10_000);
        let c = decode(&enc, 1 << 20).unwrap();
        let a = c.attachment.unwrap();
        assert_eq!(
            (a.width, a.height, a.size, a.thumbnail.len()),
            (1600, 1200, 10_000, 900)
        );
        assert_eq!(c.data, jpeg);
        // Random bytes do not shrink: sent as they are.
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let enc = encode(
            ContentKind::File,
            Some(&Attachment {
                mime: "application/octet-stream".into(),
                ..photo()
            }),
            &noise,
        );
        assert_eq!(decode(&enc, 1 << 20).unwrap().data, noise);
        // A preview names its message.
        let p = Attachment {
            preview_of: Some([3; 16]),
            size: 3 << 20,
            ..photo()
        };
        let c = decode(&encode(ContentKind::Preview, Some(&p), &[]), 100).unwrap();
        let a = c.attachment.unwrap();
        assert_eq!((a.preview_of, a.size), (Some([3; 16]), 3 << 20));
    }

    #[test]
    fn junk_and_bombs_are_refused() {
        let enc = encode(ContentKind::Text, None, "x".repeat(100_000).as_bytes());
        // Declared larger than the receiver takes: refused before decompressing.
        assert!(decode(&enc, 50_000).is_err());
        for cut in 0..enc.len().min(40) {
            assert!(decode(&enc[..cut], 1 << 20).is_err());
        }
        let mut wrong = enc.clone();
        wrong[3..7].copy_from_slice(&10u32.to_be_bytes()); // claims 10 bytes
        assert!(decode(&wrong, 1 << 20).is_err());
        assert!(decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0], 10).is_err());
        assert!(decode(&[1, 9, 0, 0, 0, 0, 0, 0, 0], 10).is_err());
        assert!(
            decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0], 10).is_err(),
            "image without metadata"
        );
    }
}
