//! A small HTTP proxy that misbehaves like a bad cloud: for a fraction of requests
//! it answers 503 Slow Down or 500, throttles with 429, resets the connection
//! before answering, cuts the answer off halfway, or stalls past the client's
//! timeout. Everything else is forwarded to the real server.
//!
//! One request per connection: the proxy asks the server for `Connection: close`, so
//! every request gets its own fault roll, and the client never reuses a connection
//! the proxy closed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// The faults the proxy plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 Slow Down` (S3's throttling answer).
    SlowDown,
    /// `500 Internal Error`.
    InternalError,
    /// `429 Too Many Requests`.
    TooManyRequests,
    /// The connection is closed without an answer, after the request was read.
    Reset,
    /// The request is forwarded, and only the first half of the answer comes back.
    Truncate,
    /// The request is held for `stall` before it is forwarded.
    Stall,
}

const ALL: [Fault; 6] = [
    Fault::SlowDown,
    Fault::InternalError,
    Fault::TooManyRequests,
    Fault::Reset,
    Fault::Truncate,
    Fault::Stall,
];

/// What happened so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Requests forwarded intact.
    pub forwarded: AtomicU64,
    /// Faults played, by kind (indexed as [`Fault`] declares them).
    pub faults: [AtomicU64; 6],
}

impl Counters {
    /// Faults of one kind.
    pub fn of(&self, f: Fault) -> u64 {
        self.faults[ALL.iter().position(|x| *x == f).unwrap_or(0)].load(Ordering::Relaxed)
    }
    /// All faults.
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// What it did.
    pub counters: Arc<Counters>,
    ratio: Arc<Mutex<f64>>,
    outage: Arc<Outage>,
    forged: Arc<Forged>,
    stop: Arc<AtomicBool>,
}

/// Requests whose first line contains `needle` are not forwarded: the proxy answers
/// them itself with `status` and `body`, as a relay that drops a request and says
/// "done" (or "no such record").
#[derive(Debug, Default)]
struct Forged {
    rule: Mutex<Option<(String, u16, Vec<u8>)>>,
}

impl Forged {
    fn answer(&self, head: &str) -> Option<(u16, Vec<u8>)> {
        let rule = self.rule.lock().unwrap_or_else(|p| p.into_inner());
        let (needle, status, body) = rule.as_ref()?;
        let first = head.lines().next().unwrap_or("");
        first
            .contains(needle.as_str())
            .then(|| (*status, body.clone()))
    }
}

/// Requests whose first line contains `needle` pass `allowed` times, then every
/// later one is answered 503: a store that stops taking one kind of upload.
#[derive(Debug, Default)]
struct Outage {
    rule: Mutex<Option<(String, u64)>>,
    seen: AtomicU64,
}

impl Outage {
    fn hits(&self, head: &str) -> bool {
        let rule = self.rule.lock().unwrap_or_else(|p| p.into_inner());
        let Some((needle, allowed)) = rule.as_ref() else {
            return false;
        };
        let first = head.lines().next().unwrap_or("");
        first.contains(needle.as_str()) && self.seen.fetch_add(1, Ordering::SeqCst) >= *allowed
    }
}

