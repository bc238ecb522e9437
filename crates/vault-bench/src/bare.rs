//! The bare server-side OPAQUE cost: `ServerKeys::start_login` + `PendingLogin::finish`
//! on one thread, with nothing around it (no HTTP, no Raft, no sessions).
//!
//! Only the two server calls are timed. The client's KE1 and KE3 are computed between
//! them, outside the timed region: KE1 could be precomputed, KE3 needs KE2.

use anyhow::{ensure, Context, Result};
use backlock_core::key::BackupKey;
use backlock_vault_proto::client::{start_recovery, start_registration};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::server::{password_file, ServerKeys};
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::wire::{RecoverStartReply, RegisterStartReply};
use std::time::{Duration, Instant};

/// Untimed logins before the first round: caches, lazy statics, CPU frequency.
const WARM_UP_LOGINS: usize = 20;

/// One registered record and everything a login against it needs.
struct Fixture {
    keys: ServerKeys,
    account: String,
    record_id: [u8; 16],
    file: Vec<u8>,
    password: Password,
    pinned: [u8; 32],
    ksf: Stretch,
}

impl Fixture {
    /// Registers a record in memory (one real Argon2id, remembered by the memo).
    fn register() -> Result<Fixture> {
        let keys = ServerKeys::generate();
        let pinned = keys.public_key();
        let account = "bare-opaque".to_owned();
        let password = Password::new("correct horse battery".to_owned());
        let ksf = Stretch::memoized();
        let record_id = [7u8; 16];
        let (started, request) = start_registration(&password)?;
        let response = keys.evaluate_registration(&account, &record_id, &request)?;
        let reply = RegisterStartReply {
            record_id,
            response,
        };
        let upload = started
            .finish(
                &password,
                &account,
                &reply,
                &pinned,
                &BackupKey::generate(),
                &ksf,
            )?
            .upload;
        Ok(Fixture {
            file: password_file(&upload)?,
            keys,
            account,
            record_id,
            password,
            pinned,
            ksf,
        })
    }

    /// One login; returns the time spent in the two server calls only.
    fn timed_login(&self) -> Result<Duration> {
        let (client, ke1) = start_recovery(&self.password)?;
        let started = Instant::now();
        let (pending, ke2) =
            self.keys
                .start_login(&self.file, &self.account, &self.record_id, &ke1)?;
        let server_start = started.elapsed();
        let reply = RecoverStartReply {
            session: [0; 16],
            ke2,
            attempts_left: 1,
        };
        let (finish, _) = client.finish(
            &self.password,
            &self.account,
            &reply,
            &self.pinned,
            &self.ksf,
        )?;
        let started = Instant::now();
        pending
            .finish(&self.account, &finish.ke3)
            .context("the server refused a right KE3")?;
        Ok(server_start + started.elapsed())
    }
}

/// The result: per-login server time of each round.
#[derive(Clone, Debug)]
pub struct BareOpaque {
    /// Mean server time per login, one value per round.
    pub rounds: Vec<Duration>,
}

impl BareOpaque {
    /// Median per-login server time in microseconds.
    pub fn median_us(&self) -> f64 {
        let us: Vec<f64> = self.rounds.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        crate::stats::median(&us)
    }

    /// Logins per second one core sustains at the median cost.
    pub fn rate(&self) -> f64 {
        1e6 / self.median_us()
    }
}

/// Runs `rounds` rounds of `logins` logins on the calling thread.
pub fn measure(rounds: usize, logins: usize) -> Result<BareOpaque> {
    ensure!(
        rounds > 0 && logins > 0,
        "bare rounds and logins must be above zero"
    );
    let fixture = Fixture::register().context("registering the bare-OPAQUE record")?;
    for _ in 0..WARM_UP_LOGINS {
        fixture.timed_login()?;
    }
    let mut per_login = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut total = Duration::ZERO;
        for _ in 0..logins {
            total += fixture.timed_login()?;
        }
        per_login.push(total / logins as u32);
    }
    Ok(BareOpaque { rounds: per_login })
}
