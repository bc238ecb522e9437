//! Every object decoder (config, index, snapshot, blob codec, SQLite header sniff) on
//! arbitrary authenticated-looking plaintext: must return errors, never panic, and never
//! allocate past the decoders' bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backlock_core::format::fuzz::decode_all(data);
});
