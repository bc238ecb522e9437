//! The vault's request handling, independent of HTTP (docs/VAULT.md §Flows).
//!
//! The rule that makes the guess limit hold: a recovery's attempt is committed to the
//! replicated log before its KE2 is returned. The count is checked when the entry is
//! applied, so concurrent guesses, on any replica, can never take it below zero; and
//! the attempt is named by its KE1, so the same KE1 sent again (to any replica) is
//! counted once and answered with the same KE2 (docs/VAULT.md §Recovery).

use crate::metrics::Metrics;
use crate::raft::{ProposeError, VaultNode};
use crate::rate_limit::RateLimiter;
use crate::state::{self, Applied, Command, EraseReason, NewRecord, Place, Refusal};
use backlock_vault_proto::owner::{self, OwnerOp};
use backlock_vault_proto::receipt::{request_id, ReceiptBody, ReceiptOp, ReceiptSigner};
use backlock_vault_proto::server::{password_file, PendingLogin, ServerKeys, StepError};
use backlock_vault_proto::token::{IssueError, TokenError, TokenKeys};
use backlock_vault_proto::wire::{
    AccountStatus, AnchorReply, AnchorSet, DeleteRecord, DeletedWithReceipt, ErrorCode, OwnerProof,
    RecordStatus, RecoverFinish, RecoverFinishReply, RecoverStart, RecoverStartReply,
    RegisterFinish, RegisterFinishReply, RegisterFinishReplyV3, RegisterStart, RegisterStartReply,
    ServerInfo, SetAnchor, StatusRequest, WireError, WIRE_VERSION,
};
use backlock_vault_proto::wrap::{self, WRAPPED_LEN};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tunables of one vault (the same on every replica).
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Wrong guesses allowed per record (DESIGN.md: 10).
    pub max_attempts: u32,
    /// How long a login may sit between KE2 and KE3.
    pub session_ttl: Duration,
    /// Requests per account allowed in a burst.
    pub account_burst: u32,
    /// Requests per account per second, sustained.
    pub account_rate: f64,
    /// Whether devices may leave snapshot anchors (docs/VAULT.md §Snapshot anchor). A
    /// fleet turns them on once every replica runs a release that keeps them: a replica
    /// of an earlier one cannot read the log entry that sets one.
    pub anchors: bool,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            max_attempts: 10,
            session_ttl: Duration::from_secs(60),
            account_burst: 20,
            account_rate: 1.0,
            anchors: true,
        }
    }
}

/// Logins this replica computed for the attempts it opened, so that their KE3 (which
/// usually comes back here) skips a second OPAQUE login step. Only a cache: any replica
/// can recompute a login from the replicated attempt.
#[derive(Default)]
struct Logins {
    open: HashMap<[u8; 16], CachedLogin>,
}

struct CachedLogin {
    place: Place,
    expires_ms: u64,
    login: PendingLogin,
}

/// Bounds the cache (a login state is a few hundred bytes): past it, expired entries
/// go, and if none has expired the new login is not kept.
const CACHED_LOGINS: usize = 16_384;

/// The longest snapshot anchor value accepted (a sealed anchor is 69 bytes).
pub(crate) const MAX_ANCHOR_BYTES: usize = 256;

impl Logins {
    fn keep(&mut self, id: [u8; 16], cached: CachedLogin, now_ms: u64) {
        if self.open.len() >= CACHED_LOGINS {
            self.open.retain(|_, c| c.expires_ms > now_ms);
        }
        if self.open.len() < CACHED_LOGINS {
            self.open.insert(id, cached);
        }
    }

    fn get(&self, id: &[u8; 16], place: Place) -> Option<PendingLogin> {
        self.open
            .get(id)
            .filter(|c| c.place == place)
            .map(|c| c.login.clone())
    }
}

