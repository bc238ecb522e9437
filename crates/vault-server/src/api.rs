//! The vault's HTTP API (docs/VAULT.md §HTTP API).
//!
//! Requests and replies are `WIRE_VERSION ‖ postcard` bodies; errors are JSON
//! [`WireError`]s with a matching HTTP status; the account token rides in
//! `Authorization: Bearer`.

use crate::service::{Reply, Vault};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use backlock_vault_proto::receipt::ReceiptOp;
use backlock_vault_proto::wire::{self, path, DecodeError, ErrorCode, WireError, MAX_BODY};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// Media type of request and reply bodies.
pub const CONTENT_TYPE: &str = "application/x-backlock-vault";

/// The HTTP status that goes with each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::WrongPassword | ErrorCode::BadToken | ErrorCode::TokenExpired => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Locked => StatusCode::GONE,
        ErrorCode::NoKey | ErrorCode::SessionExpired => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyRegistered | ErrorCode::AnchorNotNewer => StatusCode::CONFLICT,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::UnsupportedVersion | ErrorCode::Malformed => StatusCode::BAD_REQUEST,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(crate) fn error_response(e: WireError) -> Response {
    let mut response = (status_of(e.code), axum::Json(&e)).into_response();
    if let Some(ms) = e.retry_after_ms {
        let secs = ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn respond<T: Serialize>(reply: Reply<T>) -> Response {
    match reply {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], wire::encode(&body)).into_response(),
        Err(e) => error_response(e),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Reply<T> {
    wire::decode(body).map_err(|e| match e {
        DecodeError::UnsupportedVersion(_) => {
            WireError::new(ErrorCode::UnsupportedVersion, e.to_string())
        }
        _ => WireError::new(ErrorCode::Malformed, e.to_string()),
    })
}

fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

async fn info(State(vault): State<Arc<Vault>>) -> Response {
    respond(Ok(vault.info()))
}

async fn register_start(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    respond(decode(&body).and_then(|req| v.register_start(token(&h), req)))
}

async fn register_finish(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.register_finish(token(&h), req).await.map(without_receipt)),
        Err(e) => error_response(e),
    }
}

async fn register_finish_v3(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.register_finish(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

/// The reply of the routes before receipts.
fn without_receipt(reply: wire::RegisterFinishReplyV3) -> wire::RegisterFinishReply {
    wire::RegisterFinishReply {
        generation: reply.generation,
        attempts_left: reply.attempts_left,
    }
}

async fn recover_start(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.recover_start(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

async fn recover_finish(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.recover_finish(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

/// An owner proof of the first format binds no vault and no time: a relay that kept
/// one could use it later. Refused, with what to do.
fn first_format_proof() -> WireError {
    WireError::new(
        ErrorCode::Forbidden,
        "this app signs owner proofs of the first format, which this vault no longer accepts (they name no vault and no time): update the app, then change the password or delete again",
    )
}

/// A first registration from an app of the first format goes on as before; its
/// replacements are refused ([`first_format_proof`]).
async fn register_finish_v1(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    let old: wire::RegisterFinishV1 = match decode(&body) {
        Ok(old) => old,
        Err(e) => return error_response(e),
    };
    if old.replace.is_some() {
        return error_response(first_format_proof());
    }
    let req = wire::RegisterFinish {
        account: old.account,
        record_id: old.record_id,
        upload: old.upload,
        wrapped: old.wrapped,
        owner_public_key: old.owner_public_key,
        replace: None,
    };
    respond(v.register_finish(token(&h), req).await.map(without_receipt))
}

async fn delete_v1(body: Bytes) -> Response {
    match decode::<wire::DeleteRecordV1>(&body) {
        Ok(_) => error_response(first_format_proof()),
        Err(e) => error_response(e),
    }
}

async fn delete(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.delete(token(&h), req).await.and_then(
            |done| match done.receipt.body.op {
                ReceiptOp::Absent => Err(crate::service::no_key()),
                _ => Ok(wire::Deleted {}),
            },
        )),
        Err(e) => error_response(e),
    }
}

async fn delete_v3(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.delete(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

async fn status(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.status(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

async fn set_anchor(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.set_anchor(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

async fn anchor(State(v): State<Arc<Vault>>, h: HeaderMap, body: Bytes) -> Response {
    match decode(&body) {
        Ok(req) => respond(v.anchor(token(&h), req).await),
        Err(e) => error_response(e),
    }
}

async fn healthz(State(v): State<Arc<Vault>>) -> Response {
    if v.is_serving() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no leader\n").into_response()
    }
}

async fn metrics(State(v): State<Arc<Vault>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        v.metrics.render(v.gauges()),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(WireError::new(
        ErrorCode::Malformed,
        "no such endpoint; this vault speaks wire version 1 under /v1/",
    ))
}

/// `/metrics` (and `/healthz`), served on their own listener: monitoring reads
/// them without any credential of the device API or the fleet.
pub fn metrics_router(vault: Arc<Vault>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(vault)
}

/// The device-facing API.
pub fn router(vault: Arc<Vault>) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route(path::INFO, get(info))
        .route(path::REGISTER_START, post(register_start))
        .route(path::REGISTER_FINISH, post(register_finish))
        .route(path::RECOVER_START, post(recover_start))
        .route(path::RECOVER_FINISH, post(recover_finish))
        .route(path::DELETE, post(delete))
        .route(path::REGISTER_FINISH_V1, post(register_finish_v1))
        .route(path::DELETE_V1, post(delete_v1))
        .route(path::STATUS, post(status))
        .route(path::ANCHOR_SET, post(set_anchor))
        .route(path::ANCHOR_GET, post(anchor))
        .route(path::DELETE_V3, post(delete_v3))
        .route(path::REGISTER_FINISH_V3, post(register_finish_v3));
    #[cfg(feature = "bench-fill")]
    let router = router.route(crate::bench_fill::PATH, post(crate::bench_fill::handler));
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(vault)
}
