//! Media files: kinds, sizes, names, headers and writing.
//!
//! Contents are a plausible format header followed by random bytes, which is what
//! already-compressed media looks like to a backup tool. Forwarded media is a
//! byte-identical copy of an earlier file under a new name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::error::{io_err, ChatGenError};

/// The media folders a messenger keeps, relative to the data folder.
pub(crate) const MEDIA_DIRS: [&str; 4] = [
    "Media/WhatsApp Images",
    "Media/WhatsApp Voice Notes",
    "Media/WhatsApp Video",
    "Media/WhatsApp Documents",
];

/// Kind of media file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Image,
    Voice,
    Video,
    Document,
}

impl Kind {
    /// Draws a kind with the mix of a typical phone (mostly photos, then voice notes).
    pub(crate) fn draw<R: Rng>(rng: &mut R) -> Self {
        match rng.gen_range(0..100) {
            0..=59 => Kind::Image,
            60..=84 => Kind::Voice,
            85..=92 => Kind::Video,
            _ => Kind::Document,
        }
    }

    /// Draws a size, log-uniform within the range real files of this kind have.
    pub(crate) fn draw_size<R: Rng>(self, rng: &mut R) -> u64 {
        let (lo, hi): (f64, f64) = match self {
            Kind::Image => (50e3, 3e6),
            Kind::Voice => (10e3, 500e3),
            Kind::Video => (1e6, 40e6),
            Kind::Document => (20e3, 5e6),
        };
        let x = rng.gen_range(lo.ln()..hi.ln()).exp();
        x as u64
    }

    /// The `message_type` code the app stores for a message carrying this kind.
    pub(crate) fn message_type(self) -> i64 {
        match self {
            Kind::Image => 1,
            Kind::Voice => 2,
            Kind::Video => 3,
            Kind::Document => 9,
        }
    }

    /// The kind stored under a `mime_type`, if it is one of ours.
    pub(crate) fn from_mime(mime: &str) -> Option<Self> {
        [Kind::Image, Kind::Voice, Kind::Video, Kind::Document]
            .into_iter()
            .find(|k| k.mime() == mime)
    }

    /// The `mime_type` the app stores for this kind.
    pub(crate) fn mime(self) -> &'static str {
        match self {
            Kind::Image => "image/jpeg",
            Kind::Voice => "audio/ogg; codecs=opus",
            Kind::Video => "video/mp4",
            Kind::Document => "application/pdf",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Image => MEDIA_DIRS[0],
            Kind::Voice => MEDIA_DIRS[1],
            Kind::Video => MEDIA_DIRS[2],
            Kind::Document => MEDIA_DIRS[3],
        }
    }

    /// The first bytes of a real file of this kind.
    fn header<R: Rng>(self, rng: &mut R, len: u64) -> Vec<u8> {
        match self {
            Kind::Image => {
                // SOI + APP0 "JFIF" 1.01, 72 dpi, no thumbnail; then a quantisation table marker.
                let mut h = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
                h.extend_from_slice(b"JFIF\0");
                h.extend_from_slice(&[0x01, 0x01, 0x01, 0x00, 0x48, 0x00, 0x48, 0x00, 0x00]);
                h.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
                h
            }
            Kind::Voice => {
                // First Ogg page carrying the OpusHead packet (mono, 48 kHz).
                let mut h = Vec::with_capacity(47);
                h.extend_from_slice(b"OggS");
                h.extend_from_slice(&[0x00, 0x02]);
                h.extend_from_slice(&[0u8; 8]);
                h.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
                h.extend_from_slice(&[0x01, 0x13]);
                h.extend_from_slice(b"OpusHead");
                h.extend_from_slice(&[0x01, 0x01]);
                h.extend_from_slice(&312u16.to_le_bytes());
                h.extend_from_slice(&48_000u32.to_le_bytes());
                h.extend_from_slice(&[0x00, 0x00, 0x00]);
                h
            }
            Kind::Video => {
                // ftyp box (isom, brands isom/iso2/avc1/mp41) then one mdat box spanning the rest.
                let mut h = Vec::with_capacity(40);
                h.extend_from_slice(&32u32.to_be_bytes());
                h.extend_from_slice(b"ftypisom");
                h.extend_from_slice(&0x200u32.to_be_bytes());
                h.extend_from_slice(b"isomiso2avc1mp41");
                let mdat = u32::try_from(len.saturating_sub(32)).unwrap_or(u32::MAX);
                h.extend_from_slice(&mdat.to_be_bytes());
                h.extend_from_slice(b"mdat");
                h
            }
            Kind::Document => b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec(),
        }
    }
}

