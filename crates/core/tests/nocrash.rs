//! Decoders never panic on arbitrary bytes (the fuzz targets run the same entry points).

use backlock_core::{
    envelope::{self, ObjectKind, PackOpener},
    ids::ChunkId,
    kdf::RepoKeys,
    key::BackupKey,
};
use proptest::prelude::*;

fn keys() -> RepoKeys {
    RepoKeys::derive(&BackupKey::from_bytes([9; 32]))
}

proptest! {
    #[test]
    fn test_nocrash_object_decoders(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        backlock_core::format::fuzz::decode_all(&data);
    }

    #[test]
    fn test_nocrash_envelope(data in proptest::collection::vec(any::<u8>(), 0..512), kind in 0usize..5) {
        let k = keys();
        let kind = ObjectKind::ALL[kind];
        if kind == ObjectKind::Pack {
            if let Ok(o) = PackOpener::new(&k, "p", &data) {
                let _ = o.open_blob(0, &ChunkId([0; 32]), &data);
            }
        } else {
            let _ = envelope::open(&k, kind, "n", &data);
        }
        let _ = envelope::is_authentic_newer(&k, kind, "n", &data);
    }

    #[test]
    fn test_nocrash_delta_blob(
        base in proptest::collection::vec(any::<u8>(), 0..4096),
        page in proptest::collection::vec(any::<u8>(), 1..4096),
        flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4),
        bound in 0usize..8192,
    ) {
        // A real delta with bytes flipped, decoded against its base: an error or the
        // wrong chunk (caught by the ID check), never a panic or more than `bound` bytes.
        let mut enc = backlock_core::blob::BlobEncoder::new().unwrap();
        let (mut blob, _) = enc.encode_against(&page, &base);
        blob[0] = backlock_core::blob::CODEC_ZSTD_DELTA;
        for (at, x) in flips {
            let i = at % blob.len();
            blob[i] ^= x;
        }
        if let Ok(chunk) = backlock_core::blob::decode(&blob, bound, Some(&base)) {
            prop_assert!(chunk.len() <= bound);
        }
    }

    #[test]
    fn test_nocrash_key_parse(s in ".{0,100}") {
        let _ = BackupKey::parse(&s);
    }

    #[test]
    fn test_nocrash_zstd_wrapped(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // A valid zstd header in front of junk exercises the decompressor paths.
        let mut framed = vec![1u8, 0x28, 0xb5, 0x2f, 0xfd];
        framed.extend_from_slice(&data);
        backlock_core::format::fuzz::decode_all(&framed);
    }
}
