//! `backlock demo`: the whole story on generated chat data, end to end: the 64-digit key,
//! then the same key behind a password in an embedded Backup Key Vault.

use crate::mib;
use anyhow::{ensure, Context, Result};
use backlock_chatgen::{generate, simulate_day, ChatSpec};
use backlock_core::key::BackupKey;
use backlock_repo::{
    verify::compare_trees, BackupOptions, BackupSummary, DeviceHome, RepoError, Repository,
};
use backlock_store::{FsStore, ObjectStore};
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

/// Options of `backlock demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Approximate size of the generated chat data in MB (database ≈ 15%, media the rest).
    #[arg(long, default_value_t = 300)]
    size_mb: u64,
    /// Keep everything in this new directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn rate(bytes: u64, seconds: f64) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9)
    )
}

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    ensure!(
        args.size_mb >= 2,
        crate::exit::Usage("--size-mb must be at least 2".into())
    );
    let _temp;
    let root = match &args.dir {
        Some(d) => {
            ensure!(
                !d.exists() || std::fs::read_dir(d)?.next().is_none(),
                crate::exit::Usage(format!(
                    "{} is not empty: choose a new directory",
                    d.display()
                ))
            );
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            _temp = tempfile::Builder::new()
                .prefix("backlock-demo-")
                .tempdir()?;
            _temp.path().to_path_buf()
        }
    };
    println!("backlock demo: end-to-end encrypted chat backup, with a 64-digit key or a password");
    println!("working in {}\n", root.display());

    let phone = root.join("phone/ChatApp");
    std::fs::create_dir_all(&phone)?;
    let gen = generate(
        &phone,
        &ChatSpec::scaled(args.size_mb * 1_000_000, args.seed),
    )
    .context("generating the sample chat data")?;
    let total = gen.db_bytes + gen.media_bytes;
    println!(
        "1. A phone with a chat app: {} messages in msgstore.db ({}), {} media files ({}, {} of them forwarded copies).",
        gen.messages,
        mib(gen.db_bytes),
        gen.media_files,
        mib(gen.media_bytes),
        gen.duplicate_media_files
    );

    let key = BackupKey::generate();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::new(root.join("cloud")));
    let home = DeviceHome::new(root.join("phone/backlock-state"));
    Repository::init(store.clone(), &key, home.clone())?;
    println!(
        "2. Encrypted backup enabled. The backup key, which only the user keeps:\n\n       {}\n",
        key.to_display().as_str()
    );
    println!(
        "   (`backlock init` makes the user confirm it is saved: losing it loses the backup.)"
    );

    let backup = |home: &DeviceHome| -> Result<BackupSummary> {
        let repo = Repository::open(store.clone(), &key, home.clone())?.load_index()?;
        let opts = BackupOptions {
            paths: vec![phone.clone()],
            hostname: crate::hostname(),
            ..Default::default()
        };
        Ok(repo.backup(&opts)?)
    };
    let first = backup(&home)?;
    println!(
        "3. First backup: {} in {:.2} s ({}); {} uploaded to the cloud folder, forwarded media stored once.",
        mib(first.bytes_total),
        first.seconds,
        rate(first.bytes_read, first.seconds),
        mib(first.bytes_stored)
    );

    let day = simulate_day(&phone, args.seed + 1).context("simulating a day of chatting")?;
    let second = backup(&home)?;
    println!(
        "4. A day of chatting: {} new messages, {} rows updated, {:.1}% of the database's pages changed, {} new media files ({}).",
        day.new_messages,
        day.updated_rows,
        100.0 * day.db_pages_changed as f64 / day.db_pages.max(1) as f64,
        day.new_media_files,
        mib(day.new_media_bytes)
    );
    println!(
        "   Second backup: {} uploaded in {:.2} s ({} unchanged files not even read).",
        mib(second.bytes_stored),
        second.seconds,
        second.files_unchanged
    );

    let new_phone = DeviceHome::new(root.join("new-phone/backlock-state"));
    let typed = BackupKey::parse(&key.to_display())?;
    let wrong = Repository::open(store.clone(), &BackupKey::generate(), new_phone.clone());
    ensure!(
        matches!(wrong, Err(RepoError::WrongKey)),
        "a wrong key was not refused"
    );
    let started = Instant::now();
    let repo = Repository::open(store.clone(), &typed, new_phone)?.load_index()?;
    let latest = repo.find_snapshot("latest")?;
    let target = root.join("new-phone/restored");
    let restored = repo.restore(&latest, &target)?;
    let restore_secs = started.elapsed().as_secs_f64();
    println!(
        "5. New phone: a wrong key is refused; with the right key, {} restored in {:.2} s ({}).",
        mib(restored.bytes),
        restore_secs,
        rate(restored.bytes, restore_secs)
    );
    let report = compare_trees(&phone, &target.join("ChatApp"))
        .map_err(|e| anyhow::anyhow!("verification failed: {e}"))?;
    println!(
        "6. Verified: {} files and {} SQLite database identical byte for byte.",
        report.files, report.databases
    );

    let vault = password_story(&root, &phone, &store, &key)?;

    let repo_bytes: u64 = [
        backlock_store::ObjectKind::Pack,
        backlock_store::ObjectKind::Index,
        backlock_store::ObjectKind::Snapshot,
    ]
    .iter()
    .map(|k| {
        store
            .list(*k)
            .map(|l| l.iter().map(|o| o.size).sum::<u64>())
            .unwrap_or(0)
    })
    .sum();
    println!("\nSummary");
    println!("  chat data                {:>12}", mib(total));
    println!("  repository (2 snapshots) {:>12}   (encrypted; the cloud sees no names, no content, no key)", mib(repo_bytes));
    println!(
        "  first backup             {:>12}   {:>6.2} s  {}",
        mib(first.bytes_stored),
        first.seconds,
        rate(first.bytes_read, first.seconds)
    );
    println!(
        "  daily backup uploaded    {:>12}   {:>6.2} s",
        mib(second.bytes_stored),
        second.seconds
    );
    println!(
        "  restore on a new phone   {:>12}   {:>6.2} s  {}",
        mib(restored.bytes),
        restore_secs,
        rate(restored.bytes, restore_secs)
    );
    println!(
        "  password recovery        {:>12}   {:>6.2} s  (OPAQUE + Argon2id; the vault never saw the password)",
        "",
        vault.recovery_secs
    );
    if args.dir.is_some() {
        println!("\nEverything is kept in {}.", root.display());
    }
    Ok(())
}

