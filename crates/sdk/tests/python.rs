//! Runs the Python package's pytest suite (tests/python) with the interpreter of a
//! venv where scripts/test installed the wheel, against a real S3 server. Ignored in
//! a plain `cargo test`: scripts/test builds the wheel, then runs it with --ignored.

use backlock_testkit::servers::{required, S3Server};
use backlock_vault_server::run::{RunningVault, ServeConfig};
use std::process::Command;

/// The venv's interpreter, with the wheel and pytest installed.
const PYTHON_VAR: &str = "BACKLOCK_SDK_PYTHON";

#[test]
#[ignore = "needs the wheel: scripts/test builds it and runs this with --ignored"]
fn the_python_package_passes_its_tests() {
    let Some(python) = std::env::var_os(PYTHON_VAR) else {
        assert!(
            !required(),
            "{PYTHON_VAR} must name the venv's python (scripts/test)"
        );
        eprintln!("SKIPPED: {PYTHON_VAR} is not set (run scripts/test)");
        return;
    };
    let s3 = S3Server::start();
    // A vault served over HTTP on loopback, as a device reaches a remote one.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The suite's tests share one account: room for all their requests at once.
    let mut config = ServeConfig::loopback(data.path().to_path_buf());
    config.vault.account_burst = 1000;
    let vault = runtime
        .block_on(RunningVault::start(config))
        .expect("start the vault");
    let mut cmd = Command::new(python);
    cmd.env("BACKLOCK_TEST_VAULT_URL", vault.url())
        .env(
            "BACKLOCK_TEST_VAULT_KEY",
            hex::encode(vault.vault.info().server_public_key),
        )
        .env(
            "BACKLOCK_TEST_VAULT_TOKEN",
            vault.vault.issue_token("alice", 3600).unwrap(),
        );
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/python",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(s3) = &s3 {
        cmd.envs(s3.env())
            .env("BACKLOCK_TEST_S3_URL", s3.url("sdk-pytest"));
    }
    let out = cmd.output().expect("run pytest");
    runtime.block_on(vault.shutdown());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(
        !text.contains("skipped") || s3.is_none(),
        "a test was skipped:\n{text}"
    );
}
