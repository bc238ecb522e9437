//! `backlock rotate-key`: re-encrypt the repository under a new backup key
//! (docs/FORMAT.md §Key rotation).
//!
//! Until the rotation has finished, the new key is also kept on this device
//! (BACKLOCK_HOME, mode 0600), so a rotation stopped after it switched keys never
//! loses the only key that opens the repository; running the command again finishes
//! it and shows the key again. In password mode (this device keeps the key), the new
//! key is then registered with the vault in place of the old one, signed by the old
//! key's owner proof, exactly as `change-password` replaces a record.

use crate::exit::{Usage, VaultFailure};
use crate::password_mode::location;
use crate::vault::{connect, read_new_password};
use crate::{device_home, key_input, print_json, RepoArgs};
use anyhow::Result;
use backlock_core::key::BackupKey;
use backlock_repo::{RepoError, Repository, RotateSummary};
use backlock_vault_client::VaultError;
use backlock_vault_proto::{owner::OwnerKey, password::Password};
use std::io::IsTerminal;

/// Runs `rotate-key`.
pub(crate) fn run(args: &RepoArgs, yes: bool) -> Result<()> {
    let home = device_home()?;
    let loc = location(&args.repo);
    let pending_loc = format!("{loc} (key rotation in progress)");
    let store = crate::store_for(args)?;
    let kept = home.load_key(&loc)?;
    let pending = home.load_key(&pending_loc)?;
    let current = match (&args.key_file, &kept) {
        (None, Some(k)) => k.clone(),
        _ => key_input::read_key(args.key_file.as_deref())?,
    };

    // Which key opens the repository now: the current one, or (after a rotation that
    // switched and was then stopped) the new one this device kept.
    let (repo, switched) = match Repository::open(store.clone(), &current, home.clone()) {
        Ok(r) => {
            // A kept new key equal to the current one: the rotation ended but was
            // stopped before this device forgot the kept copy.
            let ended = pending
                .as_ref()
                .is_some_and(|p| p.expose_secret() == current.expose_secret());
            let switched = r.rotation_to_this_key_pending() || ended;
            (r, switched)
        }
        Err(RepoError::WrongKey) if pending.is_some() => {
            let new_key = pending.clone().expect("checked");
            (
                Repository::open(store.clone(), &new_key, home.clone())?,
                true,
            )
        }
        Err(e) => return Err(e.into()),
    };
    // Password mode: the vault must take the new key in place of the old one.
    let vault = match &kept {
        Some(_) => vault_password(args, &home)?,
        None => None,
    };

    let (new_key, summary) = if switched {
        let new_key = pending.clone().unwrap_or_else(|| current.clone());
        let summary = RotateSummary {
            finished_earlier: true,
            ..repo.finish_rotation()?
        };
        (new_key, summary)
    } else {
        let fresh = pending.is_none();
        let new_key = pending.unwrap_or_else(BackupKey::generate);
        if !yes {
            if !std::io::stdin().is_terminal() {
                return Err(Usage("rotate-key must confirm that you saved the new key: run it in a terminal, or pass --yes --json in scripts".into()).into());
            }
            key_input::confirm_saved(&new_key)?;
        }
        if fresh {
            home.save_new_key(&pending_loc, &new_key)?;
        }
        let summary = repo.rotate_key(&new_key)?;
        (new_key, summary)
    };

    if let (Some(old), Some(password)) = (&kept, &vault) {
        let session = connect(&args.vault, &home)?;
        let register = |owner: &BackupKey| {
            session.block_on(session.client.register(
                password,
                &new_key,
                &session.pinned,
                Some(&OwnerKey::derive(owner)),
                &session.ksf,
            ))
        };
        // A run stopped after the vault took the new key: the record is the new
        // key's to replace now.
        let result = register(old).or_else(|e| register(&new_key).map_err(|_| e));
        session.close();
        result.map_err(VaultFailure::from)?;
    }
    if kept.is_some() {
        home.save_key(&loc, &new_key)?;
    }
    // Shown before the kept copy goes: a run killed between the two shows it again.
    report(args, yes, &new_key, &summary, vault.is_some());
    home.forget_key(&pending_loc)?;
    Ok(())
}

/// In password mode, the new password for the record that will hold the new key
/// (`None` when the vault holds no record: the repository was switched to the key).
fn vault_password(args: &RepoArgs, home: &backlock_repo::DeviceHome) -> Result<Option<Password>> {
    let session = connect(&args.vault, home)?;
    let status = session.block_on(session.client.status());
    session.close();
    match status {
        Ok(s) if s.record.is_some() => {}
        Ok(_) | Err(VaultError::NoKey) => return Ok(None),
        Err(e) => return Err(VaultFailure::from(e).into()),
    }
    if !args.json {
        eprintln!("The vault will keep the new key behind the password you choose now.");
    }
    Ok(Some(read_new_password(&args.vault)?))
}

fn report(args: &RepoArgs, yes: bool, key: &BackupKey, s: &RotateSummary, vault: bool) {
    if args.json {
        let shown = key.to_display();
        print_json(&serde_json::json!({
            "key": shown.as_str(),
            "vault_updated": vault,
            "summary": s,
        }));
        return;
    }
    if yes || s.finished_earlier {
        println!(
            "Your new backup key:\n\n    {}\n\n{}\n",
            key.to_display().as_str(),
            key_input::LOST_KEY_WARNING
        );
    }
    if s.finished_earlier {
        println!(
            "finished an interrupted key rotation: {} objects of the old key deleted; only the new key opens this repository",
            s.objects_deleted
        );
    } else {
        println!(
            "rotated the key: {} snapshots and {} chunks re-encrypted and verified, {} objects of the old key deleted; the old key opens nothing here any more{}",
            s.snapshots,
            s.chunks,
            s.objects_deleted,
            if vault { "; the vault holds the new key" } else { "" }
        );
    }
}
