//! backlock-vault-bench: drives a real `backlock vault serve` with N concurrent clients
//! and prints registrations/s and recoveries/s with p50/p99 latency, next to the bare
//! server-side OPAQUE cost on one core measured in the same run.
//!
//! Clients use a memoized Argon2id so the load measures the vault, not Argon2. See
//! `crates/vault-bench/README.md` and `scripts/bench-vault`.
#![forbid(unsafe_code)]

mod affinity;
mod bare;
mod load;
mod report;
mod scale;
mod stats;
mod vault_process;
mod wire_client;

use affinity::{PinMode, Pinning};
use anyhow::{bail, ensure, Context, Result};
use backlock_core::key::BackupKey;
use backlock_testkit::fleet::{Fleet, FleetOptions};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use clap::Parser;
use load::{Account, Target};
use report::{Round, Setup};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vault_process::VaultProcess;

/// Benchmark a backlock vault: registrations/s and recoveries/s against the bare
/// server-side OPAQUE cost on one core.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Concurrent clients, each with its own account. A closed loop needs enough of them
    /// to keep a batching vault busy: with too few it measures round-trip latency.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of recoveries per round.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Accounts registered per round, `--clients` at a time (default: 2 × clients;
    /// each costs one real client Argon2id, outside the timing).
    #[arg(long)]
    registrations: Option<usize>,
    /// Run the timed phases this many times and report medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Pin the vault to one CPU and the load generator to another (Linux, taskset).
    #[arg(long, value_enum, default_value = "auto")]
    pin: PinMode,
    /// Rounds of the bare OPAQUE measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    bare_rounds: usize,
    /// Logins per bare OPAQUE round.
    #[arg(long, default_value_t = 300)]
    bare_logins: usize,
    /// The `backlock` binary (default: next to this one).
    #[arg(long)]
    backlock: Option<PathBuf>,
    /// Directory to create the vault's data directory in (default: the system's
    /// temporary directory). Its filesystem's fsync cost shapes the results.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the vault's data directory and log, and print where they are.
    #[arg(long)]
    keep: bool,
    /// Exit with status 3 when recoveries/s is below the target share of bare OPAQUE.
    #[arg(long)]
    require_target: bool,
    /// Also measure recoveries on a fleet of this many replicas (3, 5 or 7; 0: skip).
    #[arg(long, default_value_t = 5)]
    fleet: usize,
    /// Bind each fleet replica to an NV counter in a software TPM of its own (swtpm),
    /// advanced at most every 5 s as in production: needs a `backlock` built with the
    /// `tpm` feature (scripts/bench-vault builds it so when given this flag).
    #[arg(long)]
    tpm_counter: bool,
    /// Measure the vault as it grows: load synthetic accounts up to each of these sizes
    /// (e.g. `1m,10m`) and compare each with 10 thousand accounts. Needs a `backlock`
    /// built with the `bench-fill` feature (scripts/bench-vault builds it so).
    #[arg(long, value_parser = scale::parse_sizes)]
    accounts: Option<scale::Sizes>,
    /// With --accounts: also fill a fleet of --fleet replicas to this many accounts,
    /// then wipe one and time its catch-up.
    #[arg(long, value_parser = parse_fleet_accounts)]
    fleet_accounts: Option<u64>,
}

fn parse_fleet_accounts(text: &str) -> Result<u64, String> {
    match scale::parse_sizes(text)?.0.as_slice() {
        [one] => Ok(*one),
        _ => Err("give one number of accounts".to_owned()),
    }
}

