//! The device flows of password mode (docs/VAULT.md §Device flows): enable, recover on a
//! new device, change the password, switch between key and password, delete the record.

use crate::exit::{Usage, VaultFailure};
use crate::vault::{
    connect, read_new_password, read_password, VaultArgs, FORGOTTEN_PASSWORD_WARNING,
};
use crate::{device_home, key_input, print_json, store_at};
use anyhow::Result;
use backlock::{RecoverError, Recovered};
use backlock_core::key::BackupKey;
use backlock_repo::{DeviceHome, Repository};
use backlock_vault_client::{Receipt, ReceiptOp, VaultError};
use std::io::IsTerminal;
use std::path::Path;

/// The name a repository's key is kept under on this device: the absolute path of a
/// local repository, the URL (without credentials) of a cloud one.
pub(crate) fn location(repo: &Path) -> String {
    match repo.to_str().map(backlock_store_cloud::Location::parse) {
        Some(Ok(l)) => l.display(),
        _ => std::path::absolute(repo)
            .unwrap_or_else(|_| repo.to_path_buf())
            .display()
            .to_string(),
    }
}

/// The key for `repo`: from the key file, else kept on this device, else recovered from
/// the vault with the password (when a vault or account is named), else typed.
pub(crate) fn resolve_key(
    repo: &Path,
    key_file: Option<&Path>,
    vault: &VaultArgs,
) -> Result<BackupKey> {
    if key_file.is_some() {
        return key_input::read_key(key_file);
    }
    let home = device_home()?;
    if let Some(key) = home.load_key(&location(repo))? {
        return Ok(key);
    }
    if vault.given() {
        let recovered = recover(vault, &home)?;
        let key = recovered.key.clone();
        // Check the key before keeping it: the account may belong to another backup.
        let opened = Repository::open(store_at(repo)?, &key, home.clone())?;
        let anchor = recovered.keep_anchor(&home)?;
        if let Some(anchor) = anchor.filter(|a| hex::encode(a.repo) == opened.id()) {
            eprintln!(
                "The vault says the newest backup is #{} (snapshot {}).",
                anchor.seq,
                hex::encode(anchor.snapshot)
            );
        }
        home.save_key(&location(repo), &key)?;
        eprintln!("Recovered the backup key from the vault; this device keeps it from now on.");
        return Ok(key);
    }
    key_input::read_key(None)
}

/// After a backup in password mode (a vault is named): leaves the new snapshot with the
/// vault as the account's anchor, so a new phone that recovers the key knows which
/// backup is the newest (docs/VAULT.md §Snapshot anchor). The backup is done either
/// way: a failure is a warning.
pub(crate) fn leave_anchor(
    vault: &VaultArgs,
    key: &BackupKey,
    repo_id: &str,
    snapshot: &str,
    seq: u64,
) {
    if !vault.given() {
        return;
    }
    let left = (|| -> Result<()> {
        let session = connect(vault, &device_home()?)?;
        let result = session.leave_anchor(key, repo_id, snapshot, seq);
        session.close();
        Ok(result.map_err(VaultFailure::from)?)
    })();
    if let Err(e) = left {
        eprintln!(
            "warning: the vault did not take this backup as the newest ({e:#}); until a later backup \
             does, a new phone cannot tell an older backup from this one"
        );
    }
}

/// One recovery: asks for the password until it is right, the key is destroyed, or the
/// password came from a file (one guess per run, so scripts never burn guesses in a loop).
/// Returns the key and what the vault says of the newest backup.
fn recover(vault: &VaultArgs, home: &DeviceHome) -> Result<Recovered> {
    let session = connect(vault, home)?;
    let interactive = vault.password_file.is_none() && std::io::stdin().is_terminal();
    let result = loop {
        let password = read_password(vault, "Backup password: ")?;
        match session.recover(&password) {
            Ok(recovered) => {
                // A vault of an earlier release keeps no anchors.
                if let Some(e) = &recovered.anchor_unread {
                    eprintln!("warning: cannot read which backup is the newest from the vault ({e}); an older backup would not be noticed");
                }
                break Ok(recovered);
            }
            Err(RecoverError::Vault(VaultError::WrongPassword { attempts_left }))
                if interactive && attempts_left > 0 =>
            {
                eprintln!("wrong password — {attempts_left} attempts left");
            }
            Err(RecoverError::Vault(e)) => break Err(VaultFailure::from(e).into()),
            // Busy or down now (or its account's requests used up by whoever holds its
            // token): going on would give up the rollback check.
            Err(RecoverError::AnchorUnavailable(e)) => {
                break Err(anyhow::Error::from(VaultFailure::from(e)).context(
                    "the password was right, but the vault could not say which backup \
                     is the newest; this device kept nothing: try again later",
                ));
            }
        }
    };
    session.close();
    result
}

