//! Account tokens and account names (docs/VAULT.md §Account tokens).
//!
//! The relay vouches for an account with
//! `bl2.<fleet>.<key>.<issued>.<expires>.<account>.<mac>`: `fleet` is the 16 hex digits
//! of the fleet's [`FleetId`], `key` the decimal id (1–255) of the token secret used,
//! `issued` and `expires` Unix seconds in canonical decimal, and `mac` hex
//! HMAC-SHA256 under that secret over `"backlock token v2" ‖ 0x00 ‖ fleet (8 bytes) ‖
//! key (1 byte) ‖ u64be(issued) ‖ u64be(expires) ‖ account`. The vault refuses a token
//! of another fleet, one whose lifetime (`expires − issued`) exceeds its maximum
//! (default 24 h), and one outside `[issued − skew, expires + skew)` with
//! [`CLOCK_SKEW_SECS`]. Several secrets can be active at once, so the relay's secret
//! can be rotated. Tokens of the first format (`bl1.`) are refused.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest account name.
pub const MAX_ACCOUNT_LEN: usize = 64;
const PREFIX: &str = "bl2.";
const OLD_PREFIX: &str = "bl1.";
const MAC_DOMAIN: &[u8] = b"backlock token v2";

/// Clock difference tolerated between the relay (or a device) and the vault, both
/// ways, for tokens and owner proofs.
pub const CLOCK_SKEW_SECS: u64 = 300;

/// The longest token lifetime a vault accepts unless configured otherwise.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

/// Why an account name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Empty or longer than [`MAX_ACCOUNT_LEN`].
    #[error("an account name has 1 to {MAX_ACCOUNT_LEN} characters")]
    Length,
    /// A character outside the allowed set.
    #[error(
        "account name: character {position} is not allowed (use letters, digits and . _ @ + : -)"
    )]
    Character {
        /// 1-based position of the first bad character.
        position: usize,
    },
}

/// Checks an account name: 1–64 of `A–Z a–z 0–9 . _ @ + : -` (a phone number, a user id).
pub fn validate_account(account: &str) -> Result<(), AccountError> {
    if account.is_empty() || account.len() > MAX_ACCOUNT_LEN {
        return Err(AccountError::Length);
    }
    match account
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || "._@+:-".contains(c)))
    {
        Some(i) => Err(AccountError::Character { position: i + 1 }),
        None => Ok(()),
    }
}

/// Names a fleet in tokens and owner proofs: the first 8 bytes of
/// SHA-256(`"backlock fleet id v1" ‖ 0x00 ‖ OPAQUE public key`), so every replica and
/// every device that pinned the key derive it alike.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FleetId([u8; 8]);

impl FleetId {
    /// The id of the fleet whose OPAQUE public key is `server_public_key`.
    pub fn of(server_public_key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"backlock fleet id v1\0")
            .chain_update(server_public_key)
            .finalize();
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        FleetId(id)
    }

    /// The bytes signed and MACed.
    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }

    /// 16 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetId({})", self.to_hex())
    }
}

impl fmt::Display for FleetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A secret the relay and the vault share.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TokenSecret([u8; 32]);

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(REDACTED)")
    }
}

impl TokenSecret {
    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenSecret(bytes)
    }

    /// A fresh random secret.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        TokenSecret(bytes)
    }

    /// The bytes, for sealing into storage.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

fn mac(
    secret: &TokenSecret,
    fleet: FleetId,
    key: u8,
    issued: u64,
    expires: u64,
    account: &str,
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret())
        .expect("HMAC takes keys of any length");
    mac.update(MAC_DOMAIN);
    mac.update(&[0]);
    mac.update(&fleet.bytes());
    mac.update(&[key]);
    mac.update(&issued.to_be_bytes());
    mac.update(&expires.to_be_bytes());
    mac.update(account.as_bytes());
    mac
}

/// The token secrets of one fleet: the first issues, all verify.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    fleet: FleetId,
    keys: Vec<(u8, TokenSecret)>,
    max_lifetime_secs: u64,
}

/// Why a token cannot be issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The account name is not allowed.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Longer than the vault accepts.
    #[error("a token may live at most {max} s; {asked} s were asked")]
    TooLong {
        /// The maximum.
        max: u64,
        /// What was asked.
        asked: u64,
    },
}

impl TokenKeys {
    /// The keys of `fleet`, issuing with secret `key` (id 1–255).
    pub fn new(fleet: FleetId, key: u8, secret: TokenSecret) -> Self {
        TokenKeys {
            fleet,
            keys: vec![(key, secret)],
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }

    /// Also accepts tokens made with secret `key` (a rotation in progress).
    pub fn accepting(mut self, key: u8, secret: TokenSecret) -> Self {
        self.keys.retain(|(id, _)| *id != key);
        self.keys.push((key, secret));
        self
    }

    /// Issues with secret `key` instead of the first one, if it is held.
    pub fn issuing_with(mut self, key: u8) -> Option<Self> {
        let at = self.keys.iter().position(|(id, _)| *id == key)?;
        let chosen = self.keys.remove(at);
        self.keys.insert(0, chosen);
        Some(self)
    }

    /// The same secrets, naming another fleet (a relay that serves several).
    pub fn with_fleet(mut self, fleet: FleetId) -> Self {
        self.fleet = fleet;
        self
    }

    /// Refuses tokens living longer than `secs`.
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime_secs = secs;
        self
    }

