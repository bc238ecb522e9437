//! `vault bundle-key` and `vault bundle`: the fleet's offline signing key, and the
//! signed bundle that tells devices which replicas and which key make up the fleet
//! (docs/OPERATIONS.md §Fleet bundle).

use crate::exit::Usage;
use crate::fleet_certs::write_new;
use anyhow::{Context, Result};
use backlock_vault_proto::bundle::{BundleSigner, FleetBundle};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `vault bundle`.
#[derive(Args, Debug)]
pub(crate) struct BundleArgs {
    /// The signing key file (`vault bundle-key`); keep it offline.
    #[arg(long)]
    signing_key: PathBuf,
    /// The fleet's name (devices keep the newest version per fleet).
    #[arg(long)]
    fleet: String,
    /// This bundle's version: above every version issued before.
    #[arg(long)]
    version: u64,
    /// A replica's device API URL (repeat for each).
    #[arg(long = "replica", required = true)]
    replicas: Vec<String>,
    /// The OPAQUE public key the replicas present (hex, as `vault init` prints it).
    #[arg(long)]
    public_key: String,
    /// The fleet's receipt key (hex, as `vault serve` prints it): devices then check
    /// the fleet's signed receipts for deletions and password changes. Makes a version 2
    /// bundle, which devices of releases before receipts refuse: publish it once every
    /// replica runs a release that signs receipts.
    #[arg(long)]
    receipt_key: Option<String>,
    /// The bundle file to write.
    #[arg(long)]
    out: PathBuf,
}

/// `vault bundle-key --out FILE`: a new signing key; prints its public half.
pub(crate) fn new_key(out: &Path) -> Result<()> {
    let signer = BundleSigner::generate();
    write_new(out, &format!("{}\n", signer.to_hex().as_str()), 0o600)?;
    println!(
        "fleet bundle signer (give this to devices, e.g. BACKLOCK_VAULT_SIGNER): {}",
        hex::encode(signer.public_key())
    );
    Ok(())
}

/// `vault bundle`: signs a bundle with the offline key.
pub(crate) fn sign(args: &BundleArgs) -> Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.signing_key)
            .with_context(|| format!("reading the signing key {}", args.signing_key.display()))?,
    );
    let signer = BundleSigner::from_hex(&text).map_err(|e| Usage(e.to_string()))?;
    let key = args.public_key.trim().to_ascii_lowercase();
    if key.len() != 64 || hex::decode(&key).is_err() {
        return Err(
            Usage("--public-key must be the 64 hex digits `vault init` printed".into()).into(),
        );
    }
    let receipt_key = match &args.receipt_key {
        Some(k) => {
            let k = k.trim().to_ascii_lowercase();
            let valid = <[u8; 32]>::try_from(hex::decode(&k).unwrap_or_default())
                .is_ok_and(|key| backlock_vault_proto::receipt::valid_key(&key));
            if !valid {
                return Err(Usage(
                    "--receipt-key must be the 64 hex digits `vault serve` printed".into(),
                )
                .into());
            }
            Some(k)
        }
        None => None,
    };
    let bundle = FleetBundle {
        fleet: args.fleet.clone(),
        version: args.version,
        replicas: args.replicas.clone(),
        public_key: key,
        issued_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        receipt_key,
    };
    let json = serde_json::to_string_pretty(&signer.sign(bundle)).expect("plain struct serialises");
    write_new(&args.out, &format!("{json}\n"), 0o644)?;
    println!(
        "wrote {} (fleet {}, version {})",
        args.out.display(),
        args.fleet,
        args.version
    );
    Ok(())
}
