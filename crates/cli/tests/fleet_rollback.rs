//! A replica restored from an old copy of its data directory, with the sites that held
//! the newest guesses down (two failures, which a five-site fleet tolerates), must not
//! let a guess count go back (docs/OPERATIONS.md §Rollback). Real processes on loopback.

use backlock_testkit::fleet::{runtime, Fleet, FleetOptions};
use backlock_testkit::timing::PATIENCE;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::client::start_recovery;
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: u32 = 10;

fn backlock() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_backlock"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One wrong guess, retried while the fleet is electing; its reply.
fn wrong_guess(rt: &tokio::runtime::Runtime, client: &VaultClient) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, ke1) = start_recovery(&Password::new("wrong horse".into())).unwrap();
        match rt.block_on(client.guess_once(ke1)) {
            Ok(reply) => return reply.attempts_left,
            Err(VaultError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("a wrong guess: {e}"),
        }
    }
}

/// Waits until every running replica votes again.
fn wait_until_all_vote(fleet: &Fleet, ids: &[u64]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (ok, json) = fleet.status(ids[0]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let voting = status["replicas"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter(|r| ids.contains(&r["id"].as_u64().unwrap_or(0)))
                    .all(|r| r["votes"] == true)
            })
            .unwrap_or(false);
        if ok && voting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas {ids:?} do not all vote: {json}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_replica_restored_from_an_old_copy_never_takes_a_count_back() {
    let mut fleet = Fleet::start(backlock(), FleetOptions::default());
    let urls = fleet.urls();
    let token = fleet.token("rex");
    let rt = runtime();
    let client = VaultClient::new(&urls.join(","), "rex", &token).unwrap();
    let pinned = fleet.public_key;
    rt.block_on(client.register(
        &Password::new("correct horse".into()),
        &backlock_core::key::BackupKey::generate(),
        &pinned,
        None,
        &Stretch::memoized(),
    ))
    .unwrap();
    assert_eq!(wrong_guess(&rt, &client), LIMIT - 1);
    assert_eq!(wrong_guess(&rt, &client), LIMIT - 2);

    // A copy of replica 3's data directory (taken as a crash would leave it).
    let copy = fleet.root().join("replica-3-copy");
    fleet.kill(3);
    copy_dir(&fleet.replica(3).data, &copy);
    fleet.restart(3);
    wait_until_all_vote(&fleet, &[1, 2, 3, 4, 5]);

    // Sites 4 and 5 go down; six more guesses are committed on 1, 2 and 3.
    fleet.kill(4);
    fleet.kill(5);
    for n in 3..=8 {
        assert_eq!(wrong_guess(&rt, &client), LIMIT - n);
    }
    // The others record what replica 3 acknowledged (at most every 500 ms).
    std::thread::sleep(Duration::from_millis(1500));

    // The insider puts the old copy back and stops the two sites that hold the new
    // guesses besides it; 4 and 5 come back.
    fleet.kill(3);
    let data = fleet.replica(3).data.clone();
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    fleet.kill(1);
    fleet.kill(2);
    for id in [3, 4, 5] {
        fleet.restart(id);
    }
    let minority = VaultClient::new(&urls[2..].join(","), "rex", &token).unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let (_, ke1) = start_recovery(&Password::new("wrong horse".into())).unwrap();
        match rt.block_on(minority.guess_once(ke1)) {
            // Failing closed is fine.
            Err(VaultError::Unavailable(_)) => {}
            Ok(reply) => panic!(
                "the restored copy answered a guess with {} attempts left; {} were left",
                reply.attempts_left,
                LIMIT - 8
            ),
            Err(e) => panic!("a guess at the restored copy: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Sites 1 and 2 come back: the fleet serves again, and the count is where it was.
    fleet.restart(1);
    fleet.restart(2);
    assert_eq!(wrong_guess(&rt, &client), LIMIT - 9);
    wait_until_all_vote(&fleet, &[1, 2, 3, 4, 5]);
}

/// Every site put back from copies taken before guesses that the fleet committed: the
/// member check cannot tell (every member is equally old), but each replica's TPM
/// counter moved on, so each one refuses its directory outright. With the current
/// directories back, the whole fleet restarts (as after a power cut) and the count is
/// where it was.
#[cfg(feature = "tpm")]
#[test]
fn every_site_put_back_from_old_copies_is_refused_by_its_tpm_counter() {
    let mut fleet = Fleet::start(
        backlock(),
        FleetOptions {
            size: 3,
            tpm_counter_every: Some(Duration::from_millis(200)),
            ..FleetOptions::default()
        },
    );
    let ids = [1u64, 2, 3];
    let urls = fleet.urls();
    let token = fleet.token("rex");
    let rt = runtime();
    let client = VaultClient::new(&urls.join(","), "rex", &token).unwrap();
    rt.block_on(client.register(
        &Password::new("correct horse".into()),
        &backlock_core::key::BackupKey::generate(),
        &fleet.public_key,
        None,
        &Stretch::memoized(),
    ))
    .unwrap();
    assert_eq!(wrong_guess(&rt, &client), LIMIT - 1);

    // The insider copies every site's data directory...
    let copies = fleet.root().join("copies");
    for id in ids {
        fleet.kill(id);
        copy_dir(&fleet.replica(id).data, &copies.join(id.to_string()));
    }
    for id in ids {
        fleet.restart(id);
    }
    wait_until_all_vote(&fleet, &ids);
    // ...guesses are made and committed on every site...
    for n in 2..=7 {
        assert_eq!(wrong_guess(&rt, &client), LIMIT - n);
    }
    // (each counter advances within 200 ms of its log's growth)
    std::thread::sleep(Duration::from_millis(1500));

    // ...and every site is put back from the copies at once.
    let current = fleet.root().join("current");
    for id in ids {
        fleet.kill(id);
        let data = fleet.replica(id).data.clone();
        copy_dir(&data, &current.join(id.to_string()));
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&copies.join(id.to_string()), &data);
    }
    for id in ids {
        let log = fleet
            .try_restart(id)
            .expect_err("a replica served a copy older than its TPM counter");
        assert!(
            log.contains("older copy put back") && log.contains("counter"),
            "replica {id} refused for another reason:\n{log}"
        );
    }

    // Cleverer: the old copy with the current anchor beside it (files put back one by
    // one), or with no anchor at all: refused as well.
    let anchor = |root: &Path, id: u64| root.join(id.to_string()).join("raft/anchor");
    std::fs::copy(
        anchor(&current, 1),
        fleet.replica(1).data.join("raft/anchor"),
    )
    .unwrap();
    let log = fleet
        .try_restart(1)
        .expect_err("an old log served beside the current anchor");
    assert!(log.contains("older than its anchor says"), "{log}");
    std::fs::remove_file(fleet.replica(2).data.join("raft/anchor")).unwrap();
    let log = fleet
        .try_restart(2)
        .expect_err("an old copy served without its anchor");
    assert!(log.contains("holds a log but no anchor"), "{log}");

    // The operator puts the current directories back: a whole-fleet restart elects a
    // leader, and the count did not move.
    for id in ids {
        let data = fleet.replica(id).data.clone();
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&current.join(id.to_string()), &data);
    }
    for id in ids {
        fleet.restart(id);
    }
    assert_eq!(wrong_guess(&rt, &client), LIMIT - 8);
    wait_until_all_vote(&fleet, &ids);
}