impl FaultProxy {
    /// Proxies to `upstream`, faulting `ratio` of requests (0.0–1.0) with the kinds
    /// in turn chosen by a seeded generator; a stall lasts `stall`.
    pub fn start(upstream: SocketAddr, ratio: f64, seed: u64, stall: Duration) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let counters = Arc::new(Counters::default());
        let ratio = Arc::new(Mutex::new(ratio));
        let stop = Arc::new(AtomicBool::new(false));
        let outage = Arc::new(Outage::default());
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)));
        let forged = Arc::new(Forged::default());
        {
            let (counters, ratio, stop) = (counters.clone(), ratio.clone(), stop.clone());
            let (outage, forged) = (outage.clone(), forged.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let fault = {
                        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                        let r = *ratio.lock().unwrap_or_else(|p| p.into_inner());
                        (rng.gen::<f64>() < r).then(|| ALL[rng.gen_range(0..ALL.len())])
                    };
                    let (counters, outage, forged) =
                        (counters.clone(), outage.clone(), forged.clone());
                    std::thread::spawn(move || {
                        let rules = Rules {
                            outage: &outage,
                            forged: &forged,
                        };
                        let _ = serve(conn, upstream, fault, stall, &counters, rules);
                    });
                }
            });
        }
        FaultProxy {
            addr,
            counters,
            ratio,
            outage,
            forged,
            stop,
        }
    }

    /// From now on, requests whose request line contains `needle` (such as
    /// `"POST /v3/delete"`) are not forwarded: the proxy answers them itself with the
    /// HTTP `status` and `body`. `None` ends it.
    pub fn answer_instead(&self, rule: Option<(&str, u16, Vec<u8>)>) {
        *self.forged.rule.lock().unwrap_or_else(|p| p.into_inner()) =
            rule.map(|(needle, status, body)| (needle.to_owned(), status, body));
    }

    /// From now on, requests whose request line contains `needle` (a method and path
    /// prefix such as `"PUT /bucket/prefix/packs/"`) pass `allowed` more times, then
    /// every one is answered 503.
    pub fn fail_after(&self, needle: &str, allowed: u64) {
        self.outage.seen.store(0, Ordering::SeqCst);
        *self.outage.rule.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((needle.to_string(), allowed));
    }

    /// Ends an outage set by [`FaultProxy::fail_after`].
    pub fn recover(&self) {
        *self.outage.rule.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Changes the fault ratio (0.0 turns the proxy into a plain relay).
    pub fn set_ratio(&self, ratio: f64) {
        *self.ratio.lock().unwrap_or_else(|p| p.into_inner()) = ratio;
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request: the head (up to the blank line) and a `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 256 << 10 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "chunked request bodies are not proxied",
        ));
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

fn canned(conn: &mut TcpStream, status: &str, code: &str) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// What the test told the proxy to do besides random faults.
#[derive(Clone, Copy)]
struct Rules<'a> {
    outage: &'a Outage,
    forged: &'a Forged,
}

fn serve(
    mut conn: TcpStream,
    upstream: SocketAddr,
    fault: Option<Fault>,
    stall: Duration,
    counters: &Counters,
    rules: Rules<'_>,
) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, body) = read_request(&mut conn)?;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    if let Some((status, answer)) = rules.forged.answer(&head) {
        let kind = if answer.first() == Some(&b'{') {
            "application/json"
        } else {
            "application/octet-stream"
        };
        write!(
            conn,
            "HTTP/1.1 {status} Forged\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            answer.len()
        )?;
        conn.write_all(&answer)?;
        return conn.flush();
    }
    let fault = if rules.outage.hits(&head) {
        Some(Fault::SlowDown)
    } else {
        fault
    };
    if let Some(f) = fault {
        counters.faults[ALL.iter().position(|x| *x == f).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Some(Fault::SlowDown) => return canned(&mut conn, "503 Slow Down", "SlowDown"),
        Some(Fault::InternalError) => {
            return canned(&mut conn, "500 Internal Server Error", "InternalError")
        }
        Some(Fault::TooManyRequests) => {
            return canned(&mut conn, "429 Too Many Requests", "TooManyRequests")
        }
        Some(Fault::Reset) => return conn.shutdown(Shutdown::Both),
        Some(Fault::Stall) => std::thread::sleep(stall),
        Some(Fault::Truncate) | None => {}
    }
    // Forward with `Connection: close`, so the answer ends when the server closes.
    let mut up = TcpStream::connect(upstream)?;
    let mut forwarded = String::with_capacity(head.len() + 20);
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    up.write_all(forwarded.as_bytes())?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    if fault == Some(Fault::Truncate) {
        conn.write_all(&answer[..answer.len() / 2])?;
        return conn.shutdown(Shutdown::Both);
    }
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    conn.write_all(&answer)?;
    conn.shutdown(Shutdown::Write)
}
