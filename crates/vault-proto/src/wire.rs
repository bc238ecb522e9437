//! Versioned vault messages (docs/VAULT.md §Wire format).
//!
//! A request or reply body is `WIRE_VERSION ‖ postcard(message)`. Errors travel as JSON
//! ([`WireError`]) with an HTTP status, so an operator's `curl` can read them too. OPAQUE
//! messages are carried as their RFC 9807 serialisations.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;

/// First byte of every request and reply body. A vault answers any other value with
/// [`ErrorCode::UnsupportedVersion`].
pub const WIRE_VERSION: u8 = 1;

/// Largest body either side accepts; OPAQUE messages are a few hundred bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// Paths of the vault's HTTP API, one per request type.
pub mod path {
    /// GET: [`super::ServerInfo`].
    pub const INFO: &str = "/v1/info";
    /// POST [`super::RegisterStart`] → [`super::RegisterStartReply`].
    pub const REGISTER_START: &str = "/v1/register/start";
    /// POST [`super::RegisterFinish`] → [`super::RegisterFinishReply`].
    pub const REGISTER_FINISH: &str = "/v2/register/finish";
    /// POST [`super::RegisterFinishV1`] → [`super::RegisterFinishReply`]: apps of the
    /// first format; a replacement with its owner proof is refused.
    pub const REGISTER_FINISH_V1: &str = "/v1/register/finish";
    /// POST [`super::RecoverStart`] → [`super::RecoverStartReply`].
    pub const RECOVER_START: &str = "/v1/recover/start";
    /// POST [`super::RecoverFinish`] → [`super::RecoverFinishReply`].
    pub const RECOVER_FINISH: &str = "/v1/recover/finish";
    /// POST [`super::DeleteRecord`] → [`super::Deleted`].
    pub const DELETE: &str = "/v2/delete";
    /// POST [`super::DeleteRecordV1`]: apps of the first format, refused.
    pub const DELETE_V1: &str = "/v1/delete";
    /// POST [`super::StatusRequest`] → [`super::AccountStatus`].
    pub const STATUS: &str = "/v1/status";
    /// Set the account's snapshot anchor (owner only).
    pub const ANCHOR_SET: &str = "/v2/anchor/set";
    /// Read the account's snapshot anchor.
    pub const ANCHOR_GET: &str = "/v2/anchor/get";
    /// POST [`super::DeleteRecord`] → [`super::DeletedWithReceipt`].
    pub const DELETE_V3: &str = "/v3/delete";
    /// POST [`super::RegisterFinish`] → [`super::RegisterFinishReplyV3`]: a
    /// replacement (password change) comes back with the fleet's receipt.
    pub const REGISTER_FINISH_V3: &str = "/v3/register/finish";
}

/// HTTP header that carries the account token.
pub const TOKEN_HEADER: &str = "authorization";

/// What the vault tells anyone about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// OPAQUE server public key, the value a device pins.
    pub server_public_key: [u8; 32],
    /// Wrong guesses allowed per record.
    pub max_attempts: u32,
    /// Wire versions the vault speaks.
    pub versions: Vec<u8>,
}

impl OwnerProof {
    /// The window it names.
    pub fn window(&self) -> crate::owner::Window {
        crate::owner::Window {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// Step 1 of registration (a first password, or a new one with the owner's signature).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterStart {
    /// Account the token vouches for.
    pub account: String,
    /// OPAQUE `RegistrationRequest`.
    pub request: Vec<u8>,
}

/// The vault's OPRF evaluation under a fresh record id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterStartReply {
    /// Fresh record id the new credential's OPRF key is derived from.
    pub record_id: [u8; 16],
    /// OPAQUE `RegistrationResponse`.
    pub response: Vec<u8>,
}

/// Step 2 of registration: the record to store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFinish {
    /// Account the token vouches for.
    pub account: String,
    /// Record id from [`RegisterStartReply`].
    pub record_id: [u8; 16],
    /// OPAQUE `RegistrationUpload`.
    pub upload: Vec<u8>,
    /// The backup key wrapped under the export key ([`crate::wrap`]).
    pub wrapped: Vec<u8>,
    /// Ed25519 owner key derived from the backup key.
    pub owner_public_key: [u8; 32],
    /// `None` for a first registration. `Some` replaces the current record (change
    /// password, switch key): signed by the current record's owner key.
    pub replace: Option<OwnerProof>,
}

/// [`RegisterFinish`] as apps of the first format send it, to `/v1/register/finish`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFinishV1 {
    /// Account the token vouches for.
    pub account: String,
    /// Record id from [`RegisterStartReply`].
    pub record_id: [u8; 16],
    /// OPAQUE `RegistrationUpload`.
    pub upload: Vec<u8>,
    /// The backup key wrapped under the export key.
    pub wrapped: Vec<u8>,
    /// Ed25519 owner key derived from the backup key.
    pub owner_public_key: [u8; 32],
    /// A replacement's proof of the first format (refused).
    pub replace: Option<OwnerProofV1>,
}

