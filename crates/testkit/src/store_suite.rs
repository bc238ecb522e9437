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
    kinds_are_separate(&*store);
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
    s.delete(ObjectKind::Pack, &name(3)).unwrap();
}

fn large_objects(s: &dyn ObjectStore) {
    let data = crate::tree::random_bytes(9, 24 << 20);
    s.put(ObjectKind::Pack, &name(4), &data).unwrap();
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