/// `init --password`: a new key, kept on this device and registered behind a password.
pub(crate) fn init(
    repo: &Path,
    vault: &VaultArgs,
    (yes, json): (bool, bool),
    compression: backlock_core::format::Compression,
) -> Result<()> {
    let home = device_home()?;
    let store = store_at(repo)?;
    if !store.list(backlock_store::ObjectKind::Config)?.is_empty() {
        return Err(backlock_repo::RepoError::AlreadyExists {
            location: store.location(),
        }
        .into());
    }
    if !yes && !json {
        eprintln!("{FORGOTTEN_PASSWORD_WARNING}\n");
    }
    let password = read_new_password(vault)?;
    let key = BackupKey::generate();
    let session = connect(vault, &home)?;
    // The key is kept before the vault has it: a disk that refuses it then leaves no
    // record in the vault that no key opens (the account could not be enabled again).
    // A registration that fails takes it back, so a refused init leaves nothing.
    // Never over a key this device already keeps for this location: no repository is
    // there, but one may be on a drive not mounted, and that key may be its only copy.
    home.save_new_key(&location(repo), &key)
        .map_err(|e| match e {
            backlock_repo::RepoError::KeyAlreadyKept { path } => anyhow::Error::from(Usage(format!(
                "this device already keeps a backup key for {} (in {}) although no repository is there: is its drive mounted? If no backup uses that key, move the file away and run init again",
                repo.display(),
                path.display()
            ))),
            other => other.into(),
        })?;
    let registered = session.block_on(session.client.register(
        &password,
        &key,
        &session.pinned,
        None,
        &session.ksf,
    ));
    let account = session.client.account().to_owned();
    let pinned = hex::encode(session.pinned);
    session.close();
    if registered.is_err() {
        // The vault's refusal is what the user must read; a key left behind is harmless.
        if let Err(e) = home.forget_key(&location(repo)) {
            eprintln!("warning: the new key, never registered, stays in this device's state: {e}");
        }
    }
    let registered = registered.map_err(|e| match e {
        VaultError::AlreadyRegistered(_) => Usage(format!(
            "a backup key is already registered for account {account}: change its password with \
             `backlock change-password` on the device that holds the key, or delete it with `backlock vault delete`"
        ))
        .into(),
        other => anyhow::Error::from(VaultFailure::from(other)),
    })?;
    let r = Repository::init_with(store, &key, home, compression)?;
    if json {
        print_json(&serde_json::json!({
            "repo": repo.display().to_string(),
            "repo_id": r.id(),
            "mode": "password",
            "account": account,
            "vault_key": pinned,
            "attempts_left": registered.attempts_left,
        }));
    } else {
        println!(
            "created repository {} at {}; its key is protected by your password in the vault (account {account}, {} guesses allowed)",
            &r.id()[..8],
            repo.display(),
            registered.attempts_left
        );
    }
    Ok(())
}

fn key_held_here(repo: &Path, key_file: Option<&Path>) -> Result<BackupKey> {
    let key = match key_file {
        Some(_) => key_input::read_key(key_file)?,
        None => device_home()?.load_key(&location(repo))?.ok_or_else(|| {
            Usage("this device does not hold the backup key of this repository: pass --key-file, or restore with the password first".into())
        })?,
    };
    // Only a key that opens the repository may speak for it.
    Repository::open(store_at(repo)?, &key, device_home()?)?;
    Ok(key)
}

/// `change-password`: a new password for the key this device holds.
pub(crate) fn change_password(
    repo: &Path,
    key_file: Option<&Path>,
    vault: &VaultArgs,
    json: bool,
) -> Result<()> {
    let key = key_held_here(repo, key_file)?;
    let password = read_new_password(vault)?;
    let home = device_home()?;
    let session = connect(vault, &home)?;
    let result = session.change_password(&password, &key);
    session.close();
    let (reply, receipt) = result.map_err(|e| match e {
        VaultError::NoKey => Usage("the vault has no record for this account: enable password mode with `backlock switch --to-password`".into()).into(),
        other => anyhow::Error::from(VaultFailure::from(other)),
    })?;
    if json {
        print_json(
            &serde_json::json!({"changed": true, "generation": reply.generation, "attempts_left": reply.attempts_left, "receipt": receipt.as_ref().map(receipt_json)}),
        );
    } else {
        println!("password changed; {} guesses allowed", reply.attempts_left);
        print_receipt(receipt.as_ref());
    }
    Ok(())
}

