//! What a backup leaves out: `--exclude` patterns (gitignore syntax, matched by the
//! `ignore` crate against each entry's absolute path, so `*.tmp` matches at any depth
//! and `/home/ann/.cache` only there), `--exclude-larger-than`,
//! `--exclude-if-present` and `--one-file-system`. A directory left out is not
//! listed at all.

use crate::error::{RepoError, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::{
    ffi::OsString,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The rules of one backup; the default leaves nothing out.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    patterns: Option<Gitignore>,
    larger_than: Option<u64>,
    if_present: Vec<OsString>,
    one_file_system: bool,
}

/// Builds [`Excludes`], checking each pattern as it comes.
pub struct ExcludesBuilder {
    patterns: GitignoreBuilder,
    any_pattern: bool,
    rules: Excludes,
}

impl Default for ExcludesBuilder {
    fn default() -> Self {
        ExcludesBuilder {
            patterns: GitignoreBuilder::new("/"),
            any_pattern: false,
            rules: Excludes::default(),
        }
    }
}

impl ExcludesBuilder {
    /// Adds one pattern; `origin` says where it was given (`--exclude #2`,
    /// `list.txt line 7`) for the error that a bad pattern gets.
    pub fn pattern(&mut self, pattern: &str, origin: &str) -> Result<&mut Self> {
        if let Err(e) = self.patterns.add_line(None, pattern) {
            let at = match likely_position(pattern) {
                Some(i) => format!(" at character {}", i + 1),
                None => String::new(),
            };
            return Err(RepoError::Usage(format!(
                "exclude pattern {pattern:?} ({origin}) is not valid{at}: {}. Patterns use gitignore syntax; escape a literal [, {{ or \\ with \\",
                glob_reason(&e)
            )));
        }
        // Blank lines and comments add no rule.
        let line = pattern.trim();
        self.any_pattern |= !line.is_empty() && !line.starts_with('#');
        Ok(self)
    }

    /// Adds every line of `file` (`--exclude-file`): blank lines and lines starting
    /// with `#` are ignored, as in a .gitignore.
    pub fn file(&mut self, file: &Path) -> Result<&mut Self> {
        let text = fs::read_to_string(file).map_err(|e| {
            RepoError::Usage(format!(
                "cannot read the exclude file {}: {e}",
                file.display()
            ))
        })?;
        for (n, line) in text.lines().enumerate() {
            self.pattern(line, &format!("{} line {}", file.display(), n + 1))?;
        }
        Ok(self)
    }

    /// Leaves out regular files larger than `bytes`.
    pub fn larger_than(&mut self, bytes: u64) -> &mut Self {
        self.rules.larger_than = Some(bytes);
        self
    }

    /// Leaves out every directory that holds an entry named `name` (`.nobackup`).
    pub fn if_present(&mut self, name: &str) -> Result<&mut Self> {
        if name.is_empty() || name.contains('/') {
            return Err(RepoError::Usage(format!(
                "--exclude-if-present takes a file name, not a path: {name:?}"
            )));
        }
        self.rules.if_present.push(name.into());
        Ok(self)
    }

    /// Does not go into directories on another file system than their source's (they
    /// are stored empty, as mount points).
    pub fn one_file_system(&mut self, on: bool) -> &mut Self {
        self.rules.one_file_system = on;
        self
    }

    /// The rules.
    pub fn build(mut self) -> Result<Excludes> {
        if self.any_pattern {
            let built = self.patterns.build().map_err(|e| {
                RepoError::Usage(format!("the exclude patterns are not valid: {e}"))
            })?;
            self.rules.patterns = Some(built);
        }
        Ok(self.rules)
    }
}

impl Excludes {
    /// True when the entry at `path` (absolute), of metadata `meta`, is left out.
    pub(crate) fn leaves_out(&self, path: &Path, meta: &fs::Metadata) -> bool {
        if let Some(patterns) = &self.patterns {
            if patterns.matched(path, meta.is_dir()).is_ignore() {
                return true;
            }
        }
        if meta.is_file() && self.larger_than.is_some_and(|limit| meta.len() > limit) {
            return true;
        }
        meta.is_dir()
            && self
                .if_present
                .iter()
                .any(|name| fs::symlink_metadata(path.join(name)).is_ok())
    }

    /// True when directory `meta`, under a source on device `source_dev`, is to be
    /// stored without its entries.
    pub(crate) fn stops_at(&self, meta: &fs::Metadata, source_dev: u64) -> bool {
        self.one_file_system && meta.dev() != source_dev
    }

    /// True when nothing is left out.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_none()
            && self.larger_than.is_none()
            && self.if_present.is_empty()
            && !self.one_file_system
    }
}

/// Patterns matched against snapshot paths (`restore --include` and `--exclude`):
/// gitignore syntax as for `backup --exclude`, a path from the snapshot's root
/// (`/chats/db`) matching itself and everything under it.
#[derive(Clone, Debug)]
pub struct PathPatterns(Gitignore);

