//! The printed table: one row per measurement, medians over rounds when repeated.

use crate::bare::BareOpaque;
use crate::load::{Phase, Registrations};
use crate::stats::median;

/// The target: recoveries/s at least half the bare one-core OPAQUE rate.
pub const TARGET_RATIO: f64 = 0.5;

/// Everything one round measured.
#[derive(Clone, Debug)]
pub struct Round {
    /// Bare server-side OPAQUE on one core.
    pub bare: BareOpaque,
    /// Registrations (vault share).
    pub registrations: Registrations,
    /// Recoveries.
    pub recoveries: Phase,
    /// Recoveries on the fleet, and its size, if one ran.
    pub fleet: Option<(usize, Phase)>,
}

impl Round {
    /// recoveries/s ÷ bare logins/s.
    pub fn ratio(&self) -> f64 {
        self.recoveries.rate() / self.bare.rate()
    }

    /// Fleet recoveries/s ÷ one-replica recoveries/s.
    pub fn fleet_ratio(&self) -> Option<f64> {
        self.fleet
            .as_ref()
            .map(|(_, fleet)| fleet.rate() / self.recoveries.rate().max(1e-9))
    }
}

/// The fleet's recoveries/s must reach this share of the one-replica rate.
pub const FLEET_TARGET_RATIO: f64 = 0.5;

/// The run's settings, for the header.
pub struct Setup {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds of recoveries per round.
    pub seconds: f64,
    /// How the processes are pinned.
    pub pinning: String,
    /// Where the vault kept its data (the filesystem matters: every commit fsyncs).
    pub data_dir: std::path::PathBuf,
}

/// One line per round, printed as rounds finish when repeating.
pub fn print_round(index: usize, round: &Round) {
    println!(
        "round {}: bare OPAQUE {:.0}/s, registrations {:.1}/s, recoveries {:.1}/s, ratio {:.2}{}",
        index + 1,
        round.bare.rate(),
        round.registrations.phase.rate(),
        round.recoveries.rate(),
        round.ratio(),
        match &round.fleet {
            Some((size, fleet)) => format!(
                ", fleet of {size}: {:.1}/s ({:.2} of one replica)",
                fleet.rate(),
                round.fleet_ratio().unwrap_or(0.0)
            ),
            None => String::new(),
        }
    );
}

/// recoveries/s ÷ bare logins/s, median over rounds.
pub fn median_ratio(rounds: &[Round]) -> f64 {
    median_of(rounds, Round::ratio)
}

fn median_of(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    median(&rounds.iter().map(f).collect::<Vec<_>>())
}

/// The table (medians over `rounds`), the ratio and the notes that say what was timed.
pub fn print_table(setup: &Setup, rounds: &[Round]) {
    let repeated = if rounds.len() > 1 {
        format!(", median of {} rounds", rounds.len())
    } else {
        String::new()
    };
    println!();
    println!(
        "vault benchmark ({} clients, {} s, {}{repeated})",
        setup.clients, setup.seconds, setup.pinning
    );
    println!("{:<30}{:>10}{:>11}{:>11}", "", "rate/s", "p50 ms", "p99 ms");
    let bare_ms = median_of(rounds, |r| r.bare.median_us() / 1e3);
    println!(
        "{:<30}{:>10.1}{:>11.3}{:>11}",
        "bare OPAQUE server (1 core)",
        median_of(rounds, |r| r.bare.rate()),
        bare_ms,
        "-"
    );
    print_phase_row("registrations", rounds, |r| &r.registrations.phase);
    print_phase_row("recoveries", rounds, |r| &r.recoveries);
    let ratio = median_ratio(rounds);
    let verdict = if ratio >= TARGET_RATIO {
        "met"
    } else {
        "NOT met"
    };
    println!("recoveries / bare OPAQUE = {ratio:.2}  (target >= {TARGET_RATIO:.2}: {verdict})");
    if let Some(size) = rounds
        .first()
        .and_then(|r| r.fleet.as_ref())
        .map(|(n, _)| *n)
    {
        let fleet_rounds: Vec<Round> = rounds
            .iter()
            .filter(|r| r.fleet.is_some())
            .cloned()
            .collect();
        print_phase_row(
            &format!("fleet of {size}: recoveries"),
            &fleet_rounds,
            |r| &r.fleet.as_ref().expect("filtered").1,
        );
        let fleet_ratio = median_of(&fleet_rounds, |r| r.fleet_ratio().unwrap_or(0.0));
        let verdict = if fleet_ratio >= FLEET_TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "fleet of {size} / one replica = {fleet_ratio:.2}  (target >= {FLEET_TARGET_RATIO:.2}: {verdict})"
        );
    }
    print_notes(rounds);
    let fs = filesystem_type(&setup.data_dir).unwrap_or_else(|| "filesystem unknown".to_owned());
    println!(
        "vault data directory: {} ({fs}; each group of Raft appends is made durable with one fdatasync before it is acknowledged)",
        setup.data_dir.display()
    );
}