/// `switch --to-key`: show the key for safekeeping, then delete the vault record.
/// `switch --to-password`: register the key this device holds behind a password.
pub(crate) fn switch(
    repo: &Path,
    key_file: Option<&Path>,
    vault: &VaultArgs,
    to_key: bool,
    yes: bool,
    json: bool,
) -> Result<()> {
    let key = key_held_here(repo, key_file)?;
    let home = device_home()?;
    if to_key {
        if !yes {
            if !std::io::stdin().is_terminal() {
                return Err(Usage("switching to the key must confirm that you saved it: run in a terminal, or pass --yes --json".into()).into());
            }
            key_input::confirm_saved(&key)?;
        }
        let session = connect(vault, &home)?;
        let result = session.leave_vault(&key);
        session.close();
        let receipt = result.map_err(VaultFailure::from)?;
        if json {
            print_json(
                &serde_json::json!({"mode": "key", "key": key.to_display().as_str(), "receipt": receipt.as_ref().map(receipt_json)}),
            );
        } else {
            print_receipt(receipt.as_ref());
            if yes {
                println!(
                    "Your backup key:\n\n    {}\n\n{}",
                    key.to_display().as_str(),
                    key_input::LOST_KEY_WARNING
                );
            }
            println!("switched to the 64-digit key: the vault record is deleted; the password no longer opens this backup");
        }
        return Ok(());
    }
    if !yes && !json {
        eprintln!("{FORGOTTEN_PASSWORD_WARNING}\n");
    }
    let password = read_new_password(vault)?;
    let session = connect(vault, &home)?;
    let result = session.register_key(&password, &key);
    session.close();
    let reply = result.map_err(VaultFailure::from)?;
    home.save_key(&location(repo), &key)?;
    if json {
        print_json(&serde_json::json!({"mode": "password", "attempts_left": reply.attempts_left}));
    } else {
        println!(
            "switched to password mode; {} guesses allowed",
            reply.attempts_left
        );
    }
    Ok(())
}

/// `vault delete`: erase the account's record, proving ownership with the key.
pub(crate) fn delete(
    repo: &Path,
    key_file: Option<&Path>,
    vault: &VaultArgs,
    yes: bool,
    json: bool,
) -> Result<()> {
    let key = key_held_here(repo, key_file)?;
    if !yes {
        return Err(Usage("deleting the vault record means the password will no longer open this backup; keep the 64-digit key (`backlock switch --to-key`) or pass --yes".into()).into());
    }
    let home = device_home()?;
    let session = connect(vault, &home)?;
    let result = session.block_on(session.client.delete(&key, &session.pinned));
    session.close();
    let receipt = result.map_err(VaultFailure::from)?;
    if json {
        print_json(
            &serde_json::json!({"deleted": true, "receipt": receipt.as_ref().map(receipt_json)}),
        );
    } else {
        println!("the vault record is deleted; this device still holds the key");
        print_receipt(receipt.as_ref());
    }
    Ok(())
}

/// A receipt as `--json` prints it: what the fleet signed, and the signature.
fn receipt_json(r: &Receipt) -> serde_json::Value {
    serde_json::json!({
        "account": r.body.account,
        "op": match r.body.op {
            ReceiptOp::Deleted => "deleted",
            ReceiptOp::PasswordChanged => "password_changed",
            ReceiptOp::Absent => "absent",
        },
        "generation": r.body.generation,
        "at_unix": r.body.at_unix,
        "request": hex::encode(r.body.request),
        "signature": hex::encode(r.signature),
    })
}

/// The line a person reads: the fleet's signature says the change was made.
fn print_receipt(receipt: Option<&Receipt>) {
    if let Some(r) = receipt {
        let at = jiff::Timestamp::from_second(r.body.at_unix as i64)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|_| r.body.at_unix.to_string());
        println!(
            "receipt: signed by the vault fleet at {at} (record generation {}, signature {}…)",
            r.body.generation,
            &hex::encode(r.signature)[..16]
        );
    }
}
