//! `backlock vault certs`: the fleet CA and one certificate per replica, for the mutual
//! TLS between replicas (docs/OPERATIONS.md §Certificates).
//!
//! The CA is created once (`ca.pem`, `ca.key`) and reused when certificates for new
//! replicas are issued later. `ca.key` can issue certificates every replica trusts, and
//! a replica hands the fleet secret to any holder of one: keep it offline.

use crate::exit::Usage;
use anyhow::{Context, Result};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Args)]
pub(crate) struct CertsArgs {
    /// Directory for `ca.pem`, `ca.key` and `replica-ID.pem`/`.key` (created, mode 0700).
    #[arg(long)]
    out: std::path::PathBuf,
    /// A replica as ID=HOST, HOST being the name or IP in its `peer` address; repeat.
    #[arg(long = "replica", value_parser = parse_replica, required = true)]
    replicas: Vec<(u64, String)>,
}

fn parse_replica(text: &str) -> Result<(u64, String), String> {
    let (id, host) = text
        .split_once('=')
        .ok_or_else(|| format!("{text}: expected ID=HOST, e.g. 1=vault1.example.net"))?;
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("{text}: the replica id must be a number above zero"))?;
    if host.is_empty() {
        return Err(format!("{text}: the host is empty"));
    }
    Ok((id, host.to_owned()))
}

/// Writes `contents` to a new file readable by its owner only (`0600`), or refuses to
/// overwrite one.
pub(crate) fn write_new(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            Usage(format!(
                "cannot create {}: {e} (remove it to issue a new one)",
                path.display()
            ))
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn load_or_create_ca(out: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (cert_path, key_path) = (out.join("ca.pem"), out.join("ca.key"));
    if cert_path.exists() {
        let key_pem = fs::read_to_string(&key_path)
            .with_context(|| format!("reading the fleet CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Usage(format!("{} is not a private key: {e}", key_path.display())))?;
        let cert_pem = fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        return Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            Usage(format!(
                "{} is not a CA certificate: {e}",
                cert_path.display()
            ))
            .into()
        });
    }
    let key = KeyPair::generate().context("generating the fleet CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "backlock vault fleet CA");
    params.distinguished_name = name;
    let cert = params.self_signed(&key).context("signing the fleet CA")?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(Issuer::new(params, key))
}

pub(crate) fn run(args: &CertsArgs) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ca = load_or_create_ca(&args.out)?;
    for (id, host) in &args.replicas {
        let key = KeyPair::generate().context("generating a replica key")?;
        let mut params = CertificateParams::new(vec![host.clone()]).map_err(|e| {
            Usage(format!(
                "replica {id}: {host} is not a valid host name: {e}"
            ))
        })?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("backlock vault replica {id}"));
        params.distinguished_name = name;
        let cert = params
            .signed_by(&key, &ca)
            .with_context(|| format!("signing replica {id}'s certificate"))?;
        write_new(
            &args.out.join(format!("replica-{id}.key")),
            &key.serialize_pem(),
            0o600,
        )?;
        write_new(
            &args.out.join(format!("replica-{id}.pem")),
            &cert.pem(),
            0o644,
        )?;
        println!("replica {id} ({host}): replica-{id}.pem, replica-{id}.key");
    }
    println!(
        "fleet CA: {} (keep ca.key offline: it can admit a replica to the fleet)",
        args.out.join("ca.pem").display()
    );
    Ok(())
}
