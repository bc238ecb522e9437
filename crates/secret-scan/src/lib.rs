//! A global allocator for tests that must show a secret is wiped after use: every
//! block freed while a secret is watched is searched for it before it goes back to
//! the system. A copy of a password or key dropped without being zeroed (a `String`
//! that was cloned, formatted or grown) is then counted, which is what an attacker
//! who reads a process's freed memory (a core dump, a swapped page, the next
//! allocation) would find.
//!
//! ```ignore
//! #[global_allocator]
//! static SCAN: backlock_secret_scan::FreedMemoryScan = backlock_secret_scan::FreedMemoryScan;
//!
//! backlock_secret_scan::watch(b"correct horse");
//! run_the_flow();
//! assert_eq!(backlock_secret_scan::stop().blocks, 0);
//! ```
//!
//! One secret at a time, process-wide: a test binary that uses it runs its watched
//! flows one after another.
#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// The longest secret that can be watched.
pub const MAX_SECRET: usize = 128;

static SECRET: [AtomicU8; MAX_SECRET] = [const { AtomicU8::new(0) }; MAX_SECRET];
/// The watched secret's length; 0 when nothing is watched.
static SECRET_LEN: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// `BACKLOCK_SECRET_SCAN_TRACE` was set at [`watch`]: each find prints where the block
/// was freed and the bytes around the copy (the secret with them: a test's own, made
/// up for it; never set this where the watched secret is real).
static TRACE: AtomicBool = AtomicBool::new(false);
/// A find is being printed (printing allocates and frees).
static PRINTING: AtomicBool = AtomicBool::new(false);

/// The system allocator, searching freed blocks for the watched secret.
pub struct FreedMemoryScan;

/// What a watch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Freed blocks that held the secret.
    pub blocks: usize,
    /// The size of the largest of them (a hint to where the copy was made).
    pub largest: usize,
}

/// Starts searching freed blocks for `secret` (at least 8 bytes, so that chance
/// matches do not count, and at most [`MAX_SECRET`]). Counts start at zero.
pub fn watch(secret: &[u8]) {
    assert!(
        (8..=MAX_SECRET).contains(&secret.len()),
        "a watched secret is 8 to {MAX_SECRET} bytes"
    );
    SECRET_LEN.store(0, Ordering::SeqCst);
    for (slot, &b) in SECRET.iter().zip(secret) {
        slot.store(b, Ordering::SeqCst);
    }
    BLOCKS.store(0, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    let trace = std::env::var_os("BACKLOCK_SECRET_SCAN_TRACE").is_some();
    TRACE.store(trace, Ordering::SeqCst);
    SECRET_LEN.store(secret.len(), Ordering::SeqCst);
}

/// Stops searching; what was found since [`watch`].
pub fn stop() -> Found {
    SECRET_LEN.store(0, Ordering::SeqCst);
    Found {
        blocks: BLOCKS.load(Ordering::SeqCst),
        largest: LARGEST.load(Ordering::SeqCst),
    }
}

/// Counts `block` if it holds the watched secret. Allocates nothing (it runs inside
/// the allocator) unless a find is to be printed.
fn search(block: &[u8]) {
    let len = SECRET_LEN.load(Ordering::SeqCst);
    if len == 0 || block.len() < len {
        return;
    }
    // Compared where it is kept: a copy on this thread's stack would be a stale copy
    // of the secret that a later move could carry into the heap, and then be found.
    let secret = &SECRET[..len];
    let first = secret[0].load(Ordering::Relaxed);
    let held = |w: &[u8]| {
        w[0] == first
            && w.iter()
                .zip(secret)
                .all(|(b, s)| *b == s.load(Ordering::Relaxed))
    };
    if let Some(at) = block.windows(len).position(held) {
        BLOCKS.fetch_add(1, Ordering::SeqCst);
        LARGEST.fetch_max(block.len(), Ordering::SeqCst);
        if TRACE.load(Ordering::SeqCst) && !PRINTING.swap(true, Ordering::SeqCst) {
            let trace = std::backtrace::Backtrace::force_capture();
            let around = &block[at.saturating_sub(48)..(at + len + 48).min(block.len())];
            eprintln!(
                "a freed block of {} bytes held the secret at {at}, amid {around:02x?}:\n{trace}",
                block.len()
            );
            PRINTING.store(false, Ordering::SeqCst);
        }
    }
}

// SAFETY: every call is passed on to the system allocator; blocks are handed out
// zeroed, so every byte of a block is initialised, and `dealloc` reads the block it is
// given before `System` frees it. `realloc` is the trait's default (allocate, copy,
// free), so a block that moves is searched as it is freed.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for FreedMemoryScan {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if SECRET_LEN.load(Ordering::Relaxed) != 0 {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes (the caller's
            // contract), zeroed when it was handed out.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            search(block);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}