    /// The fleet these tokens name.
    pub fn fleet(&self) -> FleetId {
        self.fleet
    }

    /// The id of the secret tokens are issued with.
    pub fn issuing_key(&self) -> u8 {
        self.keys[0].0
    }

    /// Issues a token for `account`, valid from `issued` until `expires` (Unix s).
    pub fn issue(&self, account: &str, issued: u64, expires: u64) -> Result<String, IssueError> {
        validate_account(account)?;
        let asked = expires.saturating_sub(issued);
        if asked > self.max_lifetime_secs {
            return Err(IssueError::TooLong {
                max: self.max_lifetime_secs,
                asked,
            });
        }
        let (key, secret) = &self.keys[0];
        let tag = mac(secret, self.fleet, *key, issued, expires, account)
            .finalize()
            .into_bytes();
        Ok(format!(
            "{PREFIX}{}.{key}.{issued}.{expires}.{account}.{}",
            self.fleet,
            hex::encode(tag)
        ))
    }

    /// Verifies `token` at time `now` (Unix s) and returns the account it vouches for.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, TokenError> {
        let parsed = AccountToken::parse(token)?;
        if parsed.fleet != self.fleet {
            return Err(TokenError::OtherFleet);
        }
        let secret = self
            .keys
            .iter()
            .find(|(id, _)| *id == parsed.key)
            .map(|(_, s)| s)
            .ok_or(TokenError::UnknownKey)?;
        let tag = hex::decode(&parsed.mac).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison inside `verify_slice`.
        mac(
            secret,
            parsed.fleet,
            parsed.key,
            parsed.issued_unix,
            parsed.expires_unix,
            &parsed.account,
        )
        .verify_slice(&tag)
        .map_err(|_| TokenError::Forged)?;
        if parsed.expires_unix.saturating_sub(parsed.issued_unix) > self.max_lifetime_secs {
            return Err(TokenError::TooLong);
        }
        if parsed.issued_unix > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        if parsed.expires_unix.saturating_add(CLOCK_SKEW_SECS) <= now {
            return Err(TokenError::Expired);
        }
        Ok(parsed.account)
    }
}

/// Why a token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `bl2.<fleet>.<key>.<issued>.<expires>.<account>.<mac>`.
    #[error("the account token is malformed")]
    Malformed,
    /// A token of the first format, which names no fleet and no issue time.
    #[error("the account token is of an old format (bl1); get a new one from the relay")]
    OldFormat,
    /// Made for another fleet.
    #[error("the account token was issued for another vault fleet")]
    OtherFleet,
    /// Made with a token secret this vault does not hold (retired, or not yet rolled out).
    #[error("the account token was made with a token secret this vault does not accept")]
    UnknownKey,
    /// The MAC does not verify.
    #[error("the account token was not issued by this vault's relay")]
    Forged,
    /// Its lifetime exceeds the vault's maximum.
    #[error(
        "the account token lives longer than this vault allows; the relay must issue shorter ones"
    )]
    TooLong,
    /// Issued in the future, beyond the tolerated skew.
    #[error("the account token is not valid yet: check the relay's clock")]
    NotYetValid,
    /// Past its expiry.
    #[error("the account token has expired; get a new one")]
    Expired,
}

/// The parts of a token, before its MAC is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountToken {
    /// The fleet it names.
    pub fleet: FleetId,
    /// The id of the secret it was made with.
    pub key: u8,
    /// Unix seconds.
    pub issued_unix: u64,
    /// Unix seconds.
    pub expires_unix: u64,
    /// The account vouched for.
    pub account: String,
    mac: String,
}

fn canonical_decimal(text: &str) -> Option<u64> {
    let ok = !text.is_empty()
        && text.len() <= 20
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    ok.then(|| text.parse().ok()).flatten()
}

