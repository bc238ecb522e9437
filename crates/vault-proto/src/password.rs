//! The user's password: a redacted, zeroizing string with WhatsApp's minimum.

use std::fmt;
use zeroize::Zeroizing;

/// Fewest characters a password may have.
pub const MIN_CHARS: usize = 6;

/// A password the user typed. Never printed, zeroized on drop.
pub struct Password(Zeroizing<String>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(REDACTED)")
    }
}

/// Why a new password is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordPolicyError {
    /// Shorter than [`MIN_CHARS`].
    #[error("the password needs at least {MIN_CHARS} characters")]
    TooShort,
    /// No letter in it.
    #[error("the password needs at least one letter")]
    NoLetter,
}

impl Password {
    /// Wraps what the user typed, without the line ending.
    pub fn new(text: String) -> Self {
        let mut text = Zeroizing::new(text);
        while text.ends_with(['\n', '\r']) {
            text.pop();
        }
        Password(text)
    }

    /// The policy for a new password: at least 6 characters, at least one letter.
    pub fn check_policy(&self) -> Result<(), PasswordPolicyError> {
        if self.0.chars().count() < MIN_CHARS {
            return Err(PasswordPolicyError::TooShort);
        }
        if !self.0.chars().any(char::is_alphabetic) {
            return Err(PasswordPolicyError::NoLetter);
        }
        Ok(())
    }

    /// The bytes OPAQUE hashes.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Constant-time equality, for "type it again".
    pub fn matches(&self, other: &Password) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.0.len() && bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_redaction() {
        assert_eq!(
            Password::new("abc12".into()).check_policy(),
            Err(PasswordPolicyError::TooShort)
        );
        assert_eq!(
            Password::new("123456".into()).check_policy(),
            Err(PasswordPolicyError::NoLetter)
        );
        assert!(Password::new("éléphant\n".into()).check_policy().is_ok());
        let p = Password::new("hunter2x\r\n".into());
        assert_eq!(p.expose_secret(), b"hunter2x");
        assert!(!format!("{p:?}").contains("hunter"));
        assert!(p.matches(&Password::new("hunter2x".into())));
        assert!(!p.matches(&Password::new("hunter2y".into())));
    }
}
