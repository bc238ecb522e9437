//! `backlock --repo URL` against real servers on loopback: init, backup, snapshots,
//! restore on a new phone, check --read-data; credentials only from the environment
//! and never in any output.
//!
//! Without the servers installed these tests print a loud skip line and pass;
//! `scripts/test` installs them and sets `BACKLOCK_TEST_SERVERS=required`.

use backlock_testkit::{
    servers::{AzuriteServer, S3Server, SftpServer, WebDavServer},
    tree,
};
use std::{
    path::Path,
    process::{Command, Output},
};

struct Cli<'a> {
    dir: &'a Path,
    repo: String,
    env: Vec<(&'static str, String)>,
}

impl Cli<'_> {
    fn run(&self, home: &str, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backlock"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("user-home"))
            .env("BACKLOCK_HOME", self.dir.join(home))
            .env("BACKLOCK_REPO", &self.repo)
            .env("BACKLOCK_KEY_FILE", self.dir.join("key"))
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn ok(&self, home: &str, args: &[&str]) -> String {
        let out = self.run(home, args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        for (name, value) in &self.env {
            if name.contains("SECRET") || name.contains("PASSWORD") || name.ends_with("_KEY") {
                assert!(
                    !stdout.contains(value.as_str()) && !stderr.contains(value.as_str()),
                    "{name} leaked into the output of {args:?}"
                );
            }
        }
        stdout
    }
}

fn round_trip(repo: String, env: Vec<(&'static str, String)>) {
    let tmp = tempfile::tempdir().unwrap();
    let cli = Cli {
        dir: tmp.path(),
        repo,
        env,
    };
    let out = cli.ok("phone", &["init", "--key-only", "--yes", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["repo"].as_str().unwrap(), cli.repo.as_str());
    std::fs::write(tmp.path().join("key"), v["key"].as_str().unwrap()).unwrap();

    let src = tree::write_sample(tmp.path(), 3);
    let summary: serde_json::Value =
        serde_json::from_str(&cli.ok("phone", &["backup", "--json", src.to_str().unwrap()]))
            .unwrap();
    assert!(
        summary["bytes_stored"].as_u64().unwrap() > 3_000_000,
        "{summary}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&cli.ok("new-phone", &["snapshots", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let target = tmp.path().join("restored");
    cli.ok(
        "new-phone",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    tree::assert_same(&src, &target.join("chat"));
    let check = cli.ok("new-phone", &["check", "--read-data"]);
    assert!(check.contains("no errors"), "{check}");

    // A second init on the same URL is refused: one repository per location.
    let again = cli.run("phone", &["init", "--key-only", "--yes", "--json"]);
    assert!(!again.status.success());
}

#[test]
fn s3_url_round_trips_through_the_cli() {
    let Some(server) = S3Server::start() else {
        return;
    };
    round_trip(server.url("phones/alice"), server.env());
}

#[test]
fn s3_without_credentials_says_what_to_set() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    let cli = Cli {
        dir: tmp.path(),
        repo: server.url("x"),
        env,
    };
    let out = cli.run("phone", &["init", "--key-only", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "{stderr}");
    assert!(stderr.contains("credentials"), "{stderr}");
}

#[test]
fn azure_blob_url_round_trips_through_the_cli() {
    let Some(server) = AzuriteServer::start() else {
        return;
    };
    round_trip(server.url("phones/alice"), server.env());
}

#[test]
fn webdav_url_round_trips_through_the_cli() {
    let Some(server) = WebDavServer::start() else {
        return;
    };
    round_trip(server.url("backups/alice"), server.env());
}

#[test]
fn sftp_url_round_trips_through_the_cli() {
    let Some(server) = SftpServer::start() else {
        return;
    };
    round_trip(server.url("alice"), server.env());
}

#[test]
fn icloud_and_passwords_in_urls_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    for (repo, expect) in [
        ("icloud://Backups", "Mobile Documents"),
        (
            "webdav://bob:hunter22@127.0.0.1:1/x",
            "BACKLOCK_WEBDAV_PASSWORD",
        ),
    ] {
        let cli = Cli {
            dir: tmp.path(),
            repo: repo.into(),
            env: Vec::new(),
        };
        let out = cli.run("phone", &["init", "--key-only", "--yes", "--json"]);
        assert_eq!(out.status.code(), Some(2), "{repo}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(expect), "{all}");
        assert!(!all.contains("hunter22"), "{all}");
    }
}
