//! Which snapshots a command acts on, chosen as restic chooses them: `--host` (any of
//! those given), `--tag` (any of the lists given, each held whole: `--tag a,b` wants
//! both) and `--path` (every one given among the snapshot's paths).

use crate::SnapshotRef;
use backlock_core::format::Snapshot;
use serde::Serialize;

/// What commands know of a snapshot without reading its trees.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// The object name, in full.
    pub id: String,
    /// Its sequence number.
    pub seq: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub time_unix_ns: i64,
    /// The host that made it.
    pub host: String,
    /// The paths it backed up.
    pub paths: Vec<String>,
    /// Its tags, ascending.
    pub tags: Vec<String>,
    /// The WhatsApp backup it was imported from (`import-whatsapp`).
    #[serde(skip)]
    pub whatsapp: Option<backlock_core::format::WhatsAppSource>,
    #[serde(skip)]
    pub(crate) r: SnapshotRef,
}

impl SnapshotInfo {
    /// What `snap`, listed as `r`, says of itself. Tags that do not decode count as
    /// none (the snapshot still restores; `snapshots` lists it).
    pub fn of(r: SnapshotRef, snap: &Snapshot) -> Self {
        SnapshotInfo {
            id: r.name.to_hex(),
            seq: r.seq,
            time_unix_ns: snap.time_unix_ns,
            host: snap.hostname.clone(),
            paths: snap.paths.clone(),
            tags: snap.tags().unwrap_or_default(),
            whatsapp: snap.whatsapp().ok().flatten(),
            r,
        }
    }

    /// The listing entry of the snapshot.
    pub fn snapshot_ref(&self) -> SnapshotRef {
        self.r
    }
}

/// `--host`, `--tag` and `--path`; the default selects every snapshot.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Any of these hosts; none: any host.
    pub hosts: Vec<String>,
    /// Any of these tag lists, each held whole; none: any snapshot. The list of one
    /// empty tag (`--tag ''`) selects the snapshots without tags.
    pub tags: Vec<Vec<String>>,
    /// Every one of these among the snapshot's paths.
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// True when `s` is selected.
    pub fn matches(&self, s: &SnapshotInfo) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && (self.tags.is_empty() || self.tags.iter().any(|list| has_tags(&s.tags, list)))
            && self.paths.iter().all(|p| s.paths.contains(p))
    }
}

/// `--tag a,b` as a list: the tags split at commas, surrounding blanks dropped.
pub fn tag_list(arg: &str) -> Vec<String> {
    arg.split(',').map(|t| t.trim().to_owned()).collect()
}

/// True when `tags` holds every tag of `list`; the list of one empty tag matches no tags.
pub(crate) fn has_tags(tags: &[String], list: &[String]) -> bool {
    match list {
        [only] if only.is_empty() => tags.is_empty(),
        _ => list
            .iter()
            .filter(|t| !t.is_empty())
            .all(|t| tags.contains(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backlock_core::ids::ObjectName;

    fn info(host: &str, paths: &[&str], tags: &[&str]) -> SnapshotInfo {
        SnapshotInfo {
            id: String::new(),
            seq: 1,
            time_unix_ns: 0,
            host: host.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            whatsapp: None,
            r: SnapshotRef {
                name: ObjectName([0; 16]),
                seq: 1,
            },
        }
    }

    #[test]
    fn filters_combine_as_restic_combines_them() {
        let s = info("phone", &["/chats", "/media"], &["daily", "wifi"]);
        let untagged = info("laptop", &["/chats"], &[]);
        let filter = |hosts: &[&str], tags: &[&str], paths: &[&str]| SnapshotFilter {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tags: tags.iter().map(|t| tag_list(t)).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        assert!(filter(&[], &[], &[]).matches(&s));
        assert!(filter(&["laptop", "phone"], &[], &[]).matches(&s));
        assert!(!filter(&["laptop"], &[], &[]).matches(&s));
        // A list wants all its tags; lists are alternatives.
        assert!(filter(&[], &["daily, wifi"], &[]).matches(&s));
        assert!(!filter(&[], &["daily,monthly"], &[]).matches(&s));
        assert!(filter(&[], &["monthly", "wifi"], &[]).matches(&s));
        // `--tag ''`: untagged only.
        assert!(filter(&[], &[""], &[]).matches(&untagged));
        assert!(!filter(&[], &[""], &[]).matches(&s));
        // Every path given must be among the snapshot's.
        assert!(filter(&[], &[], &["/chats"]).matches(&s));
        assert!(filter(&[], &[], &["/chats", "/media"]).matches(&s));
        assert!(!filter(&[], &[], &["/chats", "/media"]).matches(&untagged));
    }
}
