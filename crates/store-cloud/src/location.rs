//! Repository locations: a local path or a store URL.

use crate::OpenError;
use std::path::PathBuf;

/// Where a repository lives, parsed from `--repo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory (a plain path or `file://PATH`).
    Local(PathBuf),
    /// `s3://BUCKET[/PREFIX]`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix inside it (no leading or trailing slash).
        prefix: String,
    },
    /// `gcs://BUCKET[/PREFIX]`.
    Gcs {
        /// The bucket.
        bucket: String,
        /// The prefix inside it.
        prefix: String,
    },
    /// `azblob://CONTAINER[/PREFIX]`.
    Azblob {
        /// The container.
        container: String,
        /// The prefix inside it.
        prefix: String,
    },
    /// `webdav://HOST[:PORT]/PATH` (http) or `webdavs://…` (https).
    Webdav {
        /// Whether to use https.
        tls: bool,
        /// User name from the URL, if any (never a password).
        user: Option<String>,
        /// `host[:port]`.
        authority: String,
        /// The path on the server.
        path: String,
    },
    /// `sftp://[USER@]HOST[:PORT]/PATH`; `/~/PATH` is relative to the home directory.
    Sftp {
        /// User name, if given.
        user: Option<String>,
        /// The host (or an alias from the ssh configuration).
        host: String,
        /// The port, if given.
        port: Option<u16>,
        /// The path on the server.
        path: String,
    },
    /// A path in a drive service: `gdrive://PATH`, `onedrive://PATH`, `dropbox://PATH`.
    Drive {
        /// Which service.
        service: Drive,
        /// The folder (no leading slash).
        path: String,
    },
}

/// The drive services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    /// Google Drive.
    Gdrive,
    /// Microsoft OneDrive.
    Onedrive,
    /// Dropbox.
    Dropbox,
}

impl Drive {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Drive::Gdrive => "gdrive",
            Drive::Onedrive => "onedrive",
            Drive::Dropbox => "dropbox",
        }
    }

    /// The prefix of its environment variables (`BACKLOCK_GDRIVE_…`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Drive::Gdrive => "BACKLOCK_GDRIVE",
            Drive::Onedrive => "BACKLOCK_ONEDRIVE",
            Drive::Dropbox => "BACKLOCK_DROPBOX",
        }
    }
}

/// What the iCloud error says (OpenDAL has no iCloud service).
pub const ICLOUD_HELP: &str =
    "iCloud Drive has no public storage API that backlock (through Apache OpenDAL) can use: \
on a Mac, point --repo at a folder inside iCloud Drive, e.g. \
\"$HOME/Library/Mobile Documents/com~apple~CloudDocs/backlock\", and macOS uploads it; \
elsewhere choose another store (see `backlock help` and the README)";

const SCHEMES: &str =
    "a local path, file://, s3://, gcs://, azblob://, webdav://, webdavs://, sftp://, gdrive://, onedrive:// or dropbox://";

fn bad(url: &str, reason: impl Into<String>) -> OpenError {
    OpenError::BadUrl {
        url: redact_userinfo(url),
        reason: reason.into(),
    }
}

/// The URL with any `user:password@` reduced to `user@`, for messages.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

fn decode(url: &str, s: &str) -> Result<String, OpenError> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(url, "a % is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, "the path is not UTF-8"))
}

fn trim_slashes(s: &str) -> String {
    s.trim_matches('/').to_string()
}

