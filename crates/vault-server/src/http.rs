//! The device API's HTTP server, with the limits a server on the internet needs: a
//! client that opens many connections and sends nothing, or sends its headers a byte
//! at a time (slowloris), or never finishes a request, holds nothing for long, and
//! one address cannot take every connection (docs/OPERATIONS.md §HTTP limits).

use crate::fleet_tls::PeerIdentity;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Limits of the device API's HTTP server (`[http]` in a fleet configuration).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Seconds a client has to send a request's headers (and its TLS handshake).
    pub header_timeout_secs: u64,
    /// Seconds a request may take, body and answer included.
    pub request_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress.
    pub idle_timeout_secs: u64,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

impl HttpLimits {
    /// Limits of the peer listener: its callers proved a fleet certificate, and a join
    /// waits up to two minutes for the new replica to catch up.
    pub fn peers() -> Self {
        HttpLimits {
            header_timeout_secs: 10,
            request_timeout_secs: 300,
            idle_timeout_secs: 300,
            max_connections: 1024,
            max_connections_per_ip: 1024,
        }
    }

    /// What is wrong with these limits, if anything.
    pub fn check(&self) -> Result<(), String> {
        let secs = [
            self.header_timeout_secs,
            self.request_timeout_secs,
            self.idle_timeout_secs,
        ];
        if secs.iter().any(|s| !(1..=3600).contains(s)) {
            return Err("[http] time-outs must be between 1 and 3600 seconds".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("[http] connection limits must be above zero".into());
        }
        Ok(())
    }
}

/// Counts connections, in all and by address; a slot is given back when dropped.
#[derive(Default)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &HttpLimits) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *open;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *total >= limits.max_connections || mine >= limits.max_connections_per_ip {
            return None;
        }
        *total += 1;
        by_ip.insert(ip, mine + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// A running server: [`Server::stop`] ends it gracefully.
pub(crate) struct Server {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets requests in progress finish (up to `grace`), and waits.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) within `limits`.
pub(crate) fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
) -> Server {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, app, tls, limits, stopped));
    Server { stop, task }
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, for instance: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a limit: closed at once, before anything is read.
        let Some(slot) = slots.take(peer.ip(), &limits) else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        let (app, tls, limits, stopped) =
            (app.clone(), tls.clone(), limits.clone(), stopped.clone());
        connections.spawn(async move {
            let _slot = slot;
            connection(tcp, peer, app, tls, limits, stopped).await;
        });
    }
    // Requests in progress finish; connections between requests close.
    while connections.join_next().await.is_some() {}
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
) {
    // Small replies must not wait for the client's delayed ACK (Nagle).
    let _ = tcp.set_nodelay(true);
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    match tls {
        None => http(TokioIo::new(tcp), app, None, limits, stopped).await,
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                // A client certificate (the peer listener asks for one) names who calls:
                // read once per connection, handed to every request on it.
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| crate::fleet_tls::identify(cert));
                http(TokioIo::new(stream), app, identity, limits, stopped).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

async fn http<I>(
    io: I,
    app: axum::Router,
    identity: Option<PeerIdentity>,
    limits: HttpLimits,
    mut stopped: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let started = Instant::now();
    // Milliseconds since `started` of the last request's end (or start), and how many
    // are in progress: the idle watchdog reads them.
    let last = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let request_timeout = Duration::from_secs(limits.request_timeout_secs);
    let service = {
        let (last, busy) = (last.clone(), busy.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let (app, last, busy) = (app.clone(), last.clone(), busy.clone());
            busy.fetch_add(1, Ordering::SeqCst);
            last.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
            async move {
                use hyper::service::Service;
                let app = hyper_util::service::TowerToHyperService::new(app);
                let answer = tokio::time::timeout(request_timeout, app.call(request)).await;
                last.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
                busy.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => timed_out(),
                })
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut closing = false;
    loop {
        let since = Duration::from_millis(last.load(Ordering::SeqCst));
        let wake = (started + since + idle).max(Instant::now() + Duration::from_millis(10));
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()), if !closing => {
                let quiet = started.elapsed() >= since + idle;
                if quiet && busy.load(Ordering::SeqCst) == 0 {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = stopped.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

fn timed_out() -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::api::error_response(backlock_vault_proto::wire::WireError::new(
        backlock_vault_proto::wire::ErrorCode::Unavailable,
        "the request took too long; retry",
    ))
    .into_response()
}
