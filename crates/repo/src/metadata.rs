//! What a backup records of an entry besides its content (owner, hard links, device
//! numbers, extended attributes, holes: docs/FORMAT.md §Trees), and putting it back
//! on restore. Restore as root sets ownership too; as a user it sets what the user
//! may and counts what it could not, for the summary to say.

use backlock_core::format::{Node, NodeKind, NodeMeta, Xattr};
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, UNIX_EPOCH},
};

/// User and group names by ID, looked up once each.
#[derive(Default)]
pub(crate) struct Owners {
    users: HashMap<u32, Arc<str>>,
    groups: HashMap<u32, Arc<str>>,
}

impl Owners {
    fn user(&mut self, uid: u32) -> Arc<str> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid)
                    .map_or_else(|| "".into(), |u| u.name().to_string_lossy().into())
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Arc<str> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid)
                    .map_or_else(|| "".into(), |g| g.name().to_string_lossy().into())
            })
            .clone()
    }
}

/// The metadata of the entry at `path` beyond mode and times. Extended attributes
/// that cannot be listed (a file system without them) are none.
/// `owners` is locked for the name lookups only, not for the file system calls, so
/// the producing threads do not wait for each other's.
pub(crate) fn capture(path: &Path, meta: &fs::Metadata, owners: &Mutex<Owners>) -> NodeMeta {
    let ft = meta.file_type();
    let linked = ft.is_file() && meta.nlink() > 1;
    let device = ft.is_char_device() || ft.is_block_device();
    let (user, group) = {
        let mut owners = owners.lock().unwrap_or_else(|p| p.into_inner());
        (owners.user(meta.uid()), owners.group(meta.gid()))
    };
    NodeMeta {
        uid: meta.uid(),
        gid: meta.gid(),
        user,
        group,
        device: if linked { meta.dev() } else { 0 },
        links: if linked { meta.nlink() } else { 0 },
        rdev: if device { meta.rdev() } else { 0 },
        xattrs: read_xattrs(path).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "extended attributes unreadable: not backed up");
            Vec::new()
        }),
        // Fewer blocks than the length needs: the file has holes.
        sparse: ft.is_file() && meta.blocks().saturating_mul(512) < meta.len(),
    }
}

/// The extended attributes of `path` (not following a symlink), by name.
fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let unsupported =
        |e: &rustix::io::Errno| *e == rustix::io::Errno::NOTSUP || *e == rustix::io::Errno::NOSYS;
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(len) => break len,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(e) if unsupported(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let os_name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(name);
        let mut value = vec![0u8; 256];
        let got = loop {
            match rustix::fs::lgetxattr(path, os_name, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                // Removed since the listing.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(n) = got {
            value.truncate(n);
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a restore could not put back, counted by what it was, with the first error.
#[derive(Default)]
pub(crate) struct NotRestored(BTreeMap<&'static str, (u64, String)>);

impl NotRestored {
    fn note(&mut self, what: &'static str, e: &io::Error) {
        let slot = self.0.entry(what).or_insert_with(|| (0, e.to_string()));
        slot.0 += 1;
    }

    /// Adds what `other` counted.
    pub(crate) fn merge(&mut self, other: NotRestored) {
        for (what, (count, first)) in other.0 {
            let slot = self.0.entry(what).or_insert((0, first));
            slot.0 += count;
        }
    }

    /// One line per kind of thing not restored.
    pub(crate) fn into_lines(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(what, (count, first))| {
                format!("{what} of {count} entries not restored ({first})")
            })
            .collect()
    }
}

/// Creates the named pipe or device node `node` at `path`. A device node needs root:
/// as a user it is counted as not restored, and nothing is created.
pub(crate) fn make_special(path: &Path, node: &Node, missed: &mut NotRestored) -> io::Result<()> {
    use rustix::fs::{FileType, Mode, CWD};
    let (ft, what) = match node.kind {
        NodeKind::Fifo => (FileType::Fifo, "named pipe"),
        NodeKind::CharDevice => (FileType::CharacterDevice, "device node"),
        NodeKind::BlockDevice => (FileType::BlockDevice, "device node"),
        _ => unreachable!("only special files are made here"),
    };
    let mode = Mode::from_bits_truncate(0o600);
    match rustix::fs::mknodat(CWD, path, ft, mode, node.more.rdev) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM && ft != FileType::Fifo => {
            missed.note(what, &e.into());
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets owner, extended attributes, mode and times of the restored entry `node` at
/// `path`, never following a symlink and never opening it (a device node or a pipe
/// must not be opened). `recorded`: the snapshot recorded owners (version 3; entries
/// of earlier ones stay the restorer's). The owner is set where this user may (root:
/// always; a user: their own, or a group of theirs) and what it may not is counted.
/// The permission bits keep setuid and setgid only where the recorded owner was set:
/// a program must not run as whoever restores it.
pub(crate) fn apply(
    path: &Path,
    node: &Node,
    recorded: bool,
    missed: &mut NotRestored,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode, Timestamps, CWD};
    let symlink = matches!(node.kind, NodeKind::Symlink(_));
    let special = matches!(
        node.kind,
        NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice
    );
    if special && path.symlink_metadata().is_err() {
        // A device node that could not be made.
        return Ok(());
    }
    let mut owned = false;
    if recorded {
        match std::os::unix::fs::lchown(path, Some(node.more.uid), Some(node.more.gid)) {
            Ok(()) => owned = true,
            Err(e) => missed.note("owner", &e),
        }
    }
    for x in &node.more.xattrs {
        let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(&x.name);
        if let Err(e) = rustix::fs::lsetxattr(path, name, &x.value, rustix::fs::XattrFlags::empty())
        {
            missed.note("extended attributes", &e.into());
        }
    }
    if !symlink {
        let bits = if owned { 0o7777 } else { 0o1777 };
        rustix::fs::chmodat(
            CWD,
            path,
            Mode::from_bits_truncate(node.mode & bits),
            AtFlags::empty(),
        )?;
    }
    let mtime = UNIX_EPOCH + Duration::from_nanos(node.mtime_ns.max(0) as u64);
    let since = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = rustix::fs::Timespec {
        tv_sec: since.as_secs() as i64,
        tv_nsec: since.subsec_nanos() as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}