/// A vault: replicated state plus the secrets and the login sessions of this replica.
pub struct Vault {
    node: VaultNode,
    server: ServerKeys,
    receipts: ReceiptSigner,
    tokens: TokenKeys,
    config: VaultConfig,
    buckets: RateLimiter,
    logins: Mutex<Logins>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

/// An error reply.
pub type Reply<T> = Result<T, WireError>;

fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError::new(code, message)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn locked() -> WireError {
    let mut e = err(
        ErrorCode::Locked,
        "too many wrong passwords: the key for this account has been destroyed and the \
         backup can never be recovered with a password",
    );
    e.attempts_left = Some(0);
    e
}

pub(crate) fn no_key() -> WireError {
    err(
        ErrorCode::NoKey,
        "no backup key is registered for this account",
    )
}

fn unavailable(e: ProposeError) -> WireError {
    // The cause names replicas and their addresses: for the operator's log, not for
    // whoever sent the request.
    tracing::warn!(error = %e, "request refused: cannot commit");
    let mut w = err(
        ErrorCode::Unavailable,
        "the vault cannot commit right now (no quorum reachable, or an election in progress); retry shortly",
    );
    w.retry_after_ms = Some(1000);
    w
}

/// This replica could not read its state (I/O, a damaged file): the detail goes to the
/// log for the operator, not to the device.
fn state_error(e: crate::raft::ReadError) -> WireError {
    tracing::error!(error = %e, "reading the applied state failed");
    err(
        ErrorCode::Internal,
        "this vault replica cannot read its state; try again later or another replica",
    )
}

fn malformed(what: &str) -> WireError {
    err(ErrorCode::Malformed, format!("malformed {what}"))
}

impl Vault {
    /// A vault over a started node.
    pub fn new(
        node: VaultNode,
        server: ServerKeys,
        tokens: TokenKeys,
        config: VaultConfig,
    ) -> Self {
        Vault {
            node,
            buckets: RateLimiter::new(config.account_burst, config.account_rate, Instant::now()),
            receipts: ReceiptSigner::derive(&server.to_bytes()),
            server,
            tokens,
            config,

            logins: Mutex::default(),
            metrics: Metrics::default(),
        }
    }

    /// The replication node, for status and shutdown.
    pub fn node(&self) -> &VaultNode {
        &self.node
    }

    /// Gives up the node, for a clean shutdown.
    pub fn into_node(self) -> VaultNode {
        self.node
    }

    /// Whether this replica can serve: it knows a leader.
    pub fn is_serving(&self) -> bool {
        self.node.status().leader_id.is_some()
    }

    /// Figures for `/metrics`.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let status = self.node.status();
        let snapshot = self.node.last_snapshot().unwrap_or_default();
        crate::metrics::Gauges {
            records: self.node.records(),
            term: status.term,
            last_applied: status.last_applied_index.unwrap_or(0),
            is_leader: status.leader_id == Some(status.node_id),
            may_append: self.node.may_append(),
            epoch: self.node.epoch(),
            snapshot_bytes: snapshot.bytes,
            snapshot_build_ms: snapshot.build_ms,
            snapshots_built: snapshot.builds,
        }
    }

    /// The token secrets, for the embedded vault that issues its own tokens.
    pub fn token_keys(&self) -> &TokenKeys {
        &self.tokens
    }

    /// A token for `account` from now for `ttl_secs`, as the relay would issue.
    pub fn issue_token(&self, account: &str, ttl_secs: u64) -> Result<String, IssueError> {
        let now = now_ms() / 1000;
        self.tokens.issue(account, now, now + ttl_secs)
    }

    /// The public half of the fleet's receipt key (`receipt.rs`), for the bundle.
    pub fn receipt_key(&self) -> [u8; 32] {
        self.receipts.public_key()
    }

