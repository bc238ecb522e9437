//! The vault under test: `backlock vault serve` as a child process in a temporary data
//! directory, killed when dropped (so also when the benchmark fails).

use crate::affinity::Pinning;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the vault may take to elect itself and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Rate limits far above anything the benchmark sends, so they never interfere.
const NO_RATE_LIMIT: &str = "1000000000";
/// Lifetime of the account tokens: longer than any run.
const TOKEN_TTL_SECS: &str = "86400";

/// A running `backlock vault serve`.
pub struct VaultProcess {
    child: Child,
    backlock: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Base URL of the device API.
    pub url: String,
    /// Base URL of its `/metrics` listener.
    pub metrics_url: String,
    /// The OPAQUE public key clients pin.
    pub public_key: [u8; 32],
}

impl VaultProcess {
    /// Starts the vault with its data and log under `workdir` and waits until it serves.
    pub fn start(backlock: &Path, workdir: &Path, pinning: &Pinning) -> Result<VaultProcess> {
        let data = workdir.join("data");
        let log = workdir.join("vault.log");
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // A free port for /metrics (the device API's is picked by the vault).
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for /metrics")?;
        let mut command = pinning.command_for_vault(backlock);
        command
            .args(["vault", "serve", "--listen", "127.0.0.1:0"])
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--data")
            .arg(&data)
            .args(["--account-burst", NO_RATE_LIMIT])
            .args(["--account-rate", NO_RATE_LIMIT])
            // Warnings only: per-request info logs would cost the vault CPU.
            .env("BACKLOCK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", backlock.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the vault's stdout is not captured")?;
        let mut vault = VaultProcess {
            child,
            backlock: backlock.to_path_buf(),
            data,
            log,
            url: String::new(),
            metrics_url: format!("http://{metrics}"),
            public_key: [0; 32],
        };
        match read_banner(stdout) {
            Ok((public_key, url)) => {
                vault.public_key = public_key;
                vault.url = url;
                Ok(vault)
            }
            Err(e) => Err(vault.startup_failure(e)),
        }
    }

    /// The vault's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The vault's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Issues an account token with `backlock vault token`.
    pub fn token(&self, account: &str) -> Result<String> {
        let output = Command::new(&self.backlock)
            .args([
                "vault",
                "token",
                "--account",
                account,
                "--ttl",
                TOKEN_TTL_SECS,
            ])
            .arg("--data")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .context("cannot run `backlock vault token`")?;
        if !output.status.success() {
            bail!(
                "`backlock vault token` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let token = String::from_utf8(output.stdout)
            .context("`backlock vault token` printed non-UTF-8")?
            .trim()
            .to_owned();
        if token.is_empty() {
            bail!("`backlock vault token` printed no token");
        }
        Ok(token)
    }

    /// Fails if the vault has exited (a crash under load must not look like slowness).
    pub fn check_alive(&mut self) -> Result<()> {
        match self
            .child
            .try_wait()
            .context("cannot poll the vault process")?
        {
            None => Ok(()),
            Some(status) => bail!(
                "the vault exited during the benchmark ({status}); its log ends with:\n{}",
                self.log_tail()
            ),
        }
    }

    /// Stops the vault and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.kill_and_wait()
    }

    fn kill_and_wait(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("cannot kill the vault")?;
        }
        self.child.wait().context("cannot reap the vault")?;
        Ok(())
    }

    /// The startup error, with whatever the vault said, after stopping it.
    fn startup_failure(&mut self, cause: anyhow::Error) -> anyhow::Error {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.kill_and_wait();
        let status = exited.map_or("still running, killed".to_owned(), |s| s.to_string());
        anyhow!(
            "the vault did not start ({cause:#}; process: {status}); its log ends with:\n{}",
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            "(empty)".to_owned()
        } else {
            tail
        }
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        let _ = self.kill_and_wait();
    }
}

/// Reads `vault public key: HEX` and `listening on URL` from the vault's stdout.
fn read_banner(stdout: ChildStdout) -> Result<([u8; 32], String)> {
    let (lines, received) = mpsc::channel();
    // A thread, because std pipes have no read timeout; it keeps draining afterwards.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                // Nobody listens any more; keep draining so the vault never blocks.
                continue;
            }
        }
    });
    let mut public_key = None;
    let mut url = None;
    while public_key.is_none() || url.is_none() {
        let line = received.recv_timeout(START_TIMEOUT).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => anyhow!("no address within {START_TIMEOUT:?}"),
            mpsc::RecvTimeoutError::Disconnected => anyhow!("its stdout closed"),
        })?;
        if let Some(hex_key) = line.strip_prefix("vault public key: ") {
            public_key = Some(parse_key(hex_key.trim())?);
        } else if let Some(address) = line.strip_prefix("listening on ") {
            url = Some(address.trim().to_owned());
        }
    }
    match (public_key, url) {
        (Some(key), Some(url)) => Ok((key, url)),
        _ => bail!("the vault's banner is incomplete"),
    }
}

fn parse_key(hex_key: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_key).context("the vault's public key is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("the vault's public key is not 32 bytes"))
}