struct VaultFigures {
    recovery_secs: f64,
}

/// Steps 7 and 8: the key behind a password in a vault embedded in this process; a new
/// phone recovers it with the password; wrong guesses count down.
fn password_story(
    root: &Path,
    phone: &Path,
    store: &Arc<dyn ObjectStore>,
    key: &BackupKey,
) -> Result<VaultFigures> {
    const ACCOUNT: &str = "demo-user";
    let password = Password::new("tulip garden 42".into());
    let runtime = tokio::runtime::Runtime::new()?;
    let vault = crate::vault::start_embedded(&runtime, &root.join("vault"))?;
    let token = vault.vault.issue_token(ACCOUNT, 600)?;
    let client = VaultClient::new(&vault.url(), ACCOUNT, &token)?;
    let ksf = Stretch::default();
    let result = runtime.block_on(async {
        let pinned = client.info().await?.server_public_key;
        client.register(&password, key, &pinned, None, &ksf).await?;
        println!(
            "7. Password mode: the same key is registered with a Backup Key Vault (embedded here) behind the password \"tulip garden 42\".\n   \
             The vault stores an OPAQUE record and the key wrapped under a key only the password yields; it never sees either."
        );
        let started = Instant::now();
        let recovered = client.recover(&password, &pinned, &ksf).await?;
        let recovery_secs = started.elapsed().as_secs_f64();
        let fresh = DeviceHome::new(root.join("third-phone/backlock-state"));
        let repo = Repository::open(store.clone(), &recovered, fresh)?.load_index()?;
        let latest = repo.find_snapshot("latest")?;
        let target = root.join("third-phone/restored");
        let restored = repo.restore(&latest, &target)?;
        let report = compare_trees(phone, &target.join("ChatApp"))
            .map_err(|e| anyhow::anyhow!("verification after the password restore failed: {e}"))?;
        println!(
            "8. A third phone types the password: the key comes back in {recovery_secs:.2} s; {} restored and verified ({} files identical).",
            mib(restored.bytes),
            report.files
        );
        let mut countdown = Vec::new();
        for _ in 0..3 {
            match client.recover(&Password::new("tulip garden 24".into()), &pinned, &ksf).await {
                Err(VaultError::WrongPassword { attempts_left }) => {
                    countdown.push(format!("\"wrong password — {attempts_left} attempts left\""))
                }
                other => anyhow::bail!("a wrong password was not refused: {:?}", other.map(|_| ())),
            }
        }
        println!("   Three wrong guesses: {}.", countdown.join(", "));
        println!(
            "   After 10 wrong guesses the vault erases the record: the key is gone for good. A right password resets the count:"
        );
        client.recover(&password, &pinned, &ksf).await?;
        let left = client.status().await?.record.map(|r| r.attempts_left).unwrap_or(0);
        println!("   right password again, {left} attempts allowed.");
        Ok(VaultFigures { recovery_secs })
    });
    runtime.block_on(vault.shutdown());
    result
}