impl Location {
    /// Parses `--repo`. Anything without `SCHEME://` is a local path.
    pub fn parse(repo: &str) -> Result<Location, OpenError> {
        let Some((scheme, rest)) = repo.split_once("://") else {
            if repo.is_empty() {
                return Err(bad(repo, format!("give a repository location: {SCHEMES}")));
            }
            return Ok(Location::Local(PathBuf::from(repo)));
        };
        let scheme = scheme.to_ascii_lowercase();
        if rest.contains(['?', '#']) {
            return Err(bad(
                repo,
                "options do not go in the URL: use environment variables or the credentials file",
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(u) = userinfo {
            if u.contains(':') {
                return Err(OpenError::SecretInUrl {
                    url: redact_userinfo(repo),
                    hint: match scheme.as_str() {
                        "webdav" | "webdavs" => "set BACKLOCK_WEBDAV_PASSWORD",
                        "sftp" => "use an ssh key (BACKLOCK_SFTP_KEY or your ssh configuration)",
                        _ => "see the README for this store's variables",
                    },
                });
            }
        }
        let user = userinfo.map(|u| decode(repo, u)).transpose()?;
        let no_user = |what: &str| -> Result<(), OpenError> {
            match userinfo {
                Some(_) => Err(bad(
                    repo,
                    format!("{what} URLs take no user name: credentials come from the environment or the credentials file"),
                )),
                None => Ok(()),
            }
        };
        let bucket_and_prefix = |what: &str| -> Result<(String, String), OpenError> {
            if hostport.is_empty() {
                return Err(bad(
                    repo,
                    format!("name the {what}: {scheme}://{what}/PREFIX"),
                ));
            }
            Ok((decode(repo, hostport)?, trim_slashes(&decode(repo, path)?)))
        };
        match scheme.as_str() {
            "file" => {
                if !authority.is_empty() && authority != "localhost" {
                    return Err(bad(repo, "file:// URLs name a local path: file:///PATH"));
                }
                Ok(Location::Local(PathBuf::from(decode(repo, path)?)))
            }
            "s3" => {
                no_user("s3")?;
                let (bucket, prefix) = bucket_and_prefix("BUCKET")?;
                Ok(Location::S3 { bucket, prefix })
            }
            "gcs" | "gs" => {
                no_user("gcs")?;
                let (bucket, prefix) = bucket_and_prefix("BUCKET")?;
                Ok(Location::Gcs { bucket, prefix })
            }
            "azblob" => {
                no_user("azblob")?;
                let (container, prefix) = bucket_and_prefix("CONTAINER")?;
                Ok(Location::Azblob { container, prefix })
            }
            "webdav" | "webdavs" => {
                if hostport.is_empty() {
                    return Err(bad(repo, "name the server: webdav://HOST[:PORT]/PATH"));
                }
                Ok(Location::Webdav {
                    tls: scheme == "webdavs",
                    user,
                    authority: hostport.to_string(),
                    path: format!("/{}", trim_slashes(&decode(repo, path)?)),
                })
            }
            "sftp" => {
                let (host, port) = match hostport.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                        let port = p
                            .parse::<u16>()
                            .map_err(|_| bad(repo, format!("port {p:?} is not a number")))?;
                        (h.to_string(), Some(port))
                    }
                    _ => (hostport.to_string(), None),
                };
                if host.is_empty() {
                    return Err(bad(repo, "name the server: sftp://[USER@]HOST[:PORT]/PATH"));
                }
                let path = decode(repo, path)?;
                let path = match path.strip_prefix("/~/") {
                    Some(rel) => trim_slashes(rel),
                    None if path == "/~" => String::new(),
                    None => format!("/{}", trim_slashes(&path)),
                };
                Ok(Location::Sftp {
                    user,
                    host,
                    port,
                    path,
                })
            }
            "gdrive" | "onedrive" | "dropbox" => {
                no_user(&scheme)?;
                let service = match scheme.as_str() {
                    "gdrive" => Drive::Gdrive,
                    "onedrive" => Drive::Onedrive,
                    _ => Drive::Dropbox,
                };
                // Everything after the scheme is the folder: gdrive://Backups/chat.
                let path = trim_slashes(&decode(repo, rest)?);
                if path.is_empty() {
                    return Err(bad(
                        repo,
                        format!("name a folder: {scheme}://FOLDER (backlock keeps its objects inside it)"),
                    ));
                }
                Ok(Location::Drive { service, path })
            }
            "icloud" => Err(OpenError::ICloud),
            other => Err(bad(
                repo,
                format!("backlock does not know the store {other:?}: use {SCHEMES}"),
            )),
        }
    }

    /// The location for messages and for naming the repository on this device:
    /// never includes credentials.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            Location::S3 { bucket, prefix } => join("s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => join("gcs", bucket, prefix),
            Location::Azblob { container, prefix } => join("azblob", container, prefix),
            Location::Webdav {
                tls,
                user,
                authority,
                path,
            } => format!(
                "{}://{}{authority}{path}",
                if *tls { "webdavs" } else { "webdav" },
                user.as_ref().map(|u| format!("{u}@")).unwrap_or_default()
            ),
            Location::Sftp {
                user,
                host,
                port,
                path,
            } => format!(
                "sftp://{}{host}{}{}",
                user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
                port.map(|p| format!(":{p}")).unwrap_or_default(),
                if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/~/{path}")
                }
            ),
            Location::Drive { service, path } => format!("{}://{path}", service.scheme()),
        }
    }
}

fn join(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("/srv/backup").unwrap(),
            Location::Local("/srv/backup".into())
        );
        assert_eq!(
            Location::parse("file:///srv/my%20backup").unwrap(),
            Location::Local("/srv/my backup".into())
        );
        assert_eq!(
            Location::parse("sftp://alice@host:2222/~/backups").unwrap(),
            Location::Sftp {
                user: Some("alice".into()),
                host: "host".into(),
                port: Some(2222),
                path: "backups".into()
            }
        );
        assert_eq!(
            Location::parse("sftp://host/srv/backups")
                .unwrap()
                .display(),
            "sftp://host/srv/backups"
        );
        assert_eq!(
            Location::parse("webdavs://dav.example.com/remote.php/dav/files/a/backlock")
                .unwrap()
                .display(),
            "webdavs://dav.example.com/remote.php/dav/files/a/backlock"
        );
        assert_eq!(
            Location::parse("gdrive://Backups/chat").unwrap(),
            Location::Drive {
                service: Drive::Gdrive,
                path: "Backups/chat".into()
            }
        );
    }

    #[test]
    fn passwords_in_urls_are_refused_and_never_echoed() {
        for url in [
            "webdav://bob:hunter2@dav.example.com/x",
            "sftp://bob:hunter2@host/x",
            "s3://AKIA:hunter2@bucket/x",
        ] {
            let e = Location::parse(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("password") || e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn unknown_and_icloud_schemes_say_what_to_do() {
        let e = Location::parse("icloud://Backups").unwrap_err().to_string();
        assert!(e.contains("Mobile Documents"), "{e}");
        let e = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("s3://") && e.contains("\"ftp\""), "{e}");
        let e = Location::parse("s3://").unwrap_err().to_string();
        assert!(e.contains("BUCKET"), "{e}");
        let e = Location::parse("s3://b/x?endpoint=y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("environment"), "{e}");
    }
}
