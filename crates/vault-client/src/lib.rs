//! backlock-vault-client: the device's side of the Backup Key Vault.
//!
//! [`VaultClient`] speaks the vault's HTTP API and runs the password flows of
//! docs/VAULT.md: register a key behind a password, recover it on a new device, change
//! the password or delete the record from the device that holds the key.
//!
//! The client pins the vault's OPAQUE public key: every flow takes the pinned key and
//! refuses a vault that presents another.
//!
//! A client may be given every replica of a fleet: a request that finds its replica
//! unreachable or without a quorum goes to the next one. The two steps of a recovery go
//! to the same replica (it holds the login between them); if that replica fails in
//! between, the recovery starts again elsewhere and the lost attempt stays counted.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

use backlock_core::key::BackupKey;
use backlock_vault_proto::anchor::{self, SnapshotAnchor};
use backlock_vault_proto::client::{
    start_recovery, start_registration, ClientError, RecoveryStarted,
};
use backlock_vault_proto::owner::{self, OwnerKey, OwnerOp};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::receipt::request_id;
pub use backlock_vault_proto::receipt::{Receipt, ReceiptOp};
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::token::FleetId;
use backlock_vault_proto::wire::{
    self, path, AccountStatus, Anchor, AnchorReply, AnchorSet, DeleteRecord, Deleted,
    DeletedWithReceipt, ErrorCode, OwnerProof, RecoverFinish, RecoverFinishReply, RecoverStart,
    RecoverStartReply, RegisterFinishReply, RegisterFinishReplyV3, RegisterStart,
    RegisterStartReply, ServerInfo, SetAnchor, StatusRequest, WireError,
};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Everything a vault call can end in. Variants say what the caller may do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The guess was wrong; `attempts_left` more are allowed.
    #[error("wrong password — {attempts_left} attempts left")]
    WrongPassword {
        /// Guesses left before the key is destroyed.
        attempts_left: u32,
    },
    /// The guess limit was reached: the key is destroyed, the backup lost for good.
    #[error("too many wrong passwords: the vault has destroyed the key, and this backup can never be recovered with a password")]
    Locked,
    /// No key is registered for the account.
    #[error("no backup key is registered for this account in the vault")]
    NoKey,
    /// A key is already registered; change it from the device that holds the key.
    #[error("{0}")]
    AlreadyRegistered(String),
    /// The token or owner proof was refused.
    #[error("the vault refused the request: {0}")]
    Refused(String),
    /// The vault holds a snapshot anchor as new as this one or newer.
    #[error("{0}")]
    AnchorNotNewer(String),
    /// The vault presented another public key than the pinned one.
    #[error("{0}")]
    WrongServer(String),
    /// Too many requests for this account: retry after the given time.
    #[error("the vault has had too many requests for this account; retry in {} s", retry_after_ms.div_ceil(1000).max(1))]
    RateLimited {
        /// When to retry.
        retry_after_ms: u64,
    },
    /// Not reachable or no quorum: retry later.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
    /// The vault speaks another protocol version.
    #[error("{0}")]
    Upgrade(String),
    /// The vault answered outside the protocol.
    #[error("the vault's answer is not valid: {0}")]
    Protocol(String),
}

impl VaultError {
    fn from_wire(e: WireError) -> Self {
        match e.code {
            ErrorCode::WrongPassword => VaultError::WrongPassword {
                attempts_left: e.attempts_left.unwrap_or(0),
            },
            ErrorCode::Locked => VaultError::Locked,
            ErrorCode::NoKey => VaultError::NoKey,
            ErrorCode::AlreadyRegistered => VaultError::AlreadyRegistered(e.message),
            ErrorCode::BadToken
            | ErrorCode::TokenExpired
            | ErrorCode::Forbidden
            | ErrorCode::SessionExpired
            | ErrorCode::Malformed => VaultError::Refused(e.message),
            ErrorCode::UnsupportedVersion => VaultError::Upgrade(e.message),
            ErrorCode::RateLimited => VaultError::RateLimited {
                retry_after_ms: e.retry_after_ms.unwrap_or(1000),
            },
            ErrorCode::Unavailable => VaultError::Unavailable(e.message),
            ErrorCode::AnchorNotNewer => VaultError::AnchorNotNewer(e.message),
            _ => VaultError::Protocol(e.message),
        }
    }

    fn from_client(e: ClientError) -> Self {
        match e {
            ClientError::WrongServer { .. } => VaultError::WrongServer(e.to_string()),
            other => VaultError::Protocol(other.to_string()),
        }
    }
}