/// An owner proof of the first format: no vault, no time window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerProofV1 {
    /// Generation of the record being changed.
    pub generation: u64,
    /// Ed25519 signature.
    #[serde(with = "serde_sig")]
    pub signature: [u8; 64],
}

/// [`DeleteRecord`] as apps of the first format send it, to `/v1/delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecordV1 {
    /// Account the token vouches for.
    pub account: String,
    /// The proof of the first format (refused).
    pub proof: OwnerProofV1,
}

/// The owner's signature over a change to an existing record ([`crate::owner`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerProof {
    /// Generation of the record being changed; a replayed proof names an old one.
    pub generation: u64,
    /// First Unix second the proof is valid.
    pub not_before: u64,
    /// First Unix second it is no longer valid.
    pub not_after: u64,
    /// Ed25519 signature.
    #[serde(with = "serde_sig")]
    pub signature: [u8; 64],
}

/// Registration committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFinishReply {
    /// Generation of the stored record.
    pub generation: u64,
    /// Guesses allowed.
    pub attempts_left: u32,
}

/// KE1 of a recovery: one guess.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverStart {
    /// Account the token vouches for.
    pub account: String,
    /// OPAQUE `CredentialRequest` (KE1).
    pub ke1: Vec<u8>,
}

/// KE2, sent only after the attempt is durably counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverStartReply {
    /// Names the vault's half-finished login for [`RecoverFinish`].
    pub session: [u8; 16],
    /// OPAQUE `CredentialResponse` (KE2).
    pub ke2: Vec<u8>,
    /// Guesses left if this one is wrong.
    pub attempts_left: u32,
}

/// KE3: proof that the guess was right.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverFinish {
    /// Account the token vouches for.
    pub account: String,
    /// From [`RecoverStartReply`].
    pub session: [u8; 16],
    /// OPAQUE `CredentialFinalization` (KE3).
    pub ke3: Vec<u8>,
}

/// The wrapped key, released under the session key; the count is back to the maximum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverFinishReply {
    /// `wrapped`, encrypted again under the OPAQUE session key ([`crate::release`]).
    pub released: Vec<u8>,
    /// Generation of the record, for a later owner proof.
    pub generation: u64,
    /// Guesses allowed again.
    pub attempts_left: u32,
}

/// Erase the account's record (owner only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRecord {
    /// Account the token vouches for.
    pub account: String,
    /// Signature by the record's owner key.
    pub proof: OwnerProof,
}

/// The record is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {}

/// The record is gone, as the fleet signs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedWithReceipt {
    /// The fleet's receipt ([`crate::receipt`]).
    pub receipt: crate::receipt::Receipt,
}

/// Registration committed; a replacement with the fleet's receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterFinishReplyV3 {
    /// Generation of the stored record.
    pub generation: u64,
    /// Guesses allowed.
    pub attempts_left: u32,
    /// For a replacement (a password change): the fleet's receipt.
    pub receipt: Option<crate::receipt::Receipt>,
}

/// Ask whether the account has a record and how many guesses it has left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Account the token vouches for.
    pub account: String,
}

/// State of an account's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStatus {
    /// `None` when no key is registered.
    pub record: Option<RecordStatus>,
}

/// A registered record as the account holder may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordStatus {
    /// Bumped by every password change.
    pub generation: u64,
    /// Guesses left.
    pub attempts_left: u32,
    /// Owner public key, so the original device can check it holds the right key.
    pub owner_public_key: [u8; 32],
}

/// The snapshot anchor as the vault keeps it: an opaque value sealed under the backup
/// key ([`crate::anchor`]) and a generation that only grows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Grows with each backup (the snapshot's sequence number).
    pub generation: u64,
    /// [`crate::anchor::seal`]ed; the vault cannot open it.
    pub value: Vec<u8>,
}

/// Replace the account's anchor by a newer one (owner only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAnchor {
    /// Account the token vouches for.
    pub account: String,
    /// The new anchor; its generation must exceed the one held.
    pub anchor: Anchor,
    /// Signature by the record's owner key over the anchor.
    pub proof: OwnerProof,
}

/// The anchor was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorSet {
    /// Its generation.
    pub generation: u64,
}

/// The account's anchor, if one was set since the record was registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorReply {
    /// `None` until the owner sets one.
    pub anchor: Option<Anchor>,
}

