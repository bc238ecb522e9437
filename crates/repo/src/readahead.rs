//! Reading a source file while the disk fetches what comes next.
//!
//! The backup thread alternates between reading a window of a file and chunking and
//! hashing it. The kernel's own read-ahead (128 KiB by default) is far smaller than a
//! window, so without a hint the disk idles while the CPU works and the CPU idles
//! while the disk reads. `ReadAhead` asks the kernel (`POSIX_FADV_WILLNEED`) to start
//! reading the next window as soon as the current one has been handed out.

use rustix::fs::{fadvise, Advice};
use std::{
    fs::File,
    io::{self, Read},
    num::NonZeroU64,
};

/// How far ahead of the reader the kernel is asked to fetch.
const AHEAD: u64 = 8 << 20;

/// A file read front to back, with the next [`AHEAD`] bytes always on their way.
pub(crate) struct ReadAhead {
    file: File,
    /// Bytes handed out so far.
    pos: u64,
    /// The kernel has been asked for everything before this offset.
    advised: u64,
}

impl ReadAhead {
    pub(crate) fn new(file: File) -> Self {
        // Doubles the kernel's own read-ahead window for this file. Advice only: a
        // filesystem that ignores it costs nothing, so its result is not checked.
        let _ = fadvise(&file, 0, None, Advice::Sequential);
        ReadAhead {
            file,
            pos: 0,
            advised: 0,
        }
    }

    fn advise(&mut self) {
        if self.pos + AHEAD / 2 < self.advised {
            return;
        }
        let from = self.advised.max(self.pos);
        // WILLNEED starts asynchronous reads and returns at once.
        let _ = fadvise(&self.file, from, NonZeroU64::new(AHEAD), Advice::WillNeed);
        self.advised = from + AHEAD;
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if n > 0 {
            self.advise();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_the_file_exactly() {
        let data: Vec<u8> = (0..(3 * AHEAD as usize + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&data).unwrap();
        let mut out = Vec::new();
        ReadAhead::new(File::open(tmp.path()).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
