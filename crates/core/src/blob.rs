//! Blob codec (docs/FORMAT.md §Blobs): `codec byte || payload`, sealed into packs.
//!
//! Codec 0 stores the chunk as is; codec 1 is a zstd frame. Compression is kept only
//! when it saves at least 1/32 of the chunk, so media is stored raw. Codec 2 is a
//! zstd frame compressed against the previous version of the chunk (its *base*, named
//! by the index), so a run of SQLite pages that changed by one row costs tens of bytes.

use crate::error::FormatError;
use std::borrow::Cow;

/// Codec byte: payload is the chunk itself.
pub const CODEC_RAW: u8 = 0;
/// Codec byte: payload is one zstd frame of the chunk.
pub const CODEC_ZSTD: u8 = 1;
/// Codec byte: payload is one zstd frame of the chunk, compressed with the base
/// chunk as a raw-content prefix (zstd's "reference prefix").
pub const CODEC_ZSTD_DELTA: u8 = 2;
/// zstd level of deltas: they are small, so the table setup of level 3 is cheap.
pub const ZSTD_LEVEL_DELTA: i32 = 3;
/// zstd level for large chunks: zstd's default balance of speed and ratio.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd level of a repository of `compression max`.
pub const ZSTD_LEVEL_MAX: i32 = 19;
/// zstd level for small chunks (runs of SQLite pages), where level 3's per-call table
/// building costs more than it saves.
pub const ZSTD_LEVEL_SMALL: i32 = 1;
/// Chunks up to this size are small.
pub const SMALL_CHUNK: usize = 64 * 1024;

/// Encodes chunks, reusing one zstd context (one per worker thread).
pub struct BlobEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    zstd_small: zstd::bulk::Compressor<'static>,
    /// For the sample that decides whether a large chunk is worth compressing; kept,
    /// since a context per chunk costs an allocation the size of its tables.
    zstd_sample: zstd::bulk::Compressor<'static>,
    /// For deltas, whose base is passed as raw content on each call.
    zstd_delta: zstd::zstd_safe::CCtx<'static>,
    /// Reused output buffer: zstd writes into its spare capacity, so nothing is zeroed.
    scratch: Vec<u8>,
}

impl BlobEncoder {
    /// A new encoder.
    pub fn new() -> std::io::Result<Self> {
        Self::at_levels(ZSTD_LEVEL, ZSTD_LEVEL_SMALL)
    }

    /// An encoder at zstd's highest level, for a repository of `compression max`.
    pub fn max() -> std::io::Result<Self> {
        Self::at_levels(ZSTD_LEVEL_MAX, ZSTD_LEVEL_MAX)
    }

    fn at_levels(level: i32, small: i32) -> std::io::Result<Self> {
        Ok(BlobEncoder {
            zstd: zstd::bulk::Compressor::new(level)?,
            zstd_small: zstd::bulk::Compressor::new(small)?,
            zstd_sample: zstd::bulk::Compressor::new(1)?,
            zstd_delta: zstd::zstd_safe::CCtx::create(),
            scratch: Vec::new(),
        })
    }

    /// Encodes `chunk`, compressing only if a 16 KiB sample compresses by 10% or more,
    /// so incompressible media costs a sample, not a full zstd pass.
    pub fn encode_auto(&mut self, chunk: &[u8], try_compress: bool) -> (Vec<u8>, bool) {
        let (codec, payload) = self.encode_auto_parts(chunk, try_compress);
        (join(codec, payload), codec == CODEC_ZSTD)
    }

    /// [`Self::encode_auto`] as the blob's codec byte and payload, so a caller that
    /// seals the blob straight into a pack never copies a chunk stored raw.
    pub fn encode_auto_parts<'s>(
        &'s mut self,
        chunk: &'s [u8],
        try_compress: bool,
    ) -> (u8, &'s [u8]) {
        const SAMPLE: usize = 16 * 1024;
        if try_compress && chunk.len() > 4 * SAMPLE {
            let sample = &chunk[..SAMPLE];
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(SAMPLE));
            let worth = self
                .zstd_sample
                .compress_to_buffer(sample, &mut self.scratch)
                .is_ok_and(|n| n < SAMPLE - SAMPLE / 10);
            return self.encode_parts(chunk, worth);
        }
        self.encode_parts(chunk, try_compress)
    }

    /// Encodes `chunk`, trying compression when `try_compress`. Returns the encoded
    /// blob and whether compression paid.
    pub fn encode(&mut self, chunk: &[u8], try_compress: bool) -> (Vec<u8>, bool) {
        let (codec, payload) = self.encode_parts(chunk, try_compress);
        (join(codec, payload), codec == CODEC_ZSTD)
    }

    /// [`Self::encode`] as the blob's codec byte and payload (a zstd frame in this
    /// encoder's scratch buffer, or the chunk itself).
    pub fn encode_parts<'s>(&'s mut self, chunk: &'s [u8], try_compress: bool) -> (u8, &'s [u8]) {
        if try_compress {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(chunk.len()));
            let zstd = if chunk.len() <= SMALL_CHUNK {
                &mut self.zstd_small
            } else {
                &mut self.zstd
            };
            if let Ok(n) = zstd.compress_to_buffer(chunk, &mut self.scratch) {
                if n <= chunk.len() - chunk.len() / 32 {
                    return (CODEC_ZSTD, &self.scratch[..n]);
                }
            }
        }
        (CODEC_RAW, chunk)
    }
}