/// Every error the vault answers with. The code is stable; the message is for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The KE3 did not verify: the guess was wrong (`attempts_left` says what is left).
    WrongPassword,
    /// The guess limit was reached and the record is erased; the key is gone for good.
    Locked,
    /// No key is registered for this account.
    NoKey,
    /// A record exists; changing it needs the owner's proof.
    AlreadyRegistered,
    /// The account token is missing, malformed or forged.
    BadToken,
    /// The account token has expired: get a new one from the relay.
    TokenExpired,
    /// The owner proof does not verify, or names an older generation.
    Forbidden,
    /// The login session is unknown or expired: start the recovery again.
    SessionExpired,
    /// The request's wire version is not spoken here: upgrade backlock.
    UnsupportedVersion,
    /// The request body does not decode.
    Malformed,
    /// Too many requests: retry after `retry_after_ms`.
    RateLimited,
    /// The vault cannot commit right now (no quorum, shutting down): retry later.
    Unavailable,
    /// A bug in the vault; the request had no effect.
    Internal,
    /// The vault holds an anchor as new as this one or newer; nothing changed.
    AnchorNotNewer,
}

/// The JSON body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people. Never contains a secret.
    pub message: String,
    /// Guesses left, where that is what the caller needs to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
    /// When to retry, for `rate_limited` and `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    /// An error without counts.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            attempts_left: None,
            retry_after_ms: None,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A body that is not a message of this version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty body.
    #[error("empty message")]
    Empty,
    /// The version byte names another protocol version.
    #[error(
        "wire version {0} is not supported (this build speaks {WIRE_VERSION}); upgrade backlock"
    )]
    UnsupportedVersion(u8),
    /// Longer than [`MAX_BODY`].
    #[error("message of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    /// postcard rejected the body, or bytes were left over.
    #[error("malformed message")]
    Malformed,
}

/// `WIRE_VERSION ‖ postcard(message)`.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(message, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Inverse of [`encode`]; rejects other versions, oversize bodies and trailing bytes.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (&version, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if body.len() > MAX_BODY {
        return Err(DecodeError::TooLarge(body.len()));
    }
    // Canonical encoding only: a message followed by anything is rejected.
    let (message, tail) = postcard::take_from_bytes(rest).map_err(|_| DecodeError::Malformed)?;
    if !tail.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(message)
}

/// serde for `[u8; 64]`, which serde does not derive.
pub(crate) mod serde_sig {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(sig)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("signature must be 64 bytes"))
    }
}

#[doc(hidden)]
/// Decodes `data` as every message type; the fuzz target and proptests call this.
pub fn decode_all(data: &[u8]) {
    let _ = decode::<ServerInfo>(data);
    let _ = decode::<RegisterStart>(data);
    let _ = decode::<RegisterStartReply>(data);
    let _ = decode::<RegisterFinish>(data);
    let _ = decode::<RegisterFinishReply>(data);
    let _ = decode::<RecoverStart>(data);
    let _ = decode::<RecoverStartReply>(data);
    let _ = decode::<RecoverFinish>(data);
    let _ = decode::<RecoverFinishReply>(data);
    let _ = decode::<DeleteRecord>(data);
    let _ = decode::<DeleteRecordV1>(data);
    let _ = decode::<RegisterFinishV1>(data);
    let _ = decode::<StatusRequest>(data);
    let _ = decode::<AccountStatus>(data);
    let _ = decode::<SetAnchor>(data);
    let _ = decode::<AnchorSet>(data);
    let _ = decode::<AnchorReply>(data);
    let _ = decode::<DeletedWithReceipt>(data);
    let _ = decode::<RegisterFinishReplyV3>(data);
    let _ = serde_json::from_slice::<WireError>(data);
    let _ = crate::token::AccountToken::parse(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let msg = RecoverStart {
            account: "alice".into(),
            ke1: vec![7; 96],
        };
        let body = encode(&msg);
        assert_eq!(body[0], WIRE_VERSION);
        assert_eq!(decode::<RecoverStart>(&body).unwrap(), msg);

        let mut newer = body.clone();
        newer[0] = 2;
        assert_eq!(
            decode::<RecoverStart>(&newer),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(
            decode::<RecoverStart>(&trailing),
            Err(DecodeError::Malformed)
        );
        assert_eq!(decode::<RecoverStart>(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode::<RecoverStart>(&vec![WIRE_VERSION; MAX_BODY + 1]),
            Err(DecodeError::TooLarge(MAX_BODY + 1))
        );
    }

    #[test]
    fn error_json_is_stable() {
        let mut e = WireError::new(ErrorCode::WrongPassword, "wrong password");
        e.attempts_left = Some(7);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"wrong_password","message":"wrong password","attempts_left":7}"#
        );
    }
}
