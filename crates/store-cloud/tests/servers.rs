//! The conformance suite and a backup → restore round trip against real servers on
//! loopback (SeaweedFS S3, nginx WebDAV, OpenSSH SFTP, Azurite Azure Blob), and the same backup through
//! a proxy that plays a failing cloud.
//!
//! Without the servers installed these tests print a loud skip line and pass;
//! `scripts/test` installs them and sets `BACKLOCK_TEST_SERVERS=required`.

use backlock_core::{envelope::ObjectKind, key::BackupKey};
use backlock_repo::{BackupOptions, DeviceHome, RepoError, Repository};
use backlock_store::{ObjectStore, StoreError};
use backlock_store_cloud::{open_cloud, Location, Options, Settings};
use backlock_testkit::{
    fault_proxy::{Fault, FaultProxy},
    servers::{AzuriteServer, S3Server, SftpServer, WebDavServer},
    store_suite, tree,
};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

fn settings(env: Vec<(&str, String)>) -> Settings {
    env.into_iter()
        .fold(Settings::empty(), |s, (k, v)| s.with(k, v))
}

fn options() -> Options {
    Options {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(500),
        ..Options::default()
    }
}

fn open(
    url: &str,
    env: Vec<(&str, String)>,
    options: &Options,
) -> backlock_store_cloud::CloudStore {
    let store = open_cloud(&Location::parse(url).unwrap(), &settings(env), options).unwrap();
    // A fresh server may take a moment to serve its bucket.
    let deadline = Instant::now() + backlock_testkit::timing::PATIENCE;
    loop {
        match store.list(ObjectKind::Config) {
            Ok(_) => return store,
            Err(e) if Instant::now() > deadline => panic!("{url} never became ready: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// init → backup → restore (compared bit for bit) → check --read-data, through the
/// repository engine.
fn round_trip(store: Arc<dyn ObjectStore>, dir: &Path) {
    let key = BackupKey::generate();
    let home = DeviceHome::new(dir.join("home"));
    Repository::init(store.clone(), &key, home.clone()).unwrap();
    let src = tree::write_sample(dir, 7);
    let repo = Repository::open(store.clone(), &key, home.clone())
        .unwrap()
        .load_index()
        .unwrap();
    let summary = repo
        .backup(&BackupOptions {
            paths: vec![src.clone()],
            hostname: "test".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(summary.bytes_stored > 3_000_000, "{summary:?}");
    // A new phone: fresh device state, same key.
    let phone = DeviceHome::new(dir.join("new-phone"));
    let repo = Repository::open(store.clone(), &key, phone)
        .unwrap()
        .load_index()
        .unwrap();
    let latest = repo.find_snapshot("latest").unwrap();
    let target = dir.join("restored");
    repo.restore(&latest, &target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
    let report = Repository::open(store, &key, home)
        .unwrap()
        .check(true)
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.blobs_read > 0);
}

/// The conformance suite under the prefix `conformance`, then a round trip under
/// `phone/one`, on the server whose URLs `url` makes.
fn conforms_and_round_trips(url: impl Fn(&str) -> String, env: Vec<(&str, String)>) {
    let store = open(&url("conformance"), env.clone(), &options());
    store_suite::run_all(Arc::new(store));
    let store = open(&url("phone/one"), env, &options());
    let dir = tempfile::tempdir().unwrap();
    round_trip(Arc::new(store), dir.path());
}

#[test]
fn s3_conforms_and_round_trips() {
    let Some(server) = S3Server::start() else {
        return;
    };
    conforms_and_round_trips(|p| server.url(p), server.env());
}

#[test]
fn azure_blob_conforms_and_round_trips() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    conforms_and_round_trips(|p| server.url(p), server.env());
}

#[test]
fn webdav_conforms_and_round_trips() {
    let Some(server) = WebDavServer::start() else {
        return;
    };
    conforms_and_round_trips(|p| server.url(p), server.env());
    // Uploads went through tmp/ and nothing was left there.
    let tmp = server.dir.path().join("data/phone/one/tmp");
    assert_eq!(tree::list_files(&tmp), Vec::<std::path::PathBuf>::new());
}

#[test]
fn webdav_without_the_password_says_which_variable_to_set() {
    let Some(server) = WebDavServer::start() else {
        return;
    };
    let e = open_cloud(
        &Location::parse(&server.url("x")).unwrap(),
        &Settings::empty(),
        &options(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("BACKLOCK_WEBDAV_PASSWORD"), "{e}");
    // A wrong password: refused, not retried, and never echoed.
    let store = open_cloud(
        &Location::parse(&server.url("x")).unwrap(),
        &Settings::empty().with("BACKLOCK_WEBDAV_PASSWORD", "wrong-password-1234"),
        &options(),
    )
    .unwrap();
    let e = store.put(ObjectKind::Index, "00", b"x").unwrap_err();
    let text = e.to_string();
    assert!(!matches!(e, StoreError::Transient { .. }), "{text}");
    assert!(!text.contains("wrong-password-1234"), "{text}");
    assert_eq!(store.stats().retries.load(Ordering::Relaxed), 0);
}

#[test]
fn sftp_conforms_and_round_trips() {
    let Some(server) = SftpServer::start() else {
        return;
    };
    conforms_and_round_trips(|p| server.url(p), server.env());
    let tmp = server.dir.path().join("data/phone/one/tmp");
    assert_eq!(tree::list_files(&tmp), Vec::<std::path::PathBuf>::new());
}

/// A backup through a proxy that fails a third of all requests (503, 500, 429,
/// resets, answers cut off halfway, stalls past the timeout) completes, restores
/// identically and checks clean.
#[test]
fn s3_faults_are_retried_and_the_backup_restores_identically() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let upstream: SocketAddr = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // A request's time-out must pass a healthy request on a busy machine (a 4 MiB pack
    // through the proxy takes tens of ms on a quiet one) and be passed by a stall.
    let timeout = Duration::from_secs(5);
    let proxy = FaultProxy::start(upstream, 0.35, 5, timeout * 2);
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let faulty = Options {
        retries: 12,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
        io_timeout: timeout,
        timeout,
        max_in_flight: 4,
    };
    let store = Arc::new(open(&server.url("faulty"), env, &faulty));
    let dir = tempfile::tempdir().unwrap();
    round_trip(store.clone(), dir.path());
    let c = &proxy.counters;
    eprintln!(
        "proxy: {} requests, {} faults (503 {}, 500 {}, 429 {}, reset {}, cut {}, stall {}); {} retries",
        c.requests.load(Ordering::Relaxed),
        c.total_faults(),
        c.of(Fault::SlowDown),
        c.of(Fault::InternalError),
        c.of(Fault::TooManyRequests),
        c.of(Fault::Reset),
        c.of(Fault::Truncate),
        c.of(Fault::Stall),
        store.stats().retries.load(Ordering::Relaxed)
    );
    assert!(c.total_faults() >= 8, "too few faults to mean anything");
    assert!(store.stats().retries.load(Ordering::Relaxed) >= c.total_faults() / 2);
}

/// A store that kept half an upload under the final name (a server crash, a sync
/// tool): check names the pack, and restore refuses it and leaves nothing behind.
#[test]
fn s3_half_written_objects_are_never_trusted() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = Arc::new(open(&server.url("half"), server.env(), &options()));
    let key = BackupKey::generate();
    let home = DeviceHome::new(dir.join("home"));
    Repository::init(store.clone(), &key, home.clone()).unwrap();
    let src = tree::write_sample(dir, 9);
    Repository::open(store.clone(), &key, home.clone())
        .unwrap()
        .load_index()
        .unwrap()
        .backup(&BackupOptions {
            paths: vec![src],
            hostname: "test".into(),
            ..Default::default()
        })
        .unwrap();
    let packs = store.list(ObjectKind::Pack).unwrap();
    let victim = packs.iter().max_by_key(|p| p.size).unwrap().name.clone();
    let whole = store.get(ObjectKind::Pack, &victim).unwrap();
    let op = store.operator().clone();
    let path = format!("packs/{}/{victim}", &victim[..2]);
    let half = whole[..whole.len() / 2].to_vec();
    backlock_store_cloud::runtime()
        .block_on(async move { op.write(&path, half).await })
        .unwrap();

    let report = Repository::open(store.clone(), &key, home.clone())
        .unwrap()
        .check(true)
        .unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains(&victim[..8])),
        "check did not name pack {victim}: {:?}",
        report.errors
    );
    let repo = Repository::open(store.clone(), &key, home)
        .unwrap()
        .load_index()
        .unwrap();
    let latest = repo.find_snapshot("latest").unwrap();
    let target = dir.join("restored");
    let e = repo.restore(&latest, &target).unwrap_err();
    assert!(matches!(e, RepoError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains(&victim[..8]), "{e}");
    // Nothing partial: no target, no staging directory.
    assert!(!target.exists());
    for f in tree::list_files(dir) {
        let name = f.to_string_lossy().into_owned();
        assert!(!name.contains("backlock-partial"), "left behind: {name}");
    }
}

/// A backup cut off by a store that stops taking packs indexes the packs it finished;
/// the next backup uploads only the rest, and the result restores identically.
#[test]
fn s3_interrupted_backup_resumes_without_uploading_finished_packs_again() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let upstream: SocketAddr = server
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream, 0.0, 1, Duration::from_secs(1));
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let opts = Options {
        retries: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..options()
    };
    let store = Arc::new(open(&server.url("resume"), env, &opts));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("media");
    std::fs::create_dir(&src).unwrap();
    let raw: u64 = (0..6u64)
        .map(|i| {
            let data = tree::random_bytes(100 + i, 2 << 20);
            std::fs::write(src.join(format!("VID-{i}.mp4")), &data).unwrap();
            data.len() as u64
        })
        .sum();
    let key = BackupKey::generate();
    let home = DeviceHome::new(tmp.path().join("home"));
    Repository::init(store.clone(), &key, home.clone()).unwrap();
    let backup = || {
        Repository::open(store.clone(), &key, home.clone())
            .unwrap()
            .load_index()
            .unwrap()
            .backup(&BackupOptions {
                paths: vec![src.clone()],
                hostname: "test".into(),
                ..Default::default()
            })
    };

    proxy.fail_after(&format!("PUT /{}/resume/packs/", server.bucket), 1);
    let e = backup().unwrap_err();
    assert!(
        matches!(e, RepoError::Store(StoreError::Transient { .. })),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("try again"), "{text}");
    let first = store.list(ObjectKind::Pack).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(store.list(ObjectKind::Snapshot).unwrap().is_empty());

    proxy.recover();
    let summary = backup().unwrap();
    let after = store.list(ObjectKind::Pack).unwrap();
    for p in &first {
        assert!(after.contains(p), "finished pack {} was lost", p.name);
    }
    let packed: u64 = after.iter().map(|p| p.size).sum();
    assert!(
        packed < raw + raw / 20,
        "{packed} bytes of packs for {raw} bytes of media: data was uploaded twice"
    );
    assert!(
        summary.bytes_stored < raw - first[0].size + raw / 20,
        "the second backup uploaded {} bytes",
        summary.bytes_stored
    );
    let repo = Repository::open(store.clone(), &key, home)
        .unwrap()
        .load_index()
        .unwrap();
    let latest = repo.find_snapshot("latest").unwrap();
    let target = tmp.path().join("restored");
    repo.restore(&latest, &target).unwrap();
    tree::assert_same(&src, &target.join("media"));
}