/// A blob from its codec byte and payload.
fn join(codec: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(codec);
    out.extend_from_slice(payload);
    out
}

impl BlobEncoder {
    /// Encodes `chunk` given the previous version of it, `base`: as a delta (codec 2)
    /// when that is at most an eighth of the chunk, or else shorter than
    /// [`Self::encode`]'s blob. Returns the blob and whether it is a delta (whose index
    /// entry must then name the base).
    pub fn encode_against(&mut self, chunk: &[u8], base: &[u8]) -> (Vec<u8>, bool) {
        let delta = self.encode_delta(chunk, base);
        // Compressed whole, a run of chat rows keeps well over an eighth of its size:
        // a delta under that wins without trying.
        match delta {
            Some(delta) if delta.len() <= chunk.len() / 8 => (delta, true),
            delta => {
                let (full, _) = self.encode(chunk, true);
                match delta {
                    Some(delta) if delta.len() < full.len() => (delta, true),
                    _ => (full, false),
                }
            }
        }
    }

    /// `chunk` as a codec-2 blob against `base`; `None` if zstd refuses (it does not for
    /// in-memory buffers).
    fn encode_delta(&mut self, chunk: &[u8], base: &[u8]) -> Option<Vec<u8>> {
        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk.len()));
        if is_raw_content(base) {
            // The reused context: a context per delta cost its tables' allocation and
            // page faults every time, more than compressing a 16 KiB run of pages.
            self.zstd_delta
                .compress_using_dict(&mut frame, chunk, base, ZSTD_LEVEL_DELTA)
                .ok()?;
        } else {
            // zstd would read this base as a dictionary of its own format.
            let mut cctx = zstd::zstd_safe::CCtx::create();
            cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(
                ZSTD_LEVEL_DELTA,
            ))
            .ok()?;
            cctx.ref_prefix(base).ok()?;
            cctx.compress2(&mut frame, chunk).ok()?;
        }
        Some(join(CODEC_ZSTD_DELTA, &frame))
    }
}

/// The first four bytes of a zstd dictionary (0xEC30A437, little-endian).
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];

/// True when zstd's `*_usingDict` functions take `base` as raw content, exactly as
/// the `refPrefix` the format specifies: anything but a zstd dictionary's header.
fn is_raw_content(base: &[u8]) -> bool {
    !base.starts_with(&ZSTD_DICT_MAGIC)
}

/// Decodes a blob whose chunk is at most `max_len` bytes (a bound from the index, so a
/// hostile frame cannot make us allocate more). `base` is the plaintext of the chunk
/// the index names as this blob's base: required for codec 2, refused otherwise.
pub fn decode(blob: &[u8], max_len: usize, base: Option<&[u8]>) -> Result<Vec<u8>, FormatError> {
    BlobDecoder::new()
        .decode(blob, max_len, base)
        .map(Cow::into_owned)
}

/// Decodes blobs, reusing one zstd context (one per reading thread): creating a
/// context per blob cost a restore more than decompressing its database pages.
pub struct BlobDecoder {
    zstd: zstd::zstd_safe::DCtx<'static>,
}

impl Default for BlobDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobDecoder {
    /// A new decoder (like any allocation, it aborts only when memory runs out).
    pub fn new() -> Self {
        BlobDecoder {
            zstd: zstd::zstd_safe::DCtx::create(),
        }
    }

