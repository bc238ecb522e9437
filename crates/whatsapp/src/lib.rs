//! WhatsApp's end-to-end encrypted backups (crypt15), read and written with the user's
//! 64-digit key, so that backlock can import them into a repository and export a
//! database back (docs/WHATSAPP.md).

pub mod crypt15;
pub mod header;
pub mod key;

pub use crypt15::{
    check_database, deflate, inflate, open, read_header, seal, Crypt15Error, Opened,
};
pub use key::{KeyError, WhatsAppKey};

/// What a backup's file name says: the database it holds and the day it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupName {
    /// The database's name: `msgstore.db` for `msgstore-2024-05-01.1.db.crypt15`.
    pub database: String,
    /// The day in a dated name (year, month, day), none for the newest backup.
    pub date: Option<(i16, i8, i8)>,
    /// The counter after the date (`.1.`): several backups of one day, in order.
    pub counter: Option<u32>,
    /// The format its extension names (15 for `.crypt15`).
    pub crypt: Option<u8>,
}

/// Reads a backup's file name: `NAME[-YYYY-MM-DD.N].EXT.cryptV`.
pub fn backup_name(file_name: &str) -> BackupName {
    let (stem, crypt) = match file_name.rsplit_once(".crypt") {
        Some((stem, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            (stem, v.parse().ok())
        }
        _ => (file_name, None),
    };
    // `msgstore-2024-05-01.1.db`: a date and a counter before the extension.
    let dated = stem.split_once('-').and_then(|(base, rest)| {
        let (date, rest) = rest.split_at_checked(10)?;
        let (counter, ext) = rest.strip_prefix('.')?.split_once('.')?;
        if !counter.bytes().all(|b| b.is_ascii_digit()) || counter.is_empty() {
            return None;
        }
        let mut parts = date.split('-');
        let y: i16 = parts.next()?.parse().ok()?;
        let m: i8 = parts.next()?.parse().ok()?;
        let d: i8 = parts.next()?.parse().ok()?;
        let valid = date.len() == 10 && (1..=12).contains(&m) && (1..=31).contains(&d);
        let counter: u32 = counter.parse().ok()?;
        valid.then(|| (format!("{base}.{ext}"), (y, m, d), counter))
    });
    match dated {
        Some((database, date, counter)) => BackupName {
            database,
            date: Some(date),
            counter: Some(counter),
            crypt,
        },
        None => BackupName {
            database: stem.to_string(),
            date: None,
            counter: None,
            crypt,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_apps_backups() {
        assert_eq!(
            backup_name("msgstore-2024-05-01.1.db.crypt15"),
            BackupName {
                database: "msgstore.db".into(),
                date: Some((2024, 5, 1)),
                counter: Some(1),
                crypt: Some(15)
            }
        );
        assert_eq!(
            backup_name("msgstore.db.crypt15"),
            BackupName {
                database: "msgstore.db".into(),
                date: None,
                counter: None,
                crypt: Some(15)
            }
        );
        assert_eq!(backup_name("wa.db.crypt14").crypt, Some(14));
        assert_eq!(backup_name("notes.txt").crypt, None);
        assert_eq!(backup_name("msgstore-2024-13-01.1.db.crypt15").date, None);
        assert_eq!(
            backup_name("msgstore-2024-05-01.10.db.crypt15").counter,
            Some(10)
        );
        assert_eq!(backup_name("my-backup.db.crypt15").database, "my-backup.db");
    }
}
