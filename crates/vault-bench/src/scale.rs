//! `--accounts N`: the vault as the number of accounts grows. Synthetic accounts are
//! loaded through the vault's own registration path (`POST /v1/bench/fill`, in builds
//! with the `bench-fill` feature), then the clients' own accounts, registered for real,
//! recover as in the default run. Measured at 10 thousand accounts (the baseline) and
//! at each N: recoveries/s and p99, each replica's peak RSS, the data directory's bytes
//! per account and the last snapshot's size and build time; on a fleet also the time a
//! wiped replica takes to hold every record again.

use crate::load::{self, Account, Phase, Target};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accounts at which the baseline is measured (the "rate at N = 10 thousand").
pub const BASELINE_ACCOUNTS: u64 = 10_000;
/// Synthetic accounts per fill request.
const FILL_REQUEST: u64 = 20_000;
/// Fill requests in flight at once: enough to keep the batcher's entries full.
const FILL_IN_FLIGHT: usize = 4;
/// Targets of the issue, at N against the baseline.
pub const TARGET_RECOVERY_RATIO: f64 = 0.9;
/// p99 at N may be at most this multiple of the baseline's.
pub const TARGET_P99_RATIO: f64 = 1.5;
/// Peak RSS of a replica, MiB.
pub const TARGET_RSS_MIB: f64 = 512.0;
/// Disk per account, bytes.
pub const TARGET_DISK_PER_ACCOUNT: f64 = 1000.0;
/// A wiped replica must hold every record again within this.
pub const TARGET_CATCH_UP: Duration = Duration::from_secs(120);
/// Longest wait for a wiped replica before the run reports it as not caught up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// One measurement at a number of accounts.
#[derive(Clone, Debug)]
pub struct Point {
    /// Records held (synthetic and the clients').
    pub accounts: u64,
    /// Synthetic accounts loaded per second to get here.
    pub fill_rate: f64,
    /// Recoveries of the clients' accounts.
    pub recoveries: Phase,
    /// Peak RSS of each replica so far, bytes.
    pub peak_rss: Vec<u64>,
    /// Bytes the largest data directory takes on disk.
    pub disk_bytes: u64,
    /// The last snapshot built (on the leader): bytes and milliseconds; zero if none.
    pub snapshot: (u64, u64),
}

impl Point {
    /// Disk bytes per account.
    pub fn disk_per_account(&self) -> f64 {
        self.disk_bytes as f64 / self.accounts.max(1) as f64
    }

    /// The largest peak RSS, MiB.
    pub fn max_rss_mib(&self) -> f64 {
        self.peak_rss.iter().copied().max().unwrap_or(0) as f64 / (1024.0 * 1024.0)
    }
}

/// Where the processes under test are and what they run.
pub struct Subject<'a> {
    /// How clients reach it.
    pub target: &'a Target,
    /// Each replica's data directory.
    pub data_dirs: Vec<&'a Path>,
}

/// Measures at the baseline and at each of `sizes` (ascending), filling in between.
pub async fn measure(
    subject: &Subject<'_>,
    accounts: &[Arc<Account>],
    sizes: &[u64],
    duration: Duration,
) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    let mut filled = 0u64;
    let own = accounts.len() as u64;
    for &size in std::iter::once(&BASELINE_ACCOUNTS).chain(sizes) {
        let want = size.saturating_sub(own);
        let started = Instant::now();
        fill(&subject.target.urls[0], filled, want).await?;
        let fill_rate = (want - filled.min(want)) as f64 / started.elapsed().as_secs_f64();
        filled = filled.max(want);
        eprintln!(
            "{} accounts loaded ({fill_rate:.0}/s); recovering",
            filled + own
        );
        let recoveries = load::recover(subject.target, accounts, duration).await?;
        let metrics = crate::wire_client::metrics(&subject.target.metrics_urls[0]).await?;
        points.push(Point {
            accounts: filled + own,
            fill_rate,
            recoveries,
            peak_rss: subject
                .target
                .vault_pids
                .iter()
                .map(|pid| peak_rss(*pid))
                .collect::<Result<_>>()?,
            disk_bytes: subject
                .data_dirs
                .iter()
                .map(|d| disk_bytes(d))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .max()
                .unwrap_or(0),
            snapshot: (metrics.snapshot_bytes, metrics.snapshot_build_ms),
        });
    }
    Ok(points)
}

/// Loads synthetic accounts `from..to` through `POST /v1/bench/fill`.
async fn fill(url: &str, from: u64, to: u64) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .context("cannot set up the HTTP client")?;
    let endpoint = format!("{}/v1/bench/fill", url.trim_end_matches('/'));
    let mut next = from;
    let mut tasks = tokio::task::JoinSet::new();
    while next < to || !tasks.is_empty() {
        while next < to && tasks.len() < FILL_IN_FLIGHT {
            let count = FILL_REQUEST.min(to - next);
            let (http, endpoint) = (http.clone(), endpoint.clone());
            let first = next;
            tasks.spawn(async move { fill_once(&http, &endpoint, first, count).await });
            next += count;
        }
        if let Some(joined) = tasks.join_next().await {
            joined.context("a fill task panicked")??;
        }
    }
    Ok(())
}

/// One fill request; sent again while the vault answers 503 (a slow fleet's request
/// timeout: the accounts already registered count as existing the next time).
async fn fill_once(http: &reqwest::Client, endpoint: &str, first: u64, count: u64) -> Result<()> {
    let mut tries = 0;
    loop {
        match fill_request(http, endpoint, first, count).await {
            Err(e) if tries < 5 && e.to_string().contains("503") => tries += 1,
            other => return other,
        }
    }
}

