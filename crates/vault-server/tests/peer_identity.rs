//! A machine that holds a certificate of the fleet CA for a replica's host, but naming
//! another id (a replaced site's certificate, say), takes over that replica's address:
//! the replica calling it must not believe its answers. Otherwise it could answer
//! "appended" to a leader (a commit without a majority) or "committed" to a follower
//! forwarding a guess (a KE2 for a guess never counted). Real TLS on loopback.

use backlock_vault_server::fleet_tls::{replica_uri, FleetTlsFiles};
use backlock_vault_server::raft::{
    Batch, HttpNetwork, PeerRefusal, ProposeError, ReplicaReport, TypeConfig,
};
use backlock_vault_server::state::Applied;
use openraft::error::{Infallible, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory, Vote};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A fleet CA in `dir` that issues replica certificates for 127.0.0.1.
struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    ca: std::path::PathBuf,
}

impl FleetCa {
    fn new(dir: &Path) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        FleetCa {
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// Certificate files of replica `id` on 127.0.0.1.
    fn replica(&self, dir: &Path, id: u64) -> FleetTlsFiles {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(replica_uri(id).try_into().unwrap()));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("replica-{id}.pem")),
            dir.join(format!("replica-{id}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        toml::from_str(&format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.ca, cert_file, key_file
        ))
        .unwrap()
    }
}

/// A peer listener that answers like a healthy replica 2 would, whatever it is asked:
/// every append succeeds, every proposal commits, its status says "replica 2".
async fn impostor(tls: &FleetTlsFiles) -> SocketAddr {
    use axum::routing::{get, post};
    let ok = |bytes: Vec<u8>| ([("content-type", "application/x-backlock-raft")], bytes);
    let app = axum::Router::new()
        .route(
            "/raft/append",
            post(move || async move {
                let reply: Result<AppendEntriesResponse<u64>, RaftError<u64, Infallible>> =
                    Ok(AppendEntriesResponse::Success);
                ok(postcard::to_allocvec(&reply).unwrap())
            }),
        )
        .route(
            "/raft/propose",
            post(move || async move {
                let reply: Result<Vec<Result<Applied, ProposeError>>, PeerRefusal> =
                    Ok(vec![Ok(Applied::Swept)]);
                ok(postcard::to_allocvec(&reply).unwrap())
            }),
        )
        .route(
            "/raft/status",
            get(|| async {
                let report = serde_json::json!({
                    "node_id": 2, "role": "follower", "leader_id": 1, "term": 9,
                    "last_log_index": 999, "commit_index": 999, "last_applied_index": 999,
                    "snapshot_index": null, "voters": {}, "learners": {},
                    "replication": null, "state_digest": "", "votes": true, "acked": {},
                });
                axum::Json(report)
            }),
        );
    let mut server = (*tls.load().unwrap().server).clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum_server::from_tcp_rustls(listener, config);
    tokio::spawn(server.serve(app.into_make_service()));
    addr
}

fn append() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_under_another_ids_certificate_is_not_believed() {
    let dir = TempDir::new().unwrap();
    let ca = FleetCa::new(dir.path());
    let me = ca.replica(dir.path(), 1);
    let network = HttpNetwork::mutual_tls(me.load().unwrap().http_client(None).unwrap());

    // Replica 2's address, answered by the holder of replica 9's certificate.
    let stolen = impostor(&ca.replica(dir.path(), 9)).await;
    let mut raft = network.clone();
    let mut to_two = raft
        .new_client(2, &BasicNode::new(stolen.to_string()))
        .await;
    let appended = to_two
        .append_entries(append(), RPCOption::new(Duration::from_secs(5)))
        .await;
    let refused =
        appended.expect_err("a leader took an append acknowledgement from replica 9 for replica 2");
    assert!(
        refused
            .to_string()
            .contains("names replica 9, not replica 2"),
        "{refused}"
    );

    let proposed = network
        .propose(
            2,
            &stolen.to_string(),
            &Batch(Vec::new()),
            Duration::from_secs(5),
        )
        .await;
    let refused = proposed.expect_err("a follower took a commit from replica 9 as its leader 2");
    assert!(refused.to_string().contains("names replica 9"), "{refused}");

    let status: Result<ReplicaReport, _> = network.status(&stolen.to_string()).await;
    let refused = status.expect_err("a status of replica 9 was taken as replica 2's");
    assert!(
        refused.to_string().contains("claims to be replica 2"),
        "{refused}"
    );

    // The same answers under replica 2's own certificate are taken: the refusals above
    // come from the certificate alone.
    let genuine = impostor(&ca.replica(dir.path(), 2)).await;
    let mut to_two = raft
        .new_client(2, &BasicNode::new(genuine.to_string()))
        .await;
    to_two
        .append_entries(append(), RPCOption::new(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        network
            .propose(
                2,
                &genuine.to_string(),
                &Batch(Vec::new()),
                Duration::from_secs(5)
            )
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        network.status(&genuine.to_string()).await.unwrap().node_id,
        2
    );
}
