//! The load: N concurrent clients, each with its own account, registering and then
//! recovering in a closed loop.

use crate::stats::{CpuMeter, Latencies};
use crate::wire_client::{self, VaultMetrics, WireClient};
use anyhow::{bail, ensure, Context, Result};
use backlock_core::key::BackupKey;
use backlock_vault_client::VaultClient;
use backlock_vault_proto::client::{
    start_recovery, start_registration, RecoveryStarted, RegistrationStarted,
};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::wire::{
    path, RegisterFinish, RegisterFinishReply, RegisterStart, RegisterStartReply,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// One simulated device: an account, its token, password and backup key.
pub struct Account {
    /// Account id.
    pub name: String,
    /// Relay token for the account.
    pub token: String,
    /// The password the key is registered behind.
    pub password: Password,
    /// The key the vault holds for it.
    pub key: BackupKey,
}

/// What the clients share: where the vault is, its pinned key, the memoized KSF.
#[derive(Clone)]
pub struct Target {
    /// Base URL of each replica (one for a one-replica vault). Client `i` starts at
    /// replica `i mod n` and fails over to the next ones.
    pub urls: Vec<String>,
    /// Base URL of each replica's `/metrics` listener.
    pub metrics_urls: Vec<String>,
    /// The vault's OPAQUE public key.
    pub pinned: [u8; 32],
    /// Argon2id with a memo shared by all clients.
    pub ksf: Stretch,
    /// The vault's process ids, for their CPU time.
    pub vault_pids: Vec<u32>,
}

impl Target {
    /// The replica list for client `i`: its own first.
    fn urls_for(&self, i: usize) -> String {
        let mut urls = self.urls.clone();
        let n = urls.len().max(1);
        urls.rotate_left(i % n);
        urls.join(",")
    }
}

/// One timed phase.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// Operations completed.
    pub completed: usize,
    /// Wall time the rate is computed over.
    pub elapsed: Duration,
    /// Latency of each operation.
    pub latencies: Latencies,
    /// CPU seconds the vault used during the phase.
    pub vault_cpu: Option<f64>,
    /// CPU seconds this process used during the phase (the load generator).
    pub load_cpu: Option<f64>,
    /// The vault's counters before and after the phase.
    pub metrics: Option<(VaultMetrics, VaultMetrics)>,
}

impl Phase {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Registrations and what was left out of their timing.
#[derive(Clone, Debug, Default)]
pub struct Registrations {
    /// The vault's share: both round trips, clients' Argon2id excluded.
    pub phase: Phase,
    /// Time the clients spent finishing registrations (Argon2id), not in `phase`.
    pub client_ksf: Duration,
}

/// A registration after its first round trip.
struct Started {
    index: usize,
    state: RegistrationStarted,
    reply: RegisterStartReply,
    latency: Duration,
}

/// Registers every account, `clients` at a time. Each wave sends all `start`s at once,
/// finishes them on the client (Argon2id, untimed), then sends all `finish`es at once;
/// only the two concurrent round-trip stages count towards rate and latency.
pub async fn register(
    target: &Target,
    accounts: &[Arc<Account>],
    clients: usize,
) -> Result<Registrations> {
    let mut result = Registrations::default();
    let vault_cpu = CpuMeter::start_all(&target.vault_pids);
    let wires = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| WireClient::new(&target.urls[i % target.urls.len()], &a.token))
        .collect::<Result<Vec<_>>>()?;
    for (wave, wave_wires) in accounts.chunks(clients).zip(wires.chunks(clients)) {
        let timer = Instant::now();
        let started = start_registrations(wave, wave_wires).await?;
        result.phase.elapsed += timer.elapsed();

        let timer = Instant::now();
        let finishes = finish_on_client(target, wave, started)?;
        result.client_ksf += timer.elapsed();

        let timer = Instant::now();
        let latencies = send_finishes(wave_wires, finishes).await?;
        result.phase.elapsed += timer.elapsed();
        result.phase.completed += latencies.len();
        result.phase.latencies.extend(latencies);
    }
    result.phase.vault_cpu = vault_cpu.used();
    Ok(result)
}

/// Registration round trip 1 for every account of a wave, concurrently.
async fn start_registrations(wave: &[Arc<Account>], wires: &[WireClient]) -> Result<Vec<Started>> {
    let mut tasks = JoinSet::new();
    for (index, (account, wire)) in wave.iter().zip(wires).enumerate() {
        let (account, wire) = (account.clone(), wire.clone());
        tasks.spawn(async move {
            let (state, request) = start_registration(&account.password)?;
            let timer = Instant::now();
            let reply: RegisterStartReply = wire
                .call(
                    path::REGISTER_START,
                    &RegisterStart {
                        account: account.name.clone(),
                        request,
                    },
                )
                .await
                .with_context(|| format!("registering {}", account.name))?;
            anyhow::Ok(Started {
                index,
                state,
                reply,
                latency: timer.elapsed(),
            })
        });
    }
    let mut started = Vec::with_capacity(wave.len());
    while let Some(joined) = tasks.join_next().await {
        started.push(joined.context("a registration task panicked")??);
    }
    started.sort_by_key(|s| s.index);
    Ok(started)
}

