//! A fleet replica's configuration file (TOML; docs/OPERATIONS.md §Configuration).
//!
//! Paths in the file are relative to the file's own directory. The PKCS#11 PIN never
//! sits in the file itself: it comes from `pin_file` or from `BACKLOCK_HSM_PIN`.

use crate::fleet_tls::FleetTlsFiles;
use crate::run::TlsFiles;
use crate::service::VaultConfig;
use backlock_vault_proto::token::{FleetId, TokenKeys, TokenSecret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fleet sizes the vault supports: a majority survives one site down (3), two (5) or
/// three (7).
pub const FLEET_SIZES: [usize; 3] = [3, 5, 7];

/// A token secret of the relay's, in a file of its own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyFile {
    /// Its id in tokens, 2 to 255 (1 is the secret `vault init` made).
    pub id: u8,
    /// The file: 64 hex digits (`backlock vault token-key --out`).
    pub file: PathBuf,
}

fn default_token_max_lifetime_secs() -> u64 {
    backlock_vault_proto::token::DEFAULT_MAX_LIFETIME_SECS
}

fn default_true() -> bool {
    true
}

/// One replica's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This replica's id: one of `replicas`, never reused for another machine.
    pub node_id: u64,
    /// The longest lifetime of an account token this fleet accepts.
    #[serde(default = "default_token_max_lifetime_secs")]
    pub token_max_lifetime_secs: u64,
    /// More token secrets the relay may use (a rotation): files of 64 hex digits.
    #[serde(default)]
    pub token_keys: Vec<TokenKeyFile>,
    /// Whether tokens made with the token secret created by `vault init` (key 1) are
    /// accepted; false once a rotation retired it.
    #[serde(default = "default_true")]
    pub fleet_token_key: bool,
    /// Data directory (sealed log, snapshot, sealed secrets).
    pub data: PathBuf,
    /// Address of the device API.
    pub listen: SocketAddr,
    /// Address the peer listener binds.
    pub peer_listen: SocketAddr,
    /// Address of `/metrics` for monitoring (not served if absent). Keep it off the
    /// internet: it needs no credential.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Time-outs and connection limits of the device API.
    #[serde(default)]
    pub http: crate::http::HttpLimits,
    /// Guess limit: the same on every replica.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Requests per account allowed in a burst, per replica.
    #[serde(default = "default_burst")]
    pub account_burst: u32,
    /// Requests per account per second, sustained, per replica.
    #[serde(default = "default_rate")]
    pub account_rate: f64,
    /// Seconds a guess's attempt stays open for its KE3 (the same on every replica):
    /// also how long a record at zero waits for a right last guess before erasure.
    #[serde(default = "default_attempt_ttl")]
    pub attempt_ttl_secs: u64,
    /// HTTPS for the device API (plain HTTP if absent: only behind a TLS proxy).
    #[serde(default)]
    pub api_tls: Option<TlsFiles>,
    /// Mutual TLS between replicas (required).
    pub fleet_tls: FleetTlsFiles,
    /// Node key file (default `DATA/node.key`); ignored with `[pkcs11]`.
    #[serde(default)]
    pub node_key: Option<PathBuf>,
    /// Seal with a key generated inside a PKCS#11 token instead of a key file.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Settings>,
    /// Bind the data directory to a TPM 2.0 NV counter, so a copy put back is refused
    /// (docs/OPERATIONS.md §Rollback).
    #[serde(default)]
    pub tpm_counter: Option<crate::counter::CounterSettings>,
    /// Seconds an epoch lasts: an erased record stays readable from an old copy of the
    /// disk (with the token) until the end of the epoch after its erasure
    /// (docs/VAULT.md §Crypto-erasure).
    #[serde(default = "default_epoch_secs")]
    pub epoch_secs: u64,
    /// Keep the snapshot anchors devices leave (docs/VAULT.md §Snapshot anchor). Off
    /// until every replica runs a release that keeps them (docs/OPERATIONS.md §Day two).
    #[serde(default)]
    pub anchors: bool,
    /// Every replica of the fleet, this one included.
    pub replicas: Vec<ReplicaEntry>,
}

fn default_epoch_secs() -> u64 {
    crate::raft::DEFAULT_EPOCH.as_secs()
}

/// Where the node key lives in a PKCS#11 token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The token's PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// Label of the node key inside the token (created on first start).
    pub key_label: String,
    /// File holding the user PIN (otherwise `BACKLOCK_HSM_PIN`).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
}

/// One replica as every member knows it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Its Raft id.
    pub id: u64,
    /// `host:port` where the other replicas reach its peer listener; its fleet
    /// certificate names this host.
    pub peer: String,
    /// URL of its device API, for `vault status` and the devices' replica list.
    pub api: String,
}

fn default_max_attempts() -> u32 {
    VaultConfig::default().max_attempts
}
fn default_burst() -> u32 {
    VaultConfig::default().account_burst
}
fn default_rate() -> f64 {
    VaultConfig::default().account_rate
}
fn default_attempt_ttl() -> u64 {
    VaultConfig::default().session_ttl.as_secs()
}

/// The configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("vault configuration {path}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