/// A connection to one vault (one replica, or every replica of a fleet) for one
/// account.
pub struct VaultClient {
    http: reqwest::Client,
    replicas: Vec<String>,
    /// The replica that answered last: tried first.
    preferred: AtomicUsize,
    account: String,
    token: String,
    /// The fleet's receipt key, from a version 2 bundle: deletions and password
    /// changes then come back signed, and an answer without a valid receipt is refused.
    receipt_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("replicas", &self.replicas)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// A client of the vault at `base_url` (e.g. `http://127.0.0.1:7070`) for `account`,
    /// vouched for by the relay's `token`. `base_url` may list every replica of a fleet,
    /// separated by commas.
    pub fn new(base_url: &str, account: &str, token: &str) -> Result<Self, VaultError> {
        Self::with_ca(base_url, account, token, None)
    }

    /// The replicas of `base_url` (comma-separated) that would be reached over plain
    /// HTTP on a host other than this machine's loopback: a man in the middle could
    /// answer them (docs/VAULT.md §Pinning). Unparsable URLs are listed too.
    pub fn insecure_replicas(base_url: &str) -> Vec<String> {
        base_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .filter(|u| match reqwest::Url::parse(u) {
                Ok(url) if url.scheme() == "https" => false,
                Ok(url) if url.scheme() == "http" => {
                    let host = url.host_str().unwrap_or("");
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let loopback = host.eq_ignore_ascii_case("localhost")
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback());
                    !loopback
                }
                _ => true,
            })
            .map(str::to_owned)
            .collect()
    }

    /// Like [`VaultClient::new`], trusting only the CA certificates in `ca_pem` for an
    /// `https://` vault (a private CA) instead of the system's roots.
    pub fn with_ca(
        base_url: &str,
        account: &str,
        token: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, VaultError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                VaultError::Refused(format!("the vault CA file is not PEM certificates: {e}"))
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::Unavailable(format!("cannot set up HTTP: {e}")))?;
        let replicas: Vec<String> = base_url
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        if replicas.is_empty() {
            return Err(VaultError::Refused("no vault URL given".to_owned()));
        }
        Ok(VaultClient {
            http,
            replicas,
            preferred: AtomicUsize::new(0),
            account: account.to_owned(),
            token: token.to_owned(),
            receipt_key: None,
        })
    }

    /// Expects the fleet's receipts, signed by `key` (a version 2 bundle's receipt key),
    /// for deletions and password changes.
    pub fn with_receipt_key(mut self, key: Option<[u8; 32]>) -> Self {
        self.receipt_key = key;
        self
    }

    /// Checks that the fleet signed `receipt` in answer to the request signed with
    /// `proof`, saying one of `ops` was done (see [`VaultClient::with_receipt_key`]).
    fn check_receipt(
        &self,
        key: &[u8; 32],
        receipt: Option<&Receipt>,
        proof: &OwnerProof,
        ops: &[ReceiptOp],
    ) -> Result<ReceiptOp, VaultError> {
        let why = match receipt {
            None => "it carries none".to_owned(),
            Some(r) => match r.verify(key, &self.account, &request_id(&proof.signature)) {
                Ok(op) if ops.contains(&op) => return Ok(op),
                Ok(op) => format!("it says {op:?}"),
                Err(e) => e.to_string(),
            },
        };
        Err(self.no_valid_receipt(ops, &why))
    }

    /// The error for an answer to a change the fleet did not sign as it should.
    fn no_valid_receipt(&self, ops: &[ReceiptOp], why: &str) -> VaultError {
        let what = match ops.first() {
            Some(ReceiptOp::PasswordChanged) => "changing the password",
            _ => "deleting the record",
        };
        VaultError::WrongServer(format!(
            "the answer to {what} of account {} has no valid receipt of the fleet ({why}): \
             something other than the fleet answered (a relay or a man in the middle), so \
             the change may not have been made; check the fleet bundle and the network, \
             then try again",
            self.account
        ))
    }

    /// A call to a route that came with receipts: a replica of an earlier release does
    /// not have it.
    async fn call_v3<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        route: &str,
        request: &Req,
    ) -> Result<Rep, VaultError> {
        self.call(route, request).await.map_err(|e| match e {
            VaultError::Protocol(m) if m.contains("no such endpoint") => {
                VaultError::Upgrade(format!(
                "a replica of the fleet runs a release without receipts ({m}): the fleet bundle \
                 with a receipt key was published before every replica was upgraded; retry \
                 once the fleet's upgrade is finished"
            ))
            }
            other => other,
        })
    }

    /// The account this client acts for.
    pub fn account(&self) -> &str {
        &self.account
    }

    async fn read_reply<T: DeserializeOwned>(
        &self,
        base: &str,
        response: reqwest::Response,
    ) -> Result<T, VaultError> {
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| VaultError::Unavailable(format!("{base}: {e}")))?;
        if status.is_success() {
            return wire::decode(&body).map_err(|e| VaultError::Protocol(e.to_string()));
        }
        match serde_json::from_slice::<WireError>(&body) {
            Ok(e) => Err(VaultError::from_wire(e)),
            Err(_) if status.is_server_error() => Err(VaultError::Unavailable(format!(
                "{base} answered HTTP {status}"
            ))),
            Err(_) => Err(VaultError::Protocol(format!(
                "HTTP {status} without a vault error body"
            ))),
        }
    }

    /// Sends one request to replica `index` and reads its reply or error.
    async fn call_at<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        index: usize,
        route: &str,
        req: Option<&Req>,
    ) -> Result<Rep, VaultError> {
        let base = &self.replicas[index];
        let request = match req {
            Some(req) => self
                .http
                .post(format!("{base}{route}"))
                .bearer_auth(&self.token)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-backlock-vault",
                )
                .body(wire::encode(req)),
            None => self.http.get(format!("{base}{route}")),
        };
        let response = request.send().await.map_err(|e| {
            VaultError::Unavailable(format!("cannot reach the vault at {base}: {e}"))
        })?;
        self.read_reply(base, response).await
    }

    /// Sends a request to the preferred replica, and on "unavailable" to the next ones
    /// in turn; returns which replica answered.
    async fn call_any<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        route: &str,
        req: Option<&Req>,
    ) -> Result<(usize, Rep), VaultError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut unavailable = Vec::new();
        for step in 0..self.replicas.len() {
            let index = (first + step) % self.replicas.len();
            match self.call_at(index, route, req).await {
                Err(VaultError::Unavailable(why)) => unavailable.push(why),
                Ok(reply) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((index, reply));
                }
                Err(e) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(VaultError::Unavailable(unavailable.join("; ")))
    }

    async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        route: &str,
        req: &Req,
    ) -> Result<Rep, VaultError> {
        self.call_any(route, Some(req))
            .await
            .map(|(_, reply)| reply)
    }

    /// The vault's public key and limits.
    pub async fn info(&self) -> Result<ServerInfo, VaultError> {
        self.call_any::<(), _>(path::INFO, None)
            .await
            .map(|(_, info)| info)
    }

    /// The account's record: registered or not, guesses left, generation.
    pub async fn status(&self) -> Result<AccountStatus, VaultError> {
        self.call(
            path::STATUS,
            &StatusRequest {
                account: self.account.clone(),
            },
        )
        .await
    }

    /// Registers `key` behind `password`. With `replace`, replaces the current record
    /// (change password, or a new key), signed by the current owner key.
    pub async fn register(
        &self,
        password: &Password,
        key: &BackupKey,
        pinned: &[u8; 32],
        replace: Option<&OwnerKey>,
        ksf: &Stretch,
    ) -> Result<RegisterFinishReply, VaultError> {
        self.register_with_receipt(password, key, pinned, replace, ksf)
            .await
            .map(|(reply, _)| reply)
    }

    /// [`VaultClient::register`], returning with a replacement the fleet's receipt when
    /// this client expects receipts (checked before it returns).
    pub async fn register_with_receipt(
        &self,
        password: &Password,
        key: &BackupKey,
        pinned: &[u8; 32],
        replace: Option<&OwnerKey>,
        ksf: &Stretch,
    ) -> Result<(RegisterFinishReply, Option<Receipt>), VaultError> {
        let proof_generation = match replace {
            Some(_) => Some(
                self.status()
                    .await?
                    .record
                    .ok_or(VaultError::NoKey)?
                    .generation,
            ),
            None => None,
        };
        let (started, request) = start_registration(password).map_err(VaultError::from_client)?;
        let reply: RegisterStartReply = self
            .call(
                path::REGISTER_START,
                &RegisterStart {
                    account: self.account.clone(),
                    request,
                },
            )
            .await?;
        let mut finish = started
            .finish(password, &self.account, &reply, pinned, key, ksf)
            .map_err(VaultError::from_client)?;
        if let (Some(owner), Some(generation)) = (replace, proof_generation) {
            let payload = owner::replace_payload(
                &finish.record_id,
                &finish.upload,
                &finish.wrapped,
                &finish.owner_public_key,
            );
            finish.replace =
                Some(self.proof(owner, OwnerOp::Replace, pinned, generation, &payload));
        }
        let Some(receipt_key) = self.receipt_key else {
            let reply = self.call(path::REGISTER_FINISH, &finish).await?;
            return Ok((reply, None));
        };
        let reply: RegisterFinishReplyV3 = self.call_v3(path::REGISTER_FINISH_V3, &finish).await?;
        let mut done = RegisterFinishReply {
            generation: reply.generation,
            attempts_left: reply.attempts_left,
        };
        if let Some(proof) = &finish.replace {
            let receipt = reply.receipt.as_ref();
            self.check_receipt(&receipt_key, receipt, proof, &[ReceiptOp::PasswordChanged])?;
            // What the fleet signed, not the reply's unsigned copy.
            done.generation = receipt.map_or(done.generation, |r| r.body.generation);
        }
        Ok((done, reply.receipt))
    }

    /// One guess: KE1, KE2 (the vault counts it first), and on a right password KE3
    /// and the released key.
    pub async fn recover(
        &self,
        password: &Password,
        pinned: &[u8; 32],
        ksf: &Stretch,
    ) -> Result<BackupKey, VaultError> {
        let (started, ke1) = start_recovery(password).map_err(VaultError::from_client)?;
        self.recover_started(started, ke1, password, pinned, ksf)
            .await
    }

    /// [`VaultClient::recover`] from a KE1 made earlier with
    /// [`backlock_vault_proto::client::start_recovery`] (a load generator prepares them
    /// ahead, so that it measures the vault rather than itself).
    pub async fn recover_started(
        &self,
        started: RecoveryStarted,
        ke1: Vec<u8>,
        password: &Password,
        pinned: &[u8; 32],
        ksf: &Stretch,
    ) -> Result<BackupKey, VaultError> {
        let (_, reply): (usize, RecoverStartReply) = self
            .call_any(
                path::RECOVER_START,
                Some(&RecoverStart {
                    account: self.account.clone(),
                    ke1,
                }),
            )
            .await?;
        let attempts_left = reply.attempts_left;
        let (finish, recovered) = match started.finish(password, &self.account, &reply, pinned, ksf)
        {
            Ok(done) => done,
            Err(ClientError::WrongPassword) if attempts_left == 0 => {
                return Err(VaultError::Locked)
            }
            Err(ClientError::WrongPassword) => {
                return Err(VaultError::WrongPassword { attempts_left })
            }
            Err(e) => return Err(VaultError::from_client(e)),
        };
        // Any replica finishes an open attempt (its login is derived from the fleet
        // secret and the log); the one that sent KE2 (now preferred) first.
        let (_, released): (usize, RecoverFinishReply) =
            self.call_any(path::RECOVER_FINISH, Some(&finish)).await?;
        recovered
            .open(&self.account, &released)
            .map_err(VaultError::from_client)
    }

    /// Sends KE1 and returns the raw KE2 reply without finishing: one counted guess.
    /// For tests and load generators that probe the guess limit.
    pub async fn guess_once(&self, ke1: Vec<u8>) -> Result<RecoverStartReply, VaultError> {
        self.call(
            path::RECOVER_START,
            &RecoverStart {
                account: self.account.clone(),
                ke1,
            },
        )
        .await
    }

    /// [`VaultClient::guess_once`] on replica `index` of the list only, without failover.
    pub async fn guess_at(
        &self,
        index: usize,
        ke1: Vec<u8>,
    ) -> Result<RecoverStartReply, VaultError> {
        self.call_at(
            index % self.replicas.len(),
            path::RECOVER_START,
            Some(&RecoverStart {
                account: self.account.clone(),
                ke1,
            }),
        )
        .await
    }

    /// Sends KE3 for a guess made with [`VaultClient::guess_once`] (to the replica that
    /// answered last, then to the others while they are unavailable); the reply
    /// carries the released key for [`backlock_vault_proto::client::Recovered::open`].
    pub async fn finish_guess(
        &self,
        finish: &RecoverFinish,
    ) -> Result<RecoverFinishReply, VaultError> {
        self.call_any(path::RECOVER_FINISH, Some(finish))
            .await
            .map(|(_, reply)| reply)
    }

    /// How many replicas this client knows.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// The owner's proof for `op` on this account's record at `generation`, for the
    /// fleet of `pinned`, valid from now for [`owner::MAX_WINDOW_SECS`].
    fn proof(
        &self,
        owner: &OwnerKey,
        op: OwnerOp,
        pinned: &[u8; 32],
        generation: u64,
        payload: &[u8],
    ) -> OwnerProof {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let window = owner::Window::from(now);
        let scope = owner::Scope {
            fleet: FleetId::of(pinned),
            account: &self.account,
            generation,
            window,
        };
        OwnerProof {
            generation,
            not_before: window.not_before,
            not_after: window.not_after,
            signature: owner.sign(op, &scope, payload),
        }
    }

    /// The generation of the account's record, which an owner proof names.
    async fn record_generation(&self) -> Result<u64, VaultError> {
        Ok(self
            .status()
            .await?
            .record
            .ok_or(VaultError::NoKey)?
            .generation)
    }

    /// Leaves `newest` with the vault as the account's snapshot anchor, signed with the
    /// key's owner key (docs/VAULT.md §Snapshot anchor). An anchor the vault already
    /// holds as new or newer is [`VaultError::AnchorNotNewer`].
    pub async fn set_anchor(
        &self,
        key: &BackupKey,
        pinned: &[u8; 32],
        newest: &SnapshotAnchor,
    ) -> Result<(), VaultError> {
        let generation = self.record_generation().await?;
        let value = anchor::seal(key, &self.account, newest);
        let owner = OwnerKey::derive(key);
        let payload = owner::anchor_payload(newest.seq, &value);
        let request = SetAnchor {
            account: self.account.clone(),
            proof: self.proof(&owner, OwnerOp::Anchor, pinned, generation, &payload),
            anchor: Anchor {
                generation: newest.seq,
                value,
            },
        };
        let _: AnchorSet = self.call(path::ANCHOR_SET, &request).await?;
        Ok(())
    }

    /// The account's snapshot anchor, opened with the key: `None` if none was set.
    pub async fn anchor(&self, key: &BackupKey) -> Result<Option<SnapshotAnchor>, VaultError> {
        let request = StatusRequest {
            account: self.account.clone(),
        };
        let reply: AnchorReply = self.call(path::ANCHOR_GET, &request).await?;
        reply
            .anchor
            .map(|a| {
                // Whoever altered it wants the rollback check gone: refused, not skipped.
                anchor::open(key, &self.account, a.generation, &a.value)
                    .map_err(|e| VaultError::WrongServer(e.to_string()))
            })
            .transpose()
    }

    /// Erases the account's record, proving ownership with the key; returns the fleet's
    /// receipt, checked, when this client expects receipts.
    pub async fn delete(
        &self,
        key: &BackupKey,
        pinned: &[u8; 32],
    ) -> Result<Option<Receipt>, VaultError> {
        let owner = OwnerKey::derive(key);
        let Some(receipt_key) = self.receipt_key else {
            let generation = self.record_generation().await?;
            let request = DeleteRecord {
                account: self.account.clone(),
                proof: self.proof(&owner, OwnerOp::Delete, pinned, generation, &[]),
            };
            let _: Deleted = self.call(path::DELETE, &request).await?;
            return Ok(None);
        };
        // The status is not signed: "no record" is believed only from a receipt, so the
        // request goes out either way (a proof for generation 0 matches no record).
        let generation = self.status().await?.record.map_or(0, |r| r.generation);
        let request = DeleteRecord {
            account: self.account.clone(),
            proof: self.proof(&owner, OwnerOp::Delete, pinned, generation, &[]),
        };
        let reply: DeletedWithReceipt = match self.call_v3(path::DELETE_V3, &request).await {
            // The fleet answers "no record" with a receipt; an error saying so is not its.
            Err(VaultError::NoKey) => {
                return Err(self.no_valid_receipt(&[ReceiptOp::Absent], "it carries none"))
            }
            other => other?,
        };
        let ops = [ReceiptOp::Deleted, ReceiptOp::Absent];
        match self.check_receipt(&receipt_key, Some(&reply.receipt), &request.proof, &ops)? {
            ReceiptOp::Absent => Err(VaultError::NoKey),
            _ => Ok(Some(reply.receipt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_insecure_beyond_this_machine() {
        let list =
            "http://127.0.0.1:7070, http://localhost:1,http://[::1]:2,https://vault.example:443,\
                    http://vault.example:7070,http://10.0.0.5,ftp://x,not a url";
        assert_eq!(
            VaultClient::insecure_replicas(list),
            [
                "http://vault.example:7070",
                "http://10.0.0.5",
                "ftp://x",
                "not a url"
            ]
        );
    }
}
