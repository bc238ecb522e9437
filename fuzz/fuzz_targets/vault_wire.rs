//! Every vault wire decoder (requests, replies, JSON errors, account tokens) and the
//! OPAQUE message parsers the vault runs on client input: errors, never panics.
#![no_main]

use backlock_vault_proto::server::{password_file, ServerKeys};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static ServerKeys {
    static KEYS: OnceLock<ServerKeys> = OnceLock::new();
    KEYS.get_or_init(ServerKeys::generate)
}

fuzz_target!(|data: &[u8]| {
    backlock_vault_proto::wire::decode_all(data);
    let _ = password_file(data);
    let _ = keys().evaluate_registration("fuzz", &[0; 16], data);
    let _ = ServerKeys::from_bytes(data);
});
