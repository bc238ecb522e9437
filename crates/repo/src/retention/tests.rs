use super::*;
use crate::SnapshotRef;
use backlock_core::ids::ObjectName;
use std::collections::{BTreeMap, BTreeSet};

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;

fn at(civil: &str) -> i64 {
    civil
        .parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned(TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_nanosecond() as i64
}

fn snap(n: u64, time: i64, host: &str, tags: &[&str]) -> SnapshotInfo {
    let mut name = [0u8; 16];
    name[8..].copy_from_slice(&n.to_be_bytes());
    SnapshotInfo {
        id: format!("{n:08}"),
        seq: n,
        time_unix_ns: time,
        host: host.into(),
        paths: vec!["/home/user/work".into()],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        whatsapp: None,
        r: SnapshotRef {
            name: ObjectName(name),
            seq: n,
        },
    }
}

/// The IDs kept, with their reasons, over every group.
fn kept(groups: &[GroupVerdicts]) -> BTreeMap<String, Vec<String>> {
    groups
        .iter()
        .flat_map(|g| &g.snapshots)
        .filter(|(_, v)| v.keep)
        .map(|(s, v)| (s.id.clone(), v.reasons.clone()))
        .collect()
}

fn run(policy: &Policy, snaps: Vec<SnapshotInfo>) -> Vec<GroupVerdicts> {
    apply(policy, GroupBy::default(), snaps, &TimeZone::UTC, i64::MAX)
}

/// restic's documentation (doc/060_forget.rst): a backup every Sunday for 12 weeks,
/// `--keep-daily 4` keeps the last four Sundays.
#[test]
fn twelve_sundays_keep_daily_four_keeps_the_last_four() {
    let first = at("2019-09-01T11:00:00");
    let snaps: Vec<_> = (0..12)
        .map(|i| snap(i + 1, first + i as i64 * 7 * DAY, "mopped", &[]))
        .collect();
    let policy = Policy {
        daily: Some(Keep::Count(4)),
        ..Default::default()
    };
    let kept = kept(&run(&policy, snaps));
    let expected: BTreeMap<String, Vec<String>> = (9..=12)
        .map(|n| (format!("{n:08}"), vec!["daily snapshot".to_owned()]))
        .collect();
    assert_eq!(kept, expected);
}

/// restic's documentation: a snapshot every day, `--keep-daily 7 --keep-weekly 5
/// --keep-monthly 12 --keep-yearly 75`. The survivors are computed here another way
/// (the newest snapshot of each of the N newest periods, as sets) and compared.
#[test]
fn a_calendar_of_dailies_keeps_the_newest_of_each_recent_period() {
    let first = at("1990-01-01T03:00:00");
    let days = 40 * 366;
    let snaps: Vec<_> = (0..days)
        .map(|i| snap(i as u64 + 1, first + i * DAY, "h", &[]))
        .collect();
    let policy = Policy {
        daily: Some(Keep::Count(7)),
        weekly: Some(Keep::Count(5)),
        monthly: Some(Keep::Count(12)),
        yearly: Some(Keep::Count(75)),
        ..Default::default()
    };
    let reasons = kept(&run(&policy, snaps.clone()));
    let kept: BTreeSet<String> = reasons.keys().cloned().collect();

    let newest_of_periods = |period: &dyn Fn(&jiff::Zoned) -> i64, n: usize| {
        let mut newest: BTreeMap<i64, &SnapshotInfo> = BTreeMap::new();
        for s in &snaps {
            let p = period(&zoned(s.time_unix_ns, &TimeZone::UTC));
            let e = newest.entry(p).or_insert(s);
            if s.time_unix_ns > e.time_unix_ns {
                *e = s;
            }
        }
        let ids: Vec<String> = newest
            .values()
            .rev()
            .take(n)
            .map(|s| s.id.clone())
            .collect();
        (ids, newest.len())
    };
    let mut expected = BTreeSet::new();
    let (daily, _) = newest_of_periods(&day, 7);
    let (weekly, _) = newest_of_periods(
        &|z| {
            let w = z.date().iso_week_date();
            i64::from(w.year()) * 100 + i64::from(w.week())
        },
        5,
    );
    let (monthly, _) = newest_of_periods(&|z| i64::from(z.year()) * 100 + i64::from(z.month()), 12);
    let (yearly, years) = newest_of_periods(&|z| i64::from(z.year()), 75);
    expected.extend(daily);
    expected.extend(weekly);
    expected.extend(monthly);
    expected.extend(yearly);
    // Fewer years than 75: the yearly rule has room left, so the oldest is kept too.
    assert!(years < 75);
    expected.insert(snaps[0].id.clone());
    assert_eq!(kept, expected);
    // As restic's documentation counts: each rule keeps its own N (a snapshot two
    // rules keep counts for both), and the yearly rule, with room left, the oldest.
    let count = |reason: &str| {
        reasons
            .values()
            .filter(|r| r.iter().any(|x| x == reason))
            .count()
    };
    assert_eq!(count("daily snapshot"), 7);
    assert_eq!(count("weekly snapshot"), 5);
    assert_eq!(count("monthly snapshot"), 12);
    assert_eq!(count("yearly snapshot"), years);
    assert_eq!(reasons[&snaps[0].id], ["oldest yearly snapshot"]);
}

/// A rule with room left after the oldest snapshot keeps that one too, marked.
#[test]
fn a_rule_with_room_left_keeps_the_oldest_snapshot() {
    let noon = at("2024-03-10T12:00:00");
    let snaps = vec![
        snap(1, noon, "h", &[]),
        snap(2, noon + HOUR, "h", &[]),
        snap(3, noon + 2 * HOUR, "h", &[]),
    ];
    let policy = Policy {
        daily: Some(Keep::Count(2)),
        ..Default::default()
    };
    let kept = kept(&run(&policy, snaps));
    assert_eq!(kept.len(), 2);
    assert_eq!(kept["00000003"], ["daily snapshot"]);
    assert_eq!(kept["00000001"], ["oldest daily snapshot"]);
}

#[test]
fn keep_last_within_and_tags_each_keep_what_they_name() {
    let start = at("2024-01-01T00:00:00");
    // Every 12 hours for 10 days; two tagged.
    let snaps: Vec<_> = (0..20)
        .map(|i| {
            let tags: &[&str] = if i == 3 || i == 5 {
                &["monthly-archive"]
            } else {
                &[]
            };
            snap(i as u64 + 1, start + i * 12 * HOUR, "h", tags)
        })
        .collect();
    let policy = Policy {
        last: Some(Keep::Count(2)),
        within: Some("2d".parse().unwrap()),
        tags: vec![vec!["monthly-archive".into()]],
        ..Default::default()
    };
    let kept = kept(&run(&policy, snaps));
    // Newest at start + 9.5 d: within 2 d is after start + 7.5 d, i.e. i = 16..=19.
    let ids: BTreeSet<&str> = kept.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "00000004", "00000006", "00000017", "00000018", "00000019", "00000020",
    ]
    .into();
    assert_eq!(ids, expected);
    assert_eq!(kept["00000020"], ["last snapshot", "within 2d"]);
    assert_eq!(kept["00000017"], ["within 2d"]);
    assert_eq!(kept["00000004"], ["has tags [monthly-archive]"]);
}

