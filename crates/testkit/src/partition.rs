//! A TCP proxy in front of one replica's peer listener that can cut it off from chosen
//! replicas, to test network partitions with real processes.
//!
//! Each replica connects to its peers from its own loopback address (127.0.0.x), so the
//! proxy tells callers apart by source address. Blocking a source refuses its new
//! connections and resets the ones it has open. A connection's descriptors are closed
//! as soon as either side closes it, so a long test holds only the connections that
//! are open, well under a user's descriptor limit.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
struct Shared {
    blocked: HashSet<IpAddr>,
    /// Each open connection's source and its two sockets, by connection number.
    open: HashMap<u64, (IpAddr, [TcpStream; 2])>,
    next: u64,
}

/// A proxy from `listen` to `upstream`, for the life of the test process.
pub struct PartitionProxy {
    /// Where it listens.
    pub listen: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl PartitionProxy {
    /// Starts proxying `listen` → `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<PartitionProxy> {
        let listener = TcpListener::bind(listen)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(source) = client.peer_addr().map(|a| a.ip()) else {
                    continue;
                };
                let mut state = accepting.lock().expect("proxy lock");
                if state.blocked.contains(&source) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let id = state.next;
                state.next += 1;
                state.open.insert(id, (source, [c, s]));
                drop(state);
                let done = Arc::new(AtomicU8::new(0));
                pipe(&client, &server, id, &accepting, &done);
                pipe(&server, &client, id, &accepting, &done);
            }
        });
        Ok(PartitionProxy { listen, shared })
    }

    /// Cuts every connection from `sources` (and refuses new ones) until [`Self::heal`].
    pub fn block(&self, sources: &[IpAddr]) {
        let mut state = self.shared.lock().expect("proxy lock");
        state.blocked.extend(sources.iter().copied());
        let Shared { blocked, open, .. } = &mut *state;
        open.retain(|_, (source, streams)| {
            if blocked.contains(source) {
                for stream in streams {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                false
            } else {
                true
            }
        });
    }

    /// Lets every source through again.
    pub fn heal(&self) {
        self.shared.lock().expect("proxy lock").blocked.clear();
    }
}

/// Copies `from` → `to` on a thread until either side closes; the second direction
/// to finish (`done` counts them) forgets connection `id`, closing its sockets.
fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    id: u64,
    shared: &Arc<Mutex<Shared>>,
    done: &Arc<AtomicU8>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (shared, done) = (shared.clone(), done.clone());
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
        if done.fetch_add(1, Ordering::SeqCst) == 1 {
            shared.lock().expect("proxy lock").open.remove(&id);
        }
    });
}
