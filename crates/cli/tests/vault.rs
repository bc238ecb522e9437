//! Password mode as users and scripts see it, against a real `backlock vault serve`
//! process that the tests start, kill and restart.

use backlock_testkit::tree;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::client::start_recovery;
use backlock_vault_proto::password::Password;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const PASSWORD: &str = "tulip garden 42";

/// A `backlock vault serve` process on a loopback port.
struct VaultProcess {
    child: Child,
    url: String,
    public_key: String,
    /// The fleet's receipt key, as the banner prints it.
    receipt_key: String,
}

impl VaultProcess {
    fn start(data: &Path, extra: &[&str]) -> VaultProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backlock"))
            .args([
                "vault",
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            // Every log line the vault can write, kept beside its data for inspection.
            .env("BACKLOCK_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let public_key = lines
            .next()
            .unwrap()
            .unwrap()
            .strip_prefix("vault public key: ")
            .unwrap()
            .to_owned();
        let url = lines
            .next()
            .unwrap()
            .unwrap()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        let receipt_key = lines
            .next()
            .unwrap()
            .unwrap()
            .strip_prefix("vault receipt key: ")
            .unwrap()
            .to_owned();
        VaultProcess {
            child,
            url,
            public_key,
            receipt_key,
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn secret(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn token(&self, account: &str) -> String {
        let out = self.backlock(
            "-",
            None,
            &[
                "vault",
                "token",
                "--data",
                self.path("vault").to_str().unwrap(),
                "--account",
                account,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// phone1 backs up a sample tree; phone2 restores it with the password in file `pw`
    /// (embedded vault), and it comes back the same.
    fn backup_then_restore_on_a_new_phone(&self, pw: &str) {
        let src = tree::write_sample(self.dir.path(), 1);
        assert_code(
            &self.backlock("phone1", None, &["backup", src.to_str().unwrap()]),
            0,
        );
        let target = self.path("restored");
        assert_code(&self.restore_with_password("phone2", pw, &target), 0);
        tree::assert_same(&src, &target.join(src.file_name().unwrap()));
    }

    /// A new phone `home` restores the latest snapshot into `target` with the password
    /// in file `pw`, through the embedded vault.
    fn restore_with_password(&self, home: &str, pw: &str, target: &Path) -> Output {
        let args = [
            "restore",
            "--account",
            "local",
            "--password-file",
            pw,
            "--target",
        ];
        let mut args = args.to_vec();
        args.push(target.to_str().unwrap());
        self.backlock(home, None, &args)
    }

    /// Runs `backlock` as the phone whose state is `home`, talking to `vault` (or the
    /// embedded vault when `None`).
    fn backlock(&self, home: &str, vault: Option<(&VaultProcess, &str)>, args: &[&str]) -> Output {
        self.command(home, vault, args).output().unwrap()
    }

    fn command(&self, home: &str, vault: Option<(&VaultProcess, &str)>, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backlock"));
        c.args(args)
            .env("BACKLOCK_HOME", self.path(home))
            .env("BACKLOCK_REPO", self.path("repo"))
            .env("BACKLOCK_VAULT_DATA", self.path("embedded-vault"))
            .env_remove("BACKLOCK_KEY_FILE")
            .env_remove("BACKLOCK_VAULT")
            .env_remove("BACKLOCK_ACCOUNT")
            .stdin(Stdio::null());
        if let Some((v, account)) = vault {
            // The key the vault's operator publishes (here, its banner).
            c.env("BACKLOCK_VAULT", &v.url)
                .env("BACKLOCK_VAULT_KEY", &v.public_key)
                .env("BACKLOCK_ACCOUNT", account)
                .env("BACKLOCK_TOKEN", self.token(account));
        }
        c
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The command's error output says `text`.
fn assert_says(o: &Output, text: &str) {
    assert!(stderr(o).contains(text), "{}", stderr(o));
}

fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

#[test]
fn password_mode_from_enable_to_new_phones() {
    let env = Env::new();
    // Many requests on one account in a few seconds: lift the per-account rate limit.
    let vault = VaultProcess::start(&env.path("vault"), &["--account-burst", "200"]);
    let v = Some((&vault, "alice"));
    let pw = env.secret("pw", &format!("{PASSWORD}\n"));
    let pw = pw.to_str().unwrap();
    let wrong = env.secret("wrong", "tulip garden 24");
    let wrong = wrong.to_str().unwrap();

    // The policy is enforced before anything is created.
    let weak = env.secret("weak", "12345678");
    let out = env.backlock(
        "phone1",
        v,
        &[
            "init",
            "--password",
            "--password-file",
            weak.to_str().unwrap(),
            "--yes",
            "--json",
        ],
    );
    assert_code(&out, 2);
    assert!(stderr(&out).contains("at least one letter"));
    assert!(!env.path("repo").exists());

    let out = env.backlock(
        "phone1",
        v,
        &[
            "init",
            "--password",
            "--password-file",
            pw,
            "--yes",
            "--json",
        ],
    );
    assert_code(&out, 0);
    let init = json(&out);
    assert_eq!(init["mode"], "password");
    assert_eq!(init["vault_key"], vault.public_key.as_str());
    assert_eq!(init["attempts_left"], 10);

    // The original device backs up without asking: it keeps the key.
    let src = tree::write_sample(env.dir.path(), 3);
    assert_code(
        &env.backlock("phone1", None, &["backup", src.to_str().unwrap()]),
        0,
    );

    // A new phone: a wrong password counts down and restores nothing.
    let target = env.path("restored");
    let t = target.to_str().unwrap();
    let out = env.backlock(
        "phone2",
        v,
        &["restore", "--password-file", wrong, "--target", t, "--json"],
    );
    assert_code(&out, 8);
    assert_eq!(json(&out)["attempts_left"], 9);
    assert!(stderr(&out).contains("wrong password — 9 attempts left"));
    assert!(!target.exists());
    let out = env.backlock(
        "phone2",
        v,
        &["restore", "--password-file", pw, "--target", t],
    );
    assert_code(&out, 0);
    tree::assert_same(&src, &target.join(src.file_name().unwrap()));

    // Change the password on the original device: the old one no longer opens it.
    let new_pw = env.secret("new-pw", "daffodil field 7");
    let new_pw = new_pw.to_str().unwrap();
    assert_code(
        &env.backlock("phone1", v, &["change-password", "--password-file", new_pw]),
        0,
    );
    let out = env.backlock("phone3", v, &["snapshots", "--password-file", pw, "--json"]);
    assert_code(&out, 8);
    assert_code(
        &env.backlock("phone3", v, &["snapshots", "--password-file", new_pw]),
        0,
    );
    // A phone that recovered the key is an original device now: it may change it too.
    assert_code(
        &env.backlock("phone3", v, &["change-password", "--password-file", pw]),
        0,
    );

    // Back to the 64-digit key: the vault record is deleted, the key printed once.
    let out = env.backlock("phone1", v, &["switch", "--to-key", "--yes", "--json"]);
    assert_code(&out, 0);
    let key = json(&out)["key"].as_str().unwrap().to_owned();
    assert_eq!(key.split(' ').count(), 16);
    let out = env.backlock("phone4", v, &["snapshots", "--password-file", pw]);
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("no backup key is registered"),
        "{}",
        stderr(&out)
    );
    let key_file = env.secret("key", &key);
    assert_code(
        &env.backlock(
            "phone4",
            None,
            &["snapshots", "--key-file", key_file.to_str().unwrap()],
        ),
        0,
    );

    // And to a password again.
    assert_code(
        &env.backlock(
            "phone1",
            v,
            &["switch", "--to-password", "--password-file", pw, "--json"],
        ),
        0,
    );
    assert_code(
        &env.backlock("phone5", v, &["snapshots", "--password-file", pw]),
        0,
    );
    assert_code(&env.backlock("phone1", v, &["vault", "delete"]), 2);
    assert_code(&env.backlock("phone1", v, &["vault", "delete", "--yes"]), 0);
    assert_code(
        &env.backlock("phone6", v, &["snapshots", "--password-file", pw]),
        3,
    );

    // The vault's trace-level log names no password, key or token.
    let log = std::fs::read_to_string(env.path("vault.log")).unwrap();
    assert!(log.contains("guess counted"), "the log was captured");
    let raw_key = key.replace(' ', "");
    let token = env.token("alice");
    let token_mac = token.rsplit('.').next().unwrap();
    for secret in [
        PASSWORD,
        "tulip garden 24",
        "daffodil field 7",
        &raw_key,
        token_mac,
    ] {
        assert!(!log.contains(secret), "the vault log contains a secret");
    }
}

/// `copy` from a repository in password mode, by a phone that never held its key and
/// belongs to another account: the source's password recovers the key (one guess
/// per run: a wrong one is counted, says which repository refused and copies
/// nothing); the phone keeps the key, so the next copy needs no password.
#[test]
fn copy_from_a_password_mode_repository_of_another_account() {
    let env = Env::new();
    let vault = VaultProcess::start(&env.path("vault"), &["--account-burst", "200"]);
    let pw = env.secret("pw", PASSWORD);
    let wrong = env.secret("wrong", "tulip garden 24");
    let source = env.path("repo");
    let init = ["init", "--password", "--yes", "--password-file"];
    let init = [&init[..], &[pw.to_str().unwrap()]].concat();
    assert_code(&env.backlock("phone1", Some((&vault, "alice")), &init), 0);
    let src = tree::write_sample(env.dir.path(), 2);
    assert_code(
        &env.backlock("phone1", None, &["backup", src.to_str().unwrap()]),
        0,
    );

    // Bob's phone and its repository, whose key is a 64-digit key.
    let dest = env.path("dest");
    let dest = dest.to_str().unwrap();
    let out = env.backlock(
        "phone2",
        None,
        &["init", "--key-only", "--yes", "--json", "--repo", dest],
    );
    assert_code(&out, 0);
    let key = env.secret("dest-key", json(&out)["key"].as_str().unwrap());
    let copy = |password: &Path, from_token: Option<String>| {
        let mut c = env.command(
            "phone2",
            Some((&vault, "bob")),
            &[
                "copy",
                "--json",
                "--repo",
                dest,
                "--key-file",
                key.to_str().unwrap(),
                "--from-repo",
                source.to_str().unwrap(),
                "--from-account",
                "alice",
                "--from-password-file",
                password.to_str().unwrap(),
            ],
        );
        if let Some(token) = from_token {
            c.env("BACKLOCK_FROM_TOKEN", token);
        }
        c.output().unwrap()
    };
    let out = copy(&pw, None);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("BACKLOCK_FROM_TOKEN"),
        "{}",
        stderr(&out)
    );

    let out = copy(&wrong, Some(env.token("alice")));
    assert_code(&out, 8);
    assert_eq!(json(&out)["attempts_left"], 9);
    assert!(
        stderr(&out).contains(&format!("the source repository {}", source.display())),
        "{}",
        stderr(&out)
    );
    let listed = |home: &str| {
        let out = env.backlock(
            home,
            None,
            &[
                "snapshots",
                "--json",
                "--repo",
                dest,
                "--key-file",
                key.to_str().unwrap(),
            ],
        );
        assert_code(&out, 0);
        json(&out).as_array().unwrap().len()
    };
    assert_eq!(listed("phone2"), 0, "a refused copy copies nothing");

    let out = copy(&pw, Some(env.token("alice")));
    assert_code(&out, 0);
    assert_eq!(json(&out)["copied"].as_array().unwrap().len(), 1);
    let target = env.path("restored");
    let out = env.backlock(
        "phone2",
        None,
        &[
            "restore",
            "latest",
            "--repo",
            dest,
            "--key-file",
            key.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_code(&out, 0);
    tree::assert_same(&src, &target.join(src.file_name().unwrap()));

    // The phone keeps alice's key now: no password, no guess, nothing to copy.
    let out = env.backlock(
        "phone2",
        None,
        &[
            "copy",
            "--json",
            "--repo",
            dest,
            "--key-file",
            key.to_str().unwrap(),
            "--from-repo",
            source.to_str().unwrap(),
        ],
    );
    assert_code(&out, 0);
    assert_eq!(json(&out)["skipped"].as_array().unwrap().len(), 1);
}

/// Rollback on a new phone: the store serves an older copy of the repository (a
/// replay of what it held before the last backup). The phone has never seen this
/// backup, but the vault's anchor, left by the last backup and opened with the
/// recovered key, says which backup is the newest: the restore is refused with the
/// rollback error, naming both, and writes nothing.
/// Password mode for account kim on phone1, two backups of a sample tree (the second
/// adds `written-later.txt`), then the store serves the repository as it was before
/// the second. Returns the sample tree and the password file.
fn rolled_back_store(env: &Env, vault: &VaultProcess) -> (PathBuf, PathBuf) {
    let v = Some((vault, "kim"));
    let pw_file = env.secret("pw", &format!("{PASSWORD}\n"));
    let pw = pw_file.to_str().unwrap();
    let init = ["init", "--password", "--password-file", pw, "--yes"];
    assert_code(&env.backlock("phone1", v, &init), 0);
    let src = tree::write_sample(env.dir.path(), 4);
    let src_arg = src.to_str().unwrap();
    assert_code(&env.backlock("phone1", v, &["backup", src_arg]), 0);
    let older = env.path("repo-before-the-last-backup");
    tree::copy_dir(&env.path("repo"), &older);
    std::fs::write(src.join("written-later.txt"), b"the newest backup has this").unwrap();
    let out = env.backlock("phone1", v, &["backup", src_arg]);
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    std::fs::remove_dir_all(env.path("repo")).unwrap();
    std::fs::rename(&older, env.path("repo")).unwrap();
    (src, pw_file)
}

#[test]
fn a_new_phone_refuses_a_store_rolled_back_behind_the_vaults_anchor() {
    let env = Env::new();
    let vault = VaultProcess::start(&env.path("vault"), &["--account-burst", "200"]);
    let v = Some((&vault, "kim"));
    let (src, pw) = rolled_back_store(&env, &vault);
    let pw = pw.to_str().unwrap();
    let target = env.path("restored");
    let t = target.to_str().unwrap();
    let out = env.backlock(
        "phone2",
        v,
        &["restore", "--password-file", pw, "--target", t],
    );
    assert_code(&out, 5);
    let err = stderr(&out);
    assert!(err.contains("the newest backup is #2"), "{err}");
    assert!(err.contains("#1") && err.contains("#2"), "{err}");
    assert!(!target.exists(), "nothing restored");
    // The user may still take what the store has, knowingly.
    assert_code(
        &env.backlock(
            "phone2",
            v,
            &["restore", "latest", "--accept-older", "--target", t],
        ),
        0,
    );
    assert!(!target
        .join(src.file_name().unwrap())
        .join("written-later.txt")
        .exists());
}

/// The same rollback, with a relay between the new phone and the vault that answers
/// the anchor request with a value of its own. An anchor that does not open under the
/// key is refused (exit 11): nothing restored, no key kept. (A relay that answers as a
/// vault of an earlier release would, with no anchor route, still gets only a warning.)
#[test]
fn a_relay_that_forges_the_anchor_is_refused() {
    use backlock_testkit::fault_proxy::FaultProxy;
    use backlock_vault_proto::wire::{self, Anchor, AnchorReply};
    let env = Env::new();
    let vault = VaultProcess::start(&env.path("vault"), &["--account-burst", "200"]);
    let v = Some((&vault, "kim"));
    let (_, pw) = rolled_back_store(&env, &vault);
    let pw = pw.to_str().unwrap();
    let upstream = vault.url.trim_start_matches("http://").parse().unwrap();
    let relay = FaultProxy::start(upstream, 0.0, 7, std::time::Duration::from_secs(1));
    let forged = wire::encode(&AnchorReply {
        anchor: Some(Anchor {
            generation: 1,
            value: vec![7; 80],
        }),
    });
    relay.answer_instead(Some(("POST /v2/anchor/get", 200, forged)));
    let target = env.path("restored");
    let t = target.to_str().unwrap();
    let out = env
        .command(
            "phone2",
            v,
            &["restore", "--password-file", pw, "--target", t],
        )
        .env("BACKLOCK_VAULT", relay.url())
        .output()
        .unwrap();
    assert_code(&out, 11);
    assert!(stderr(&out).contains("anchor"), "{}", stderr(&out));
    assert!(!target.exists(), "nothing restored");
    assert!(
        !env.path("phone2").join("keys").exists()
            || std::fs::read_dir(env.path("phone2").join("keys"))
                .unwrap()
                .next()
                .is_none(),
        "no key kept"
    );
}

#[test]
fn the_guess_limit_destroys_the_key_for_good() {
    let env = Env::new();
    let vault = VaultProcess::start(&env.path("vault"), &["--max-attempts", "3"]);
    let v = Some((&vault, "bob"));
    let pw = env.secret("pw", PASSWORD);
    let wrong = env.secret("wrong", "tulip garden 24");
    assert_code(
        &env.backlock(
            "phone1",
            v,
            &[
                "init",
                "--password",
                "--password-file",
                pw.to_str().unwrap(),
                "--yes",
            ],
        ),
        0,
    );
    let wrong = wrong.to_str().unwrap();
    for left in [2, 1] {
        let out = env.backlock(
            "phone2",
            v,
            &["snapshots", "--password-file", wrong, "--json"],
        );
        assert_code(&out, 8);
        assert_eq!(json(&out)["attempts_left"], left);
    }
    let out = env.backlock(
        "phone2",
        v,
        &["snapshots", "--password-file", wrong, "--json"],
    );
    assert_code(&out, 9);
    assert_eq!(json(&out)["error"], "locked");
    let out = env.backlock(
        "phone2",
        v,
        &["snapshots", "--password-file", pw.to_str().unwrap()],
    );
    assert_code(&out, 9);
    assert!(
        stderr(&out).contains("can never be recovered"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_vault_killed_between_ke1_and_ke3_keeps_the_attempt_counted() {
    let env = Env::new();
    let vault = VaultProcess::start(&env.path("vault"), &[]);
    let pw = env.secret("pw", PASSWORD);
    assert_code(
        &env.backlock(
            "phone1",
            Some((&vault, "carol")),
            &[
                "init",
                "--password",
                "--password-file",
                pw.to_str().unwrap(),
                "--yes",
            ],
        ),
        0,
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = env.token("carol");
    let pinned: [u8; 32] = hex::decode(&vault.public_key).unwrap().try_into().unwrap();
    let client = VaultClient::new(&vault.url, "carol", &token).unwrap();
    // KE1 with the right password; KE2 comes back counted. Then the vault dies.
    let (_, ke1) = start_recovery(&Password::new(PASSWORD.into())).unwrap();
    let ke2 = runtime.block_on(client.guess_once(ke1)).unwrap();
    assert_eq!(ke2.attempts_left, 9);
    vault.kill();

    let vault = VaultProcess::start(&env.path("vault"), &[]);
    let client = VaultClient::new(&vault.url, "carol", &token).unwrap();
    let status = runtime.block_on(client.status()).unwrap();
    assert_eq!(
        status.record.unwrap().attempts_left,
        9,
        "a guess answered before the crash must stay counted"
    );
    // The right password still works and restores the count.
    let ksf = backlock_vault_proto::suite::Stretch::default();
    runtime
        .block_on(client.recover(&Password::new(PASSWORD.into()), &pinned, &ksf))
        .unwrap();
    assert_eq!(
        runtime
            .block_on(client.status())
            .unwrap()
            .record
            .unwrap()
            .attempts_left,
        10
    );
    assert!(matches!(
        runtime.block_on(client.recover(&Password::new("nope nope".into()), &pinned, &ksf)),
        Err(VaultError::WrongPassword { attempts_left: 9 })
    ));
}

#[test]
fn a_vault_with_another_key_is_refused() {
    let env = Env::new();
    let first = VaultProcess::start(&env.path("vault"), &[]);
    let pw = env.secret("pw", PASSWORD);
    let pw = pw.to_str().unwrap();
    assert_code(
        &env.backlock(
            "phone1",
            Some((&first, "dan")),
            &["init", "--password", "--password-file", pw, "--yes"],
        ),
        0,
    );
    let other = VaultProcess::start(&env.path("other-vault"), &[]);
    // The device expects the first vault's key; the second presents its own.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlock"));
    let out = cmd
        .args(["snapshots", "--password-file", pw])
        .env("BACKLOCK_HOME", env.path("phone2"))
        .env("BACKLOCK_REPO", env.path("repo"))
        .env("BACKLOCK_VAULT", &other.url)
        .env("BACKLOCK_ACCOUNT", "dan")
        .env("BACKLOCK_TOKEN", "bl1.dan.1.00")
        .env("BACKLOCK_VAULT_KEY", &first.public_key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&out, 11);
    assert!(
        stderr(&out).contains("refusing to send it anything"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_embedded_vault_is_the_default() {
    let env = Env::new();
    let pw = env.secret("pw", PASSWORD);
    let pw = pw.to_str().unwrap();
    assert_code(
        &env.backlock(
            "phone1",
            None,
            &["init", "--password", "--password-file", pw, "--yes"],
        ),
        0,
    );
    env.backup_then_restore_on_a_new_phone(pw);
}

/// An embedded vault's data directory whose name is not UTF-8 is refused with a usage
/// error before anything is made, rather than turned into another (lossy) name: the
/// vault would otherwise keep its records, and the device pin them, somewhere else.
#[test]
fn an_embedded_vault_directory_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let pw = env.secret("pw", PASSWORD);
    let data = env
        .dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"vault-\xff"));
    let init_with = |variable: &str| {
        let args = [
            "init",
            "--password",
            "--password-file",
            pw.to_str().unwrap(),
            "--yes",
        ];
        let mut cmd = env.command("phone1", None, &args);
        cmd.env(variable, &data).output().unwrap()
    };
    let out = init_with("BACKLOCK_VAULT_DATA");
    assert_code(&out, 2);
    assert!(stderr(&out).contains("not valid UTF-8"), "{}", stderr(&out));
    assert!(!data.exists(), "no vault made");
    assert!(!env.path("repo").exists(), "no repository made");
    // A variable of the environment that is not UTF-8 and not ours is no obstacle.
    assert_code(&init_with("SOME_PATH_OF_ANOTHER_TOOL"), 0);
}

/// A device whose disk refuses the new key (here `keys` is a file, not a directory)
/// must not have registered it in the vault first: that record no key would open, and
/// the account could never be enabled again ("already registered"). Once the disk is
/// mended, the same `init --password` succeeds and the key recovers on a new phone.
#[test]
fn a_key_this_device_cannot_keep_is_never_registered() {
    let env = Env::new();
    let pw = env.secret("pw", PASSWORD);
    let pw = pw.to_str().unwrap();
    let init = [
        "init",
        "--password",
        "--password-file",
        pw,
        "--yes",
        "--json",
    ];
    std::fs::create_dir_all(env.path("phone1")).unwrap();
    std::fs::write(env.path("phone1/keys"), b"not a directory").unwrap();
    let out = env.backlock("phone1", None, &init);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_says(&out, "keys");
    assert!(!env.path("repo").exists(), "no repository made");
    std::fs::remove_file(env.path("phone1/keys")).unwrap();
    assert_code(&env.backlock("phone1", None, &init), 0);
    env.backup_then_restore_on_a_new_phone(pw);
}

/// The keys this device keeps, by file name, with their contents.
fn kept_keys(home: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    match std::fs::read_dir(home.join("keys")) {
        Err(_) => Default::default(),
        Ok(dir) => dir
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect(),
    }
}

/// `init --password` where no repository is found never touches a key this device
/// already keeps for that location (the repository may be on a drive not mounted, and
/// the key its only copy), and a registration the vault refuses leaves no key behind.
#[test]
fn a_failed_init_leaves_the_keys_this_device_keeps_as_they_were() {
    let env = Env::new();
    let pw = env.secret("pw", PASSWORD);
    let pw = pw.to_str().unwrap();
    let init = |home: &str, repo: &str| {
        let repo = env.path(repo);
        let args = [
            "init",
            "--password",
            "--password-file",
            pw,
            "--yes",
            "--repo",
        ];
        let mut args = args.map(str::to_owned).to_vec();
        args.push(repo.to_str().unwrap().to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.backlock(home, None, &args)
    };
    assert_code(&init("phone1", "repo"), 0);
    let kept = kept_keys(&env.path("phone1"));
    assert_eq!(kept.len(), 1);
    // The drive is not mounted: the location is empty.
    std::fs::rename(env.path("repo"), env.path("unmounted")).unwrap();
    let out = init("phone1", "repo");
    assert_code(&out, 2);
    assert_says(&out, "already keeps a backup key");
    assert_eq!(
        kept_keys(&env.path("phone1")),
        kept,
        "the kept key is untouched"
    );
    // Another phone, another location, the same account: the vault refuses.
    let out = init("phone2", "repo2");
    assert_code(&out, 2);
    assert_says(&out, "already registered");
    assert!(
        kept_keys(&env.path("phone2")).is_empty(),
        "no key left behind"
    );
    assert!(!env.path("repo2").exists(), "no repository made");
}

/// A man in the middle answers the device's first contact (here a second vault at the
/// URL the device was given). With no key from the vault's operator, the device
/// talks to no remote vault at all; with it, it refuses the impostor before sending
/// anything: no registration upload, no wrapped key, nothing to guess offline.
#[test]
fn a_man_in_the_middle_at_first_registration_is_refused() {
    let env = Env::new();
    let real = VaultProcess::start(&env.path("vault"), &[]);
    let impostor = VaultProcess::start(&env.path("impostor"), &[]);
    let pw = env.secret("pw", PASSWORD);
    let first_contact = |key: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlock"));
        cmd.args([
            "init",
            "--password",
            "--password-file",
            pw.to_str().unwrap(),
            "--yes",
        ])
        .env("BACKLOCK_HOME", env.path("phone"))
        .env("BACKLOCK_REPO", env.path("repo"))
        .env("BACKLOCK_VAULT", &impostor.url)
        .env("BACKLOCK_ACCOUNT", "ivy")
        .env("BACKLOCK_TOKEN", env.token("ivy"))
        .env_remove("BACKLOCK_VAULT_KEY")
        .stdin(Stdio::null());
        if let Some(key) = key {
            cmd.env("BACKLOCK_VAULT_KEY", key);
        }
        cmd.output().unwrap()
    };
    let out = first_contact(None);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("--vault-key"), "{}", stderr(&out));
    let out = first_contact(Some(&real.public_key));
    assert_code(&out, 11);
    assert!(
        stderr(&out).contains("refusing to send it anything"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("repo").join("config").exists());
    assert!(
        !std::fs::read_to_string(env.path("phone/vault-pins.json"))
            .unwrap_or_default()
            .contains(&impostor.public_key),
        "the impostor's key was pinned"
    );
    drop(real);
}

/// A remote vault over plain HTTP beyond this machine is refused before any
/// connection, unless the user says `--insecure-http`.
#[test]
fn plain_http_to_a_remote_vault_is_refused() {
    let env = Env::new();
    let pw = env.secret("pw", PASSWORD);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlock"));
    let out = cmd
        .args([
            "init",
            "--password",
            "--password-file",
            pw.to_str().unwrap(),
            "--yes",
        ])
        .env("BACKLOCK_HOME", env.path("phone"))
        .env("BACKLOCK_REPO", env.path("repo"))
        .env(
            "BACKLOCK_VAULT",
            "http://127.0.0.1:1,http://vault.example.net:7070",
        )
        .env("BACKLOCK_ACCOUNT", "ivy")
        .env("BACKLOCK_TOKEN", "bl1.ivy.1.00")
        .env("BACKLOCK_VAULT_KEY", "00".repeat(32))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("http://vault.example.net:7070") && err.contains("--insecure-http"),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1:1,"), "{err}");
}

/// The operator signs a fleet bundle offline. A device given only the signer's public
/// key pins the fleet from the bundle; a bundle changed on the way (a replica swapped
/// for an impostor) or signed by anyone else is refused, and so is a version older
/// than one the device took.
#[test]
fn a_signed_fleet_bundle_pins_the_fleet_and_older_or_forged_ones_are_refused() {
    let env = Env::new();
    let real = VaultProcess::start(&env.path("vault"), &[]);
    let impostor = VaultProcess::start(&env.path("impostor"), &[]);
    let operator = |args: &[&str]| {
        let out = env.backlock("-", None, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let signer_of = |file: &str| {
        let out = operator(&[
            "vault",
            "bundle-key",
            "--out",
            env.path(file).to_str().unwrap(),
        ]);
        out.split_whitespace().last().unwrap().to_owned()
    };
    let signer = signer_of("signer.key");
    let other_signer_key = signer_of("other.key");
    let bundle = |key_file: &str, version: &str, url: &str, public_key: &str, out: &str| {
        operator(&[
            "vault",
            "bundle",
            "--signing-key",
            env.path(key_file).to_str().unwrap(),
            "--fleet",
            "test",
            "--version",
            version,
            "--replica",
            url,
            "--public-key",
            public_key,
            "--out",
            env.path(out).to_str().unwrap(),
        ]);
        env.path(out)
    };
    let v1 = bundle("signer.key", "1", &real.url, &real.public_key, "v1.json");
    let v2 = bundle("signer.key", "2", &real.url, &real.public_key, "v2.json");
    let forged = env.path("forged.json");
    std::fs::write(
        &forged,
        std::fs::read_to_string(&v2)
            .unwrap()
            .replace(&real.url, &impostor.url),
    )
    .unwrap();
    let stranger = bundle(
        "other.key",
        "9",
        &impostor.url,
        &impostor.public_key,
        "stranger.json",
    );
    assert_ne!(signer, other_signer_key);

    let pw = env.secret("pw", PASSWORD);
    let device = |bundle: &Path, repo: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlock"));
        cmd.args([
            "init",
            "--password",
            "--yes",
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .env("BACKLOCK_HOME", env.path("phone"))
        .env("BACKLOCK_REPO", env.path(repo))
        .env("BACKLOCK_VAULT_BUNDLE", bundle)
        .env("BACKLOCK_VAULT_SIGNER", &signer)
        .env("BACKLOCK_ACCOUNT", repo)
        .env("BACKLOCK_TOKEN", env.token(repo))
        .env_remove("BACKLOCK_VAULT")
        .env_remove("BACKLOCK_VAULT_KEY")
        .stdin(Stdio::null());
        cmd.output().unwrap()
    };
    for refused in [&forged, &stranger] {
        let out = device(refused, "chats");
        assert_code(&out, 11);
        assert!(
            stderr(&out).contains("not signed by the fleet's signing key"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!env.path("chats").join("config").exists());
    assert_code(&device(&v2, "chats"), 0);
    // Once version 2 was taken, version 1 (which may list retired replicas) is not.
    let out = device(&v1, "photos");
    assert_code(&out, 11);
    assert!(
        stderr(&out).contains("already took version 2"),
        "{}",
        stderr(&out)
    );
    assert_code(&device(&v2, "photos"), 0);
}

/// A relay between the device and the fleet drops the request to delete the record, or
/// to change the password, and answers "done" itself: with a receipt of its own key,
/// with none, with the fleet's real receipt for another account or for this account's
/// earlier change, or with a bare "no record". The fleet's receipt key is in the
/// bundle, so the device refuses each answer (exit 11) and says the change may not have
/// been made; the record is untouched. Through an honest relay the same commands print
/// the fleet's receipt; and a bundle without the receipt key is refused once one with
/// it was taken.
#[test]
fn a_relay_that_answers_done_for_a_dropped_change_is_refused() {
    use backlock_testkit::fault_proxy::FaultProxy;
    use backlock_vault_proto::receipt::{Receipt, ReceiptBody, ReceiptOp, ReceiptSigner};
    use backlock_vault_proto::wire::{self, DeletedWithReceipt, RegisterFinishReplyV3};

    let env = Env::new();
    // Many requests of one account, well past the default rate limit.
    let generous = ["--account-burst", "1000", "--account-rate", "1000"];
    let real = VaultProcess::start(&env.path("vault"), &generous);
    let upstream = real.url.trim_start_matches("http://").parse().unwrap();
    let relay = FaultProxy::start(upstream, 0.0, 7, std::time::Duration::from_secs(1));
    let operator = |args: &[&str]| {
        let out = env.backlock("-", None, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let key_file = env.path("signer.key");
    let signer = operator(&["vault", "bundle-key", "--out", key_file.to_str().unwrap()])
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let bundle_of = |version: &str, receipt_key: Option<&str>, out: &str| {
        let path = env.path(out);
        let mut args = vec![
            "vault",
            "bundle",
            "--signing-key",
            key_file.to_str().unwrap(),
            "--fleet",
            "test",
            "--version",
            version,
            "--out",
            path.to_str().unwrap(),
            "--public-key",
            &real.public_key,
        ];
        let url = relay.url();
        args.extend(["--replica", &url]);
        if let Some(key) = receipt_key {
            args.extend(["--receipt-key", key]);
        }
        operator(&args);
        path
    };
    let bundle = bundle_of("1", Some(&real.receipt_key), "bundle.json");
    let pw = env.secret("pw", PASSWORD);
    let device_with = |bundle: &Path, account: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlock"));
        cmd.args(args)
            .env("BACKLOCK_HOME", env.path(account))
            .env("BACKLOCK_REPO", env.path(&format!("{account}-repo")))
            .env("BACKLOCK_VAULT_BUNDLE", bundle)
            .env("BACKLOCK_VAULT_SIGNER", &signer)
            .env("BACKLOCK_ACCOUNT", account)
            .env("BACKLOCK_TOKEN", env.token(account))
            .env("BACKLOCK_PASSWORD_FILE", &pw)
            .env_remove("BACKLOCK_VAULT")
            .env_remove("BACKLOCK_VAULT_KEY")
            .env_remove("BACKLOCK_KEY_FILE")
            .stdin(Stdio::null());
        cmd.output().unwrap()
    };
    let device = |account: &str, args: &[&str]| device_with(&bundle, account, args);
    let receipt_of = |out: &Output| {
        let r = &json(out)["receipt"];
        let hex32 = |name: &str| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(r[name].as_str().unwrap(), &mut b).unwrap();
            b
        };
        let mut signature = [0u8; 64];
        hex::decode_to_slice(r["signature"].as_str().unwrap(), &mut signature).unwrap();
        Receipt {
            body: ReceiptBody {
                account: r["account"].as_str().unwrap().to_owned(),
                op: match r["op"].as_str().unwrap() {
                    "deleted" => ReceiptOp::Deleted,
                    "password_changed" => ReceiptOp::PasswordChanged,
                    other => panic!("op {other}"),
                },
                generation: r["generation"].as_u64().unwrap(),
                at_unix: r["at_unix"].as_u64().unwrap(),
                request: hex32("request"),
            },
            signature,
        }
    };
    for account in ["kim", "lee"] {
        assert_code(&device(account, &["init", "--password", "--yes"]), 0);
    }
    // Real receipts of the fleet: lee's deletion, kim's first password change.
    let out = device("lee", &["vault", "delete", "--yes", "--json"]);
    assert_code(&out, 0);
    let lees = receipt_of(&out);
    let out = device("kim", &["change-password", "--json"]);
    assert_code(&out, 0);
    let kims_change = receipt_of(&out);
    assert_eq!(kims_change.body.generation, 2);

    let own = ReceiptSigner::derive(b"the relay's own key").sign(ReceiptBody {
        account: "kim".into(),
        ..lees.body.clone()
    });
    let deleted = |receipt: &Receipt| {
        (
            200,
            wire::encode(&DeletedWithReceipt {
                receipt: receipt.clone(),
            }),
        )
    };
    let no_key = (
        404,
        br#"{"code":"no_key","message":"no backup key is registered for this account"}"#.to_vec(),
    );
    for ((status, body), why) in [
        (deleted(&own), "not the fleet's"),
        (deleted(&lees), "account \"lee\""),
        (
            deleted(&kims_change),
            "PasswordChanged of account \"kim\", generation 2",
        ),
        (no_key, "carries none"),
    ] {
        relay.answer_instead(Some(("POST /v3/delete", status, body)));
        for args in [
            &["vault", "delete", "--yes", "--json"][..],
            &["switch", "--to-key", "--yes", "--json"][..],
        ] {
            let out = device("kim", args);
            assert_code(&out, 11);
            let err = stderr(&out);
            assert!(
                err.contains("no valid receipt") && err.contains(why),
                "{args:?}: {err}"
            );
            assert!(err.contains("may not have been made"), "{err}");
        }
    }
    for (receipt, why) in [
        (None, "carries none"),
        (Some(kims_change), "another request"),
    ] {
        relay.answer_instead(Some((
            "POST /v3/register/finish",
            200,
            wire::encode(&RegisterFinishReplyV3 {
                generation: 3,
                attempts_left: 10,
                receipt,
            }),
        )));
        let out = device("kim", &["change-password", "--json"]);
        assert_code(&out, 11);
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }

    // Every answer was the relay's: the fleet still holds kim's record of generation 2.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = |account: &str| {
        let client = VaultClient::new(&real.url, account, &env.token(account)).unwrap();
        runtime.block_on(client.status()).unwrap().record
    };
    assert_eq!(status("kim").unwrap().generation, 2);

    // A bundle without the receipt key, newer even, would turn receipts off: refused.
    let old_kind = bundle_of("2", None, "old-kind.json");
    let out = device_with(&old_kind, "kim", &["vault", "delete", "--yes"]);
    assert_code(&out, 11);
    assert!(
        stderr(&out).contains("has no receipt key"),
        "{}",
        stderr(&out)
    );

    // An honest relay: the fleet's receipts come back, checked, and are printed.
    relay.answer_instead(None);
    let out = device("kim", &["change-password", "--json"]);
    assert_code(&out, 0);
    assert_eq!(json(&out)["generation"], 3);
    let out = device("kim", &["vault", "delete", "--yes"]);
    assert_code(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("receipt: signed by the vault fleet"),
        "{text}"
    );
    assert!(status("kim").is_none());
    // Deleting again: the fleet signs that there is no record.
    let out = device("kim", &["switch", "--to-key", "--yes", "--json"]);
    assert_code(&out, 0);
}
