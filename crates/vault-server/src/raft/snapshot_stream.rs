//! The snapshot a replica sends a follower, as a stream of frames (docs/VAULT.md
//! §Snapshots between replicas): whoever writes or reads it holds one account at a
//! time, never the whole state.
//!
//! Layout: [`MAGIC`], the format byte [`FORMAT`], then frames, each a `u32`
//! little-endian length and that many bytes of postcard: first a [`StreamHeader`], then
//! one [`Frame::Account`] per account, last [`Frame::End`] with the number of accounts.
//! The releases before sent `postcard(SmData)`, which cannot begin with the magic: a
//! postcard varint is at most ten bytes and its tenth never has the top bit set.

use super::types::{LogId, StoredMembership};
use crate::members::Members;
use crate::state::Account;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// What a stream begins with.
pub(crate) const MAGIC: [u8; 10] = [0xFF; 10];
/// The stream format this release writes.
pub(crate) const FORMAT: u8 = 1;
/// Largest frame a reader takes: an account is at most a few KiB.
const MAX_FRAME: u32 = 1 << 20;

/// What the stream carries beside the accounts.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StreamHeader {
    /// The last entry the state includes.
    pub(crate) last_applied: Option<LogId>,
    /// The membership as of that entry.
    pub(crate) membership: StoredMembership,
    /// Join tickets and retired replicas.
    pub(crate) members: Members,
    /// The applied log's digest chain up to `last_applied`.
    pub(crate) digest: [u8; 32],
    /// The sender's bucket hash key. Accounts with a record come bucket by bucket
    /// under it; a receiver that buckets by it too seals each lower node once.
    pub(crate) placement: [u8; 32],
}

/// One frame after the header.
#[derive(Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "one frame exists at a time; a box would cost an allocation per account"
)]
pub(crate) enum Frame {
    /// What one account holds, its record's secrets in clear.
    Account { name: String, held: Account },
    /// The end, with the number of account frames before it.
    End { accounts: u64 },
}

/// Whether `prefix` (the first bytes of snapshot data) begins a stream.
pub(crate) fn is_stream(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Writes a stream: [`StreamWriter::new`] with the header, an account at a time,
/// [`StreamWriter::finish`].
pub(crate) struct StreamWriter<W: Write> {
    out: W,
    accounts: u64,
    /// The frame being written: it holds secrets, so it is wiped.
    frame: Zeroizing<Vec<u8>>,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `out` with `header`.
    pub(crate) fn new(mut out: W, header: &StreamHeader) -> io::Result<Self> {
        out.write_all(&MAGIC)?;
        out.write_all(&[FORMAT])?;
        let mut this = Self {
            out,
            accounts: 0,
            frame: Zeroizing::new(Vec::new()),
        };
        this.frame(header)?;
        Ok(this)
    }

    fn frame<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let mut bytes = std::mem::take(&mut *self.frame);
        bytes.clear();
        let bytes = postcard::to_extend(value, bytes).map_err(|e| invalid(e.to_string()))?;
        *self.frame = bytes;
        let len = u32::try_from(self.frame.len())
            .ok()
            .filter(|&n| n <= MAX_FRAME)
            .ok_or_else(|| invalid(format!("a frame of {} bytes", self.frame.len())))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&self.frame)
    }

    /// Writes what `name` holds.
    pub(crate) fn account(&mut self, name: String, held: Account) -> io::Result<()> {
        self.frame(&Frame::Account { name, held })?;
        self.accounts += 1;
        Ok(())
    }

    /// Writes the end frame; returns the output and the number of accounts.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        self.frame(&Frame::End {
            accounts: self.accounts,
        })?;
        self.out.flush()?;
        Ok((self.out, self.accounts))
    }
}

/// Reads a stream: [`StreamReader::open`] reads the header; the reader then yields
/// each account, and an error if the stream ends before its end frame or disagrees
/// with it.
pub(crate) struct StreamReader<R: Read> {
    input: R,
    accounts: u64,
    ended: bool,
    frame: Zeroizing<Vec<u8>>,
}