async fn fill_request(
    http: &reqwest::Client,
    endpoint: &str,
    first: u64,
    count: u64,
) -> Result<()> {
    let response = http
        .post(endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "first": first, "count": count }).to_string())
        .send()
        .await
        .context("POST /v1/bench/fill: cannot reach the vault")?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST && body.contains("no such endpoint") {
        bail!(
            "the vault has no /v1/bench/fill: --accounts needs a backlock built with \
             `--features backlock-cli/bench-fill` (scripts/bench-vault builds it so)"
        );
    }
    ensure!(status.is_success(), "POST /v1/bench/fill: {status}: {body}");
    Ok(())
}

/// Peak resident set of process `pid` (`VmHWM`), bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Bytes allocated on disk under `dir`.
pub fn disk_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// Waits until the replica whose `/metrics` is at `metrics_url` holds `records` records
/// and has applied up to `index`.
pub async fn wait_caught_up(metrics_url: &str, records: u64, index: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(m) = crate::wire_client::metrics(metrics_url).await {
            if m.records >= records && m.last_applied >= index {
                return Ok(());
            }
        }
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!("the wiped replica did not catch up within {CATCH_UP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table, the ratios against the baseline and the targets.
pub fn print(title: &str, points: &[Point], catch_up: Option<(Duration, u64)>) -> bool {
    println!("\n{title}");
    println!(
        "{:>12} {:>10} {:>12} {:>9} {:>13} {:>12} {:>13} {:>10}",
        "accounts",
        "fill/s",
        "recoveries/s",
        "p99 ms",
        "peak RSS MiB",
        "disk B/acct",
        "snapshot MB",
        "build s"
    );
    for p in points {
        println!(
            "{:>12} {:>10.0} {:>12.1} {:>9.1} {:>13.1} {:>12.0} {:>13.1} {:>10.2}",
            p.accounts,
            p.fill_rate,
            p.recoveries.rate(),
            p.recoveries.latencies.percentile_ms(99.0),
            p.max_rss_mib(),
            p.disk_per_account(),
            p.snapshot.0 as f64 / 1e6,
            p.snapshot.1 as f64 / 1e3,
        );
    }
    let (Some(base), Some(top)) = (points.first(), points.last()) else {
        return false;
    };
    let rate = top.recoveries.rate() / base.recoveries.rate().max(1e-9);
    let p99 = top.recoveries.latencies.percentile_ms(99.0)
        / base.recoveries.latencies.percentile_ms(99.0).max(1e-9);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let mut all = true;
    let mut check = |line: String, ok: bool| {
        all &= ok;
        println!("{line} {}", verdict(ok));
    };
    check(
        format!(
            "recoveries/s at {} vs {}: {rate:.2}× (target ≥ {TARGET_RECOVERY_RATIO})",
            top.accounts, base.accounts
        ),
        rate >= TARGET_RECOVERY_RATIO,
    );
    check(
        format!(
            "p99 at {} vs {}: {p99:.2}× (target ≤ {TARGET_P99_RATIO})",
            top.accounts, base.accounts
        ),
        p99 <= TARGET_P99_RATIO,
    );
    check(
        format!(
            "peak RSS at {}: {:.1} MiB (target ≤ {TARGET_RSS_MIB})",
            top.accounts,
            top.max_rss_mib()
        ),
        top.max_rss_mib() <= TARGET_RSS_MIB,
    );
    check(
        format!(
            "disk at {}: {:.0} B per account (target ≤ {TARGET_DISK_PER_ACCOUNT})",
            top.accounts,
            top.disk_per_account()
        ),
        top.disk_per_account() <= TARGET_DISK_PER_ACCOUNT,
    );
    if let Some((took, rss)) = catch_up {
        check(
            format!(
                "wiped replica caught up in {:.1} s, peak RSS {:.1} MiB (target ≤ {} s)",
                took.as_secs_f64(),
                rss as f64 / (1024.0 * 1024.0),
                TARGET_CATCH_UP.as_secs()
            ),
            took <= TARGET_CATCH_UP,
        );
    }
    all
}

/// Numbers of accounts, ascending, each above the baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes(pub Vec<u64>);

/// `--accounts 1000000,10000000` (or `1m,10m`).
pub fn parse_sizes(text: &str) -> Result<Sizes, String> {
    let mut sizes = text
        .split(',')
        .map(|s| {
            let s = s.trim().replace('_', "");
            let (digits, mult) = match s.chars().last() {
                Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
                Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
                _ => (&s[..], 1),
            };
            digits
                .parse::<u64>()
                .map(|n| n * mult)
                .map_err(|_| format!("`{s}` is not a number of accounts (e.g. 1000000 or 1m)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.iter().any(|&n| n <= BASELINE_ACCOUNTS) {
        return Err(format!(
            "each size must be above the baseline of {BASELINE_ACCOUNTS} accounts"
        ));
    }
    Ok(Sizes(sizes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_stay_above_the_baseline() {
        assert_eq!(parse_sizes("1m,100k").unwrap().0, vec![100_000, 1_000_000]);
        assert_eq!(parse_sizes("10_000_000").unwrap().0, vec![10_000_000]);
        assert!(parse_sizes("5000").is_err());
        assert!(parse_sizes("lots").is_err());
    }

    #[test]
    fn disk_bytes_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 10_000]).unwrap();
        assert!(disk_bytes(dir.path()).unwrap() >= 10_000);
    }
}
