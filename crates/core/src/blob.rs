//! Blob codec (docs/FORMAT.md §Blobs): `codec byte || payload`, sealed into packs.
//!
//! Codec 0 stores the chunk as is; codec 1 is a zstd frame. Compression is kept only
//! when it saves at least 1/32 of the chunk, so media is stored raw.

use crate::error::FormatError;

/// Codec byte: payload is the chunk itself.
pub const CODEC_RAW: u8 = 0;
/// Codec byte: payload is one zstd frame of the chunk.
pub const CODEC_ZSTD: u8 = 1;
/// zstd level for large chunks: zstd's default balance of speed and ratio.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd level for small chunks (SQLite pages), where level 3's per-call table
/// building costs more than it saves.
pub const ZSTD_LEVEL_SMALL: i32 = 1;
/// Chunks up to this size are small.
pub const SMALL_CHUNK: usize = 64 * 1024;

/// Encodes chunks, reusing one zstd context (one per worker thread).
pub struct BlobEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    zstd_small: zstd::bulk::Compressor<'static>,
    /// Reused output buffer: zstd writes into its spare capacity, so nothing is zeroed.
    scratch: Vec<u8>,
}

impl BlobEncoder {
    /// A new encoder.
    pub fn new() -> std::io::Result<Self> {
        Ok(BlobEncoder {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            zstd_small: zstd::bulk::Compressor::new(ZSTD_LEVEL_SMALL)?,
            scratch: Vec::new(),
        })
    }

    /// Encodes `chunk`, compressing only if a 16 KiB sample compresses by 10% or more,
    /// so incompressible media costs a sample, not a full zstd pass.
    pub fn encode_auto(&mut self, chunk: &[u8], try_compress: bool) -> (Vec<u8>, bool) {
        const SAMPLE: usize = 16 * 1024;
        if try_compress && chunk.len() > 4 * SAMPLE {
            let sample = &chunk[..SAMPLE];
            let worth =
                zstd::bulk::compress(sample, 1).is_ok_and(|z| z.len() < SAMPLE - SAMPLE / 10);
            return self.encode(chunk, worth);
        }
        self.encode(chunk, try_compress)
    }

    /// Encodes `chunk`, trying compression when `try_compress`. Returns the encoded
    /// blob and whether compression paid.
    pub fn encode(&mut self, chunk: &[u8], try_compress: bool) -> (Vec<u8>, bool) {
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
                    let mut out = Vec::with_capacity(1 + n);
                    out.push(CODEC_ZSTD);
                    out.extend_from_slice(&self.scratch[..n]);
                    return (out, true);
                }
            }
        }
        let mut out = Vec::with_capacity(1 + chunk.len());
        out.push(CODEC_RAW);
        out.extend_from_slice(chunk);
        (out, false)
    }
}

/// Decodes a blob whose chunk is at most `max_len` bytes (a bound from the index, so a
/// hostile frame cannot make us allocate more).
pub fn decode(blob: &[u8], max_len: usize) -> Result<Vec<u8>, FormatError> {
    let malformed = |detail: String| FormatError::Malformed {
        what: "blob",
        detail,
    };
    match blob.split_first() {
        Some((&CODEC_RAW, rest)) if rest.len() <= max_len => Ok(rest.to_vec()),
        Some((&CODEC_RAW, rest)) => {
            Err(malformed(format!("{} bytes exceeds {max_len}", rest.len())))
        }
        Some((&CODEC_ZSTD, rest)) => {
            zstd::bulk::decompress(rest, max_len).map_err(|e| malformed(e.to_string()))
        }
        Some((&c, _)) => Err(malformed(format!("unknown codec {c}"))),
        None => Err(malformed("empty".into())),
    }
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
        assert_eq!(decode(&blob, text.len()).unwrap(), text);
        let mut noise = vec![0u8; 5000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (blob, compressed) = enc.encode(&noise, true);
        assert!(!compressed && blob[0] == CODEC_RAW);
        assert_eq!(decode(&blob, noise.len()).unwrap(), noise);
    }

    #[test]
    fn decode_respects_bound() {
        let mut enc = BlobEncoder::new().unwrap();
        let (blob, _) = enc.encode(&[0u8; 10_000], true);
        assert!(decode(&blob, 9_999).is_err());
    }
}
