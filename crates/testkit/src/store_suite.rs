//! The conformance suite every [`ObjectStore`] backend must pass.

use backlock_store::{ObjectKind, ObjectStore, StoreError};
use std::sync::Arc;

fn name(i: usize) -> String {
    format!("{i:032x}")
}

/// Runs every conformance check against an empty store.
pub fn run_all(store: Arc<dyn ObjectStore>) {
    put_get_list_delete(&*store);
    range_reads(&*store);
    large_objects(&*store);
    missing_objects(&*store);
    concurrent_writers(store.clone());
    atomic_puts(store.clone());
    listing_while_another_process_deletes(store.clone());
    kinds_are_separate(&*store);
}

/// A listing taken while another process deletes objects of the same kind (locks
/// released, packs pruned) lists each object or not, and never fails: a concurrent
/// backup otherwise stops on a lock released under its listing.
fn listing_while_another_process_deletes(s: Arc<dyn ObjectStore>) {
    for round in 0..5 {
        let names: Vec<String> = (0..30).map(|i| name(1000 * (round + 1) + i)).collect();
        for n in &names {
            s.put(ObjectKind::Lock, n, b"held").unwrap();
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for n in &names {
                    s.delete(ObjectKind::Lock, n).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let listed = s
                    .list(ObjectKind::Lock)
                    .unwrap_or_else(|e| panic!("a listing failed while objects were deleted: {e}"));
                assert!(listed.iter().all(|o| names.contains(&o.name)));
            }
        });
        assert!(s.list(ObjectKind::Lock).unwrap().is_empty());
    }
}

fn put_get_list_delete(s: &dyn ObjectStore) {
    s.put(ObjectKind::Index, &name(1), b"one").unwrap();
    s.put(ObjectKind::Index, &name(2), b"two!").unwrap();
    assert_eq!(s.get(ObjectKind::Index, &name(1)).unwrap(), b"one");
    let mut listed: Vec<_> = s
        .list(ObjectKind::Index)
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    listed.sort();
    assert_eq!(listed, vec![(name(1), 3), (name(2), 4)]);
    s.flush().unwrap();
    s.delete(ObjectKind::Index, &name(1)).unwrap();
    s.delete(ObjectKind::Index, &name(1)).unwrap(); // deleting twice is fine
    s.flush().unwrap();
    assert_eq!(s.list(ObjectKind::Index).unwrap().len(), 1);
    s.delete(ObjectKind::Index, &name(2)).unwrap();
}

fn range_reads(s: &dyn ObjectStore) {
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    s.put(ObjectKind::Pack, &name(3), &data).unwrap();
    assert_eq!(
        s.get_range(ObjectKind::Pack, &name(3), 10, 5).unwrap(),
        &data[10..15]
    );
    assert_eq!(
        s.get_range(ObjectKind::Pack, &name(3), 99_990, 100)
            .unwrap(),
        &data[99_990..]
    );
    assert!(s
        .get_range(ObjectKind::Pack, &name(3), 200_000, 10)
        .unwrap()
        .is_empty());
    // Into a reused buffer: its old contents and capacity never leak into the range.
    let mut buf = vec![0xEE; 50_000];
    s.get_range_into(ObjectKind::Pack, &name(3), 20, 7, &mut buf)
        .unwrap();
    assert_eq!(buf, &data[20..27]);
    s.get_range_into(ObjectKind::Pack, &name(3), 60_000, 90_000, &mut buf)
        .unwrap();
    assert_eq!(buf, &data[60_000..]);
    s.get_range_into(ObjectKind::Pack, &name(3), 200_000, 10, &mut buf)
        .unwrap();
    assert!(buf.is_empty());
    s.delete(ObjectKind::Pack, &name(3)).unwrap();
}

fn large_objects(s: &dyn ObjectStore) {
    let data = crate::tree::random_bytes(9, 24 << 20);
    s.put(ObjectKind::Pack, &name(4), &data).unwrap();
    assert!(s.get(ObjectKind::Pack, &name(4)).unwrap() == data);
    // Given up by the caller: stored whole, and a buffer handed back is untouched.
    let returned = s
        .put_owned(ObjectKind::Pack, &name(4), data.clone())
        .unwrap();
    assert!(returned.is_none_or(|buffer| buffer == data));
    assert!(s.get(ObjectKind::Pack, &name(4)).unwrap() == data);
    s.delete(ObjectKind::Pack, &name(4)).unwrap();
}

fn missing_objects(s: &dyn ObjectStore) {
    assert!(matches!(
        s.get(ObjectKind::Snapshot, &name(5)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_range(ObjectKind::Pack, &name(5), 0, 1),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.get_range_into(ObjectKind::Pack, &name(5), 0, 1, &mut Vec::new()),
        Err(StoreError::NotFound { .. })
    ));
}

fn concurrent_writers(s: Arc<dyn ObjectStore>) {
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..10 {
                    let data = crate::tree::random_bytes((t * 100 + i) as u64, 50_000);
                    s.put(ObjectKind::Pack, &name(1000 + t * 100 + i), &data)
                        .unwrap();
                    assert!(s.get(ObjectKind::Pack, &name(1000 + t * 100 + i)).unwrap() == data);
                }
            });
        }
    });
    s.flush().unwrap();
    assert_eq!(s.list(ObjectKind::Pack).unwrap().len(), 80);
    for o in s.list(ObjectKind::Pack).unwrap() {
        s.delete(ObjectKind::Pack, &o.name).unwrap();
    }
}

fn kinds_are_separate(s: &dyn ObjectStore) {
    s.put(ObjectKind::Snapshot, &name(6), b"s").unwrap();
    assert!(s.list(ObjectKind::Index).unwrap().is_empty());
    assert!(matches!(
        s.get(ObjectKind::Index, &name(6)),
        Err(StoreError::NotFound { .. })
    ));
    s.delete(ObjectKind::Snapshot, &name(6)).unwrap();
}

/// A put replaces an object whole: a reader racing two writers of the same name sees
/// one version or the other, never a mix, a part or nothing (a lock is refreshed this
/// way while others read it).
fn atomic_puts(s: Arc<dyn ObjectStore>) {
    let a = crate::tree::random_bytes(21, 3 << 20);
    let b = crate::tree::random_bytes(22, 3 << 20);
    s.put(ObjectKind::Lock, &name(7), &a).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..6 {
                let data = if i % 2 == 0 { &b } else { &a };
                s.put(ObjectKind::Lock, &name(7), data).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
            let got = s.get(ObjectKind::Lock, &name(7)).unwrap();
            assert!(
                got == a || got == b,
                "a reader saw a partial or mixed object ({} bytes)",
                got.len()
            );
            reads += 1;
        }
    });
    assert!(s.get(ObjectKind::Lock, &name(7)).unwrap() == a);
    // No temporary object shows under any kind.
    for kind in [
        ObjectKind::Lock,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Snapshot,
    ] {
        for o in s.list(kind).unwrap() {
            assert!(o.name == name(7), "unexpected {kind:?} object {}", o.name);
        }
    }
    s.delete(ObjectKind::Lock, &name(7)).unwrap();
}
