//! backlock-store-cloud: repositories in cloud stores, through Apache OpenDAL.
//!
//! [`open`] turns a repository location into an [`ObjectStore`]: a plain path (or
//! `file://`) stays on the local [`FsStore`]; `s3://`, `gcs://`, `azblob://`,
//! `webdav://`, `webdavs://`, `sftp://`, `gdrive://`, `onedrive://` and `dropbox://`
//! open a [`CloudStore`]. Credentials come from the environment or the credentials
//! file ([`Settings`]), never from the URL or the command line, and
//! [`ObjectStore::location`] never shows them.
//!
//! ```
//! use backlock_store_cloud::{open, Settings};
//! let settings = Settings::empty()
//!     .with("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
//!     .with("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
//!     .with("AWS_SECRET_ACCESS_KEY", "not-shown");
//! let store = open("s3://backups/phone", &settings).unwrap();
//! assert_eq!(store.location(), "s3://backups/phone");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod location;
mod services;
mod settings;
mod store;
mod tree;

pub use backlock_store::{FsStore, ObjectStore};
pub use location::{Drive, Location, ICLOUD_HELP};
pub use settings::{default_credentials_file, Settings, Value, CREDENTIALS_FILE_VAR};
pub use store::{runtime, CloudStore, Options, Stats};
pub use tree::{TreeFile, TreeListing};

use std::sync::Arc;

/// Why a repository location could not be opened. Nothing was read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is malformed or names an unknown store.
    #[error("cannot use {url:?} as a repository location: {reason}")]
    BadUrl {
        /// The URL, without any password.
        url: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The URL carries a password or secret.
    #[error("{url:?} carries a password or secret: remove it from the URL (it would show in `ps` and shell history) and {hint}")]
    SecretInUrl {
        /// The URL with the secret removed.
        url: String,
        /// Where the secret goes instead.
        hint: &'static str,
    },
    /// iCloud has no API backlock can use.
    #[error("{}", ICLOUD_HELP)]
    ICloud,
    /// A setting the store needs is not set.
    #[error("{what} is missing: set {vars} in {sources}")]
    MissingSetting {
        /// What is missing.
        what: String,
        /// The variables that provide it.
        vars: String,
        /// Where they are looked for.
        sources: String,
    },
    /// A setting has a value backlock cannot use.
    #[error("{name} {problem}")]
    BadSetting {
        /// The variable.
        name: String,
        /// What is wrong with it (never its value).
        problem: String,
    },
    /// The credentials file cannot be used.
    #[error("the credentials file {path}: {problem}")]
    CredentialsFile {
        /// Its path.
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// OpenDAL refused the configuration.
    #[error("cannot set up the store at {location}: {detail}; check the URL and the store's variables in the README")]
    Backend {
        /// The location.
        location: String,
        /// OpenDAL's reason.
        detail: String,
    },
}

/// Opens the store at `repo` with the default [`Options`] (overridden by settings).
pub fn open(repo: &str, settings: &Settings) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let options = Options::from_settings(settings)?;
    open_with(repo, settings, &options)
}

/// Opens the store at `repo` with explicit [`Options`].
pub fn open_with(
    repo: &str,
    settings: &Settings,
    options: &Options,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    match Location::parse(repo)? {
        Location::Local(path) => Ok(Arc::new(FsStore::new(path))),
        remote => Ok(Arc::new(open_cloud(&remote, settings, options)?)),
    }
}