impl FleetConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<FleetConfig, ConfigError> {
        let error = |reason: String| ConfigError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut config: FleetConfig = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.check().map_err(error)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data);
        resolve(&mut self.fleet_tls.ca);
        resolve(&mut self.fleet_tls.cert);
        resolve(&mut self.fleet_tls.key);
        if let Some(tls) = &mut self.api_tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        if let Some(key) = &mut self.node_key {
            resolve(key);
        }
        for key in &mut self.token_keys {
            resolve(&mut key.file);
        }
        if let Some(hsm) = &mut self.pkcs11 {
            resolve(&mut hsm.module);
            if let Some(pin) = &mut hsm.pin_file {
                resolve(pin);
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        if !FLEET_SIZES.contains(&self.replicas.len()) {
            return Err(format!(
                "lists {} replicas; a fleet has 3, 5 (the default) or 7, one per site",
                self.replicas.len()
            ));
        }
        let mut ids: Vec<u64> = self.replicas.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.replicas.len() || ids.contains(&0) {
            return Err("replica ids must be distinct and above zero".to_owned());
        }
        if self.me().is_none() {
            return Err(format!(
                "node_id = {} is not one of the [[replicas]]",
                self.node_id
            ));
        }
        // `NaN <= 0.0` is false: a NaN rate would pass a plain comparison and turn the
        // rate limit off.
        if self.max_attempts == 0
            || self.account_burst == 0
            || !(self.account_rate.is_finite() && self.account_rate > 0.0)
        {
            return Err(
                "max_attempts, account_burst and account_rate must be finite numbers above zero"
                    .to_owned(),
            );
        }
        if !(1..=3600).contains(&self.attempt_ttl_secs) {
            return Err("attempt_ttl_secs must be between 1 and 3600".to_owned());
        }
        self.http.check()?;
        if let Some(counter) = &self.tpm_counter {
            counter.check()?;
        }
        if !(1..=7 * 86_400).contains(&self.epoch_secs) {
            return Err("epoch_secs must be between 1 and 604800 (7 days)".to_owned());
        }
        if !(60..=30 * 86_400).contains(&self.token_max_lifetime_secs) {
            return Err(
                "token_max_lifetime_secs must be between 60 and 2592000 (30 days)".to_owned(),
            );
        }
        let mut key_ids: Vec<u8> = self.token_keys.iter().map(|k| k.id).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        if key_ids.len() != self.token_keys.len() || key_ids.iter().any(|id| *id < 2) {
            return Err(
                "[[token_keys]] ids must be distinct, from 2 to 255 (1 is the fleet's own)"
                    .to_owned(),
            );
        }
        if !self.fleet_token_key && self.token_keys.is_empty() {
            return Err(
                "fleet_token_key = false needs at least one [[token_keys]] entry".to_owned(),
            );
        }
        Ok(())
    }

    /// The token secrets this replica accepts: the fleet's own (key 1, unless retired)
    /// and the configured ones; tokens are issued with the highest id.
    pub fn token_keys(
        &self,
        server_public_key: &[u8; 32],
        fleet_secret: TokenSecret,
    ) -> Result<TokenKeys, crate::run::ServeError> {
        let mut keys = Vec::new();
        if self.fleet_token_key {
            keys.push((1u8, fleet_secret));
        }
        for key in &self.token_keys {
            let text = std::fs::read_to_string(&key.file).map_err(|e| {
                crate::run::ServeError::Setup(format!("token key {}: {e}", key.file.display()))
            })?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
                crate::run::ServeError::Setup(format!(
                    "token key {} must hold 64 hex digits",
                    key.file.display()
                ))
            })?;
            keys.push((key.id, TokenSecret::from_bytes(bytes)));
        }
        keys.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        let mut keys = keys.into_iter();
        let (id, secret) = keys.next().expect("checked: at least one token key");
        let mut all = TokenKeys::new(FleetId::of(server_public_key), id, secret)
            .with_max_lifetime(self.token_max_lifetime_secs);
        for (id, secret) in keys {
            all = all.accepting(id, secret);
        }
        Ok(all)
    }

    /// Opens the rollback counter, if one is configured.
    pub fn rollback_counter(
        &self,
    ) -> Result<Option<crate::raft::anchor::RollbackCounter>, crate::run::ServeError> {
        let Some(settings) = &self.tpm_counter else {
            return Ok(None);
        };
        let counter = crate::counter::open(settings)
            .map_err(|e| crate::run::ServeError::Setup(e.to_string()))?;
        Ok(Some(crate::raft::anchor::RollbackCounter {
            counter: counter.into(),
            every: Duration::from_millis(settings.advance_every_ms),
        }))
    }

    /// This replica's entry.
    pub fn me(&self) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| r.id == self.node_id)
    }

    /// The address peers reach this replica at.
    pub fn peer_address(&self) -> String {
        self.me().map(|r| r.peer.clone()).unwrap_or_default()
    }

    /// The other replicas' peer addresses.
    pub fn other_peers(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| r.id != self.node_id)
            .map(|r| r.peer.clone())
            .collect()
    }

    /// Guess limit, session lifetime and rate limits.
    pub fn vault(&self) -> VaultConfig {
        VaultConfig {
            max_attempts: self.max_attempts,
            account_burst: self.account_burst,
            account_rate: self.account_rate,
            session_ttl: Duration::from_secs(self.attempt_ttl_secs),
            anchors: self.anchors,
        }
    }
}
