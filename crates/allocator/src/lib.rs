//! Process-wide allocator settings for backlock's executables.
//!
//! glibc's malloc serves a block of at least its *mmap threshold* from a mapping of
//! its own, which goes back to the system the moment it is freed. The threshold
//! starts at 128 KiB, but by default glibc raises it to the size of the largest
//! mapped block freed so far (up to 32 MiB), and its trim threshold to twice that.
//! An incremental backup frees the parent snapshot's 8 MiB buffers before its
//! pipeline starts; from then on every multi-MiB chunk and pack buffer comes from
//! per-thread arenas, each of which may keep 16 MiB of freed memory resident. On the
//! 4 GB benchmark set that is 90 MiB of peak RSS for 63 MiB of live heap; with the
//! threshold fixed, 73 MiB.
//!
//! ```
//! // First thing in `main`, before any thread starts.
//! backlock_allocator::return_freed_blocks();
//! ```
#![deny(unsafe_code)]

/// Blocks of this size and larger get a mapping of their own. Pipeline buffers (chunks
/// up to 4 MiB, packs, read buffers) are far above it; a SQLite page is far below.
pub const MAPPED_FROM: usize = 256 << 10;

/// Fixes glibc's mmap threshold at [`MAPPED_FROM`], so that freed large buffers go back
/// to the system instead of staying resident in an arena. Returns whether the setting
/// took; elsewhere than on glibc it does nothing and returns false. Call it from a
/// program's `main`, never from a library that runs inside another program.
pub fn return_freed_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; glibc allows it at any time
        // from any thread, and the value is a constant within the parameter's range.
        #[allow(unsafe_code)]
        let took = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MAPPED_FROM as libc::c_int) };
        took == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_threshold() {
        assert!(super::return_freed_blocks());
    }
}