/// Opens a remote location as a [`CloudStore`] (tests read its counters).
pub fn open_cloud(
    location: &Location,
    settings: &Settings,
    options: &Options,
) -> Result<CloudStore, OpenError> {
    if let Location::Local(p) = location {
        return Err(OpenError::BadUrl {
            url: p.display().to_string(),
            reason: "a local path opens the local store, not a cloud store".into(),
        });
    }
    store::install_http_transport();
    let built = services::build(location, settings)?;
    Ok(CloudStore::new(
        built.op,
        location.display(),
        built.put_mode,
        options,
        built.secrets,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(repo: &str, s: &Settings) -> String {
        match open(repo, s) {
            Ok(store) => panic!("{repo} opened as {}", store.location()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_service_opens_from_its_url_and_settings() {
        let s = Settings::empty()
            .with("AWS_REGION", "eu-west-1")
            .with("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
            .with("AWS_SECRET_ACCESS_KEY", "secret-key-value")
            .with("BACKLOCK_GCS_TOKEN", "ya29.token-value")
            .with("AZURE_STORAGE_ACCOUNT", "acct")
            .with("AZURE_STORAGE_KEY", "YWNjb3VudC1rZXk=")
            .with("BACKLOCK_GDRIVE_ACCESS_TOKEN", "gdrive-token")
            .with("BACKLOCK_ONEDRIVE_REFRESH_TOKEN", "refresh")
            .with("BACKLOCK_ONEDRIVE_CLIENT_ID", "id")
            .with("BACKLOCK_ONEDRIVE_CLIENT_SECRET", "client-secret")
            .with("BACKLOCK_DROPBOX_ACCESS_TOKEN", "dropbox-token")
            .with("BACKLOCK_WEBDAV_PASSWORD", "dav-password");
        for (repo, location) in [
            ("s3://bucket/phone", "s3://bucket/phone"),
            ("gcs://bucket/a/b/", "gcs://bucket/a/b"),
            ("azblob://container/p", "azblob://container/p"),
            ("gdrive://Backups/chat", "gdrive://Backups/chat"),
            ("onedrive://Backups", "onedrive://Backups"),
            ("dropbox://Apps/backlock", "dropbox://Apps/backlock"),
            (
                "webdavs://alice@dav.example.com/files/alice/backlock/",
                "webdavs://alice@dav.example.com/files/alice/backlock",
            ),
            ("sftp://alice@nas:2222/srv/b", "sftp://alice@nas:2222/srv/b"),
        ] {
            let store = open(repo, &s).unwrap_or_else(|e| panic!("{repo}: {e}"));
            assert_eq!(store.location(), location);
        }
        // Plain paths stay on the local store.
        let store = open("relative/dir", &s).unwrap();
        assert_eq!(store.location(), "relative/dir");
    }

    #[test]
    fn missing_credentials_name_the_variables_to_set() {
        let s = Settings::empty();
        assert!(err("s3://bucket/p", &s).contains("AWS_REGION"));
        let e = err(
            "s3://bucket/p",
            &s.clone()
                .with("AWS_REGION", "eu-west-1")
                .with("AWS_ACCESS_KEY_ID", "AKIA"),
        );
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        assert!(err("azblob://c/p", &s).contains("AZURE_STORAGE_ACCOUNT"));
        let e = err(
            "azblob://c/p",
            &s.clone().with("AZURE_STORAGE_ACCOUNT", "a"),
        );
        assert!(e.contains("AZURE_STORAGE_KEY"), "{e}");
        for drive in ["gdrive", "onedrive", "dropbox"] {
            let e = err(&format!("{drive}://Backups"), &s);
            let var = format!("BACKLOCK_{}_ACCESS_TOKEN", drive.to_uppercase());
            assert!(e.contains(&var), "{e}");
        }
        let e = err("webdav://alice@host/x", &s);
        assert!(e.contains("BACKLOCK_WEBDAV_PASSWORD"), "{e}");
        let e = err(
            "sftp://host/x",
            &s.clone().with("BACKLOCK_SFTP_KNOWN_HOSTS", "yes"),
        );
        assert!(e.contains("strict"), "{e}");
        let e = err(
            "s3://b/p",
            &s.clone().with("BACKLOCK_STORE_RETRIES", "many"),
        );
        assert!(e.contains("BACKLOCK_STORE_RETRIES"), "{e}");
    }

    #[test]
    fn secrets_and_url_queries_never_reach_error_text() {
        let s = Settings::empty()
            .with("AZURE_STORAGE_ACCOUNT", "acct")
            .with(
                "AZURE_STORAGE_SAS_TOKEN",
                "sv=2024&sig=very-secret-signature",
            );
        let store = open_cloud(
            &Location::parse("azblob://c/p").unwrap(),
            &s,
            &Options::default(),
        )
        .unwrap();
        let text = store.scrub_for_test(
            "failed: https://acct.blob.core.windows.net/c/p/config?sv=2024&sig=very-secret-signature (token sv=2024&sig=very-secret-signature) ok?".into(),
        );
        assert!(!text.contains("very-secret"), "{text}");
        assert!(text.ends_with("ok?"), "{text}");
    }
}