/// What one planned media file will be.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub kind: Kind,
    pub size: u64,
    /// `Some(i)`: a forwarded copy of planned file `i`; `None`: original content.
    pub forward_of: Option<usize>,
    /// Seeds the content of an original file.
    pub content_seed: u64,
}

/// Plans files whose sizes add up to exactly `total` bytes, about 20% of them forwards.
pub(crate) fn plan<R: Rng>(rng: &mut R, total: u64) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    let mut remaining = total;
    let mut forwards = 0usize;
    while remaining > 0 {
        // A quota rather than a coin keeps the share near 20% even for a handful of files.
        let want_forward = !out.is_empty() && forwards * 5 < (out.len() + 1);
        if want_forward {
            let pick = rng.gen_range(0..out.len());
            // Forward an original (a forward of a forward is the same bytes anyway).
            let src = out[pick].forward_of.unwrap_or(pick);
            if out[src].size <= remaining {
                remaining -= out[src].size;
                out.push(Planned {
                    kind: out[src].kind,
                    size: out[src].size,
                    forward_of: Some(src),
                    content_seed: 0,
                });
                forwards += 1;
                continue;
            }
        }
        let kind = Kind::draw(rng);
        let size = kind.draw_size(rng).min(remaining);
        remaining -= size;
        out.push(Planned {
            kind,
            size,
            forward_of: None,
            content_seed: rng.gen(),
        });
    }
    out
}

/// A file as written: where it lives and what the app records about it.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// Path relative to the data folder, as stored in the `media` table.
    pub rel_path: String,
    /// Base64 SHA-256 of the contents, as the app stores it.
    pub file_hash: String,
    /// Original name of a document, `None` for camera/voice media.
    pub media_name: Option<String>,
}

/// Hands out unique file names per day and kind, like the app's `WA0042` counters.
#[derive(Debug, Default)]
pub(crate) struct Namer {
    counters: HashMap<(Kind, String), u32>,
}

impl Namer {
    /// Next free name for a file of `kind` received at `ts_ms` (relative to `root`); creates
    /// the week folder of a voice note.
    fn next(
        &mut self,
        root: &Path,
        kind: Kind,
        ts_ms: i64,
        doc_base: &str,
    ) -> Result<String, ChatGenError> {
        if kind == Kind::Voice {
            let week = root.join(kind.dir()).join(yyyyww(ts_ms));
            std::fs::create_dir_all(&week).map_err(|e| io_err(&week, "create media folder", e))?;
        }
        let day = yyyymmdd(ts_ms);
        loop {
            let n = self.counters.entry((kind, day.clone())).or_insert(0);
            let name = match kind {
                Kind::Image => format!("IMG-{day}-WA{n:04}.jpg"),
                Kind::Voice => format!("PTT-{day}-WA{n:04}.opus"),
                Kind::Video => format!("VID-{day}-WA{n:04}.mp4"),
                Kind::Document if *n == 0 => format!("{doc_base}.pdf"),
                Kind::Document => format!("{doc_base} ({n}).pdf"),
            };
            *n += 1;
            // Voice notes go into one subfolder per week ("202647"), as the app files them.
            let rel = match kind {
                Kind::Voice => format!("{}/{}/{}", kind.dir(), yyyyww(ts_ms), name),
                _ => format!("{}/{}", kind.dir(), name),
            };
            // Counters restart per process; the folder is the truth (a later day adds files).
            if !root.join(&rel).exists() {
                return Ok(rel);
            }
        }
    }
}

/// Writes planned file `idx` for a message at `ts_ms`; forwards copy the earlier file.
pub(crate) fn write<R: Rng>(
    root: &Path,
    plan: &[Planned],
    written: &[Option<Written>],
    idx: usize,
    ts_ms: i64,
    namer: &mut Namer,
    rng: &mut R,
) -> Result<Written, ChatGenError> {
    let p = &plan[idx];
    match p.forward_of {
        None => write_fresh(root, p.kind, p.size, p.content_seed, ts_ms, namer, rng),
        Some(src) => {
            let Some(Some(orig)) = written.get(src) else {
                return Err(ChatGenError::Internal {
                    detail: format!("forward {idx} planned before its original {src} was written"),
                });
            };
            let rel_path = forward_existing(root, p.kind, &orig.rel_path, ts_ms, namer, rng)?;
            Ok(Written {
                rel_path,
                file_hash: orig.file_hash.clone(),
                media_name: orig.media_name.clone(),
            })
        }
    }
}

