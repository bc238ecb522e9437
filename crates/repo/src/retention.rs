//! Retention policies (`forget --keep-*`), with restic's meaning.
//!
//! Snapshots are grouped (by host and paths unless `--group-by` says otherwise) and
//! each group is walked newest first. `--keep-last N` keeps the N newest; each
//! calendar rule (`--keep-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly`) keeps
//! the newest snapshot of each of the N most recent hours, days, ISO weeks, months or
//! years that have one; when a rule still has room after the oldest snapshot, that
//! one is kept too ("oldest daily snapshot"), so the history kept is as long as it
//! can be. `--keep-within D` keeps everything within D of the group's newest
//! snapshot, `--keep-tag` everything with those tags. A snapshot kept by any rule is
//! kept. A snapshot whose time is in the future is counted by no rule and kept: a
//! wrong clock (or a forged time) cannot push real snapshots out. Calendar periods
//! are those of the time zone given (the system's for the CLI, as restic's).

use crate::select::{has_tags, SnapshotInfo};
use jiff::{tz::TimeZone, Span, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

/// How many of a rule's periods to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// This many (0: the rule is off).
    Count(u32),
    /// Every one (`unlimited`, or restic's `-1`).
    All,
}

impl std::str::FromStr for Keep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "unlimited" | "-1" => Ok(Keep::All),
            n => n
                .parse()
                .map(Keep::Count)
                .map_err(|_| format!("{s:?} is not a count: give a whole number, or `unlimited`")),
        }
    }
}

/// `--keep-within`: years, months, days and hours, as restic writes them (`1y6m`,
/// `7d`, `36h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Within {
    years: i64,
    months: i64,
    days: i64,
    hours: i64,
    text: String,
}

impl std::str::FromStr for Within {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?} is not a duration ({why}): write numbers with y, m, d or h, such as 1y6m, 7d or 36h")
        };
        let mut within = Within {
            years: 0,
            months: 0,
            days: 0,
            hours: 0,
            text: s.trim().to_owned(),
        };
        let mut number = String::new();
        for c in within.text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let n: i64 = number
                .parse()
                .map_err(|_| bad(&format!("no number before {c:?}")))?;
            number.clear();
            let field = match c {
                'y' => &mut within.years,
                'm' => &mut within.months,
                'd' => &mut within.days,
                'h' => &mut within.hours,
                _ => return Err(bad(&format!("unknown unit {c:?}"))),
            };
            *field += n;
        }
        if !number.is_empty() {
            return Err(bad("a number without a unit"));
        }
        if within.text.is_empty() {
            return Err(bad("empty"));
        }
        Ok(within)
    }
}

/// The `--keep-*` rules of one `forget`.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `--keep-last`: the newest snapshots.
    pub last: Option<Keep>,
    /// `--keep-hourly`: the newest of each hour.
    pub hourly: Option<Keep>,
    /// `--keep-daily`: the newest of each day.
    pub daily: Option<Keep>,
    /// `--keep-weekly`: the newest of each ISO week (Monday to Sunday).
    pub weekly: Option<Keep>,
    /// `--keep-monthly`: the newest of each month.
    pub monthly: Option<Keep>,
    /// `--keep-yearly`: the newest of each year.
    pub yearly: Option<Keep>,
    /// `--keep-within`: everything within this of the group's newest snapshot.
    pub within: Option<Within>,
    /// `--keep-tag`: any of these lists, each held whole.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    /// True when no rule keeps anything: `forget` refuses such a policy rather than
    /// delete every snapshot.
    pub fn is_empty(&self) -> bool {
        let on = |k: &Option<Keep>| matches!(k, Some(Keep::All) | Some(Keep::Count(1..)));
        ![
            &self.last,
            &self.hourly,
            &self.daily,
            &self.weekly,
            &self.monthly,
            &self.yearly,
        ]
        .into_iter()
        .any(on)
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// What snapshots are grouped by before the policy applies (`--group-by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// Snapshots of different hosts are apart.
    pub host: bool,
    /// Snapshots of different path sets are apart.
    pub paths: bool,
    /// Snapshots of different tag sets are apart.
    pub tags: bool,
}

impl Default for GroupBy {
    /// restic's: host and paths.
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    /// A comma-separated list of `host`, `paths` and `tags`; empty: one group.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut by = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => by.host = true,
                "paths" => by.paths = true,
                "tags" => by.tags = true,
                other => {
                    return Err(format!(
                        "cannot group by {other:?}: use host, paths and tags, comma-separated (or '' for one group)"
                    ))
                }
            }
        }
        Ok(by)
    }
}

/// The key of a group: what its snapshots share, of what they are grouped by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// The host, when grouped by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The paths, sorted, when grouped by paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// The tags, sorted, when grouped by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl GroupBy {
    /// The group `s` belongs to.
    pub fn key(&self, s: &SnapshotInfo) -> GroupKey {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            host: self.host.then(|| s.host.clone()),
            paths: self.paths.then(|| sorted(&s.paths)),
            tags: self.tags.then(|| sorted(&s.tags)),
        }
    }
}

/// The policy's verdict on one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Kept; else deleted.
    pub keep: bool,
    /// Why it is kept, one entry per rule that keeps it (restic's wording).
    pub reasons: Vec<String>,
}

