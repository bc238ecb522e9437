//! Cancelling a long operation. The engine stops at the process's interrupt flag
//! (`backlock_repo::interrupt`), between chunks, files and packs; so long operations
//! run one at a time per process, and the flag stands for the running one's token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Cancels the operation it is given to. Cancelling before the operation starts
/// makes it stop at once; cancelling after it ended does nothing.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelToken {
    cancelled: AtomicBool,
}

#[uniffi::export]
impl CancelToken {
    /// A token not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(CancelToken::default())
    }

    /// Asks the operation to stop; it returns `Error::Cancelled` soon after.
    pub fn cancel(self: Arc<Self>) {
        self.cancelled.store(true, Ordering::SeqCst);
        let active = lock(&ACTIVE);
        if active.as_ref().is_some_and(|a| Arc::ptr_eq(a, &self)) {
            backlock_repo::interrupt::flag().store(true, Ordering::SeqCst);
        }
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// One long operation at a time: the engine's interrupt flag is the process's.
static OPERATION: Mutex<()> = Mutex::new(());
/// The running operation's token.
static ACTIVE: Mutex<Option<Arc<CancelToken>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while a long operation runs: its token is the one the flag answers to.
pub(crate) struct Running {
    _one: MutexGuard<'static, ()>,
}

impl Running {
    /// Waits for any other long operation to end, then makes `token` the running one.
    pub(crate) fn start(token: Option<Arc<CancelToken>>) -> Running {
        let one = lock(&OPERATION);
        let flag = backlock_repo::interrupt::flag();
        let mut active = lock(&ACTIVE);
        // Set under ACTIVE's lock, so a concurrent cancel either sees this token or
        // had already marked it.
        flag.store(
            token.as_ref().is_some_and(|t| t.is_cancelled()),
            Ordering::SeqCst,
        );
        *active = token;
        Running { _one: one }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut active = lock(&ACTIVE);
        *active = None;
        backlock_repo::interrupt::flag().store(false, Ordering::SeqCst);
    }
}
