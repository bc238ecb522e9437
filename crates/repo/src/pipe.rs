//! Bounded queues between the threads of a pipeline, whose waiting threads sleep.
//!
//! A lock-free channel spins and yields before it sleeps; on a phone in the
//! background that is CPU time (and `sched_yield` calls) spent waiting. Here a thread
//! that cannot go on sleeps on a condition variable at once, and a full queue wakes its
//! senders only once it has drained to half: a fast producer then runs in bursts
//! instead of waking for every item a slower consumer takes. Small items are best sent
//! in batches: every hand-over costs a lock, and a wake-up when the other side sleeps.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

/// What every end of one pipe shares.
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Receivers wait here for an item (or the last sender gone).
    filled: Condvar,
    /// Senders wait here for room (or, on a rendezvous pipe, their item taken).
    drained: Condvar,
    /// The items the queue may hold; 0: a rendezvous, each send waits until its item
    /// is taken.
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receivers: usize,
    /// Threads asleep on `filled` and on `drained`: nobody is woken in vain.
    waiting_receivers: usize,
    waiting_senders: usize,
    /// Items ever sent and ever taken: a rendezvous sender waits for its number.
    sent: u64,
    taken: u64,
}

/// A queue of at most `capacity` items; 0 makes each send wait until its item is taken.
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::with_capacity(capacity),
            senders: 1,
            receivers: 1,
            waiting_receivers: 0,
            waiting_senders: 0,
            sent: 0,
            taken: 0,
        }),
        filled: Condvar::new(),
        drained: Condvar::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The queue's state is consistent at every unlock: a panic elsewhere leaves
        // nothing half-done here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending end; cloned for each sending thread.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The receiving end; cloned for each receiving thread.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item`, sleeping while the queue is full. `Err(item)`: every receiver
    /// is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let sh = &*self.0;
        let mut st = sh.lock();
        loop {
            if st.receivers == 0 {
                return Err(item);
            }
            if st.items.len() < sh.capacity.max(1) {
                break;
            }
            st = wait(&sh.drained, st, |s| &mut s.waiting_senders);
        }
        st.items.push_back(item);
        st.sent += 1;
        let ticket = st.sent;
        if st.waiting_receivers > 0 {
            sh.filled.notify_one();
        }
        if sh.capacity == 0 {
            while st.taken < ticket {
                if st.receivers == 0 {
                    // Nobody will take it: it is the one item queued.
                    let item = st.items.pop_back().expect("the item just queued");
                    return Err(item);
                }
                st = wait(&sh.drained, st, |s| &mut s.waiting_senders);
            }
        }
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next item, sleeping while there is none; `None` once the queue is empty
    /// and every sender gone.
    pub(crate) fn recv(&self) -> Option<T> {
        let sh = &*self.0;
        let mut st = sh.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                st.taken += 1;
                // Senders wake when half the room is free (a rendezvous sender when
                // its item is taken): one wake-up per burst, not per item.
                if st.waiting_senders > 0 && st.items.len() <= sh.capacity / 2 {
                    sh.drained.notify_all();
                }
                return Some(item);
            }
            if st.senders == 0 {
                return None;
            }
            st = wait(&sh.filled, st, |s| &mut s.waiting_receivers);
        }
    }
}

impl<T> Receiver<T> {
    /// The items as they come, until the queue is empty and every sender gone.
    pub(crate) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv())
    }
}

/// Sleeps on `cv`, counted in the waiters `count` picks.
fn wait<'a, T>(
    cv: &Condvar,
    mut st: MutexGuard<'a, State<T>>,
    count: fn(&mut State<T>) -> &mut usize,
) -> MutexGuard<'a, State<T>> {
    *count(&mut st) += 1;
    let mut st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
    *count(&mut st) -= 1;
    st
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.0.lock().receivers += 1;
        Receiver(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.senders -= 1;
        if st.senders == 0 {
            self.0.filled.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.receivers -= 1;
        if st.receivers == 0 {
            self.0.drained.notify_all();
        }
    }
}

impl<T> Iterator for Receiver<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    /// Many senders and receivers: every item arrives once, and the iteration ends
    /// when the senders are gone.
    #[test]
    fn every_item_arrives_once() {
        let (tx, rx) = bounded::<u64>(16);
        let sum = AtomicUsize::new(0);
        let count = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..10_000 {
                        tx.send(t * 10_000 + i).unwrap();
                    }
                });
            }
            drop(tx);
            for _ in 0..3 {
                let rx = rx.clone();
                let (sum, count) = (&sum, &count);
                s.spawn(move || {
                    for v in rx {
                        sum.fetch_add(v as usize, Ordering::Relaxed);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            drop(rx);
        });
        assert_eq!(count.into_inner(), 30_000);
        assert_eq!(sum.into_inner(), (0..30_000).sum::<usize>());
    }

    /// The queue holds at most its capacity, in order; a sender that found it full
    /// sleeps until half of it is free.
    #[test]
    fn the_capacity_bounds_what_is_queued() {
        let (tx, rx) = bounded::<u32>(4);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for n in 0..100 {
                    tx.send(n).unwrap();
                    most.fetch_max(tx.0.lock().items.len(), Ordering::Relaxed);
                }
                drop(tx);
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(rx.0.lock().items.len(), 4, "full, and the sender asleep");
            assert_eq!(rx.recv(), Some(0));
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(rx.0.lock().items.len(), 3, "not woken at three of four");
            assert_eq!(rx.recv(), Some(1));
            let rest: Vec<u32> = rx.collect();
            assert_eq!(rest, (2..100).collect::<Vec<_>>());
        });
        assert_eq!(most.into_inner(), 4);
    }

    /// A rendezvous send returns only once its item is taken.
    #[test]
    fn a_rendezvous_send_waits_for_the_receiver() {
        let (tx, rx) = bounded::<u32>(0);
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                taken.store(1, Ordering::SeqCst);
                assert_eq!(rx.recv(), Some(7));
            });
            tx.send(7).unwrap();
            assert_eq!(taken.load(Ordering::SeqCst), 1);
        });
    }

    /// With every receiver gone, a send gives its item back instead of sleeping for
    /// ever, a waiting rendezvous send included.
    #[test]
    fn sends_fail_once_the_receivers_are_gone() {
        let (tx, rx) = bounded::<u32>(1);
        tx.send(1).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                drop(rx);
            });
            assert_eq!(tx.send(2), Err(2));
        });
        let (tx, rx) = bounded::<u32>(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                drop(rx);
            });
            assert_eq!(tx.send(3), Err(3));
        });
    }
}
