//! A relay (the chat app's server) forwards every byte between device and vault and
//! logs it all. Neither the password, nor the key, nor the wrap key appear in its log,
//! and the log together with the vault's whole data directory does not open the backup.

use backlock_core::kdf::RepoKeys;
use backlock_core::key::BackupKey;
use backlock_testkit::tree::list_files;
use backlock_vault_client::VaultClient;
use backlock_vault_proto::client::start_recovery;
use backlock_vault_proto::owner::OwnerKey;
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::wrap;
use backlock_vault_server::run::{RunningVault, ServeConfig};
use backlock_vault_server::service::VaultConfig;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

type Transcript = Arc<Mutex<Vec<u8>>>;

/// Copies one direction of a connection, appending everything to the transcript.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Transcript,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A logging TCP relay in front of `upstream`; returns its URL.
async fn start_relay(upstream: std::net::SocketAddr, log: Transcript) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((device, _)) = listener.accept().await {
            let vault = TcpStream::connect(upstream).await.unwrap();
            let (dr, dw) = device.into_split();
            let (vr, vw) = vault.into_split();
            tokio::spawn(pump(dr, vw, log.clone()));
            tokio::spawn(pump(vr, dw, log.clone()));
        }
    });
    url
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Tries every 32-byte window of `bytes` as the backup key: does any open the
/// repository (derive the key id stored in its config)?
fn any_window_opens(bytes: &[u8], key_id: &[u8; 16]) -> bool {
    bytes.windows(32).any(|w| {
        let candidate = BackupKey::from_bytes(w.try_into().unwrap());
        RepoKeys::derive(&candidate).key_id() == key_id
    })
}

/// One guess done step by step, to learn the export key the device derives.
async fn recover_with_export_key(
    client: &VaultClient,
    password: &Password,
    pinned: &[u8; 32],
    ksf: &Stretch,
) -> (BackupKey, Zeroizing<Vec<u8>>) {
    let (started, ke1) = start_recovery(password).unwrap();
    let ke2 = client.guess_once(ke1).await.unwrap();
    let (finish, recovered) = started
        .finish(password, client.account(), &ke2, pinned, ksf)
        .unwrap();
    let export_key = Zeroizing::new(recovered.export_key().to_vec());
    let released = client.finish_guess(&finish).await.unwrap();
    (
        recovered.open(client.account(), &released).unwrap(),
        export_key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logging_relay_learns_nothing_that_opens_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vault");
    let vault = RunningVault::start(ServeConfig {
        data: data.clone(),
        node_key: None,
        listen: ([127, 0, 0, 1], 0).into(),
        vault: VaultConfig::default(),
        tls: None,
        http: Default::default(),
        metrics_listen: None,
    })
    .await
    .unwrap();
    let log: Transcript = Arc::default();
    let relay = start_relay(vault.addr, log.clone()).await;
    let token = vault.vault.issue_token("alice", 600).unwrap();
    let client = VaultClient::new(&relay, "alice", &token).unwrap();
    let ksf = Stretch::default();
    let pinned = client.info().await.unwrap().server_public_key;

    let key = BackupKey::generate();
    let key_id = *RepoKeys::derive(&key).key_id();
    let first = Password::new("tulip garden 42".into());
    let second = Password::new("daffodil field 7".into());

    // Register, recover, change the password, recover again: all through the relay.
    client
        .register(&first, &key, &pinned, None, &ksf)
        .await
        .unwrap();
    let (k1, export1) = recover_with_export_key(&client, &first, &pinned, &ksf).await;
    client
        .register(&second, &key, &pinned, Some(&OwnerKey::derive(&key)), &ksf)
        .await
        .unwrap();
    let (k2, export2) = recover_with_export_key(&client, &second, &pinned, &ksf).await;
    assert_eq!(k1.expose_secret(), key.expose_secret());
    assert_eq!(k2.expose_secret(), key.expose_secret());

    // The record is live: the relay's log plus every byte the vault holds, sealed and
    // unsealed with the node key found in the same directory, contain no key that opens
    // the backup.
    let mut everything = log.lock().unwrap().clone();
    let sealer =
        backlock_vault_server::seal::KeyFileSealer::open_or_create(data.join("node.key")).unwrap();
    for path in list_files(&data).into_iter().filter(|p| p.is_file()) {
        let raw = std::fs::read(&path).unwrap();
        if let Some(plain) =
            backlock_vault_server::raft::unseal_file(&data.join("raft"), &path, &sealer)
        {
            everything.extend_from_slice(&plain.unwrap());
        }
        everything.extend_from_slice(&raw);
    }
    assert!(
        !any_window_opens(&everything, &key_id),
        "the vault's data and the relay's log open the backup"
    );

    client.delete(&key, &pinned).await.unwrap();
    let transcript = log.lock().unwrap().clone();
    assert!(transcript.len() > 2_000, "the relay saw the traffic");
    for (what, secret) in [
        ("first password", first.expose_secret().to_vec()),
        ("second password", second.expose_secret().to_vec()),
        ("backup key", key.expose_secret().to_vec()),
        ("first wrap key", wrap::wrap_key(&export1).to_vec()),
        ("second wrap key", wrap::wrap_key(&export2).to_vec()),
        ("first export key", export1.to_vec()),
        ("second export key", export2.to_vec()),
    ] {
        assert!(!contains(&transcript, &secret), "the relay saw the {what}");
    }
    assert!(!any_window_opens(&transcript, &key_id));
    vault.shutdown().await;
}