fn print_phase_row(label: &str, rounds: &[Round], phase: impl Fn(&Round) -> &Phase) {
    println!(
        "{:<30}{:>10.1}{:>11.2}{:>11.2}",
        label,
        median_of(rounds, |r| phase(r).rate()),
        median_of(rounds, |r| phase(r).latencies.percentile_ms(50.0)),
        median_of(rounds, |r| phase(r).latencies.percentile_ms(99.0)),
    );
}

/// What each row includes, and where the vault's time went (last round).
fn print_notes(rounds: &[Round]) {
    let Some(last) = rounds.last() else { return };
    let bare_us = last.bare.median_us();
    println!();
    println!(
        "bare OPAQUE: ServerKeys::start_login + PendingLogin::finish only, median of {} rounds: {bare_us:.1} µs/login",
        last.bare.rounds.len()
    );
    let reg = &last.registrations;
    println!(
        "registrations: {} accounts, both HTTP round trips timed (incl. the Raft commit); the clients' Argon2id between them ({:.0} ms each) is not",
        reg.phase.completed,
        reg.client_ksf.as_secs_f64() * 1e3 / reg.phase.completed.max(1) as f64
    );
    println!(
        "recoveries: each KE1 -> KE2 -> KE3 -> key over HTTP; client KE1s prepared before timing, client Argon2id memoized"
    );
    print_recovery_notes("one replica", &last.recoveries, bare_us);
    if let Some((size, fleet)) = &last.fleet {
        print_recovery_notes(
            &format!("fleet of {size} (all replicas on the vault's CPU; client i starts at replica i mod {size})"),
            fleet,
            bare_us,
        );
    }
}

fn print_recovery_notes(label: &str, rec: &Phase, bare_us: f64) {
    println!(
        "{label}: {} recoveries in {:.2} s",
        rec.completed,
        rec.elapsed.as_secs_f64()
    );
    let secs = rec.elapsed.as_secs_f64().max(1e-9);
    let per_recovery = |cpu: f64| cpu * 1e6 / rec.completed.max(1) as f64;
    if let Some(cpu) = rec.vault_cpu {
        println!(
            "  vault CPU: {:.2} cores busy, {:.0} µs per recovery ({:.1}x bare OPAQUE)",
            cpu / secs,
            per_recovery(cpu),
            per_recovery(cpu) / bare_us
        );
    }
    if let Some(cpu) = rec.load_cpu {
        println!(
            "  load generator CPU: {:.2} cores busy, {:.0} µs per recovery",
            cpu / secs,
            per_recovery(cpu)
        );
    }
    if let Some((before, after)) = rec.metrics {
        let counted = after.recoveries.saturating_sub(before.recoveries);
        let entries = after.last_applied.saturating_sub(before.last_applied);
        println!(
            "  vault /metrics: {counted} keys released, {:.2} Raft entries committed per recovery, {:.0} entries/s",
            entries as f64 / counted.max(1) as f64,
            entries as f64 / secs
        );
    }
}

/// The filesystem type of `dir` (e.g. ext4, tmpfs): `findmnt`, else `stat -f` (which
/// names ext4 "ext2/ext3").
fn filesystem_type(dir: &std::path::Path) -> Option<String> {
    let run = |program: &str, args: &[&str]| -> Option<String> {
        let output = std::process::Command::new(program)
            .args(args)
            .arg(dir)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        // Stacked mounts print one line each; the first is the one `dir` is on.
        let name = text.lines().next()?.trim().to_owned();
        (output.status.success() && !name.is_empty()).then_some(name)
    };
    run("findmnt", &["-n", "-o", "FSTYPE", "--target"]).or_else(|| run("stat", &["-f", "-c", "%T"]))
}
