//! The benchmark's synthetic accounts (`--features bench-fill`; scripts/test runs this
//! file so): they go through the registration path and count as records, a request
//! sent again registers nothing twice, and a request too large is refused.
#![cfg(feature = "bench-fill")]

use backlock_vault_server::bench_fill::{self, Filled, MAX_COUNT};
use backlock_vault_server::run::{RunningVault, ServeConfig};
use tempfile::TempDir;

async fn fill(url: &str, first: u64, count: u64) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{url}{}", bench_fill::PATH))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(format!(r#"{{"first":{first},"count":{count}}}"#))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_accounts_are_registered_once_through_the_log() {
    let dir = TempDir::new().unwrap();
    let vault = RunningVault::start(ServeConfig::loopback(dir.path().join("vault")))
        .await
        .unwrap();
    let url = vault.url();

    let (status, body) = fill(&url, 0, 2_000).await;
    assert_eq!(status, 200, "{body}");
    let filled: Filled = serde_json::from_str(&body).unwrap();
    assert_eq!((filled.stored, filled.existing), (2_000, 0));
    let (status, body) = fill(&url, 1_000, 2_000).await;
    assert_eq!(status, 200, "{body}");
    let filled: Filled = serde_json::from_str(&body).unwrap();
    assert_eq!((filled.stored, filled.existing), (1_000, 1_000));

    let node = vault.vault.node();
    assert_eq!(node.records(), 3_000);
    let record = node
        .read(|s| s.record(&bench_fill::account(2_999)))
        .unwrap()
        .unwrap();
    assert_eq!(record.attempts_left, vault.vault.info().max_attempts);
    assert!(
        node.status().last_applied_index.unwrap() >= 6,
        "3,000 commands, batched"
    );

    let (status, body) = fill(&url, 0, u64::from(MAX_COUNT) + 1).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("send several requests"), "{body}");
    assert_eq!(node.records(), 3_000);
}
