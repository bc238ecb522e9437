//! Every wire decoder returns an error on arbitrary bytes; none panics.

use backlock_vault_proto::wire::{decode_all, WIRE_VERSION};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn test_nocrash_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&data);
    }

    #[test]
    fn test_nocrash_versioned_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut body = vec![WIRE_VERSION];
        body.extend_from_slice(&data);
        decode_all(&body);
    }

    #[test]
    fn test_nocrash_tokens(account in "[a-z.]{0,8}", expiry in "[0-9]{0,22}", mac in "[0-9a-f]{0,70}") {
        decode_all(format!("bl1.{account}.{expiry}.{mac}").as_bytes());
    }

    #[test]
    fn test_nocrash_v2_tokens(fleet in "[0-9a-f]{0,18}", key in "[0-9]{0,4}", issued in "[0-9]{0,22}", expiry in "[0-9]{0,22}", account in "[a-z.]{0,8}", mac in "[0-9a-f]{0,70}") {
        let token = format!("bl2.{fleet}.{key}.{issued}.{expiry}.{account}.{mac}");
        let keys = backlock_vault_proto::token::TokenKeys::new(
            backlock_vault_proto::token::FleetId::of(&[1; 32]),
            1,
            backlock_vault_proto::token::TokenSecret::from_bytes([2; 32]),
        );
        let _ = keys.verify(&token, 1_000);
        decode_all(token.as_bytes());
    }
}
