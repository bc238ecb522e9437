//! Synthetic accounts for `scripts/bench-vault --accounts N`; compiled only with the
//! `bench-fill` feature, never into a release build.
//!
//! `POST /v1/bench/fill` registers `count` accounts named `fill-{first}`, … through the
//! same proposal, batching, replication and apply path as a device's registration; only
//! the device's half (Argon2id and the OPAQUE upload) is skipped, so ten million
//! accounts load in minutes instead of days. Each record carries random bytes of a real
//! record's sizes and opens for no password: the benchmark measures the vault at that
//! size with accounts of its own that it registered for real.

use crate::service::{Reply, Vault};
use crate::state::{Applied, Command, NewRecord};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use backlock_vault_proto::server::PASSWORD_FILE_LEN;
use backlock_vault_proto::wire::{ErrorCode, WireError};
use backlock_vault_proto::wrap::WRAPPED_LEN;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The endpoint's path.
pub const PATH: &str = "/v1/bench/fill";

/// Most accounts per request: one request's proposals stay within a few entries.
pub const MAX_COUNT: u32 = 100_000;

/// A fill request (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fill {
    /// Number of the first account.
    pub first: u64,
    /// How many accounts.
    pub count: u32,
}

/// What a fill did (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Filled {
    /// Accounts registered.
    pub stored: u32,
    /// Accounts that were registered already (a request sent again).
    pub existing: u32,
}

/// The account name of synthetic account `n`.
pub fn account(n: u64) -> String {
    format!("fill-{n}")
}

fn synthetic_record(max_attempts: u32) -> NewRecord {
    let mut rng = rand::rngs::OsRng;
    let mut record = NewRecord {
        record_id: [0; 16],
        password_file: vec![0; PASSWORD_FILE_LEN],
        wrapped: vec![0; WRAPPED_LEN],
        owner_public_key: [0; 32],
        max_attempts,
    };
    rng.fill_bytes(&mut record.record_id);
    rng.fill_bytes(&mut record.password_file);
    rng.fill_bytes(&mut record.wrapped);
    rng.fill_bytes(&mut record.owner_public_key);
    record
}

impl Vault {
    /// Registers synthetic accounts `first..first + count` (see the module docs).
    pub async fn bench_fill(&self, req: Fill) -> Reply<Filled> {
        if req.count > MAX_COUNT {
            return Err(WireError::new(
                ErrorCode::Malformed,
                format!(
                    "count {} is above {MAX_COUNT}: send several requests",
                    req.count
                ),
            ));
        }
        let Some(end) = req.first.checked_add(u64::from(req.count)) else {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "first + count overflows: number the accounts from lower",
            ));
        };
        let max_attempts = self.info().max_attempts;
        let commands = (req.first..end)
            .map(|n| Command::Register {
                account: account(n),
                record: synthetic_record(max_attempts),
            })
            .collect();
        let mut filled = Filled {
            stored: 0,
            existing: 0,
        };
        for result in self.node().propose_all(commands).await {
            match result {
                Ok(Applied::Stored { .. }) => filled.stored += 1,
                Ok(Applied::Refused(crate::state::Refusal::AlreadyRegistered)) => {
                    filled.existing += 1
                }
                Ok(other) => {
                    return Err(WireError::new(
                        ErrorCode::Internal,
                        format!("a synthetic registration gave {other:?}"),
                    ))
                }
                Err(e) => {
                    return Err(WireError::new(ErrorCode::Unavailable, e.to_string()));
                }
            }
        }
        Ok(filled)
    }
}

/// The handler of [`PATH`].
pub(crate) async fn handler(
    State(v): State<Arc<Vault>>,
    axum::Json(req): axum::Json<Fill>,
) -> Response {
    match v.bench_fill(req).await {
        Ok(filled) => axum::Json(filled).into_response(),
        Err(e) => crate::api::error_response(e),
    }
}