    /// [`decode`]: a raw blob's chunk is borrowed from `blob`, not copied.
    pub fn decode<'a>(
        &mut self,
        blob: &'a [u8],
        max_len: usize,
        base: Option<&[u8]>,
    ) -> Result<Cow<'a, [u8]>, FormatError> {
        let malformed = |detail: String| FormatError::Malformed {
            what: "blob",
            detail,
        };
        match (blob.split_first(), base) {
            (Some((&CODEC_ZSTD_DELTA, rest)), Some(base)) if is_raw_content(base) => {
                one_frame(rest)?;
                // The reused context, base as raw content: the same as a prefix.
                let mut out = Vec::with_capacity(max_len);
                self.zstd
                    .decompress_using_dict(&mut out, rest, base)
                    .map_err(|c| malformed(zstd::zstd_safe::get_error_name(c).into()))?;
                Ok(Cow::Owned(out))
            }
            (Some((&CODEC_ZSTD_DELTA, rest)), Some(base)) => {
                one_frame(rest)?;
                decode_delta(rest, max_len, base).map(Cow::Owned)
            }
            (Some((&CODEC_ZSTD_DELTA, _)), None) => Err(malformed(
                "a delta blob whose index entry names no base".into(),
            )),
            (Some((&c, _)), Some(_)) if c == CODEC_RAW || c == CODEC_ZSTD => Err(malformed(
                "the index names a base for a blob that is not a delta".into(),
            )),
            (Some((&CODEC_RAW, rest)), None) if rest.len() <= max_len => Ok(Cow::Borrowed(rest)),
            (Some((&CODEC_RAW, rest)), None) => {
                Err(malformed(format!("{} bytes exceeds {max_len}", rest.len())))
            }
            (Some((&CODEC_ZSTD, rest)), None) => {
                one_frame(rest)?;
                // Output capacity is the bound: a larger frame is an error, not a resize.
                let mut out = Vec::with_capacity(max_len);
                self.zstd
                    .decompress(&mut out, rest)
                    .map_err(|c| malformed(zstd::zstd_safe::get_error_name(c).into()))?;
                Ok(Cow::Owned(out))
            }
            (Some((&c, _)), _) => Err(malformed(format!("unknown codec {c}"))),
            (None, _) => Err(malformed("empty".into())),
        }
    }
}

/// The first four bytes of a zstd frame (0xFD2FB528, little-endian).
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// A blob's payload is exactly one standard zstd frame, as the format says: zstd
/// itself would also accept frames of its legacy formats, skippable frames, and
/// several frames one after another.
fn one_frame(payload: &[u8]) -> Result<(), FormatError> {
    let whole = payload.starts_with(&ZSTD_FRAME_MAGIC)
        && zstd::zstd_safe::find_frame_compressed_size(payload) == Ok(payload.len());
    if whole {
        Ok(())
    } else {
        Err(FormatError::Malformed {
            what: "blob",
            detail: "its payload is not exactly one zstd frame".into(),
        })
    }
}