/// Writes a new file of `kind` and `size` (contents from `seed`) for a message at `ts_ms`.
pub(crate) fn write_fresh<R: Rng>(
    root: &Path,
    kind: Kind,
    size: u64,
    seed: u64,
    ts_ms: i64,
    namer: &mut Namer,
    rng: &mut R,
) -> Result<Written, ChatGenError> {
    let doc_base = document_base(rng, ts_ms);
    let rel_path = namer.next(root, kind, ts_ms, &doc_base)?;
    let file_hash = write_random_file(&root.join(&rel_path), kind, size, seed)?;
    let media_name = (kind == Kind::Document).then(|| {
        Path::new(&rel_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(Written {
        rel_path,
        file_hash,
        media_name,
    })
}

/// Copies an existing media file (a forward) under a fresh name; returns the new path.
pub(crate) fn forward_existing<R: Rng>(
    root: &Path,
    kind: Kind,
    src_rel: &str,
    ts_ms: i64,
    namer: &mut Namer,
    rng: &mut R,
) -> Result<String, ChatGenError> {
    let doc_base = document_base(rng, ts_ms);
    let rel_path = namer.next(root, kind, ts_ms, &doc_base)?;
    let dest = root.join(&rel_path);
    std::fs::copy(root.join(src_rel), &dest)
        .map_err(|e| io_err(&dest, "copy forwarded media to", e))?;
    Ok(rel_path)
}

fn write_random_file(
    dest: &Path,
    kind: Kind,
    size: u64,
    seed: u64,
) -> Result<String, ChatGenError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let file = File::create(dest).map_err(|e| io_err(dest, "create media file", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let header = kind.header(&mut rng, size);
    let head_len = header
        .len()
        .min(usize::try_from(size).unwrap_or(usize::MAX));
    let mut put = |bytes: &[u8]| -> Result<(), ChatGenError> {
        hasher.update(bytes);
        w.write_all(bytes)
            .map_err(|e| io_err(dest, "write media file", e))
    };
    put(&header[..head_len])?;
    let mut left = size - head_len as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        put(&buf[..n])?;
        left -= n as u64;
    }
    w.flush().map_err(|e| io_err(dest, "write media file", e))?;
    Ok(base64(&hasher.finalize()))
}

/// A document's original name, as senders name their PDFs.
fn document_base<R: Rng>(rng: &mut R, ts_ms: i64) -> String {
    const BASES: &[&str] = &[
        "Invoice",
        "Boarding pass",
        "Scan",
        "Menu",
        "Tickets",
        "CV",
        "Report",
        "Lease agreement",
        "Receipt",
        "Contract",
        "Itinerary",
        "Minutes",
        "Schedule",
        "Payslip",
        "Insurance",
    ];
    format!(
        "{} {}",
        BASES[rng.gen_range(0..BASES.len())],
        yyyymmdd(ts_ms)
    )
}

/// Standard base64 with padding (the app stores hashes this way).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// `YYYYMMDD` (UTC) of a millisecond Unix timestamp.
pub(crate) fn yyyymmdd(ts_ms: i64) -> String {
    let (y, m, d) = civil(ts_ms.div_euclid(86_400_000));
    format!("{y:04}{m:02}{d:02}")
}

/// `YYYYWW` (UTC year and week of that year, weeks starting on 1 January) of a timestamp.
fn yyyyww(ts_ms: i64) -> String {
    let days = ts_ms.div_euclid(86_400_000);
    let (y, _, _) = civil(days);
    let jan1 = days_from_civil(y, 1, 1);
    format!("{y:04}{:02}", (days - jan1) / 7 + 1)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of days since 1970-01-01.
/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian.
pub fn civil(days: i64) -> (i64, i64, i64) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Creates the media folders under `root`.
pub(crate) fn create_dirs(root: &Path) -> Result<(), ChatGenError> {
    for d in MEDIA_DIRS {
        let p: PathBuf = root.join(d);
        std::fs::create_dir_all(&p).map_err(|e| io_err(&p, "create media folder", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_base64() {
        assert_eq!(yyyymmdd(0), "19700101");
        assert_eq!(yyyymmdd(1_795_219_200_000), "20261121");
        assert_eq!(yyyymmdd(951_782_400_000), "20000229");
        assert_eq!(
            days_from_civil(2026, 11, 21),
            1_795_219_200_000 / 86_400_000
        );
        assert_eq!(yyyyww(1_795_219_200_000), "202647");
        assert_eq!(yyyyww(1_767_225_600_000), "202601");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn plan_sums_exactly_and_forwards_about_a_fifth() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = plan(&mut rng, 500_000_000);
        assert_eq!(p.iter().map(|f| f.size).sum::<u64>(), 500_000_000);
        let fwd = p.iter().filter(|f| f.forward_of.is_some()).count();
        let share = fwd as f64 / p.len() as f64;
        assert!((0.15..=0.22).contains(&share), "forward share {share}");
    }
}
