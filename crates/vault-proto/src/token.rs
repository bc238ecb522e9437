//! Account tokens and account names (docs/VAULT.md §Account tokens).
//!
//! The relay vouches for an account with `bl1.<account>.<expiry>.<mac>` where `mac` is
//! hex HMAC-SHA256 under a secret the relay shares with the vault, over
//! `"backlock token v1" ‖ 0x00 ‖ account ‖ 0x00 ‖ u64be(expiry)`. `expiry` is Unix
//! seconds in decimal.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest account name.
pub const MAX_ACCOUNT_LEN: usize = 64;
const PREFIX: &str = "bl1.";
const MAC_DOMAIN: &[u8] = b"backlock token v1";

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

/// The secret the relay and the vault share.
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

    fn mac(&self, account: &str, expires_unix: u64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(MAC_DOMAIN);
        mac.update(&[0]);
        mac.update(account.as_bytes());
        mac.update(&[0]);
        mac.update(&expires_unix.to_be_bytes());
        mac
    }

    /// Issues a token for `account` valid until `expires_unix`.
    pub fn issue(&self, account: &str, expires_unix: u64) -> Result<String, AccountError> {
        validate_account(account)?;
        let tag = self.mac(account, expires_unix).finalize().into_bytes();
        Ok(format!(
            "{PREFIX}{account}.{expires_unix}.{}",
            hex::encode(tag)
        ))
    }

    /// Verifies `token` at time `now_unix` and returns the account it vouches for.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, TokenError> {
        let parsed = AccountToken::parse(token)?;
        let tag = hex::decode(&parsed.mac).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison inside `verify_slice`.
        self.mac(&parsed.account, parsed.expires_unix)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        if parsed.expires_unix <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(parsed.account)
    }
}

/// Why a token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `bl1.<account>.<expiry>.<mac>`.
    #[error("the account token is malformed")]
    Malformed,
    /// The MAC does not verify.
    #[error("the account token was not issued by this vault's relay")]
    Forged,
    /// Past its expiry.
    #[error("the account token has expired; get a new one")]
    Expired,
}

/// The parts of a token, before its MAC is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountToken {
    /// The account vouched for.
    pub account: String,
    /// Unix seconds.
    pub expires_unix: u64,
    mac: String,
}

impl AccountToken {
    /// Splits a token; checks only its shape.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let mut parts = body.rsplitn(3, '.');
        let (Some(mac), Some(expiry), Some(account)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        validate_account(account).map_err(|_| TokenError::Malformed)?;
        // Canonical decimal only, so one token has one spelling.
        if expiry.is_empty()
            || expiry.len() > 20
            || !expiry.bytes().all(|b| b.is_ascii_digit())
            || (expiry.len() > 1 && expiry.starts_with('0'))
        {
            return Err(TokenError::Malformed);
        }
        let expires_unix = expiry.parse().map_err(|_| TokenError::Malformed)?;
        if mac.len() != 64 || !mac.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(TokenError::Malformed);
        }
        Ok(AccountToken {
            account: account.to_owned(),
            expires_unix,
            mac: mac.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_refuse() {
        let secret = TokenSecret::from_bytes([9; 32]);
        let token = secret.issue("+15551234567", 1_000).unwrap();
        assert_eq!(secret.verify(&token, 999).unwrap(), "+15551234567");
        assert_eq!(secret.verify(&token, 1_000), Err(TokenError::Expired));
        let other = TokenSecret::from_bytes([8; 32]);
        assert_eq!(other.verify(&token, 0), Err(TokenError::Forged));
        // Moving the expiry invalidates the MAC.
        let stretched = token.replace(".1000.", ".9000.");
        assert_eq!(secret.verify(&stretched, 0), Err(TokenError::Forged));
        // Another account with the same MAC is forged.
        let swapped = token.replace("+15551234567", "+15551234568");
        assert_eq!(secret.verify(&swapped, 0), Err(TokenError::Forged));
        for bad in [
            "",
            "bl1.",
            "bl1.a.1",
            "bl2.a.1.00",
            "bl1.a b.1.00",
            "bl1.a.01.00",
        ] {
            assert_eq!(secret.verify(bad, 0), Err(TokenError::Malformed), "{bad}");
        }
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
