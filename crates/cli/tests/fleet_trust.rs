//! Attacks on the fleet's trust boundary by a holder of a valid certificate of the
//! fleet CA: a replica that never joined, a monitoring host, a member speaking for
//! another replica, a removed replica. A certificate proves who its holder is; only
//! the replicated state (membership, join tickets, retired ids) says what it may do
//! (docs/OPERATIONS.md §Admitting a replica).

use backlock_testkit::fleet::{Fleet, FleetOptions};
use backlock_testkit::timing::wait_until;
use backlock_vault_server::fleet::JoinTicket;
use backlock_vault_server::fleet_tls::FleetTlsFiles;
use backlock_vault_server::raft::{
    AdmitRequest, Batch, HttpNetwork, JoinRequest, PeerCallError, PeerRefusal,
};
use backlock_vault_server::state::Command;
use openraft::raft::VoteRequest;
use openraft::Vote;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

fn backlock() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_backlock"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `vault certs` with the fleet's CA for more holders (`--replica ID=HOST`,
/// `--monitor NAME`).
fn issue(certs: &Path, holders: &[&str]) {
    let output = Process::new(backlock())
        .args(["vault", "certs", "--out"])
        .arg(certs)
        .args(holders)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A peer client presenting the certificate `certs/NAME.pem`.
fn holder(certs: &Path, name: &str) -> (HttpNetwork, reqwest::Client) {
    let tls = FleetTlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}.key")),
    }
    .load()
    .unwrap();
    let client = tls.http_client(None).unwrap();
    (HttpNetwork::mutual_tls(client.clone()), client)
}

/// The replicas' peer addresses and ids, and the current term, as replica `id` sees
/// them.
fn peers(fleet: &Fleet, id: u64) -> (Vec<String>, Vec<u64>, u64) {
    let (_, json) = fleet.status(id);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let replicas = status["replicas"].as_array().unwrap();
    let peers = replicas
        .iter()
        .map(|r| r["peer"].as_str().unwrap().to_owned())
        .collect();
    let ids = replicas.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    (peers, ids, status["term"].as_u64().unwrap_or(1))
}