/// One group's snapshots, each with its verdict, newest first.
#[derive(Clone, Debug, Serialize)]
pub struct GroupVerdicts {
    /// What the group's snapshots share.
    pub group: GroupKey,
    /// Its snapshots, newest first, each with its verdict.
    pub snapshots: Vec<(SnapshotInfo, Verdict)>,
}

/// Groups `snapshots` by `by` and applies `policy` to each group, with calendar
/// periods in `tz` and `now_ns` as the present.
pub fn apply(
    policy: &Policy,
    by: GroupBy,
    snapshots: Vec<SnapshotInfo>,
    tz: &TimeZone,
    now_ns: i64,
) -> Vec<GroupVerdicts> {
    let mut groups: BTreeMap<GroupKey, Vec<SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(by.key(&s)).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(group, mut list)| {
            list.sort_by_key(|s| std::cmp::Reverse((s.time_unix_ns, s.seq)));
            let verdicts = apply_to_group(policy, &list, tz, now_ns);
            GroupVerdicts {
                group,
                snapshots: list.into_iter().zip(verdicts).collect(),
            }
        })
        .collect()
}

/// A rule's period of a snapshot: its time, and its place in the group (newest 0).
type Period = fn(&jiff::Zoned, usize) -> i64;

/// One counting rule while a group is walked.
struct Bucket {
    left: Keep,
    /// The period of the last snapshot it kept.
    last: Option<i64>,
    period: Period,
    reason: &'static str,
}

/// The verdicts on `list`, one group newest first.
fn apply_to_group(
    policy: &Policy,
    list: &[SnapshotInfo],
    tz: &TimeZone,
    now_ns: i64,
) -> Vec<Verdict> {
    let rules: [(&Option<Keep>, Period, &'static str); 6] = [
        (&policy.last, |_, nr| nr as i64, "last snapshot"),
        (
            &policy.hourly,
            |z, _| day(z) * 100 + i64::from(z.hour()),
            "hourly snapshot",
        ),
        (&policy.daily, |z, _| day(z), "daily snapshot"),
        (
            &policy.weekly,
            |z, _| {
                let week = z.date().iso_week_date();
                i64::from(week.year()) * 100 + i64::from(week.week())
            },
            "weekly snapshot",
        ),
        (
            &policy.monthly,
            |z, _| i64::from(z.year()) * 100 + i64::from(z.month()),
            "monthly snapshot",
        ),
        (
            &policy.yearly,
            |z, _| i64::from(z.year()),
            "yearly snapshot",
        ),
    ];
    let mut buckets: Vec<Bucket> = rules
        .into_iter()
        .filter_map(|(keep, period, reason)| match *keep {
            Some(Keep::Count(0)) | None => None,
            Some(left) => Some(Bucket {
                left,
                last: None,
                period,
                reason,
            }),
        })
        .collect();
    // Snapshots from the future count for no rule (and are kept).
    let counted: Vec<&SnapshotInfo> = list.iter().filter(|s| s.time_unix_ns <= now_ns).collect();
    let newest = counted.first().map(|s| zoned(s.time_unix_ns, tz));
    let within_from = match (&policy.within, &newest) {
        (Some(w), Some(newest)) => {
            let span = Span::new()
                .years(w.years)
                .months(w.months)
                .days(w.days)
                .hours(w.hours);
            // A span past the calendar's range keeps everything.
            Some(
                newest
                    .checked_sub(span)
                    .map_or(i128::MIN, |z| z.timestamp().as_nanosecond()),
            )
        }
        _ => None,
    };
    let mut nr = 0;
    list.iter()
        .map(|s| {
            let mut reasons = Vec::new();
            if s.time_unix_ns > now_ns {
                reasons.push("time in the future: counted by no rule".to_owned());
                return Verdict {
                    keep: true,
                    reasons,
                };
            }
            for list in &policy.tags {
                if has_tags(&s.tags, list) {
                    reasons.push(format!("has tags [{}]", list.join(", ")));
                }
            }
            let z = zoned(s.time_unix_ns, tz);
            let oldest = nr + 1 == counted.len();
            for b in buckets.iter_mut() {
                if b.left == Keep::Count(0) {
                    continue;
                }
                let period = (b.period)(&z, nr);
                let new_period = b.last != Some(period);
                if new_period || oldest {
                    b.last = Some(period);
                    if let Keep::Count(n) = &mut b.left {
                        *n -= 1;
                    }
                    reasons.push(match new_period {
                        true => b.reason.to_owned(),
                        false => format!("oldest {}", b.reason),
                    });
                }
            }
            if let (Some(from), Some(w)) = (within_from, &policy.within) {
                if i128::from(s.time_unix_ns) > from {
                    reasons.push(format!("within {}", w.text));
                }
            }
            nr += 1;
            Verdict {
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

fn zoned(unix_ns: i64, tz: &TimeZone) -> jiff::Zoned {
    Timestamp::from_nanosecond(i128::from(unix_ns))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

/// The day as `yyyymmdd`.
fn day(z: &jiff::Zoned) -> i64 {
    i64::from(z.year()) * 10_000 + i64::from(z.month()) * 100 + i64::from(z.day())
}

#[cfg(test)]
mod tests;