/// A delta whose base zstd would take for a dictionary: decoded with the base as a
/// prefix, as the format defines it.
fn decode_delta(frame: &[u8], max_len: usize, base: &[u8]) -> Result<Vec<u8>, FormatError> {
    let malformed = |detail: String| FormatError::Malformed {
        what: "blob",
        detail,
    };
    // A fresh context: a referenced prefix borrows the context for its lifetime.
    let mut dctx = zstd::zstd_safe::DCtx::create();
    dctx.ref_prefix(base)
        .map_err(|c| malformed(zstd::zstd_safe::get_error_name(c).into()))?;
    let mut out = Vec::with_capacity(max_len);
    dctx.decompress(&mut out, frame)
        .map_err(|c| malformed(zstd::zstd_safe::get_error_name(c).into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_text_not_noise() {
        let mut enc = BlobEncoder::new().unwrap();
        let text = b"hello there, see you at eight? ".repeat(200);
        let (blob, compressed) = enc.encode(&text, true);
        assert!(compressed && blob.len() < text.len() / 4);
        assert_eq!(decode(&blob, text.len(), None).unwrap(), text);
        let mut noise = vec![0u8; 5000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (blob, compressed) = enc.encode(&noise, true);
        assert!(!compressed && blob[0] == CODEC_RAW);
        assert_eq!(decode(&blob, noise.len(), None).unwrap(), noise);
    }

    #[test]
    fn a_page_changed_by_one_row_is_stored_as_a_short_delta() {
        let mut enc = BlobEncoder::new().unwrap();
        let mut base = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut base);
        let mut page = base.clone();
        page[1000..1040].copy_from_slice(&[7u8; 40]);
        let (blob, delta) = enc.encode_against(&page, &base);
        assert!(delta && blob[0] == CODEC_ZSTD_DELTA, "{}", blob.len());
        assert!(blob.len() < 100, "{} bytes", blob.len());
        assert_eq!(decode(&blob, page.len(), Some(&base)).unwrap(), page);
        // The base is part of the meaning: another base, or none, does not decode.
        let mut other = base.clone();
        other[2000] ^= 1;
        assert_ne!(
            decode(&blob, page.len(), Some(&other)).ok(),
            Some(page.clone())
        );
        assert!(decode(&blob, page.len(), None).is_err());
        assert!(decode(&blob, page.len() - 1, Some(&base)).is_err());
        // Unrelated content is stored whole, and then must not be given a base.
        let mut unrelated = vec![0u8; 4096];
        blake3::Hasher::new_derive_key("other")
            .finalize_xof()
            .fill(&mut unrelated);
        let (blob, delta) = enc.encode_against(&unrelated, &base);
        assert!(!delta && blob[0] == CODEC_RAW);
        assert!(decode(&blob, 4096, Some(&base)).is_err());
    }

    /// A 16 KiB run of pages with one page changed by a row.
    fn base_and_changed_run(seed: &str) -> (Vec<u8>, Vec<u8>) {
        let mut base = vec![0u8; 16384];
        blake3::Hasher::new_derive_key(seed)
            .finalize_xof()
            .fill(&mut base);
        let mut run = base.clone();
        run[9000..9050].copy_from_slice(&[3u8; 50]);
        (base, run)
    }

    /// The reused contexts pass the base as raw content, which the format defines as
    /// zstd's `refPrefix`: each side must read what the other writes, and a base that
    /// looks like a zstd dictionary must still be taken as plain content.
    #[test]
    fn deltas_from_reused_contexts_are_prefix_deltas() {
        let mut enc = BlobEncoder::new().unwrap();
        let mut dec = BlobDecoder::new();
        let (base_a, run_a) = base_and_changed_run("prefix a");
        let (base_b, run_b) = base_and_changed_run("prefix b");
        // Deltas against alternating bases through one encoder and one decoder, with
        // a damaged delta and a whole blob between them: nothing of one call's base
        // or state reaches the next.
        for i in 0..3 {
            for (base, run) in [(&base_a, &run_a), (&base_b, &run_b)] {
                let (blob, delta) = enc.encode_against(run, base);
                assert!(delta && blob.len() < 200, "round {i}: {} bytes", blob.len());
                assert_eq!(decode_delta(&blob[1..], run.len(), base).unwrap(), *run);
                let mut damaged = blob.clone();
                let last = damaged.len() - 1;
                damaged[last] ^= 0x55;
                assert!(
                    dec.decode(&damaged, run.len(), Some(base)).ok().as_deref() != Some(&run[..])
                );
                assert_eq!(*dec.decode(&blob, run.len(), Some(base)).unwrap(), run[..]);
                let (whole, _) = enc.encode(run, true);
                assert_eq!(*dec.decode(&whole, run.len(), None).unwrap(), run[..]);
            }
        }
        let (base, run) = (base_a, run_a);
        // A delta written with a prefix, as the format specifies, read by the decoder.
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.ref_prefix(&base).unwrap();
        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(run.len()));
        cctx.compress2(&mut frame, &run).unwrap();
        let blob = join(CODEC_ZSTD_DELTA, &frame);
        assert!(blob.len() < 200, "{} bytes", blob.len());
        assert_eq!(*dec.decode(&blob, run.len(), Some(&base)).unwrap(), run[..]);
        // A base that starts like a zstd dictionary is still plain content.
        let (mut base, _) = base_and_changed_run("dictionary-like");
        base[..4].copy_from_slice(&ZSTD_DICT_MAGIC);
        assert!(!is_raw_content(&base));
        let mut run = base.clone();
        run[100..120].copy_from_slice(&[1u8; 20]);
        let (blob, delta) = enc.encode_against(&run, &base);
        assert!(delta && blob.len() < 200, "{} bytes", blob.len());
        assert_eq!(*dec.decode(&blob, run.len(), Some(&base)).unwrap(), run[..]);
        assert_eq!(decode_delta(&blob[1..], run.len(), &base).unwrap(), run);
    }

    /// A zstd payload is one standard frame: not two frames, a frame with bytes after
    /// it, or a skippable frame, which zstd alone would all accept.
    #[test]
    fn a_payload_is_exactly_one_zstd_frame() {
        let mut enc = BlobEncoder::new().unwrap();
        let text = b"see you at eight ".repeat(100);
        let (blob, compressed) = enc.encode(&text, true);
        assert!(compressed);
        let frame = &blob[1..];
        let two = [&blob[..], frame].concat();
        let trailing = [&blob[..], &[0u8][..]].concat();
        let skippable = [&[CODEC_ZSTD, 0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0][..], frame].concat();
        for bad in [two, trailing, skippable] {
            assert!(decode(&bad, 2 * text.len(), None).is_err());
        }
        let (base, run) = base_and_changed_run("frames");
        let (delta, _) = enc.encode_against(&run, &base);
        let two = [&delta[..], &delta[1..]].concat();
        assert!(decode(&two, 2 * run.len(), Some(&base)).is_err());
        assert_eq!(decode(&delta, run.len(), Some(&base)).unwrap(), run);
    }

    #[test]
    fn decode_respects_bound() {
        let mut enc = BlobEncoder::new().unwrap();
        let (blob, _) = enc.encode(&[0u8; 10_000], true);
        assert!(decode(&blob, 9_999, None).is_err());
    }
}