fn forbidden<T: std::fmt::Debug>(what: &str, outcome: Result<T, PeerCallError>) {
    match outcome {
        Err(PeerCallError::Failed { reason, .. }) if reason.contains("403") => {}
        Err(PeerCallError::Refused(PeerRefusal::Rejected(_))) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// Like [`forbidden`], but a follower may also just name the leader (asked of every
/// replica, the leader among them refuses).
fn not_done<T: std::fmt::Debug>(what: &str, outcome: Result<T, PeerCallError>) {
    if !matches!(
        outcome,
        Err(PeerCallError::Refused(PeerRefusal::NotLeader(_)))
    ) {
        forbidden(what, outcome);
    }
}

fn ticket(hex: &str) -> JoinTicket {
    JoinTicket::from_hex(hex).expect("a ticket")
}

/// Raw `POST /raft/vote` as replica `claimed`, with a term far ahead: a replica that
/// took it would step down and grant the vote.
async fn vote_as(client: &reqwest::Client, peer: &str, claimed: u64, term: u64) -> u16 {
    let request = VoteRequest::<u64>::new(Vote::new(term, claimed), None);
    client
        .post(format!("https://{peer}/raft/vote"))
        .header("content-type", "application/x-backlock-raft")
        .body(postcard::to_allocvec(&request).unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_fleet_certificate_without_membership_or_ticket_gets_nothing() {
    let mut fleet = Fleet::start(
        backlock(),
        FleetOptions {
            size: 3,
            ..FleetOptions::default()
        },
    );
    let certs: PathBuf = fleet.root().join("certs");
    issue(&certs, &["--replica", "7=127.0.0.1", "--monitor", "watch"]);
    let rt = runtime();
    let (peers, ids, term) = peers(&fleet, 1);
    let (rogue, _) = holder(&certs, "replica-7");
    let (monitor, _) = holder(&certs, "monitor-watch");
    let (member, member_raw) = holder(&certs, "replica-2");

    // Replica 7 never joined: every member refuses it everything.
    let made_up = JoinTicket::generate();
    let ticket_for_8 = ticket(&fleet.admit(8));
    for (peer, id) in peers.iter().zip(&ids) {
        forbidden(
            "the secret on a made-up ticket",
            rt.block_on(rogue.fetch_secret(peer, made_up.bytes())),
        );
        forbidden(
            "the secret on another replica's ticket",
            rt.block_on(rogue.fetch_secret(peer, ticket_for_8.bytes())),
        );
        not_done(
            "joining",
            rt.block_on(rogue.join(
                peer,
                &JoinRequest {
                    node_id: 7,
                    addr: "127.0.0.1:1".into(),
                },
                std::time::Duration::from_secs(10),
            )),
        );
        forbidden(
            "proposing",
            rt.block_on(rogue.propose(
                *id,
                peer,
                &Batch(vec![Command::Sweep { now_ms: u64::MAX }]),
                std::time::Duration::from_secs(10),
            )),
        );
        forbidden(
            "removing a replica",
            rt.block_on(rogue.remove(peer, 3, std::time::Duration::from_secs(10))),
        );
        forbidden(
            "opening itself a ticket",
            rt.block_on(rogue.admit(
                peer,
                &AdmitRequest {
                    replica: 7,
                    ticket_hash: [0; 32],
                    valid_ms: 60_000,
                },
            )),
        );
        forbidden("reading the status", rt.block_on(rogue.status(peer)));
    }

    // A member's certificate cannot speak for another replica: not in Raft, not to
    // rewrite another voter's address.
    for peer in [&peers[0], &peers[2]] {
        assert_eq!(
            rt.block_on(vote_as(&member_raw, peer, 1, term + 100)),
            403,
            "a vote request in replica 1's name, made with replica 2's certificate"
        );
        not_done(
            "moving replica 3's address",
            rt.block_on(member.join(
                peer,
                &JoinRequest {
                    node_id: 3,
                    addr: "127.0.0.1:1".into(),
                },
                std::time::Duration::from_secs(10),
            )),
        );
    }

    // The monitoring certificate reads the status and nothing else.
    let report = rt.block_on(monitor.status(&peers[0])).unwrap();
    assert_eq!(report.voters.len(), 3);
    forbidden(
        "the secret with a monitoring certificate",
        rt.block_on(monitor.fetch_secret(&peers[0], ticket_for_8.bytes())),
    );
    forbidden(
        "proposing with a monitoring certificate",
        rt.block_on(monitor.propose(
            ids[0],
            &peers[0],
            &Batch(vec![Command::Sweep { now_ms: 0 }]),
            std::time::Duration::from_secs(10),
        )),
    );
    let out = Process::new(backlock())
        .args(["vault", "status", "--json", "--config"])
        .arg(&fleet.replica(1).config)
        .arg("--cert")
        .arg(certs.join("monitor-watch.pem"))
        .arg("--key")
        .arg(certs.join("monitor-watch.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vault status with the monitoring certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The control: with its own ticket, replica 7 gets the secret, once.
    let own = ticket(&fleet.admit(7));
    let secret = rt.block_on(rogue.fetch_secret(&peers[0], own.bytes()));
    assert!(
        secret.is_ok_and(|s| s.len() >= 64),
        "the ticket's holder gets the secret"
    );
    forbidden(
        "the same ticket again",
        rt.block_on(rogue.fetch_secret(&peers[1], own.bytes())),
    );

    // Replica 3 is removed: its certificate is refused from then on, and its id is
    // never admitted again.
    fleet.kill(3);
    fleet.backlock(&["vault", "remove", "--replica", "3", "--config"], 1);
    let (removed, _) = holder(&certs, "replica-3");
    wait_until("both members refuse the removed replica", || {
        peers[..2]
            .iter()
            .all(|peer| rt.block_on(removed.status(peer)).is_err())
    });
    forbidden(
        "the removed replica reading the status",
        rt.block_on(removed.status(&peers[0])),
    );
    let again = Process::new(backlock())
        .args(["vault", "admit", "--replica", "3", "--config"])
        .arg(&fleet.replica(1).config)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never admitted again"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A replica that rejoins with an empty directory knows no membership until its leader
/// reaches it. Meanwhile it takes Raft messages only from the replicas of its own
/// configuration: a holder of another certificate of the fleet CA cannot become its
/// first leader (and feed it a log of its own making).
#[test]
fn a_joining_replica_takes_its_first_leader_only_from_its_configuration() {
    let mut fleet = Fleet::start(
        backlock(),
        FleetOptions {
            size: 3,
            partitionable: true,
            ..FleetOptions::default()
        },
    );
    let certs: PathBuf = fleet.root().join("certs");
    issue(&certs, &["--replica", "7=127.0.0.1"]);
    let rt = runtime();
    let (_, _, term) = peers(&fleet, 1);
    let (_, rogue) = holder(&certs, "replica-7");
    let (_, member) = holder(&certs, "replica-1");

    // Replica 3 loses its disk and rejoins, cut off from the other two.
    fleet.kill(3);
    std::fs::remove_dir_all(&fleet.replica(3).data).unwrap();
    fleet.fetch_secret(3);
    fleet.partition(&[3]);
    fleet.restart(3);
    let joining = fleet.peer_listen(3).to_string();

    assert_eq!(
        rt.block_on(vote_as(&rogue, &joining, 7, term + 1)),
        403,
        "replica 7, in no configuration, may lead a joining replica"
    );
    // A configured replica is heard (its vote request is answered, not refused).
    assert_ne!(rt.block_on(vote_as(&member, &joining, 1, term)), 403);

    fleet.heal();
    fleet.wait_joined(3);
}