/// Exit status when `--require-target` is given and the target is missed.
const BELOW_TARGET: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(sizes) = &args.accounts {
        return match run_scale(&args, &sizes.0) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) if args.require_target => {
                eprintln!("backlock-vault-bench: below target");
                ExitCode::from(BELOW_TARGET)
            }
            Ok(false) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backlock-vault-bench: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(ratio) if args.require_target && ratio < report::TARGET_RATIO => {
            eprintln!("backlock-vault-bench: below target");
            ExitCode::from(BELOW_TARGET)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backlock-vault-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole benchmark; returns the (median) recoveries / bare OPAQUE ratio.
fn run(args: &Args) -> Result<f64> {
    check_args(args)?;
    // Before any thread exists, so every later thread inherits the pinning.
    let pinning = affinity::pin_self(args.pin)?;
    let backlock = backlock_binary(args)?;
    let workdir = make_workdir(args.workdir.as_deref())?;
    let mut vault = VaultProcess::start(&backlock, workdir.path(), &pinning)?;
    check_vault_pinning(&vault, &pinning)?;
    eprintln!("vault running at {} (pid {})", vault.url, vault.pid());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let target = vault_target(&vault);
    let mut rounds = Vec::with_capacity(args.repeat);
    for index in 0..args.repeat {
        let round = run_round(
            args,
            index,
            &mut vault,
            (&backlock, &pinning),
            &runtime,
            &target,
        )?;
        if args.repeat > 1 {
            report::print_round(index, &round);
        }
        rounds.push(round);
    }
    drop(runtime);
    vault.stop()?;
    let setup = Setup {
        clients: args.clients,
        seconds: args.seconds,
        pinning: pinning.describe(),
        data_dir: workdir.path().to_path_buf(),
    };
    report::print_table(&setup, &rounds);
    if args.keep {
        let kept = workdir.keep();
        println!("vault data and log kept in {}", kept.display());
    }
    Ok(report::median_ratio(&rounds))
}

/// `--accounts`: the one-replica vault, then (with `--fleet-accounts`) the fleet, as they
/// grow; returns whether every target was met.
fn run_scale(args: &Args, sizes: &[u64]) -> Result<bool> {
    check_args(args)?;
    let pinning = affinity::pin_self(args.pin)?;
    let backlock = backlock_binary(args)?;
    let workdir = make_workdir(args.workdir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut vault = VaultProcess::start(&backlock, workdir.path(), &pinning)?;
    eprintln!("vault running at {} (pid {})", vault.url, vault.pid());
    let target = vault_target(&vault);
    let accounts = make_accounts(|name| vault.token(name), "scale", args.clients)?;
    runtime.block_on(load::register(&target, &accounts, args.clients))?;
    let subject = scale::Subject {
        target: &target,
        data_dirs: vec![vault.data_dir()],
    };
    let points = runtime.block_on(scale::measure(&subject, &accounts, sizes, duration))?;
    vault.check_alive()?;
    vault.stop()?;
    let mut met = scale::print(
        &format!("one replica ({})", pinning.describe()),
        &points,
        None,
    );
    if let Some(size) = args.fleet_accounts {
        met &= runtime.block_on(scale_fleet(args, &backlock, &pinning, size, duration))?;
    }
    if args.keep {
        println!("vault data and log kept in {}", workdir.keep().display());
    }
    Ok(met)
}

/// The fleet part of `--accounts`: filled to `size`, measured, then one follower wiped
/// and timed until it holds every record again.
async fn scale_fleet(
    args: &Args,
    backlock: &Path,
    pinning: &Pinning,
    size: u64,
    duration: Duration,
) -> Result<bool> {
    let Some(mut fleet) = start_fleet(args, backlock, pinning)? else {
        bail!("--fleet-accounts needs a fleet: --fleet 3, 5 or 7");
    };
    let target = fleet_target(&fleet);
    let accounts = make_accounts(|name| Ok(fleet.token(name)), "scale-fleet", args.clients)?;
    load::register(&target, &accounts, args.clients).await?;
    let data_dirs: Vec<PathBuf> = fleet.replicas.iter().map(|r| r.data.clone()).collect();
    let subject = scale::Subject {
        target: &target,
        data_dirs: data_dirs.iter().map(PathBuf::as_path).collect(),
    };
    let points = scale::measure(&subject, &accounts, &[size], duration).await?;
    let records = points.last().map_or(0, |p| p.accounts);
    let leader = fleet.wait_for_leader();
    let leader_metrics = format!("http://{}", fleet.replica(leader).metrics);
    let applied = wire_client::metrics(&leader_metrics).await?.last_applied;
    let wiped = fleet
        .replicas
        .iter()
        .map(|r| r.id)
        .find(|id| *id != leader)
        .context("the fleet has no follower")?;
    eprintln!("wiping replica {wiped} and timing its catch-up");
    // From the wipe: joining waits for the replica to hold the log, which is most of it.
    let wiped_at = std::time::Instant::now();
    fleet.wipe_and_rejoin(wiped);
    let metrics = format!("http://{}", fleet.replica(wiped).metrics);
    scale::wait_caught_up(&metrics, records, applied).await?;
    let took = wiped_at.elapsed();
    let pid = fleet
        .replica(wiped)
        .pid()
        .context("the wiped replica is not running")?;
    let rss = scale::peak_rss(pid)?;
    Ok(scale::print(
        &format!("fleet of {} replicas", fleet.replicas.len()),
        &points,
        Some((took, rss)),
    ))
}

fn check_args(args: &Args) -> Result<()> {
    ensure!(args.clients > 0, "--clients must be above zero");
    ensure!(args.repeat > 0, "--repeat must be above zero");
    ensure!(
        args.seconds > 0.0 && args.seconds.is_finite(),
        "--seconds must be a positive number"
    );
    if let Some(n) = args.registrations {
        ensure!(
            n >= args.clients,
            "--registrations ({n}) must be at least --clients ({}): each client recovers its own account",
            args.clients
        );
    }
    Ok(())
}

/// A fresh directory for the vault's data and log, under `parent` if given.
fn make_workdir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("backlock-vault-bench-");
    match parent {
        Some(dir) => builder
            .tempdir_in(dir)
            .with_context(|| format!("creating a directory in {}", dir.display())),
        None => builder.tempdir().context("creating a temporary directory"),
    }
}

/// `--backlock`, or `backlock` next to this binary (how `cargo build` lays them out).
fn backlock_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.backlock {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot locate this binary")?
            .with_file_name("backlock"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p backlock-cli` or pass --backlock",
            path.display()
        );
    }
    Ok(path)
}

/// Confirms the kernel really restricts the vault to the CPU we asked for.
fn check_vault_pinning(vault: &VaultProcess, pinning: &Pinning) -> Result<()> {
    let Pinning::Pinned { vault_cpu, .. } = pinning else {
        return Ok(());
    };
    let allowed = affinity::allowed_cpus(&vault.pid().to_string())?;
    ensure!(
        allowed == [*vault_cpu],
        "the vault may run on CPUs {allowed:?}, not just {vault_cpu}"
    );
    Ok(())
}

/// The fleet, set up as an operator would (`vault certs`, `init`, `join`), its replicas
/// pinned like the one-replica vault.
fn start_fleet(args: &Args, backlock: &Path, pinning: &Pinning) -> Result<Option<Fleet>> {
    if args.fleet == 0 {
        return Ok(None);
    }
    ensure!(
        [3, 5, 7].contains(&args.fleet),
        "--fleet must be 3, 5 or 7 (or 0 to skip the fleet)"
    );
    let launcher = match pinning {
        Pinning::Pinned { vault_cpu, .. } => {
            vec!["taskset".to_owned(), "-c".to_owned(), vault_cpu.to_string()]
        }
        Pinning::Unpinned(_) => Vec::new(),
    };
    let fleet = Fleet::start(
        backlock,
        FleetOptions {
            size: args.fleet,
            launcher,
            tpm_counter_every: args.tpm_counter.then(|| std::time::Duration::from_secs(5)),
            ..FleetOptions::default()
        },
    );
    eprintln!(
        "fleet of {} running at {}",
        args.fleet,
        fleet.urls().join(", ")
    );
    Ok(Some(fleet))
}

/// How the clients reach the one-replica vault.
fn vault_target(vault: &VaultProcess) -> Target {
    Target {
        urls: vec![vault.url.clone()],
        metrics_urls: vec![vault.metrics_url.clone()],
        pinned: vault.public_key,
        ksf: Stretch::memoized(),
        vault_pids: vec![vault.pid()],
    }
}

fn fleet_target(fleet: &Fleet) -> Target {
    Target {
        urls: fleet.urls(),
        metrics_urls: fleet
            .replicas
            .iter()
            .map(|r| format!("http://{}", r.metrics))
            .collect(),
        pinned: fleet.public_key,
        ksf: Stretch::memoized(),
        vault_pids: fleet.replicas.iter().filter_map(|r| r.pid()).collect(),
    }
}

/// One round: bare OPAQUE, then fresh accounts registered, then recoveries; then the
/// same recoveries on a fleet started for the round (so that its heartbeats do not take
/// the one-replica vault's CPU) and stopped after it.
fn run_round(
    args: &Args,
    index: usize,
    vault: &mut VaultProcess,
    (backlock, pinning): (&Path, &Pinning),
    runtime: &tokio::runtime::Runtime,
    target: &Target,
) -> Result<Round> {
    let bare = bare::measure(args.bare_rounds, args.bare_logins)?;
    let count = args.registrations.unwrap_or(2 * args.clients);
    let accounts = make_accounts(|name| vault.token(name), &index.to_string(), count)?;
    let registrations = runtime.block_on(load::register(target, &accounts, args.clients))?;
    vault.check_alive()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let recovering = &accounts[..args.clients];
    let recoveries = runtime.block_on(load::recover(target, recovering, duration))?;
    vault.check_alive()?;
    let fleet = match start_fleet(args, backlock, pinning)? {
        None => None,
        Some(fleet) => {
            let target = fleet_target(&fleet);
            let accounts = make_accounts(
                |name| Ok(fleet.token(name)),
                &format!("fleet-{index}"),
                args.clients,
            )?;
            runtime.block_on(load::register(&target, &accounts, args.clients))?;
            let phase = runtime.block_on(load::recover(&target, &accounts, duration))?;
            // Dropping the fleet kills its processes.
            Some((fleet.replicas.len(), phase))
        }
    };
    Ok(Round {
        bare,
        registrations,
        recoveries,
        fleet,
    })
}

/// `count` fresh accounts for round `round`, each with a token and its own key.
fn make_accounts(
    token: impl Fn(&str) -> Result<String>,
    round: &str,
    count: usize,
) -> Result<Vec<Arc<Account>>> {
    (0..count)
        .map(|i| {
            let name = format!("bench-{round}-{i}");
            Ok(Arc::new(Account {
                token: token(&name)?,
                password: Password::new(format!("bench password {i}")),
                key: BackupKey::generate(),
                name,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["backlock-vault-bench"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(|a| check_args(&a))
        };
        assert!(parse(&[]).unwrap().is_ok());
        assert!(parse(&["--clients", "0"]).unwrap().is_err());
        assert!(parse(&["--clients", "8", "--registrations", "4"])
            .unwrap()
            .is_err());
        assert!(parse(&["--seconds=-1"]).unwrap().is_err());
        assert!(parse(&["--seconds", "0"]).unwrap().is_err());
        assert!(parse(&["--pin", "sometimes"]).is_err());
    }

    #[test]
    fn a_missing_backlock_binary_is_a_clear_error() {
        let args = Args::try_parse_from([
            "backlock-vault-bench",
            "--backlock",
            "/nonexistent/backlock",
        ])
        .unwrap();
        let err = backlock_binary(&args).unwrap_err().to_string();
        assert!(
            err.contains("cargo build --release -p backlock-cli"),
            "{err}"
        );
    }

    #[test]
    fn a_vault_that_cannot_start_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("backlock");
        std::fs::write(&fake, "").unwrap();
        let pinning = Pinning::Unpinned("test".to_owned());
        let err = VaultProcess::start(&fake, dir.path(), &pinning)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("cannot start"), "{err:#}");
    }
}
