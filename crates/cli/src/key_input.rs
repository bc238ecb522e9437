//! Reading the backup key: from a file or a hidden prompt, never from an argument that
//! `ps` would show.

use crate::exit::{BadKey, Usage};
use anyhow::Result;
use backlock_core::key::{BackupKey, KeyParseError};
use std::{io::IsTerminal, path::Path};
use zeroize::Zeroizing;

pub(crate) const LOST_KEY_WARNING: &str = "Keep this key somewhere safe (a password manager, or on paper).\n\
Nobody else has it: not backlock, not your cloud. If you lose it, your backup can never be restored.";

fn parse(text: &str, source: &str) -> Result<BackupKey> {
    BackupKey::parse(text).map_err(|e| {
        let hint = match e {
            KeyParseError::InvalidCharacter { .. } => {
                "check for a mistyped letter (only 0-9 and a-f)"
            }
            KeyParseError::WrongLength { .. } => "check for a missing or extra group",
        };
        BadKey(format!("{source}: {e}; {hint}")).into()
    })
}

/// The key from `key_file`, else from a hidden prompt on a terminal.
pub(crate) fn read_key(key_file: Option<&Path>) -> Result<BackupKey> {
    if let Some(path) = key_file {
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                BadKey(format!("cannot read the key file {}: {e}", path.display()))
            })?);
        return parse(text.trim(), &format!("the key in {}", path.display()));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Usage("no backup key given: pass --key-file FILE or set BACKLOCK_KEY_FILE (keys are never taken as arguments)".into()).into());
    }
    let typed = Zeroizing::new(rpassword::prompt_password("Backup key (64 hex digits): ")?);
    parse(&typed, "the key you typed")
}

/// Shows a new key with the warning and asks the user to type its last group back.
pub(crate) fn confirm_saved(key: &BackupKey) -> Result<()> {
    eprintln!("\nYour backup key:\n\n    {}\n", key.to_display().as_str());
    eprintln!("{LOST_KEY_WARNING}\n");
    for _ in 0..3 {
        let typed = Zeroizing::new(rpassword::prompt_password(
            "To confirm you saved it, type the last group of 4 digits: ",
        )?);
        if typed.trim().eq_ignore_ascii_case(key.last_group().as_str()) {
            return Ok(());
        }
        eprintln!("That is not the last group. Look at the key again.");
    }
    Err(Usage(
        "the key was not confirmed; nothing was created. Run init again when you can save the key"
            .into(),
    )
    .into())
}