impl PathPatterns {
    /// `patterns`, each named by `flag` and its place (`--include #2`) if it is bad.
    pub fn new(flag: &str, patterns: &[String]) -> Result<Option<Self>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut b = ExcludesBuilder::default();
        for (i, p) in patterns.iter().enumerate() {
            b.pattern(p, &format!("{flag} #{}", i + 1))?;
        }
        let built = b
            .patterns
            .build()
            .map_err(|e| RepoError::Usage(format!("the {flag} patterns are not valid: {e}")))?;
        Ok(Some(PathPatterns(built)))
    }

    /// True when `path` (from the snapshot's root, without the leading `/`), or a
    /// directory it is in, matches.
    pub(crate) fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let mut full = b"/".to_vec();
        full.extend_from_slice(path);
        let path = Path::new(std::ffi::OsStr::from_bytes(&full));
        self.0.matched_path_or_any_parents(path, is_dir).is_ignore()
    }
}

/// `path` made absolute against the working directory (no symlink resolved), as
/// patterns see it.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A size as restic writes it: bytes, or a number with `K`, `M`, `G` or `T` (powers
/// of 1024; `KiB`, `kb` and the like read the same).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => u32::MAX,
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|_| shift != u32::MAX)
        .and_then(|n| n.checked_mul(1u64.checked_shl(shift)?))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a size: write bytes, or a number with K, M, G or T (such as 500M)"
            )
        })
}

/// Where a glob is most likely wrong: a trailing `\`, a `}` with no `{`, an
/// unclosed `{`, else the first class `[...]` (a range such as `z-a`). An unclosed `[`
/// is a literal, as in git.
pub(crate) fn likely_position(pattern: &str) -> Option<usize> {
    let chars: Vec<char> = pattern.chars().collect();
    let (mut class, mut first_class, mut braces) = (None, None, Vec::new());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 == chars.len() => return Some(i),
            '\\' => i += 1,
            '[' if class.is_none() => {
                class = Some(i);
                first_class = first_class.or(Some(i));
                // A `]` right after `[` (or `[!`) is part of the class.
                if chars.get(i + 1) == Some(&'!') {
                    i += 1;
                }
                if chars.get(i + 1) == Some(&']') {
                    i += 1;
                }
            }
            ']' if class.is_some() => class = None,
            '{' if class.is_none() => braces.push(i),
            '}' if class.is_none() && braces.pop().is_none() => return Some(i),
            _ => {}
        }
        i += 1;
    }
    braces.first().copied().or(first_class)
}

/// The reason of a pattern error, without the crate's restating of the pattern.
fn glob_reason(e: &ignore::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once("': ") {
        Some((_, reason)) => reason.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> Excludes {
        let mut b = ExcludesBuilder::default();
        for (i, p) in patterns.iter().enumerate() {
            b.pattern(p, &format!("--exclude #{}", i + 1)).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn patterns_match_as_gitignore_does_against_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["a/cache", "a/b/cache", "keep"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["a/x.tmp", "a/b/y.tmp", "keep/important.tmp", "cache"] {
            fs::write(root.join(f), b"x").unwrap();
        }
        let anchored = format!("{}/a/b", root.display());
        let r = rules(&["*.tmp", "!important.tmp", "cache/", &anchored]);
        let out = |p: &str| {
            let path = root.join(p);
            r.leaves_out(&path, &fs::symlink_metadata(&path).unwrap())
        };
        assert!(out("a/x.tmp"));
        assert!(out("a/cache"), "a directory pattern matches the directory");
        assert!(!out("cache"), "but not a file of that name");
        assert!(
            !out("keep/important.tmp"),
            "a negated pattern takes it back"
        );
        assert!(out("a/b"), "an absolute pattern is anchored");
        assert!(!out("a"));
        assert!(!out("keep"));
    }

    #[test]
    fn a_bad_pattern_names_itself_where_it_was_given_and_the_position() {
        let mut b = ExcludesBuilder::default();
        b.pattern("*.log", "--exclude #1").unwrap();
        // An unclosed `[` is a literal, as in git.
        b.pattern("photos/[2024", "--exclude #2").unwrap();
        let e = b
            .pattern("photos/[z-a]", "--exclude #3")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"photos/[z-a]\""), "{e}");
        assert!(e.contains("--exclude #3"), "{e}");
        assert!(e.contains("at character 8"), "{e}");
        let e = b
            .pattern("a{b,c", "x line 3")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x line 3") && e.contains("at character 2"),
            "{e}"
        );
    }

    #[test]
    fn size_markers_and_limits() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("\"12Q\""));
        assert!(parse_size("99999999999T").is_err());

        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("skip")).unwrap();
        fs::write(dir.path().join("skip/.nobackup"), b"").unwrap();
        fs::write(dir.path().join("big"), vec![0; 2048]).unwrap();
        let mut b = ExcludesBuilder::default();
        b.larger_than(1024).if_present(".nobackup").unwrap();
        assert!(b.if_present("a/b").is_err());
        let r = b.build().unwrap();
        let out = |p: &Path| r.leaves_out(p, &fs::symlink_metadata(p).unwrap());
        assert!(out(&dir.path().join("big")));
        assert!(out(&dir.path().join("skip")));
        assert!(!out(&dir.path().join("skip/.nobackup")));
        assert!(!out(dir.path()));
    }
}
