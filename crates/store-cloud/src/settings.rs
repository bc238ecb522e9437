//! Where store credentials come from: the environment, then the credentials file.
//!
//! Credentials never come from the command line or the repository URL (both end up
//! in shell history and `ps`). The file holds `NAME=value` lines using the same names
//! as the environment (`AWS_SECRET_ACCESS_KEY=…`, `BACKLOCK_WEBDAV_PASSWORD=…`);
//! a variable set in the environment wins over the file. The file must be readable
//! by its owner alone, as ssh demands of private keys.

use crate::OpenError;
use std::{
    collections::BTreeMap,
    fmt,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};
use zeroize::Zeroizing;

/// The environment variable naming the credentials file.
pub const CREDENTIALS_FILE_VAR: &str = "BACKLOCK_CREDENTIALS";

/// A setting's value; secrets among them are redacted in `Debug` and zeroized.
#[derive(Clone)]
pub struct Value(Zeroizing<String>);

impl Value {
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

/// Settings for opening a store: the environment over the credentials file.
#[derive(Clone, Default)]
pub struct Settings {
    env: BTreeMap<String, Value>,
    file: BTreeMap<String, Value>,
    file_path: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values may be secrets.
        f.debug_struct("Settings")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("file", &self.file.keys().collect::<Vec<_>>())
            .field("file_path", &self.file_path)
            .finish()
    }
}

/// The default credentials file: `$XDG_CONFIG_HOME/backlock/credentials`, else
/// `~/.config/backlock/credentials`.
pub fn default_credentials_file() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("backlock").join("credentials"))
}

impl Settings {
    /// No settings at all (tests add their own with [`Settings::with`]).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The process environment over the credentials file named by
    /// `BACKLOCK_CREDENTIALS` (or the default one, if it exists).
    pub fn from_env() -> Result<Self, OpenError> {
        // A variable whose name or value is not UTF-8 is no setting of ours (every
        // credential and URL is text): it is left out, where `std::env::vars` would
        // panic on it.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .map(|(k, v)| (k, Value(Zeroizing::new(v))))
            .collect();
        let mut settings = Settings {
            env,
            ..Default::default()
        };
        let named = std::env::var_os(CREDENTIALS_FILE_VAR).map(PathBuf::from);
        let path = match named {
            Some(p) => Some(p),
            None => default_credentials_file().filter(|p| p.exists()),
        };
        if let Some(path) = path {
            settings.file = read_file(&path)?;
            settings.file_path = Some(path);
        }
        Ok(settings)
    }

    /// Adds (or replaces) one setting, as if it were in the environment.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env
            .insert(name.to_string(), Value(Zeroizing::new(value.into())));
        self
    }

    /// Looks a setting up: the environment first, then the credentials file. Empty
    /// values count as unset.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.env
            .get(name)
            .or_else(|| self.file.get(name))
            .filter(|v| !v.expose().is_empty())
    }

    /// The first of `names` that is set.
    pub fn first(&self, names: &[&str]) -> Option<&Value> {
        names.iter().find_map(|n| self.get(n))
    }

    /// Where settings are looked for, for error messages.
    pub fn sources(&self) -> String {
        match &self.file_path {
            Some(p) => format!("the environment or {}", p.display()),
            None => format!(
                "the environment or a credentials file ({CREDENTIALS_FILE_VAR}, default {})",
                default_credentials_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/backlock/credentials".into())
            ),
        }
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, Value>, OpenError> {
    let bad = |problem: String| OpenError::CredentialsFile {
        path: path.display().to_string(),
        problem,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "others can read it: run `chmod 600 {}` and try again",
            path.display()
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it ({e})")))?,
    );
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            // Never echo the line: it may hold a secret.
            return Err(bad(format!(
                "line {} is not NAME=value (comments start with #)",
                i + 1
            )));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        out.insert(
            name.trim().to_string(),
            Value(Zeroizing::new(value.to_string())),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_values_parse_and_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "# S3\nAWS_ACCESS_KEY_ID=AKIAFILE\nexport AWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n\nEMPTY="
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Settings {
            file: read_file(&path).unwrap(),
            file_path: Some(path),
            ..Default::default()
        };
        assert_eq!(s.get("AWS_SECRET_ACCESS_KEY").unwrap().expose(), "s3cr3t");
        assert!(s.get("EMPTY").is_none());
        let s = s.with("AWS_ACCESS_KEY_ID", "AKIAENV");
        assert_eq!(s.get("AWS_ACCESS_KEY_ID").unwrap().expose(), "AKIAENV");
        let shown = format!("{s:?} {:?}", s.get("AWS_SECRET_ACCESS_KEY"));
        assert!(
            !shown.contains("s3cr3t") && shown.contains("REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_showing_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "AWS_SECRET_ACCESS_KEY=hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("hunter2"), "{e}");
    }
}
