//! `backlock vault certs`: the fleet CA and one certificate per replica, for the mutual
//! TLS between replicas (docs/OPERATIONS.md §Certificates).
//!
//! The CA is created once (`ca.pem`, `ca.key`) and reused when certificates for new
//! replicas are issued later. A replica's certificate names its id; a monitoring
//! host's names it as a monitor. A certificate alone admits no one: a replica that is
//! not a member needs a join ticket, a removed one is refused. Still, `ca.key` can
//! issue a certificate for any member's id: keep it offline.

use crate::exit::Usage;
use anyhow::{Context, Result};
use backlock_vault_server::fleet_tls::{monitor_uri, replica_uri};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
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
    #[arg(long = "replica", value_parser = parse_replica, required_unless_present = "monitors")]
    replicas: Vec<(u64, String)>,
    /// A monitoring host's name: its certificate (`monitor-NAME.pem`) may read the
    /// fleet's status and nothing else; repeat.
    #[arg(long = "monitor", value_parser = parse_monitor)]
    monitors: Vec<String>,
}

fn parse_monitor(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| text.to_owned())
        .ok_or_else(|| format!("{text}: a monitor name is 1 to 64 letters, digits, '-' or '_'"))
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

/// Signs `params` (named `common_name`) with the CA and writes `FILE.pem`, `FILE.key`.
fn issue(
    out: &Path,
    ca: &Issuer<'static, KeyPair>,
    mut params: CertificateParams,
    key: &KeyPair,
    common_name: &str,
    file: &str,
) -> Result<()> {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("backlock {common_name}"));
    params.distinguished_name = name;
    let cert = params
        .signed_by(key, ca)
        .with_context(|| format!("signing the certificate of {common_name}"))?;
    write_new(
        &out.join(format!("{file}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    write_new(&out.join(format!("{file}.pem")), &cert.pem(), 0o644)
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
        // The id the replica is known by: peers accept it only as that replica.
        params.subject_alt_names.push(SanType::URI(
            replica_uri(*id).try_into().context("the replica URI")?,
        ));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        issue(
            &args.out,
            &ca,
            params,
            &key,
            &format!("vault replica {id}"),
            &format!("replica-{id}"),
        )?;
        println!("replica {id} ({host}): replica-{id}.pem, replica-{id}.key");
    }
    for monitor in &args.monitors {
        let key = KeyPair::generate().context("generating a monitor key")?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).context("monitor parameters")?;
        params.subject_alt_names.push(SanType::URI(
            monitor_uri(monitor).try_into().context("the monitor URI")?,
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(
            &args.out,
            &ca,
            params,
            &key,
            &format!("vault monitor {monitor}"),
            &format!("monitor-{monitor}"),
        )?;
        println!("monitor {monitor}: monitor-{monitor}.pem, monitor-{monitor}.key (status only)");
    }
    println!(
        "fleet CA: {} (keep ca.key offline: it can admit a replica to the fleet)",
        args.out.join("ca.pem").display()
    );
    Ok(())
}
