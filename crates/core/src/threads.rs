//! The thread budget: how many threads any one pool of the engine may run at once
//! (`--threads N`, `BACKLOCK_THREADS`). A phone backing up in the background gives it
//! one core; every pool (producers, compression workers, uploaders, restore and read
//! threads, the cloud stores' I/O threads) is capped by it. Threads that only
//! coordinate (the walk, the read-ahead hints) are not pools and stay one each.

use std::sync::atomic::{AtomicUsize, Ordering};

/// 0: not set, the machine's cores.
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// Caps every pool at `n` threads (at least one) from now on, for the whole process.
/// Set it before the first store or repository is opened: a pool already started
/// keeps its size.
pub fn set_budget(n: usize) {
    BUDGET.store(n.max(1), Ordering::Relaxed);
}

/// Threads a pool may run: the budget if one was set, else this machine's cores.
pub fn budget() -> usize {
    match BUDGET.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

/// `wanted` threads, cut to the budget (and at least one).
pub fn at_most(wanted: usize) -> usize {
    wanted.clamp(1, budget().max(1))
}

/// Starts a named thread in `scope`: the name (at most 15 bytes, Linux's limit) shows
/// in `top -H`, `/proc/PID/task/*/comm` and panic messages.
pub fn spawn_named<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .expect("the OS refused to start a thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_every_pool() {
        set_budget(1);
        assert_eq!((at_most(4), at_most(1), budget()), (1, 1, 1));
        set_budget(0);
        assert_eq!(budget(), 1, "a budget is at least one thread");
        set_budget(3);
        assert_eq!((at_most(2), at_most(16)), (2, 3));
    }
}