    /// The fleet's receipt for the request signed with `proof`.
    fn receipt(
        &self,
        account: &str,
        op: ReceiptOp,
        generation: u64,
        proof: &OwnerProof,
    ) -> backlock_vault_proto::receipt::Receipt {
        self.receipts.sign(ReceiptBody {
            account: account.to_owned(),
            op,
            generation,
            at_unix: now_ms() / 1000,
            request: request_id(&proof.signature),
        })
    }

    /// What the vault says about itself.
    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            server_public_key: self.server.public_key(),
            max_attempts: self.config.max_attempts,
            versions: vec![WIRE_VERSION],
        }
    }

    /// Checks the token and that it vouches for `account`, then the account's rate.
    fn admit(&self, token: Option<&str>, account: &str) -> Reply<()> {
        let token = token.ok_or_else(|| {
            err(
                ErrorCode::BadToken,
                "no account token: the relay must vouch for the account",
            )
        })?;
        let now = now_ms() / 1000;
        match self.tokens.verify(token, now) {
            Ok(vouched) if vouched == account => {}
            Ok(_) => {
                return Err(err(
                    ErrorCode::BadToken,
                    "the account token is for another account",
                ))
            }
            Err(TokenError::Expired) => {
                return Err(err(
                    ErrorCode::TokenExpired,
                    "the account token has expired; get a new one",
                ))
            }
            Err(e) => return Err(err(ErrorCode::BadToken, e.to_string())),
        }
        self.rate_limit(account)
    }

    fn rate_limit(&self, account: &str) -> Reply<()> {
        let Err(wait) = self.buckets.take(account, Instant::now()) else {
            return Ok(());
        };
        self.metrics.rate_limited.inc();
        let mut e = err(
            ErrorCode::RateLimited,
            "too many requests for this account; retry later",
        );
        e.retry_after_ms = Some(wait);
        Err(e)
    }

    async fn propose(&self, command: Command) -> Reply<Applied> {
        self.node.propose(command).await.map_err(unavailable)
    }

    /// Registration step 1: evaluate the OPRF under a fresh record id.
    pub fn register_start(
        &self,
        token: Option<&str>,
        req: RegisterStart,
    ) -> Reply<RegisterStartReply> {
        self.admit(token, &req.account)?;
        let mut record_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut record_id);
        let response = self
            .server
            .evaluate_registration(&req.account, &record_id, &req.request)
            .map_err(|_| malformed("registration request"))?;
        Ok(RegisterStartReply {
            record_id,
            response,
        })
    }

    /// Registration step 2: store a first record, or replace one with the owner's proof.
    pub async fn register_finish(
        &self,
        token: Option<&str>,
        req: RegisterFinish,
    ) -> Reply<RegisterFinishReplyV3> {
        self.admit(token, &req.account)?;
        let password_file =
            password_file(&req.upload).map_err(|_| malformed("registration upload"))?;
        if req.wrapped.len() != WRAPPED_LEN {
            return Err(malformed("wrapped key"));
        }
        let record = NewRecord {
            record_id: req.record_id,
            password_file,
            wrapped: req.wrapped.clone(),
            owner_public_key: req.owner_public_key,
            max_attempts: self.config.max_attempts,
        };
        let command = match &req.replace {
            None => Command::Register {
                account: req.account.clone(),
                record,
            },
            Some(proof) => {
                self.node.catch_up().await.map_err(unavailable)?;
                if let Some(done) = self.replayed(&req)? {
                    return Ok(self.with_receipt(&req, done));
                }
                let owner = self
                    .node
                    .read(|s| s.record(&req.account).map(|r| r.owner_public_key))
                    .map_err(state_error)?
                    .ok_or_else(no_key)?;
                let payload = owner::replace_payload(
                    &req.record_id,
                    &req.upload,
                    &req.wrapped,
                    &req.owner_public_key,
                );
                self.check_proof(&owner, OwnerOp::Replace, &req.account, proof, &payload)?;
                Command::Replace {
                    account: req.account.clone(),
                    generation: proof.generation,
                    record,
                }
            }
        };
        let applied = self.propose(command).await?;
        if let Applied::Refused(Refusal::AlreadyRegistered | Refusal::StaleGeneration) = applied {
            self.node.catch_up().await.map_err(unavailable)?;
            if let Some(done) = self.replayed(&req)? {
                return Ok(self.with_receipt(&req, done));
            }
        }
        match applied {
            Applied::Stored {
                generation,
                attempts_left,
            } => {
                self.metrics.registrations.inc();
                tracing::info!(account = %req.account, generation, replaced = req.replace.is_some(), "record stored");
                Ok(self.with_receipt(
                    &req,
                    RegisterFinishReply {
                        generation,
                        attempts_left,
                    },
                ))
            }
            Applied::Refused(Refusal::AlreadyRegistered) => Err(err(
                ErrorCode::AlreadyRegistered,
                "a key is already registered for this account: change the password from the \
                 device that holds the key, or delete the record first",
            )),
            Applied::Refused(Refusal::NoRecord) => Err(no_key()),
            Applied::Refused(Refusal::Exhausted) => Err(locked()),
            Applied::Refused(Refusal::StaleGeneration) => Err(err(
                ErrorCode::Forbidden,
                "the record changed since this proof was made; fetch its status and sign again",
            )),
            other => Err(unexpected(other)),
        }
    }

    /// The reply to a registration; a replacement's carries the fleet's receipt.
    fn with_receipt(
        &self,
        req: &RegisterFinish,
        reply: RegisterFinishReply,
    ) -> RegisterFinishReplyV3 {
        RegisterFinishReplyV3 {
            generation: reply.generation,
            attempts_left: reply.attempts_left,
            receipt: req.replace.as_ref().map(|proof| {
                self.receipt(
                    &req.account,
                    ReceiptOp::PasswordChanged,
                    reply.generation,
                    proof,
                )
            }),
        }
    }

    /// The answer to a registration that is already committed: a device whose answer
    /// was lost (a replica killed after the commit) sends the same finish again, to this
    /// or another replica, and must hear success rather than "already registered". The
    /// record id is fresh from the vault at each registration start, so a match is that
    /// same registration; a replay changes nothing.
    fn replayed(&self, req: &RegisterFinish) -> Reply<Option<RegisterFinishReply>> {
        self.node
            .read(|s| {
                s.record(&req.account)
                    .filter(|r| {
                        r.record_id == req.record_id
                            && r.wrapped == req.wrapped
                            && r.owner_public_key == req.owner_public_key
                    })
                    .map(|r| RegisterFinishReply {
                        generation: r.generation,
                        attempts_left: r.attempts_left,
                    })
            })
            .map_err(state_error)
    }

    /// The answer for an account without a record on this replica: `locked` if the
    /// guess limit erased its last one, else `no_key`.
    fn gone(&self, account: &str) -> WireError {
        match self.node.read(|s| s.locked(account)) {
            Ok(true) => locked(),
            Ok(false) => no_key(),
            Err(e) => state_error(e),
        }
    }

    /// KE1 → KE2, with the guess durably counted before KE2 leaves.
    pub async fn recover_start(
        &self,
        token: Option<&str>,
        req: RecoverStart,
    ) -> Reply<RecoverStartReply> {
        self.admit(token, &req.account)?;
        let read = || {
            self.node
                .read(|s| {
                    s.record(&req.account)
                        .map(|r| (r.generation, r.record_id, r.password_file.clone()))
                })
                .map_err(state_error)
        };
        // A follower may not have applied a registration that just committed: before
        // saying "no key", catch up with the leader.
        let record = match read()? {
            Some(record) => Some(record),
            None => {
                self.node.catch_up().await.map_err(unavailable)?;
                read()?
            }
        };
        let Some((generation, record_id, file)) = record else {
            return Err(self.gone(&req.account));
        };
        // A malformed KE1 costs no guess.
        ServerKeys::check_ke1(&req.ke1).map_err(|_| malformed("KE1"))?;
        let id = attempt_id(&req.account, generation, &req.ke1);
        let command = Command::Open {
            account: req.account.clone(),
            generation,
            id,
            ke1: req.ke1.clone(),
            now_ms: now_ms(),
            ttl_ms: self.config.session_ttl.as_millis() as u64,
        };
        let (attempts_left, place, again) = match self.propose(command).await? {
            Applied::Opened {
                attempts_left,
                place,
                again,
            } => (attempts_left, place, again),
            Applied::Refused(Refusal::Exhausted) => {
                // Another device's last guess may still be right: the record stays
                // until no attempt is open.
                if self
                    .node
                    .read(|s| s.has_open_attempt(&req.account, now_ms()))
                    .map_err(state_error)?
                {
                    return Err(locked());
                }
                return Err(self.erase_exhausted(&req.account, generation).await);
            }
            Applied::Refused(Refusal::NoRecord) => {
                // Erased meanwhile, maybe by the guess limit: this replica may not have
                // applied the erasure yet, and must not say "no key" for "locked".
                self.node.catch_up().await.map_err(unavailable)?;
                return Err(self.gone(&req.account));
            }
            Applied::Refused(Refusal::StaleGeneration) => {
                let mut e = err(
                    ErrorCode::Unavailable,
                    "the record changed during this attempt; retry",
                );
                e.retry_after_ms = Some(0);
                return Err(e);
            }
            other => return Err(unexpected(other)),
        };
        let (login, ke2) = self.login(
            &req.account,
            generation,
            &record_id,
            &file,
            &req.ke1,
            place,
            &id,
        )?;
        let now = now_ms();
        let cached = CachedLogin {
            place,
            expires_ms: now + self.config.session_ttl.as_millis() as u64,
            login,
        };
        self.logins.lock().unwrap().keep(id, cached, now);
        if again {
            tracing::info!(account = %req.account, attempts_left, "guess answered again, not counted again");
        } else {
            self.metrics.attempts.inc();
            tracing::info!(account = %req.account, attempts_left, "guess counted");
        }
        Ok(RecoverStartReply {
            session: id,
            ke2,
            attempts_left,
        })
    }

    /// The vault's half of the login of attempt `id` opened at `place`: the same on
    /// every replica (its randomness is derived from the fleet secret and the place).
    #[allow(
        clippy::too_many_arguments,
        reason = "the inputs of one deterministic step"
    )]
    fn login(
        &self,
        account: &str,
        generation: u64,
        record_id: &[u8; 16],
        file: &[u8],
        ke1: &[u8],
        place: Place,
        id: &[u8; 16],
    ) -> Reply<(PendingLogin, Vec<u8>)> {
        let seed = self
            .server
            .login_seed(account, generation, (place.index, place.position), id);
        self.server
            .start_login_seeded(file, account, record_id, ke1, &seed)
            .map_err(|e| match e {
                StepError::Damaged => err(ErrorCode::Internal, "the stored record is damaged"),
                _ => malformed("KE1"),
            })
    }

    /// KE3, at any replica: a right guess restores the count and releases the wrapped
    /// key; a wrong one closes its attempt.
    pub async fn recover_finish(
        &self,
        token: Option<&str>,
        req: RecoverFinish,
    ) -> Reply<RecoverFinishReply> {
        self.admit(token, &req.account)?;
        let read = || {
            self.node
                .read(|s| {
                    let a = s.open_attempt(&req.account, &req.session)?;
                    let r = s.record(&req.account)?;
                    (r.generation == a.generation)
                        .then(|| (a.clone(), r.record_id, r.password_file.clone()))
                })
                .map_err(state_error)
        };
        // Opened through another replica, maybe not applied here yet.
        let found = match read()? {
            Some(found) => Some(found),
            None => {
                self.node.catch_up().await.map_err(unavailable)?;
                read()?
            }
        };
        let expired = || {
            err(
                ErrorCode::SessionExpired,
                "this recovery session is unknown or expired; start the recovery again",
            )
        };
        let Some((attempt, record_id, file)) = found else {
            return Err(expired());
        };
        if attempt.expires_ms <= now_ms() {
            return Err(expired());
        }
        let generation = attempt.generation;
        let cached = self.logins.lock().unwrap().get(&attempt.id, attempt.place);
        let login = match cached {
            Some(login) => login,
            None => {
                self.login(
                    &req.account,
                    generation,
                    &record_id,
                    &file,
                    &attempt.ke1,
                    attempt.place,
                    &attempt.id,
                )?
                .0
            }
        };
        let session_key = match login.finish(&req.account, &req.ke3) {
            Ok(k) => k,
            Err(StepError::WrongPassword) => {
                self.logins.lock().unwrap().open.remove(&attempt.id);
                let close = Command::Close {
                    account: req.account.clone(),
                    generation,
                    id: attempt.id,
                    now_ms: now_ms(),
                };
                return Err(match self.propose(close).await {
                    Ok(Applied::Erased) => {
                        self.metrics.lockouts.inc();
                        tracing::warn!(account = %req.account, "guess limit reached: record erased");
                        locked()
                    }
                    Ok(Applied::Closed { attempts_left: 0 }) => locked(),
                    // Closed, already closed, or not committed now (it expires anyway):
                    // the guess was counted when it was opened.
                    _ => {
                        let mut e = err(ErrorCode::WrongPassword, "wrong password");
                        e.attempts_left = Some(attempt.attempts_left);
                        e
                    }
                });
            }
            Err(_) => return Err(malformed("KE3")),
        };
        let command = Command::Finish {
            account: req.account.clone(),
            generation,
            id: attempt.id,
            now_ms: now_ms(),
        };
        let applied = self.propose(command).await?;
        // Committed one way or the other: the attempt is closed.
        self.logins.lock().unwrap().open.remove(&attempt.id);
        match applied {
            Applied::Restored {
                attempts_left,
                wrapped,
            } => {
                self.metrics.recoveries.inc();
                tracing::info!(account = %req.account, "key released");
                Ok(RecoverFinishReply {
                    released: wrap::release(&session_key, &req.session, &req.account, &wrapped),
                    generation,
                    attempts_left,
                })
            }
            Applied::Refused(Refusal::NoRecord) => Err(locked()),
            Applied::Refused(Refusal::AttemptClosed) => Err(expired()),
            Applied::Refused(Refusal::StaleGeneration) => Err(err(
                ErrorCode::SessionExpired,
                "the password was changed during this recovery; start again with the new one",
            )),
            other => Err(unexpected(other)),
        }
    }

    /// Checks an owner proof: its window against this replica's clock, then its
    /// signature over this fleet, the account, the generation it names and `payload`.
    fn check_proof(
        &self,
        owner_key: &[u8; 32],
        op: OwnerOp,
        account: &str,
        proof: &OwnerProof,
        payload: &[u8],
    ) -> Reply<()> {
        let window = proof.window();
        if !window.admits(now_ms() / 1000) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "the owner proof is valid only from {} to {} (Unix s, at most {} s, with {} s of clock skew): sign again now, and check the device's clock",
                    window.not_before,
                    window.not_after,
                    owner::MAX_WINDOW_SECS,
                    backlock_vault_proto::token::CLOCK_SKEW_SECS
                ),
            ));
        }
        let scope = owner::Scope {
            fleet: self.tokens.fleet(),
            account,
            generation: proof.generation,
            window,
        };
        if !owner::verify(owner_key, op, &scope, payload, &proof.signature) {
            return Err(err(ErrorCode::Forbidden, "the owner proof does not verify: sign for this vault with the key this record was registered with"));
        }
        Ok(())
    }

    /// Erases the record on the owner's request.
    pub async fn delete(
        &self,
        token: Option<&str>,
        req: DeleteRecord,
    ) -> Reply<DeletedWithReceipt> {
        self.admit(token, &req.account)?;
        self.node.catch_up().await.map_err(unavailable)?;
        // No record: the receipt says so (the routes before receipts answer `no_key`).
        let last_generation = self
            .node
            .read(|s| s.last_generation(&req.account))
            .map_err(state_error)?;
        let absent = || DeletedWithReceipt {
            receipt: self.receipt(&req.account, ReceiptOp::Absent, last_generation, &req.proof),
        };
        let Some(owner) = self
            .node
            .read(|s| s.record(&req.account).map(|r| r.owner_public_key))
            .map_err(state_error)?
        else {
            return Ok(absent());
        };
        self.check_proof(&owner, OwnerOp::Delete, &req.account, &req.proof, &[])?;
        let command = Command::Erase {
            account: req.account.clone(),
            generation: req.proof.generation,
            reason: EraseReason::Owner,
        };
        match self.propose(command).await? {
            Applied::Erased => {
                tracing::info!(account = %req.account, "record deleted by its owner");
                Ok(DeletedWithReceipt {
                    receipt: self.receipt(
                        &req.account,
                        ReceiptOp::Deleted,
                        req.proof.generation,
                        &req.proof,
                    ),
                })
            }
            Applied::Refused(Refusal::NoRecord) => Ok(absent()),
            Applied::Refused(Refusal::StaleGeneration) => Err(err(
                ErrorCode::Forbidden,
                "the record changed since this proof was made; fetch its status and sign again",
            )),
            other => Err(unexpected(other)),
        }
    }

    /// Stores a newer snapshot anchor on the owner's request (docs/VAULT.md §Snapshot
    /// anchor).
    pub async fn set_anchor(&self, token: Option<&str>, req: SetAnchor) -> Reply<AnchorSet> {
        self.admit(token, &req.account)?;
        if !self.config.anchors {
            return Err(err(
                ErrorCode::Unavailable,
                "this vault does not keep snapshot anchors yet: its operator turns them on \
                 (`anchors = true`) once every site runs a release that keeps them",
            ));
        }
        if req.anchor.value.len() > MAX_ANCHOR_BYTES {
            return Err(malformed("anchor value (too long)"));
        }
        self.node.catch_up().await.map_err(unavailable)?;
        let owner = self
            .node
            .read(|s| s.record(&req.account).map(|r| r.owner_public_key))
            .map_err(state_error)?
            .ok_or_else(no_key)?;
        let payload = owner::anchor_payload(req.anchor.generation, &req.anchor.value);
        self.check_proof(&owner, OwnerOp::Anchor, &req.account, &req.proof, &payload)?;
        let generation = req.anchor.generation;
        let command = Command::SetAnchor {
            account: req.account.clone(),
            generation: req.proof.generation,
            anchor: state::Anchor {
                generation,
                value: req.anchor.value,
            },
        };
        match self.propose(command).await? {
            Applied::AnchorSet => Ok(AnchorSet { generation }),
            Applied::Refused(Refusal::NoRecord) => Err(no_key()),
            Applied::Refused(Refusal::StaleGeneration) => Err(err(
                ErrorCode::Forbidden,
                "the record changed since this proof was made; fetch its status and sign again",
            )),
            Applied::Refused(Refusal::AnchorNotNewer { held }) => Err(err(
                ErrorCode::AnchorNotNewer,
                format!("the vault holds anchor {held}, as new as {generation} or newer: nothing changed"),
            )),
            other => Err(unexpected(other)),
        }
    }

    /// The account's snapshot anchor.
    pub async fn anchor(&self, token: Option<&str>, req: StatusRequest) -> Reply<AnchorReply> {
        self.admit(token, &req.account)?;
        self.node.catch_up().await.map_err(unavailable)?;
        if self
            .node
            .read(|s| s.locked(&req.account))
            .map_err(state_error)?
        {
            return Err(locked());
        }
        let anchor = self
            .node
            .read(|s| {
                s.anchor(&req.account)
                    .map(|a| backlock_vault_proto::wire::Anchor {
                        generation: a.generation,
                        value: a.value.clone(),
                    })
            })
            .map_err(state_error)?;
        Ok(AnchorReply { anchor })
    }

    /// The account's record state.
    pub async fn status(&self, token: Option<&str>, req: StatusRequest) -> Reply<AccountStatus> {
        self.admit(token, &req.account)?;
        // Linearizable: a device reads its count after its own guesses, on any replica.
        self.node.catch_up().await.map_err(unavailable)?;
        if self
            .node
            .read(|s| s.locked(&req.account))
            .map_err(state_error)?
        {
            return Err(locked());
        }
        let record = self
            .node
            .read(|s| {
                s.record(&req.account).map(|r| RecordStatus {
                    generation: r.generation,
                    attempts_left: r.attempts_left,
                    owner_public_key: r.owner_public_key,
                })
            })
            .map_err(state_error)?;
        Ok(AccountStatus { record })
    }

    /// A record at zero with no right guess in flight is erased; the caller hears
    /// "locked" either way.
    async fn erase_exhausted(&self, account: &str, generation: u64) -> WireError {
        let command = Command::Erase {
            account: account.to_owned(),
            generation,
            reason: EraseReason::Exhausted,
        };
        match self.node.propose(command).await {
            Ok(Applied::Erased) => {
                self.metrics.lockouts.inc();
                tracing::warn!(account = %account, "guess limit reached: record erased");
            }
            // The last guesses are still open: the sweeper erases once they are not.
            Ok(Applied::Refused(Refusal::AttemptsOpen)) => {}
            Ok(Applied::Refused(Refusal::NotExhausted)) => {
                // This replica's copy lagged: the record still has guesses.
                let mut e = err(
                    ErrorCode::Unavailable,
                    "the vault replica was catching up; retry",
                );
                e.retry_after_ms = Some(0);
                return e;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(account = %account, error = %e, "could not erase an exhausted record yet")
            }
        }
        locked()
    }

    /// One pass of housekeeping: drop expired sessions; on the leader, erase records
    /// whose last guess can no longer finish. Run it every second on every replica.
    pub async fn sweep(&self) {
        let now = Instant::now();
        self.buckets.turn(now);
        // Only the leader's erasures commit without a round trip; one proposer is enough.
        if !self.node.is_leader() {
            return;
        }
        let cutoff = now_ms().saturating_sub(self.config.session_ttl.as_millis() as u64);
        let expired = match self.node.read(|s| s.expired_exhausted(cutoff)) {
            Ok(expired) => expired,
            Err(e) => {
                tracing::error!(error = %e, "the sweeper cannot read the state");
                return;
            }
        };
        for (account, generation) in expired {
            self.erase_exhausted(&account, generation).await;
        }
        let now_ms = now_ms();
        let members = self.node.members();
        let expired_attempt = self.node.read(|s| s.any_expired_attempt(now_ms));
        if members.any_expired(now_ms) || expired_attempt.unwrap_or(false) {
            let _ = self.node.propose(Command::Sweep { now_ms }).await;
        }
    }
}

/// An attempt's id: the account, the record's generation and the KE1 (whose
/// client nonce and blinded password make it unique to one try).
fn attempt_id(account: &str, generation: u64, ke1: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key("backlock vault v1 attempt id");
    h.update(&(account.len() as u64).to_be_bytes());
    h.update(account.as_bytes());
    h.update(&generation.to_be_bytes());
    h.update(ke1);
    h.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 of 32 bytes")
}
fn unexpected(applied: Applied) -> WireError {
    tracing::error!(?applied, "state machine answered out of protocol");
    err(
        ErrorCode::Internal,
        "internal error; the request may be retried",
    )
}
