//! A rolling upgrade: a fleet of the previous release (a `backlock` built from it, in
//! `BACKLOCK_PREVIOUS`), a replica of this build joining it with an empty directory,
//! then every other site moved to this build one at a time, the leader last
//! (docs/OPERATIONS.md §Day two). Devices keep registering, guessing and recovering
//! throughout, and no count goes back. `scripts/test-upgrade` builds the previous
//! release and runs this; without `BACKLOCK_PREVIOUS` it says so and passes.

use backlock_core::key::BackupKey;
use backlock_testkit::fleet::{runtime, Fleet, FleetOptions};
use backlock_testkit::timing::PATIENCE;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::client::start_recovery;
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIMIT: u32 = 10;
const RIGHT: &str = "correct horse battery staple";

fn backlock() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_backlock"))
}

/// Runs `work` until the fleet answers (an election after a restart), up to PATIENCE.
fn settled<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    mut work: impl FnMut() -> Result<T, VaultError>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match work() {
            Ok(value) => return value,
            Err(VaultError::Unavailable(_)) if Instant::now() < deadline => {
                rt.block_on(tokio::time::sleep(Duration::from_millis(200)))
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn wrong_guess(rt: &tokio::runtime::Runtime, client: &VaultClient) -> u32 {
    settled(rt, "a wrong guess", || {
        let (_, ke1) = start_recovery(&Password::new("wrong horse".into())).unwrap();
        rt.block_on(client.guess_once(ke1)).map(|r| r.attempts_left)
    })
}

#[test]
fn a_fleet_of_the_previous_release_is_upgraded_one_site_at_a_time() {
    let Some(previous) = std::env::var_os("BACKLOCK_PREVIOUS").map(PathBuf::from) else {
        eprintln!(
            "\nSKIPPED: the rolling upgrade needs BACKLOCK_PREVIOUS, a backlock of the previous release: run scripts/test-upgrade\n"
        );
        return;
    };
    let mut fleet = Fleet::start(&previous, FleetOptions::default());
    let urls = fleet.urls();
    let rt = runtime();
    let ksf = Stretch::memoized();
    let right = Password::new(RIGHT.into());
    let token = fleet.token("ada");
    let client = VaultClient::new(&urls.join(","), "ada", &token).unwrap();
    let key = BackupKey::generate();
    settled(&rt, "register on the old fleet", || {
        rt.block_on(client.register(&right, &key, &fleet.public_key, None, &ksf))
    });
    let mut left = LIMIT;
    for _ in 0..2 {
        left -= 1;
        assert_eq!(wrong_guess(&rt, &client), left);
    }

    // Site 5 gets a new disk and this build: it joins the old fleet.
    fleet.kill(5);
    std::fs::remove_dir_all(&fleet.replica(5).data).unwrap();
    fleet.use_binary(5, backlock());
    fleet.fetch_secret(5);
    fleet.restart(5);
    fleet.wait_joined(5);
    left -= 1;
    assert_eq!(wrong_guess(&rt, &client), left);

    // The other sites, one at a time, the leader last.
    let leader = fleet.wait_for_leader();
    let order: Vec<u64> = (1..=4).filter(|id| *id != leader).chain([leader]).collect();
    for id in order {
        fleet.kill(id);
        fleet.use_binary(id, backlock());
        fleet.restart(id);
        left -= 1;
        assert_eq!(
            wrong_guess(&rt, &client),
            left,
            "after replica {id} moved to this build"
        );
    }

    // On the upgraded fleet: a right password recovers the key registered on the old
    // one, and a new account registers.
    let recovered = settled(&rt, "recover on the upgraded fleet", || {
        rt.block_on(client.recover(&right, &fleet.public_key, &ksf))
    });
    assert_eq!(recovered.expose_secret(), key.expose_secret());
    let token = fleet.token("bea");
    let second = VaultClient::new(&urls.join(","), "bea", &token).unwrap();
    settled(&rt, "register on the upgraded fleet", || {
        rt.block_on(second.register(
            &right,
            &BackupKey::generate(),
            &fleet.public_key,
            None,
            &ksf,
        ))
    });
}
