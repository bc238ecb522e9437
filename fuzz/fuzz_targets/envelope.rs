//! The envelope parsers on arbitrary bytes from a hostile store: every object kind,
//! the pack header and one blob. Random input never authenticates, so this exercises
//! the version/kind/length checks; sealing the input and opening it again (and with one
//! bit flipped) covers the authenticated path.
#![no_main]

use backlock_core::{
    envelope::{self, ObjectKind, PackOpener, PackSealer, HEADER_LEN},
    ids::ChunkId,
    kdf::RepoKeys,
    key::BackupKey,
};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static KEYS: LazyLock<RepoKeys> = LazyLock::new(|| RepoKeys::derive(&BackupKey::from_bytes([7; 32])));

const NAME: &str = "00112233445566778899aabbccddeeff";

fn name_of(kind: ObjectKind) -> &'static str {
    if kind == ObjectKind::Config {
        backlock_core::format::CONFIG_NAME
    } else {
        NAME
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = &*KEYS;
    for kind in [ObjectKind::Config, ObjectKind::Index, ObjectKind::Snapshot] {
        let _ = envelope::open(keys, kind, name_of(kind), data);
    }
    // Pack: header from the input, then the rest as blob 0 (and as blob `seq` taken
    // from the input, so large nonces are exercised too).
    if let Ok(opener) = PackOpener::new(keys, NAME, data) {
        let rest = &data[HEADER_LEN.min(data.len())..];
        let id = ChunkId([0; 32]);
        let _ = opener.open_blob(0, &id, rest);
        if let Some(seq) = rest.get(..4) {
            let seq = u32::from_be_bytes(seq.try_into().expect("4 bytes"));
            let _ = opener.open_blob(seq, &id, &rest[4..]);
        }
    }

    // Round trips: what is sealed opens to the same bytes; one flipped bit never does.
    for kind in [ObjectKind::Config, ObjectKind::Snapshot] {
        let sealed = envelope::seal_with_salt(keys, kind, name_of(kind), data, &[9; 32]);
        assert_eq!(envelope::open(keys, kind, name_of(kind), &sealed).as_deref(), Ok(data));
        let mut bad = sealed;
        let at = data.first().map_or(0, |&b| b as usize) % bad.len();
        bad[at] ^= 0x01;
        assert!(envelope::open(keys, kind, name_of(kind), &bad).is_err());
    }
    let id = ChunkId::compute(keys, data);
    let mut sealer = PackSealer::with_salt(keys, NAME, 0, &[9; 32]);
    let first = sealer.push(&id, b"\x00first");
    let place = sealer.push(&id, data);
    assert_eq!((first.seq, place.seq), (0, 1));
    let pack = sealer.finish();
    let opener = PackOpener::new(keys, NAME, &pack).expect("own header");
    let sealed = &pack[place.offset as usize..place.offset as usize + place.length as usize];
    assert_eq!(opener.open_blob(place.seq, &id, sealed).as_deref(), Ok(data));
    assert!(opener.open_blob(first.seq, &id, sealed).is_err());
});
