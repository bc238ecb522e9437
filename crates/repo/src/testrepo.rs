//! A repository in memory for the crate's unit tests, with a source directory beside it.

use crate::{BackupOptions, DeviceHome, Open, Repository};
use backlock_core::key::BackupKey;
use backlock_store::MemoryStore;
use std::{path::PathBuf, sync::Arc};

pub(crate) struct TestRepo {
    /// Holds `src` and the device's home; removed on drop.
    pub(crate) dir: tempfile::TempDir,
    /// The directory backed up: `app` in `dir`, created empty.
    pub(crate) src: PathBuf,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) key: BackupKey,
    pub(crate) home: DeviceHome,
}

impl TestRepo {
    /// A new repository and an empty source directory.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("app");
        std::fs::create_dir_all(&src).unwrap();
        let store = Arc::new(MemoryStore::new());
        let key = BackupKey::generate();
        let home = DeviceHome::new(dir.path().join("home"));
        Repository::init(store.clone(), &key, home.clone()).unwrap();
        TestRepo {
            dir,
            src,
            store,
            key,
            home,
        }
    }

    pub(crate) fn open(&self) -> Repository<Open> {
        Repository::open(self.store.clone(), &self.key, self.home.clone()).unwrap()
    }

    /// Backup options for `src`.
    pub(crate) fn options(&self) -> BackupOptions<'static> {
        BackupOptions {
            paths: vec![self.src.clone()],
            ..Default::default()
        }
    }
}
