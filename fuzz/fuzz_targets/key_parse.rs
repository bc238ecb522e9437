//! `BackupKey::parse` on whatever a person might type (lossy UTF-8): errors, never
//! panics; a key it accepts displays as 16 groups that parse back to the same key.
#![no_main]

use backlock_core::key::BackupKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = BackupKey::parse(&text) {
        let shown = key.to_display();
        assert_eq!(shown.len(), 79);
        let again = BackupKey::parse(&shown).expect("displayed key parses");
        assert_eq!(again.expose_secret(), key.expose_secret());
    }
});