/// The client's half between the round trips: Argon2id and wrapping the key.
fn finish_on_client(
    target: &Target,
    wave: &[Arc<Account>],
    started: Vec<Started>,
) -> Result<Vec<(RegisterFinish, Duration)>> {
    started
        .into_iter()
        .map(|s| {
            let account = &wave[s.index];
            let finish = s.state.finish(
                &account.password,
                &account.name,
                &s.reply,
                &target.pinned,
                &account.key,
                &target.ksf,
            )?;
            Ok((finish, s.latency))
        })
        .collect()
}

/// Registration round trip 2 for every account of a wave, concurrently; returns each
/// registration's latency (both round trips).
async fn send_finishes(
    wires: &[WireClient],
    finishes: Vec<(RegisterFinish, Duration)>,
) -> Result<Latencies> {
    let mut tasks = JoinSet::new();
    for (wire, (finish, first_trip)) in wires.iter().zip(finishes) {
        let wire = wire.clone();
        tasks.spawn(async move {
            let timer = Instant::now();
            let _: RegisterFinishReply = wire
                .call(path::REGISTER_FINISH, &finish)
                .await
                .with_context(|| format!("registering {}", finish.account))?;
            anyhow::Ok(first_trip + timer.elapsed())
        });
    }
    let mut latencies = Latencies::default();
    while let Some(joined) = tasks.join_next().await {
        latencies.push(joined.context("a registration task panicked")??);
    }
    Ok(latencies)
}

/// The recovery rate KE1s are prepared for before timing starts; a faster vault gets
/// the rest made on the fly.
const PREPARED_RATE: f64 = 2500.0;

/// KE1s made before the timed phase, so that the load generator's own CPU goes to the
/// steps that depend on the vault's answers.
type Prepared = Vec<(RecoveryStarted, Vec<u8>)>;

fn prepare(account: &Account, count: usize) -> Result<Prepared> {
    (0..count)
        .map(|_| start_recovery(&account.password).context("preparing a KE1"))
        .collect()
}

/// One recovery that must release exactly the registered key; uses a prepared KE1 if
/// one is left.
async fn recover_once(
    client: &VaultClient,
    account: &Account,
    target: &Target,
    prepared: &mut Prepared,
) -> Result<()> {
    let (started, ke1) = match prepared.pop() {
        Some(ready) => ready,
        None => start_recovery(&account.password).context("making a KE1")?,
    };
    let key = client
        .recover_started(started, ke1, &account.password, &target.pinned, &target.ksf)
        .await
        .with_context(|| format!("recovery for {}", account.name))?;
    if key.expose_secret() != account.key.expose_secret() {
        bail!("recovery for {} released another key", account.name);
    }
    Ok(())
}

/// A client per account, each after one untimed recovery: warms the Argon2id memo (a
/// no-op when the registration already did), the connection and the vault's caches.
async fn warm_clients(
    target: &Target,
    accounts: &[Arc<Account>],
) -> Result<Vec<(VaultClient, Arc<Account>)>> {
    let mut tasks = JoinSet::new();
    for (i, account) in accounts.iter().enumerate() {
        let (target, account) = (target.clone(), account.clone());
        tasks.spawn(async move {
            let client = VaultClient::new(&target.urls_for(i), &account.name, &account.token)
                .context("creating a vault client")?;
            recover_once(&client, &account, &target, &mut Vec::new()).await?;
            anyhow::Ok((client, account))
        });
    }
    let mut clients = Vec::with_capacity(accounts.len());
    while let Some(joined) = tasks.join_next().await {
        clients.push(joined.context("a warm-up task panicked")??);
    }
    Ok(clients)
}

/// Every account recovers in a closed loop for `duration`; the rate counts recoveries
/// that completed, over the time until the last one did. KE1s for up to
/// [`PREPARED_RATE`] recoveries a second are made before the clock starts.
pub async fn recover(
    target: &Target,
    accounts: &[Arc<Account>],
    duration: Duration,
) -> Result<Phase> {
    ensure!(!accounts.is_empty(), "no accounts to recover");
    let clients = warm_clients(target, accounts).await?;
    let per_client = (PREPARED_RATE * duration.as_secs_f64() / clients.len() as f64).ceil();
    let clients = clients
        .into_iter()
        .map(|(client, account)| {
            let prepared = prepare(&account, per_client as usize)?;
            anyhow::Ok((client, account, prepared))
        })
        .collect::<Result<Vec<_>>>()?;
    let before = wire_client::metrics_of(&target.metrics_urls).await?;
    let vault_cpu = CpuMeter::start_all(&target.vault_pids);
    let load_cpu = CpuMeter::start(std::process::id());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for (client, account, mut prepared) in clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut latencies = Latencies::default();
            let mut last = Instant::now();
            while Instant::now() < deadline {
                let timer = Instant::now();
                recover_once(&client, &account, &target, &mut prepared).await?;
                last = Instant::now();
                latencies.push(last - timer);
            }
            anyhow::Ok((latencies, last))
        });
    }
    let mut phase = Phase::default();
    let mut finished = started;
    while let Some(joined) = tasks.join_next().await {
        let (latencies, last) = joined.context("a recovery task panicked")??;
        finished = finished.max(last);
        phase.latencies.extend(latencies);
    }
    phase.elapsed = finished - started;
    phase.completed = phase.latencies.len();
    phase.vault_cpu = vault_cpu.used();
    phase.load_cpu = load_cpu.used();
    phase.metrics = Some((before, wire_client::metrics_of(&target.metrics_urls).await?));
    Ok(phase)
}