impl<R: Read> StreamReader<R> {
    /// Reads the magic, the format and the header.
    pub(crate) fn open(mut input: R) -> io::Result<(StreamHeader, Self)> {
        let mut start = [0u8; MAGIC.len() + 1];
        input.read_exact(&mut start).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                invalid("the snapshot is shorter than its magic".into())
            }
            _ => e,
        })?;
        if !is_stream(&start) {
            return Err(invalid(
                "the snapshot does not begin with the stream magic".into(),
            ));
        }
        if start[MAGIC.len()] != FORMAT {
            return Err(invalid(format!(
                "snapshot stream format {} is not one this release reads ({FORMAT}): \
                 upgrade this replica to the sender's release",
                start[MAGIC.len()]
            )));
        }
        let mut this = Self {
            input,
            accounts: 0,
            ended: false,
            frame: Zeroizing::new(Vec::new()),
        };
        let header = this
            .frame()?
            .ok_or_else(|| invalid("the snapshot stream ends before its header".into()))?;
        Ok((header, this))
    }

    /// The next frame, decoded; `None` at the end of the input.
    fn frame<T: serde::de::DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(invalid(format!(
                "a snapshot frame of {len} bytes, over the {MAX_FRAME}-byte limit"
            )));
        }
        self.frame.resize(len as usize, 0);
        self.input
            .read_exact(&mut self.frame)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    invalid("the snapshot stream ends inside a frame".into())
                }
                _ => e,
            })?;
        postcard::from_bytes(&self.frame)
            .map(Some)
            .map_err(|e| invalid(format!("a snapshot frame does not decode: {e}")))
    }

    fn next_account(&mut self) -> io::Result<Option<(String, Account)>> {
        if self.ended {
            return Ok(None);
        }
        match self.frame::<Frame>()? {
            None => Err(invalid(
                "the snapshot stream ends before its end frame: it was cut short".into(),
            )),
            Some(Frame::Account { name, held }) => {
                self.accounts += 1;
                Ok(Some((name, held)))
            }
            Some(Frame::End { accounts }) => {
                self.ended = true;
                if accounts != self.accounts {
                    return Err(invalid(format!(
                        "the snapshot stream's end frame counts {accounts} accounts, {} came",
                        self.accounts
                    )));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest)? != 0 {
                    return Err(invalid(
                        "bytes follow the snapshot stream's end frame".into(),
                    ));
                }
                Ok(None)
            }
        }
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = io::Result<(String, Account)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_account() {
            Ok(account) => account.map(Ok),
            Err(e) => {
                // An error ends the stream.
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{History, Record};
    use openraft::CommittedLeaderId;

    fn header() -> StreamHeader {
        StreamHeader {
            last_applied: Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
            membership: StoredMembership::default(),
            members: Members::default(),
            digest: [0xd1; 32],
            placement: [0x5a; 32],
        }
    }

    fn accounts() -> Vec<(String, Account)> {
        let record = Record {
            record_id: [0x11; 16],
            password_file: b"pf".to_vec(),
            wrapped: b"wk".to_vec(),
            owner_public_key: [0x22; 32],
            generation: 3,
            attempts_left: 9,
            max_attempts: 10,
            exhausted_at_ms: None,
        };
        vec![
            (
                "alice".into(),
                Account {
                    record: Some(record),
                    history: History {
                        generation: 3,
                        locked: false,
                    },
                    ..Account::default()
                },
            ),
            (
                "bob".into(),
                Account {
                    history: History {
                        generation: 1,
                        locked: true,
                    },
                    ..Account::default()
                },
            ),
        ]
    }

    fn written() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        for (name, held) in accounts() {
            w.account(name, held).unwrap();
        }
        w.finish().unwrap().0
    }

    /// The byte layout of format 1 (docs/VAULT.md §Snapshots between replicas), a
    /// known answer: a change to it must be a new format that still reads this one.
    #[test]
    fn format_1_is_these_bytes() {
        let expected = concat!(
            "ffffffffffffffffffff",                                             // magic
            "01",                                                               // format
            "49000000",                                                         // header, 73 bytes:
            "01020107", // last_applied: Some(term 2, node 1, index 7)
            "000000",   // membership: no log id, no configs, no nodes
            "0000",     // members: no admissions, none retired
            "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1", // digest
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a", // placement
            "46000000", // frame, 70 bytes:
            "00",       // Frame::Account
            "05616c696365", // "alice"
            "01",       // a record:
            "11111111111111111111111111111111", // record_id
            "027066",   // password_file "pf"
            "02776b",   // wrapped "wk"
            "2222222222222222222222222222222222222222222222222222222222222222", // owner key
            "03090a00", // generation 3, 9 left of 10, not exhausted
            "0300",     // history: generation 3, not locked
            "00",       // no open attempts
            "00",       // no anchor
            "0a000000", // frame, 10 bytes:
            "0003626f62", // Frame::Account "bob"
            "00",       // no record
            "0101",     // history: generation 1, locked
            "0000",     // no attempts, no anchor
            "02000000", // frame, 2 bytes:
            "0102",     // Frame::End, 2 accounts
        );
        let hex: String = written().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected, "the stream's layout changed");
    }

    #[test]
    fn a_stream_reads_back_account_by_account() {
        let bytes = written();
        let (h, reader) = StreamReader::open(bytes.as_slice()).unwrap();
        assert_eq!(h.last_applied, header().last_applied);
        assert_eq!(h.placement, header().placement);
        let read: Vec<_> = reader.collect::<io::Result<_>>().unwrap();
        assert_eq!(read, accounts());
    }

    /// A stream cut anywhere, or with a byte changed in a length or the end frame's
    /// count, is an error, never a shorter state.
    #[test]
    fn a_cut_stream_is_an_error() {
        let bytes = written();
        for cut in 0..bytes.len() {
            let outcome = StreamReader::open(&bytes[..cut])
                .and_then(|(_, r)| r.collect::<io::Result<Vec<_>>>());
            assert!(outcome.is_err(), "a stream cut at {cut} read as whole");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let outcome = StreamReader::open(longer.as_slice())
            .and_then(|(_, r)| r.collect::<io::Result<Vec<_>>>());
        assert!(outcome.is_err(), "bytes after the end frame were ignored");
        // The end frame's count is its last byte.
        let mut miscounted = bytes;
        *miscounted.last_mut().unwrap() = 1;
        let outcome = StreamReader::open(miscounted.as_slice())
            .and_then(|(_, r)| r.collect::<io::Result<Vec<_>>>());
        assert!(outcome.is_err(), "a wrong count in the end frame was taken");
    }

    #[test]
    fn an_unknown_format_is_refused_with_what_to_do() {
        let mut bytes = written();
        bytes[MAGIC.len()] = 2;
        let err = StreamReader::open(bytes.as_slice()).err().unwrap();
        assert!(err.to_string().contains("upgrade"), "{err}");
    }
}
