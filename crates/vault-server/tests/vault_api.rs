//! The vault's HTTP API end to end: a real server on loopback, the device client, and
//! the claims the guess limit rests on.

use backlock_core::key::BackupKey;
use backlock_testkit::timing::eventually;
use backlock_testkit::tree::list_files;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::client::{start_recovery, start_registration};
use backlock_vault_proto::owner::{self, OwnerKey, OwnerOp};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::token::FleetId;
use backlock_vault_proto::wire::{self, ErrorCode, WireError};
use backlock_vault_server::run::{RunningVault, ServeConfig};
use backlock_vault_server::seal::{KeyFileSealer, Sealer};
use backlock_vault_server::service::VaultConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

const RIGHT: &str = "correct horse 7";
const WRONG: &str = "incorrect horse 7";

struct Harness {
    dir: TempDir,
    vault: RunningVault,
    ksf: Stretch,
}

fn generous() -> VaultConfig {
    VaultConfig {
        account_burst: 10_000,
        account_rate: 10_000.0,
        ..VaultConfig::default()
    }
}

impl Harness {
    async fn start(config: VaultConfig) -> Harness {
        let dir = TempDir::new().unwrap();
        let vault = RunningVault::start(ServeConfig {
            data: dir.path().join("vault"),
            node_key: None,
            listen: ([127, 0, 0, 1], 0).into(),
            vault: config,
            tls: None,
            http: Default::default(),
            metrics_listen: Some(([127, 0, 0, 1], 0).into()),
        })
        .await
        .unwrap();
        Harness {
            dir,
            vault,
            ksf: Stretch::memoized(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    fn token(&self, account: &str) -> String {
        self.vault.vault.issue_token(account, 600).unwrap()
    }

    fn client(&self, account: &str) -> VaultClient {
        VaultClient::new(&self.vault.url(), account, &self.token(account)).unwrap()
    }

    fn fleet(&self) -> FleetId {
        self.vault.vault.token_keys().fleet()
    }

    fn pinned(&self) -> [u8; 32] {
        self.vault.vault.info().server_public_key
    }

    async fn register(&self, account: &str, password: &str, key: &BackupKey) {
        self.client(account)
            .register(
                &Password::new(password.into()),
                key,
                &self.pinned(),
                None,
                &self.ksf,
            )
            .await
            .unwrap();
    }

    async fn recover(&self, account: &str, password: &str) -> Result<BackupKey, VaultError> {
        self.client(account)
            .recover(&Password::new(password.into()), &self.pinned(), &self.ksf)
            .await
    }

    async fn attempts_left(&self, account: &str) -> u32 {
        self.client(account)
            .status()
            .await
            .unwrap()
            .record
            .unwrap()
            .attempts_left
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file of the data directory, raw, and unsealed where it is sealed (the node
/// key file itself and the lock file are not).
fn data_contents(data: &Path) -> Vec<(PathBuf, Vec<u8>, Option<Vec<u8>>)> {
    let sealer = KeyFileSealer::open_or_create(data.join("node.key")).unwrap();
    list_files(data)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|path| {
            let raw = std::fs::read(&path).unwrap();
            let plain =
                backlock_vault_server::raft::unseal_file(&data.join("raft"), &path, &sealer)
                    .or_else(|| {
                        (path == data.join("secrets.sealed")).then(|| {
                            sealer
                                .open(b"backlock vault secrets v1", &raw)
                                .map(|plain| plain.to_vec())
                                .map_err(|e| e.to_string())
                        })
                    })
                    .map(|plain| plain.unwrap());
            (path, raw, plain)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_guesses_count_exactly_the_limit_then_the_record_is_gone() {
    // Each KE2 of a wrong password is an attempt left open (no KE3 can be made); the
    // record goes once the last of them can no longer be finished.
    let h = Harness::start(VaultConfig {
        session_ttl: Duration::from_millis(1500),
        ..generous()
    })
    .await;
    let key = BackupKey::generate();
    h.register("alice", RIGHT, &key).await;
    let upload_markers = {
        // The stored password file and wrapped key, as the vault holds them.
        let record = h
            .vault
            .vault
            .node()
            .read(|s| s.record("alice"))
            .unwrap()
            .unwrap();
        (record.password_file, record.wrapped)
    };

    let url = h.vault.url();
    let token = h.token("alice");
    let mut guesses = Vec::new();
    for _ in 0..32 {
        let (url, token) = (url.clone(), token.clone());
        guesses.push(tokio::spawn(async move {
            let client = VaultClient::new(&url, "alice", &token).unwrap();
            let (_, ke1) = start_recovery(&Password::new(WRONG.into())).unwrap();
            client
                .guess_once(ke1)
                .await
                .map(|reply| reply.attempts_left)
        }));
    }
    let mut counted = Vec::new();
    let mut locked = 0;
    for g in guesses {
        match g.await.unwrap() {
            Ok(left) => counted.push(left),
            Err(VaultError::Locked) => locked += 1,
            Err(e) => panic!("unexpected answer to a guess: {e}"),
        }
    }
    counted.sort_unstable();
    // Exactly ten KE2s left the vault, each with a distinct count: linearizable.
    assert_eq!(counted, (0..10).collect::<Vec<_>>());
    assert_eq!(locked, 22);

    // The right password now hears "locked", and once the last attempt expired the
    // record is erased.
    assert!(matches!(
        h.recover("alice", RIGHT).await,
        Err(VaultError::Locked)
    ));
    let node = h.vault.vault.node();
    eventually("the exhausted record is erased", || {
        node.read(|s| s.locked("alice")).unwrap()
    })
    .await;
    assert!(matches!(
        h.client("alice").status().await,
        Err(VaultError::Locked)
    ));
    // The erasure ends when the snapshot after it lets the log entries that carried the
    // record go; shutting down before that leaves them for the next start to purge.
    let erased_by = node.status().last_applied_index;
    eventually("the log is purged through the erasure", || {
        node.status().purged_index >= erased_by
    })
    .await;
    let data = h.data();
    h.vault.shutdown().await;

    let (file, wrapped) = upload_markers;
    for (path, raw, plain) in data_contents(&data) {
        for (what, needle) in [("password file", &file), ("wrapped key", &wrapped)] {
            assert!(!contains(&raw, needle), "{what} in {}", path.display());
            if let Some(plain) = &plain {
                assert!(
                    !contains(plain, needle),
                    "{what} sealed in {}",
                    path.display()
                );
            }
        }
        assert!(
            !contains(&raw, key.expose_secret()),
            "key in {}",
            path.display()
        );
    }
    // The snapshot seals records under their own keys, so the scan above sees no
    // record there either way: open a copy of the directory as a replica would.
    let copy = TempDir::new().unwrap();
    backlock_testkit::tree::copy_dir(&data.join("raft"), copy.path());
    let sealer: std::sync::Arc<dyn Sealer> =
        std::sync::Arc::new(KeyFileSealer::open_or_create(data.join("node.key")).unwrap());
    let state = backlock_vault_server::raft::open_copy(copy.path(), sealer)
        .await
        .unwrap();
    assert!(state.record("alice").is_none() && state.locked("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_wrong_guesses_then_the_right_one_recovers_and_restores_the_count() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    h.register("bob", RIGHT, &key).await;
    for expected_left in (1..10).rev() {
        match h.recover("bob", WRONG).await {
            Err(VaultError::WrongPassword { attempts_left }) => {
                assert_eq!(attempts_left, expected_left)
            }
            other => panic!("expected a wrong password, got {other:?}"),
        }
    }
    assert_eq!(h.attempts_left("bob").await, 1);
    let recovered = h.recover("bob", RIGHT).await.unwrap();
    assert_eq!(recovered.expose_secret(), key.expose_secret());
    assert_eq!(h.attempts_left("bob").await, 10);
    h.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_last_guess_still_recovers() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    h.register("carol", RIGHT, &key).await;
    for _ in 0..9 {
        assert!(h.recover("carol", WRONG).await.is_err());
    }
    // The tenth guess takes the count to zero; it is right, so the key is released.
    assert_eq!(
        h.recover("carol", RIGHT).await.unwrap().expose_secret(),
        key.expose_secret()
    );
    assert_eq!(h.attempts_left("carol").await, 10);
    h.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_password_and_delete_need_the_owner_key() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    h.register("dave", RIGHT, &key).await;
    let client = h.client("dave");
    let new = Password::new("new password 8".into());

    // A first registration over an existing record is refused.
    let again = client
        .register(&new, &BackupKey::generate(), &h.pinned(), None, &h.ksf)
        .await;
    assert!(matches!(again, Err(VaultError::AlreadyRegistered(_))));
    // Another key cannot sign a replacement.
    let stranger = OwnerKey::derive(&BackupKey::generate());
    let forged = client
        .register(&new, &key, &h.pinned(), Some(&stranger), &h.ksf)
        .await;
    assert!(matches!(forged, Err(VaultError::Refused(_))), "{forged:?}");
    assert!(matches!(
        client.delete(&BackupKey::generate(), &h.pinned()).await,
        Err(VaultError::Refused(_))
    ));

    // The owner changes the password: the old one stops working.
    let owner = OwnerKey::derive(&key);
    let changed = client
        .register(&new, &key, &h.pinned(), Some(&owner), &h.ksf)
        .await
        .unwrap();
    assert_eq!(changed.generation, 2);
    assert!(matches!(
        h.recover("dave", RIGHT).await,
        Err(VaultError::WrongPassword { .. })
    ));
    assert_eq!(
        h.recover("dave", "new password 8")
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );

    client.delete(&key, &h.pinned()).await.unwrap();
    assert!(client.status().await.unwrap().record.is_none());
    assert!(matches!(
        h.recover("dave", "new password 8").await,
        Err(VaultError::NoKey)
    ));
    h.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_versions_rate_limits_and_pinning() {
    let h = Harness::start(VaultConfig {
        account_burst: 3,
        account_rate: 0.01,
        ..VaultConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let url = h.vault.url();
    let body = wire::encode(&wire::StatusRequest {
        account: "erin".into(),
    });
    let send = |token: Option<String>, body: Vec<u8>| {
        let mut req = http.post(format!("{url}{}", wire::path::STATUS)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").is_some();
        let e: WireError = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (status, e.code, retry)
    };

    assert_eq!(
        error(send(None, body.clone()).await.unwrap()).await.1,
        ErrorCode::BadToken
    );
    let other = h.token("frank");
    assert_eq!(
        error(send(Some(other), body.clone()).await.unwrap())
            .await
            .1,
        ErrorCode::BadToken
    );
    let expired = h.vault.vault.token_keys().issue("erin", 0, 1).unwrap();
    assert_eq!(
        error(send(Some(expired), body.clone()).await.unwrap())
            .await
            .1,
        ErrorCode::TokenExpired
    );
    // A token the same relay secret made for another fleet, and one living longer than
    // the vault's maximum (the relay's clock or a stolen secret's holder asking for a
    // token that never expires): refused before anything else.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let keys = h.vault.vault.token_keys().clone();
    let foreign = keys
        .clone()
        .with_fleet(FleetId::of(&[7; 32]))
        .issue("erin", now, now + 60)
        .unwrap();
    let long = keys
        .clone()
        .with_max_lifetime(u64::MAX)
        .issue("erin", now, now + 10 * 365 * 86_400)
        .unwrap();
    let ahead = keys.issue("erin", now + 3_600, now + 7_200).unwrap();
    let within_skew = keys.issue("erin", now + 60, now + 120).unwrap();
    for (what, token) in [
        ("another fleet", foreign),
        ("ten years", long),
        ("an hour ahead", ahead),
    ] {
        let (status, code, _) = error(send(Some(token), body.clone()).await.unwrap()).await;
        assert_eq!(
            (status, code),
            (401, ErrorCode::BadToken),
            "a token of {what}"
        );
    }
    let skewed = send(Some(within_skew), body.clone()).await.unwrap();
    assert!(
        skewed.status().is_success(),
        "a token a minute ahead is within the skew"
    );
    let mut newer = body.clone();
    newer[0] = 9;
    let (status, code, _) = error(send(Some(h.token("erin")), newer).await.unwrap()).await;
    assert_eq!((status, code), (400, ErrorCode::UnsupportedVersion));

    // Refused tokens and versions cost nothing; one request passed above, then a burst
    // of 2 more passes and the next waits.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = send(Some(h.token("erin")), body.clone()).await.unwrap();
        codes.push(if r.status().is_success() {
            None
        } else {
            Some(error(r).await)
        });
    }
    assert_eq!(codes[..2], [None, None]);
    assert_eq!(codes[2], Some((429, ErrorCode::RateLimited, true)));

    // A device that pinned another key refuses this vault before sending a password.
    let key = BackupKey::generate();
    let wrong_pin = [7u8; 32];
    let refused = h
        .client("gina")
        .register(&Password::new(RIGHT.into()), &key, &wrong_pin, None, &h.ksf)
        .await;
    assert!(
        matches!(refused, Err(VaultError::WrongServer(_))),
        "{refused:?}"
    );

    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // `/metrics` is not on the device API, only on its own listener.
    let on_api = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_ne!(on_api.status().as_u16(), 200);
    let metrics_url = format!("http://{}", h.vault.metrics_addr.unwrap());
    let metrics = http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("backlock_vault_rate_limited_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("backlock_vault_raft_is_leader 1"),
        "{metrics}"
    );
    h.vault.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_data_directory() {
    let h = Harness::start(generous()).await;
    let second = RunningVault::start(ServeConfig {
        data: h.data(),
        node_key: None,
        listen: ([127, 0, 0, 1], 0).into(),
        vault: generous(),
        tls: None,
        http: Default::default(),
        metrics_listen: None,
    })
    .await;
    assert!(matches!(
        second,
        Err(backlock_vault_server::run::ServeError::InUse(_))
    ));
    h.vault.shutdown().await;
}

/// A private CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (cert, key) = (dir.join("vault.crt"), dir.join("vault.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (cert, key, ca_cert.pem().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_configured_and_only_the_given_ca_is_trusted() {
    let dir = TempDir::new().unwrap();
    let (cert, key_file, ca) = private_ca(dir.path());
    let vault = RunningVault::start(ServeConfig {
        data: dir.path().join("vault"),
        node_key: None,
        listen: ([127, 0, 0, 1], 0).into(),
        vault: generous(),
        tls: Some(backlock_vault_server::run::TlsFiles {
            cert,
            key: key_file,
        }),
        http: Default::default(),
        metrics_listen: None,
    })
    .await
    .unwrap();
    let url = vault.url();
    assert!(url.starts_with("https://"), "{url}");
    let token = vault.vault.issue_token("ivy", 600).unwrap();

    // Trusting the private CA: the whole flow works over TLS.
    let client = VaultClient::with_ca(&url, "ivy", &token, Some(&ca)).unwrap();
    let pinned = client.info().await.unwrap().server_public_key;
    let ksf = Stretch::memoized();
    let key = BackupKey::generate();
    let password = Password::new(RIGHT.into());
    client
        .register(&password, &key, &pinned, None, &ksf)
        .await
        .unwrap();
    let recovered = client.recover(&password, &pinned, &ksf).await.unwrap();
    assert_eq!(recovered.expose_secret(), key.expose_secret());

    // The system's roots do not know this CA; plain HTTP gets no answer either.
    let untrusting = VaultClient::new(&url, "ivy", &token).unwrap();
    assert!(matches!(
        untrusting.info().await,
        Err(VaultError::Unavailable(_))
    ));
    let plain = VaultClient::new(&url.replace("https://", "http://"), "ivy", &token).unwrap();
    assert!(plain.info().await.is_err());
    vault.shutdown().await;
}

/// Posts one request the way the device client does, without its failover, so a test
/// can send the same message twice.
async fn post<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    h: &Harness,
    account: &str,
    route: &str,
    req: &Req,
) -> Result<Rep, ErrorCode> {
    let reply = reqwest::Client::new()
        .post(format!("{}{route}", h.vault.url()))
        .bearer_auth(h.token(account))
        .body(wire::encode(req))
        .send()
        .await
        .unwrap();
    let ok = reply.status().is_success();
    let body = reply.bytes().await.unwrap();
    if ok {
        Ok(wire::decode(&body).unwrap())
    } else {
        Err(serde_json::from_slice::<WireError>(&body).unwrap().code)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An owner proof as a device makes one, with every part of its scope chosen.
fn owner_proof(
    key: &BackupKey,
    op: OwnerOp,
    fleet: FleetId,
    account: &str,
    generation: u64,
    window: owner::Window,
    payload: &[u8],
) -> wire::OwnerProof {
    let scope = owner::Scope {
        fleet,
        account,
        generation,
        window,
    };
    wire::OwnerProof {
        generation,
        not_before: window.not_before,
        not_after: window.not_after,
        signature: OwnerKey::derive(key).sign(op, &scope, payload),
    }
}

/// A relay that recorded a device's owner proofs (or a thief of one never sent) tries
/// them later: a proof for a generation that has changed, one outside its time window,
/// one made for another fleet, and one naming too wide a window are refused, and the
/// record stays; a fresh one deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_proof_replayed_after_a_change_outside_its_window_or_at_another_fleet_is_refused()
{
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    let client = h.client("ida");
    let first = client
        .register(
            &Password::new(RIGHT.into()),
            &key,
            &h.pinned(),
            None,
            &h.ksf,
        )
        .await
        .unwrap();
    let delete = |proof: wire::OwnerProof| {
        let h = &h;
        async move {
            let request = wire::DeleteRecord {
                account: "ida".into(),
                proof,
            };
            post::<_, wire::Deleted>(h, "ida", wire::path::DELETE, &request).await
        }
    };
    let now = unix_now();
    let proof = |generation, window, fleet| {
        owner_proof(&key, OwnerOp::Delete, fleet, "ida", generation, window, &[])
    };
    // Recorded now, for the current generation; then the owner changes the password.
    let recorded = proof(first.generation, owner::Window::from(now), h.fleet());
    client
        .register(
            &Password::new("second 2".into()),
            &key,
            &h.pinned(),
            Some(&OwnerKey::derive(&key)),
            &h.ksf,
        )
        .await
        .unwrap();
    assert_eq!(
        delete(recorded).await,
        Err(ErrorCode::Forbidden),
        "a proof for the old generation"
    );
    let generation = first.generation + 1;
    let past = owner::Window {
        not_before: now - 2_000,
        not_after: now - 1_400,
    };
    let future = owner::Window {
        not_before: now + 1_400,
        not_after: now + 2_000,
    };
    let wide = owner::Window {
        not_before: now - 10,
        not_after: now + 86_400,
    };
    for (what, window, fleet) in [
        ("a window that ended", past, h.fleet()),
        ("a window not begun", future, h.fleet()),
        ("a window of a day", wide, h.fleet()),
        (
            "another fleet",
            owner::Window::from(now),
            FleetId::of(&[7; 32]),
        ),
    ] {
        assert_eq!(
            delete(proof(generation, window, fleet)).await,
            Err(ErrorCode::Forbidden),
            "{what}"
        );
    }
    assert!(
        client.status().await.unwrap().record.is_some(),
        "the record stays"
    );
    // The control: a fresh proof deletes it.
    delete(proof(
        generation,
        owner::Window::from(unix_now()),
        h.fleet(),
    ))
    .await
    .unwrap();
    assert!(client.status().await.unwrap().record.is_none());
    h.vault.shutdown().await;
}

/// An app of the first format (wire messages of `/v1/register/finish` and
/// `/v1/delete`, owner proofs without vault or window) still registers and recovers;
/// its deletions and password changes are refused with what to do, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_of_the_first_format_registers_and_is_told_to_update_for_owner_changes() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    let new = registration(&h, "old-app", RIGHT, &key).await;
    let old = wire::RegisterFinishV1 {
        account: new.account.clone(),
        record_id: new.record_id,
        upload: new.upload.clone(),
        wrapped: new.wrapped.clone(),
        owner_public_key: new.owner_public_key,
        replace: None,
    };
    let stored: wire::RegisterFinishReply =
        post(&h, "old-app", wire::path::REGISTER_FINISH_V1, &old)
            .await
            .unwrap();
    assert_eq!(
        h.recover("old-app", RIGHT).await.unwrap().expose_secret(),
        key.expose_secret()
    );
    let proof = wire::OwnerProofV1 {
        generation: stored.generation,
        signature: [1; 64],
    };
    let delete = wire::DeleteRecordV1 {
        account: "old-app".into(),
        proof: proof.clone(),
    };
    let refused = post::<_, wire::Deleted>(&h, "old-app", wire::path::DELETE_V1, &delete).await;
    assert_eq!(refused, Err(ErrorCode::Forbidden));
    let change = wire::RegisterFinishV1 {
        replace: Some(proof),
        ..old
    };
    let refused = post::<_, wire::RegisterFinishReply>(
        &h,
        "old-app",
        wire::path::REGISTER_FINISH_V1,
        &change,
    )
    .await;
    assert_eq!(refused, Err(ErrorCode::Forbidden));
    assert_eq!(h.attempts_left("old-app").await, 10);
    h.vault.shutdown().await;
}

/// A registration's finish message, ready to send (and send again).
async fn registration(
    h: &Harness,
    account: &str,
    password: &str,
    key: &BackupKey,
) -> wire::RegisterFinish {
    let password = Password::new(password.into());
    let (started, request) = start_registration(&password).unwrap();
    let start = wire::RegisterStart {
        account: account.into(),
        request,
    };
    let reply: wire::RegisterStartReply = post(h, account, wire::path::REGISTER_START, &start)
        .await
        .unwrap();
    started
        .finish(&password, account, &reply, &h.pinned(), key, &h.ksf)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_sent_again_after_a_lost_answer_succeeds_and_changes_nothing() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    let first = registration(&h, "hana", RIGHT, &key).await;
    let finish = |m: wire::RegisterFinish| {
        let h = &h;
        async move {
            post::<_, wire::RegisterFinishReply>(h, "hana", wire::path::REGISTER_FINISH, &m).await
        }
    };
    let stored = finish(first.clone()).await.unwrap();
    assert_eq!(finish(first.clone()).await, Ok(stored.clone()));

    // A guess spent in between is not given back by the repeat.
    assert!(h.recover("hana", WRONG).await.is_err());
    let again = finish(first.clone()).await.unwrap();
    assert_eq!(again.generation, stored.generation);
    assert_eq!(again.attempts_left, stored.attempts_left - 1);

    // A different registration over the record is still refused.
    let other = registration(&h, "hana", RIGHT, &BackupKey::generate()).await;
    assert_eq!(finish(other).await, Err(ErrorCode::AlreadyRegistered));

    // A password change sent twice: one new generation, both answers success.
    let mut change = registration(&h, "hana", "new password 9", &key).await;
    let payload = owner::replace_payload(
        &change.record_id,
        &change.upload,
        &change.wrapped,
        &change.owner_public_key,
    );
    change.replace = Some(owner_proof(
        &key,
        OwnerOp::Replace,
        h.fleet(),
        "hana",
        stored.generation,
        owner::Window::from(unix_now()),
        &payload,
    ));
    let changed = finish(change.clone()).await.unwrap();
    assert_eq!(changed.generation, stored.generation + 1);
    assert_eq!(finish(change).await, Ok(changed));
    // The first registration is now history: sending it again is refused.
    assert_eq!(finish(first).await, Err(ErrorCode::AlreadyRegistered));
    assert_eq!(
        h.recover("hana", "new password 9")
            .await
            .unwrap()
            .expose_secret(),
        key.expose_secret()
    );
    h.vault.shutdown().await;
}

/// A relay records a successful login (its KE1 and KE3); wrong guesses follow; the
/// relay replays the login to put the count back to the maximum. The KE1 sent again
/// is a new attempt (its KE2 is not the one recorded), so the recorded KE3 does not
/// verify: the replay costs a guess and restores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_successful_login_never_resets_the_count() {
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    h.register("dora", RIGHT, &key).await;
    let client = h.client("dora");
    let right = Password::new(RIGHT.into());
    let (started, ke1) = start_recovery(&right).unwrap();
    let reply = client.guess_once(ke1.clone()).await.unwrap();
    let (finish, recovered) = started
        .finish(&right, "dora", &reply, &h.pinned(), &h.ksf)
        .unwrap();
    let released = client.finish_guess(&finish).await.unwrap();
    assert_eq!(
        recovered.open("dora", &released).unwrap().expose_secret(),
        key.expose_secret()
    );
    for _ in 0..3 {
        assert!(h.recover("dora", WRONG).await.is_err());
    }
    assert_eq!(h.attempts_left("dora").await, 7);

    // The replay: the same KE3 for its finished session is refused, and the same KE1
    // opens a new attempt whose KE2 differs from the recorded one.
    match client.finish_guess(&finish).await {
        Err(VaultError::Refused(why)) if why.contains("session") => {}
        other => panic!("a finished session was finished again: {other:?}"),
    }
    let again = client.guess_once(ke1).await.unwrap();
    assert_ne!(again.ke2, reply.ke2);
    assert_eq!(again.attempts_left, 6);
    match client.finish_guess(&finish).await {
        Err(VaultError::WrongPassword { attempts_left: 6 }) => {}
        other => panic!("a replayed KE3 was not refused: {other:?}"),
    }
    assert_eq!(h.attempts_left("dora").await, 6);
    h.vault.shutdown().await;
}

/// A slowloris from one address: more connections than one address may hold, each
/// trickling a request's headers a byte at a time, and some sending nothing. The ones
/// over its share are closed at once, the trickling ones when their header time-out
/// runs out, the silent ones when their idle time-out does; meanwhile a device at
/// another address is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_holds_only_its_share_of_connections_and_only_briefly() {
    use backlock_vault_server::http::HttpLimits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    let dir = TempDir::new().unwrap();
    let vault = RunningVault::start(ServeConfig {
        data: dir.path().join("vault"),
        node_key: None,
        listen: ([127, 0, 0, 1], 0).into(),
        vault: generous(),
        tls: None,
        http: HttpLimits {
            header_timeout_secs: 2,
            idle_timeout_secs: 3,
            max_connections_per_ip: 20,
            ..HttpLimits::default()
        },
        metrics_listen: None,
    })
    .await
    .unwrap();
    let addr = vault.addr;

    // Closed: the peer ends the stream (or resets it) within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Ten over the share of one address: closed at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    for stream in held.iter_mut() {
        if closed_within(stream, Duration::from_millis(20)).await {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 10,
        "connections over one address's share were kept"
    );
    let mut kept: Vec<TcpStream> = Vec::new();
    for mut stream in held {
        if stream.write_all(b"P").await.is_ok() {
            kept.push(stream);
        }
    }
    kept.truncate(20);
    let (trickling, silent) = kept.split_at_mut(10);
    for stream in trickling.iter_mut() {
        stream
            .write_all(b"OST /v1/status HTTP/1.1\r\nHost: v")
            .await
            .unwrap();
    }

    // A device elsewhere is served meanwhile.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut device = socket.connect(addr).await.unwrap();
    device
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    device.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Trickling a byte every half second does not keep a connection past its header
    // time-out; sending nothing more does not keep one past the idle time-out.
    for stream in trickling.iter_mut() {
        let mut closed = false;
        for _ in 0..12 {
            if stream.write_all(b"x").await.is_err()
                || closed_within(stream, Duration::from_millis(500)).await
            {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "a trickling connection outlived its header time-out"
        );
    }
    for stream in silent.iter_mut() {
        assert!(
            closed_within(stream, Duration::from_secs(6)).await,
            "a silent connection outlived its idle time-out"
        );
    }
    vault.shutdown().await;
}

/// The snapshot anchor against a relay (or a vault) that would roll a new phone back:
/// a recorded anchor request replayed after a newer one, one whose value was swapped
/// for another, one signed by another key, or a Delete proof used for it, change
/// nothing; the anchor a new phone reads is the newest the owner left, and it goes
/// with the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_only_moves_forward_and_only_by_its_owner() {
    use backlock_vault_proto::anchor::{self, SnapshotAnchor};
    let h = Harness::start(generous()).await;
    let key = BackupKey::generate();
    h.register("june", RIGHT, &key).await;
    let client = h.client("june");
    let pinned = h.pinned();
    let snapshot = |seq: u64| SnapshotAnchor {
        repo: [1; 16],
        seq,
        snapshot: [seq as u8; 16],
    };
    assert_eq!(client.anchor(&key).await.unwrap(), None);
    // What a relay records: the request that set anchor 1.
    let value = anchor::seal(&key, "june", &snapshot(1));
    let set = |value: Vec<u8>, generation: u64, signer: &BackupKey, op: OwnerOp| {
        let payload = owner::anchor_payload(generation, &value);
        wire::SetAnchor {
            account: "june".into(),
            anchor: wire::Anchor { generation, value },
            proof: owner_proof(
                signer,
                op,
                h.fleet(),
                "june",
                1,
                owner::Window::from(unix_now()),
                &payload,
            ),
        }
    };
    let recorded = set(value.clone(), 1, &key, OwnerOp::Anchor);
    post::<_, wire::AnchorSet>(&h, "june", wire::path::ANCHOR_SET, &recorded)
        .await
        .unwrap();
    client
        .set_anchor(&key, &pinned, &snapshot(5))
        .await
        .unwrap();

    let refused = [
        (
            "the recorded older anchor, replayed",
            recorded,
            ErrorCode::AnchorNotNewer,
        ),
        (
            "an older value relabelled newer",
            {
                let mut r = set(value.clone(), 1, &key, OwnerOp::Anchor);
                r.anchor.generation = 9;
                r
            },
            ErrorCode::Forbidden,
        ),
        (
            "signed by another key",
            set(value.clone(), 9, &BackupKey::generate(), OwnerOp::Anchor),
            ErrorCode::Forbidden,
        ),
        (
            "a proof for another operation",
            set(value.clone(), 9, &key, OwnerOp::Delete),
            ErrorCode::Forbidden,
        ),
    ];
    for (what, request, code) in refused {
        assert_eq!(
            post::<_, wire::AnchorSet>(&h, "june", wire::path::ANCHOR_SET, &request).await,
            Err(code),
            "{what}"
        );
    }
    assert_eq!(client.anchor(&key).await.unwrap(), Some(snapshot(5)));
    assert!(matches!(
        client.set_anchor(&key, &pinned, &snapshot(5)).await,
        Err(VaultError::AnchorNotNewer(_))
    ));
    // A new phone with the key reads the newest; another key cannot open it.
    assert!(h
        .client("june")
        .anchor(&BackupKey::generate())
        .await
        .is_err());
    // Deleting the record deletes its anchor.
    client.delete(&key, &pinned).await.unwrap();
    h.register("june", RIGHT, &key).await;
    assert_eq!(client.anchor(&key).await.unwrap(), None);
    h.vault.shutdown().await;

    // A fleet keeps none until its operator turns them on (after upgrading every site).
    let off = Harness::start(VaultConfig {
        anchors: false,
        ..generous()
    })
    .await;
    off.register("june", RIGHT, &key).await;
    assert!(matches!(
        off.client("june")
            .set_anchor(&key, &off.pinned(), &snapshot(1))
            .await,
        Err(VaultError::Unavailable(_))
    ));
    assert_eq!(off.client("june").anchor(&key).await.unwrap(), None);
    off.vault.shutdown().await;
}

/// The benchmark's endpoint that registers accounts without a token exists only in a
/// build made for benchmarks: a vault serving devices refuses it and stores nothing.
#[cfg(not(feature = "bench-fill"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_build_registers_no_account_without_a_token() {
    let h = Harness::start(generous()).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/bench/fill", h.vault.url()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"first":0,"count":10}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("no such endpoint"));
    assert_eq!(h.vault.vault.node().records(), 0);
    h.vault.shutdown().await;
}