/// A snapshot dated in the future is kept and counts for no rule: a forged or
/// skewed time does not push the real newest one out of `--keep-last 1`.
#[test]
fn a_snapshot_from_the_future_pushes_nothing_out() {
    let now = at("2026-12-05T00:00:00");
    let snaps = vec![
        snap(1, now - 2 * DAY, "h", &[]),
        snap(2, now - DAY, "h", &[]),
        snap(3, now + 365 * DAY, "h", &[]),
    ];
    let policy = Policy {
        last: Some(Keep::Count(1)),
        ..Default::default()
    };
    let groups = apply(&policy, GroupBy::default(), snaps, &TimeZone::UTC, now);
    let kept = kept(&groups);
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["00000002", "00000003"]);
    assert_eq!(kept["00000002"], ["last snapshot"]);
}

/// Groups are kept apart: each host's newest survives `--keep-last 1`, and with
/// `--group-by ''` only the newest of all.
#[test]
fn groups_are_counted_apart() {
    let t = at("2024-05-01T08:00:00");
    let snaps = || {
        vec![
            snap(1, t, "phone", &[]),
            snap(2, t + HOUR, "laptop", &[]),
            snap(3, t + 2 * HOUR, "laptop", &[]),
        ]
    };
    let policy = Policy {
        last: Some(Keep::Count(1)),
        ..Default::default()
    };
    let by_host = kept(&run(&policy, snaps()));
    assert_eq!(by_host.keys().collect::<Vec<_>>(), ["00000001", "00000003"]);
    let one_group = apply(
        &policy,
        "".parse().unwrap(),
        snaps(),
        &TimeZone::UTC,
        i64::MAX,
    );
    assert_eq!(one_group.len(), 1);
    assert_eq!(kept(&one_group).keys().collect::<Vec<_>>(), ["00000003"]);
}

/// Days are the time zone's: 23:30 UTC is the next day at UTC+2.
#[test]
fn periods_are_those_of_the_time_zone() {
    let snaps = || {
        vec![
            snap(1, at("2024-06-30T21:30:00"), "h", &[]),
            snap(2, at("2024-06-30T23:30:00"), "h", &[]),
        ]
    };
    let policy = Policy {
        daily: Some(Keep::Count(5)),
        ..Default::default()
    };
    let utc = kept(&run(&policy, snaps()));
    assert_eq!(utc["00000002"], ["daily snapshot"]);
    assert_eq!(utc["00000001"], ["oldest daily snapshot"]);
    let plus_two = TimeZone::fixed(jiff::tz::offset(2));
    let there = kept(&apply(
        &policy,
        GroupBy::default(),
        snaps(),
        &plus_two,
        i64::MAX,
    ));
    assert_eq!(there["00000001"], ["daily snapshot"]);
}

#[test]
fn flags_parse_as_restic_writes_them_and_say_what_is_wrong() {
    assert_eq!("unlimited".parse::<Keep>(), Ok(Keep::All));
    assert_eq!("-1".parse::<Keep>(), Ok(Keep::All));
    assert_eq!("7".parse::<Keep>(), Ok(Keep::Count(7)));
    assert!("seven".parse::<Keep>().unwrap_err().contains("\"seven\""));
    let w: Within = "1y6m2d12h".parse().unwrap();
    assert_eq!((w.years, w.months, w.days, w.hours), (1, 6, 2, 12));
    for bad in ["", "7", "7w", "d"] {
        let e = bad.parse::<Within>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
    assert_eq!(
        "tags,host".parse::<GroupBy>(),
        Ok(GroupBy {
            host: true,
            paths: false,
            tags: true
        })
    );
    assert!("hosts"
        .parse::<GroupBy>()
        .unwrap_err()
        .contains("\"hosts\""));
    assert!(Policy::default().is_empty());
    assert!(Policy {
        last: Some(Keep::Count(0)),
        ..Default::default()
    }
    .is_empty());
    assert!(!Policy {
        tags: vec![vec!["a".into()]],
        ..Default::default()
    }
    .is_empty());
}
