//! The vault's HTTP API one step at a time, for what `VaultClient` does in one call:
//! timing registration's two round trips apart from the client's Argon2id between them,
//! and reading `/metrics`.

use anyhow::{anyhow, Context, Result};
use backlock_vault_proto::wire::{self, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Same media type as the vault client sends.
const CONTENT_TYPE: &str = "application/x-backlock-vault";

/// One account's connection to the vault.
#[derive(Clone)]
pub struct WireClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl WireClient {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`) with an account token.
    pub fn new(base: &str, token: &str) -> Result<WireClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(WireClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// POSTs `request` to `route` and decodes the reply; a vault error is an error.
    pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        route: &str,
        request: &Req,
    ) -> Result<Rep> {
        let response = self
            .http
            .post(format!("{}{route}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(wire::encode(request))
            .send()
            .await
            .with_context(|| format!("POST {route}: cannot reach the vault"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("POST {route}: reading the reply"))?;
        if status.is_success() {
            return wire::decode(&body).map_err(|e| anyhow!("POST {route}: bad reply: {e}"));
        }
        Err(match serde_json::from_slice::<WireError>(&body) {
            Ok(e) => anyhow!(
                "POST {route}: vault answered {status} {:?}: {}",
                e.code,
                e.message
            ),
            Err(_) => anyhow!("POST {route}: vault answered {status} without an error body"),
        })
    }
}

/// Counters and gauges from the vault's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct VaultMetrics {
    /// `backlock_vault_recoveries_total`.
    pub recoveries: u64,
    /// `backlock_vault_raft_last_applied`: committed log entries so far.
    pub last_applied: u64,
    /// `backlock_vault_records`.
    pub records: u64,
    /// `backlock_vault_snapshot_bytes`.
    pub snapshot_bytes: u64,
    /// `backlock_vault_snapshot_build_milliseconds`.
    pub snapshot_build_ms: u64,
}

/// Reads the vault's `/metrics`.
pub async fn metrics(base: &str) -> Result<VaultMetrics> {
    let text = reqwest::get(format!("{}/metrics", base.trim_end_matches('/')))
        .await
        .context("GET /metrics")?
        .error_for_status()
        .context("GET /metrics")?
        .text()
        .await
        .context("GET /metrics: reading the body")?;
    let value = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(VaultMetrics {
        recoveries: value("backlock_vault_recoveries_total"),
        last_applied: value("backlock_vault_raft_last_applied"),
        records: value("backlock_vault_records"),
        snapshot_bytes: value("backlock_vault_snapshot_bytes"),
        snapshot_build_ms: value("backlock_vault_snapshot_build_milliseconds"),
    })
}

/// The counters of several replicas: recoveries summed (each is counted where it was
/// served), the furthest applied entry.
pub async fn metrics_of(bases: &[String]) -> Result<VaultMetrics> {
    let mut total = VaultMetrics::default();
    for base in bases {
        let m = metrics(base).await?;
        total.recoveries += m.recoveries;
        total.last_applied = total.last_applied.max(m.last_applied);
    }
    Ok(total)
}