impl AccountToken {
    /// Splits a token; checks only its shape.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        if token.starts_with(OLD_PREFIX) {
            return Err(TokenError::OldFormat);
        }
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let mut fields = body.splitn(5, '.');
        let (Some(fleet), Some(key), Some(issued), Some(expires), Some(rest)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let (account, mac) = rest.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut id = [0u8; 8];
        if fleet.len() != 16
            || !fleet
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(TokenError::Malformed);
        }
        hex::decode_to_slice(fleet, &mut id).map_err(|_| TokenError::Malformed)?;
        let key = canonical_decimal(key)
            .and_then(|k| u8::try_from(k).ok())
            .filter(|k| *k > 0)
            .ok_or(TokenError::Malformed)?;
        let issued_unix = canonical_decimal(issued).ok_or(TokenError::Malformed)?;
        let expires_unix = canonical_decimal(expires).ok_or(TokenError::Malformed)?;
        validate_account(account).map_err(|_| TokenError::Malformed)?;
        if mac.len() != 64 || !mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(TokenError::Malformed);
        }
        Ok(AccountToken {
            fleet: FleetId(id),
            key,
            issued_unix,
            expires_unix,
            account: account.to_owned(),
            mac: mac.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(FleetId::of(&[1; 32]), 1, TokenSecret::from_bytes([9; 32]))
    }

    #[test]
    fn issue_verify_and_refuse() {
        let keys = keys();
        let token = keys.issue("+15551234567", 1_000, 2_000).unwrap();
        assert_eq!(keys.verify(&token, 1_500).unwrap(), "+15551234567");
        // The tolerated skew, both ways, and not a second more.
        assert!(keys.verify(&token, 1_000 - CLOCK_SKEW_SECS).is_ok());
        assert_eq!(
            keys.verify(&token, 999 - CLOCK_SKEW_SECS),
            Err(TokenError::NotYetValid)
        );
        assert!(keys.verify(&token, 1_999 + CLOCK_SKEW_SECS).is_ok());
        assert_eq!(
            keys.verify(&token, 2_000 + CLOCK_SKEW_SECS),
            Err(TokenError::Expired)
        );
        let other = TokenKeys::new(FleetId::of(&[1; 32]), 1, TokenSecret::from_bytes([8; 32]));
        assert_eq!(other.verify(&token, 1_500), Err(TokenError::Forged));
        // Moving the expiry or the issue time invalidates the MAC.
        let stretched = token.replace(".2000.", ".9000.");
        assert_eq!(keys.verify(&stretched, 1_500), Err(TokenError::Forged));
        let moved = token.replace(".1000.", ".1001.");
        assert_eq!(keys.verify(&moved, 1_500), Err(TokenError::Forged));
        // Another account with the same MAC is forged.
        let swapped = token.replace("+15551234567", "+15551234568");
        assert_eq!(keys.verify(&swapped, 1_500), Err(TokenError::Forged));
        for bad in [
            "",
            "bl2.",
            "bl2.0123456789abcdef.1.1.2.a",
            "bl2.0123456789abcdef.0.1.2.a.00",
            "bl2.0123456789ABCDEF.1.1.2.a.00",
            "bl2.0123456789abcdef.1.01.2.a.00",
            "bl2.0123456789abcdef.256.1.2.a.00",
            "bl3.a.1.00",
        ] {
            assert_eq!(keys.verify(bad, 0), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(keys.verify("bl1.a.1.00", 0), Err(TokenError::OldFormat));
    }

    #[test]
    fn a_token_of_another_fleet_or_longer_than_the_maximum_is_refused() {
        let ours = keys();
        let theirs = TokenKeys::new(FleetId::of(&[2; 32]), 1, TokenSecret::from_bytes([9; 32]));
        let token = theirs.issue("amy", 1_000, 2_000).unwrap();
        assert_eq!(ours.verify(&token, 1_500), Err(TokenError::OtherFleet));
        // Relabelled with our fleet: the MAC covers the fleet.
        let relabelled = token.replace(&theirs.fleet().to_hex(), &ours.fleet().to_hex());
        assert_eq!(ours.verify(&relabelled, 1_500), Err(TokenError::Forged));

        let long = ours
            .clone()
            .with_max_lifetime(u64::MAX)
            .issue("amy", 0, 2 * DEFAULT_MAX_LIFETIME_SECS)
            .unwrap();
        assert_eq!(ours.verify(&long, 10), Err(TokenError::TooLong));
        assert!(matches!(
            ours.issue("amy", 0, DEFAULT_MAX_LIFETIME_SECS + 1),
            Err(IssueError::TooLong { .. })
        ));
    }

    #[test]
    fn two_secrets_verify_during_a_rotation() {
        let old = keys();
        let new = TokenKeys::new(old.fleet(), 2, TokenSecret::from_bytes([7; 32]));
        let vault = old.clone().accepting(2, TokenSecret::from_bytes([7; 32]));
        for issuer in [&old, &new] {
            let token = issuer.issue("bo", 10, 20).unwrap();
            assert_eq!(vault.verify(&token, 15).unwrap(), "bo");
        }
        let retired = new.clone();
        let token = old.issue("bo", 10, 20).unwrap();
        assert_eq!(retired.verify(&token, 15), Err(TokenError::UnknownKey));
        assert_eq!(vault.issuing_with(2).unwrap().issuing_key(), 2);
    }

    #[test]
    fn account_names() {
        assert!(validate_account("alice.b@example:1-2_3+4").is_ok());
        assert_eq!(validate_account(""), Err(AccountError::Length));
        assert_eq!(validate_account(&"a".repeat(65)), Err(AccountError::Length));
        assert_eq!(
            validate_account("ab/c"),
            Err(AccountError::Character { position: 3 })
        );
    }
}
