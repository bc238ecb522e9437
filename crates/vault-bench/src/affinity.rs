//! CPU pinning with `taskset`: the vault on one core, the load generator on another, so
//! "the vault on one core" compares with "bare OPAQUE on one core".
//!
//! `taskset` instead of `sched_setaffinity` because the workspace forbids `unsafe`.
//! Threads inherit the affinity of the thread that creates them, so pinning the main
//! thread before the async runtime starts pins the whole load generator.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Whether to pin at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PinMode {
    /// Pin when on Linux with `taskset` and at least two usable CPUs.
    Auto,
    /// Never pin: vault and load share whatever CPUs the scheduler gives them.
    Off,
}

/// What pinning is in force.
#[derive(Clone, Debug)]
pub enum Pinning {
    /// The vault runs on `vault_cpu`, this process on `load_cpu`.
    Pinned {
        /// CPU the vault process is restricted to.
        vault_cpu: usize,
        /// CPU the load generator (and the bare measurement) is restricted to.
        load_cpu: usize,
    },
    /// No pinning, and why.
    Unpinned(String),
}

impl Pinning {
    /// How the table header describes it.
    pub fn describe(&self) -> String {
        match self {
            Pinning::Pinned {
                vault_cpu,
                load_cpu,
            } => format!("vault pinned to CPU {vault_cpu}, load on CPU {load_cpu}"),
            Pinning::Unpinned(why) => format!("not pinned: {why}"),
        }
    }

    /// The command that runs `program`, under `taskset` when pinned.
    pub fn command_for_vault(&self, program: &std::path::Path) -> Command {
        match self {
            Pinning::Pinned { vault_cpu, .. } => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(vault_cpu.to_string()).arg(program);
                command
            }
            Pinning::Unpinned(_) => Command::new(program),
        }
    }
}

/// Decides the pinning and pins this process's main thread (call before any thread
/// is started, so that all later threads inherit it).
pub fn pin_self(mode: PinMode) -> Result<Pinning> {
    let why_not = match mode {
        PinMode::Off => Some("--pin off".to_owned()),
        PinMode::Auto if !cfg!(target_os = "linux") => Some("not Linux".to_owned()),
        PinMode::Auto if !taskset_available() => Some("taskset not found".to_owned()),
        PinMode::Auto => None,
    };
    if let Some(why) = why_not {
        return Ok(Pinning::Unpinned(why));
    }
    let allowed = allowed_cpus("self").context("cannot read this process's CPU list")?;
    let [vault_cpu, load_cpu, ..] = allowed[..] else {
        return Ok(Pinning::Unpinned(format!(
            "only CPU(s) {allowed:?} usable, need two"
        )));
    };
    let status = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &load_cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset")?;
    if !status.success() {
        bail!("taskset could not pin the load generator to CPU {load_cpu} ({status})");
    }
    let now = allowed_cpus("self").context("cannot read this process's CPU list")?;
    if now != [load_cpu] {
        bail!("after taskset the load generator may run on CPUs {now:?}, not just {load_cpu}");
    }
    Ok(Pinning::Pinned {
        vault_cpu,
        load_cpu,
    })
}

fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The CPUs process `pid` ("self" for this one) may run on, from `/proc`.
pub fn allowed_cpus(pid: &str) -> Result<Vec<usize>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .with_context(|| format!("{path} has no Cpus_allowed_list"))?;
    parse_cpu_list(list.trim())
}

/// Parses a kernel CPU list such as `0-3,6`.
fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {list:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().with_context(bad)?),
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3,7").unwrap(), vec![0, 2, 3, 7]);
        assert!(parse_cpu_list("x").is_err());
    }
}
