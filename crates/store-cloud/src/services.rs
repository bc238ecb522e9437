//! One OpenDAL service per URL scheme, configured from [`Settings`].
//!
//! Every variable a service reads is listed in the README (§Stores) with what it is
//! for; secrets among them are collected so error messages can never echo them.

use crate::{
    location::{Drive, Location},
    settings::{Settings, Value},
    store::PutMode,
    OpenError,
};
use opendal::{services, Operator};

/// A configured operator, how it puts atomically, and the secrets it was given.
pub(crate) struct Built {
    pub op: Operator,
    pub put_mode: PutMode,
    pub secrets: Vec<Value>,
}

fn missing(what: &str, vars: &str, s: &Settings) -> OpenError {
    OpenError::MissingSetting {
        what: what.to_string(),
        vars: vars.to_string(),
        sources: s.sources(),
    }
}

fn built(
    op: opendal::Result<Operator>,
    put_mode: PutMode,
    secrets: Vec<Value>,
    location: &Location,
) -> Result<Built, OpenError> {
    let op = op.map_err(|e| OpenError::Backend {
        location: location.display(),
        // Builder errors name settings, never their values.
        detail: format!("{}: {}", e.kind(), e.message()),
    })?;
    Ok(Built {
        op,
        put_mode,
        secrets,
    })
}

/// Builds the operator for a remote location.
pub(crate) fn build(location: &Location, s: &Settings) -> Result<Built, OpenError> {
    match location {
        Location::Local(_) => unreachable!("local paths open an FsStore"),
        Location::S3 { bucket, prefix } => s3(location, bucket, prefix, s),
        Location::Gcs { bucket, prefix } => {
            let mut b = services::Gcs::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"));
            let mut secrets = Vec::new();
            if let Some(v) = s.get("GOOGLE_APPLICATION_CREDENTIALS") {
                b = b.credential_path(v.expose());
            } else if let Some(v) = s.get("BACKLOCK_GCS_CREDENTIAL") {
                b = b.credential(v.expose());
                secrets.push(v.clone());
            } else if let Some(v) = s.get("BACKLOCK_GCS_TOKEN") {
                b = b.token(v.expose().to_string());
                secrets.push(v.clone());
            }
            if let Some(v) = s.get("BACKLOCK_GCS_ENDPOINT") {
                b = b.endpoint(v.expose());
            }
            built(Operator::new(b), PutMode::Direct, secrets, location)
        }
        Location::Azblob { container, prefix } => {
            let account = s
                .get("AZURE_STORAGE_ACCOUNT")
                .ok_or_else(|| missing("the Azure storage account", "AZURE_STORAGE_ACCOUNT", s))?;
            let endpoint = match s.get("AZURE_STORAGE_ENDPOINT") {
                Some(v) => v.expose().to_string(),
                None => format!("https://{}.blob.core.windows.net", account.expose()),
            };
            let mut b = services::Azblob::default()
                .container(container)
                .root(&format!("/{prefix}"))
                .endpoint(&endpoint)
                .account_name(account.expose());
            let mut secrets = Vec::new();
            if let Some(v) = s.get("AZURE_STORAGE_KEY") {
                b = b.account_key(v.expose());
                secrets.push(v.clone());
            } else if let Some(v) = s.get("AZURE_STORAGE_SAS_TOKEN") {
                b = b.sas_token(v.expose());
                secrets.push(v.clone());
            } else {
                return Err(missing(
                    "an Azure storage credential",
                    "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN",
                    s,
                ));
            }
            built(Operator::new(b), PutMode::Direct, secrets, location)
        }
        Location::Webdav {
            tls,
            user,
            authority,
            path,
        } => {
            let scheme = if *tls { "https" } else { "http" };
            let mut b = services::Webdav::default()
                .endpoint(&format!("{scheme}://{authority}"))
                .root(path);
            let mut secrets = Vec::new();
            let user = user.clone().or_else(|| {
                s.get("BACKLOCK_WEBDAV_USER")
                    .map(|v| v.expose().to_string())
            });
            if let Some(token) = s.get("BACKLOCK_WEBDAV_TOKEN") {
                b = b.token(token.expose());
                secrets.push(token.clone());
            } else if let Some(user) = user {
                let password = s.get("BACKLOCK_WEBDAV_PASSWORD").ok_or_else(|| {
                    missing(
                        &format!("the WebDAV password for {user}"),
                        "BACKLOCK_WEBDAV_PASSWORD",
                        s,
                    )
                })?;
                b = b.username(&user).password(password.expose());
                secrets.push(password.clone());
            }
            // Servers differ in whether a PUT is atomic; a rename (MOVE) always is.
            built(Operator::new(b), PutMode::ViaRename, secrets, location)
        }
        Location::Sftp {
            user,
            host,
            port,
            path,
        } => {
            let user = user
                .clone()
                .or_else(|| s.get("BACKLOCK_SFTP_USER").map(|v| v.expose().to_string()));
            let endpoint = format!(
                "ssh://{}{host}{}",
                user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
                port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            let mut b = services::Sftp::default().endpoint(&endpoint).root(path);
            if let Some(user) = &user {
                b = b.user(user);
            }
            if let Some(key) = s.get("BACKLOCK_SFTP_KEY") {
                // A path to a private key file, never the key itself.
                b = b.key(key.expose());
            }
            let strategy = s
                .get("BACKLOCK_SFTP_KNOWN_HOSTS")
                .map(|v| v.expose().to_ascii_lowercase())
                .unwrap_or_else(|| "strict".into());
            if !["strict", "add", "accept"].contains(&strategy.as_str()) {
                return Err(OpenError::BadSetting {
                    name: "BACKLOCK_SFTP_KNOWN_HOSTS".into(),
                    problem: "must be strict (default), add or accept".into(),
                });
            }
            b = b.known_hosts_strategy(&strategy);
            // SFTP writes in place: upload to tmp/ and rename (posix-rename, atomic).
            built(Operator::new(b), PutMode::ViaRename, Vec::new(), location)
        }
        Location::Drive { service, path } => drive(location, *service, path, s),
    }
}

fn s3(location: &Location, bucket: &str, prefix: &str, s: &Settings) -> Result<Built, OpenError> {
    // AWS_ENDPOINT_URL_S3 is the service-specific form the AWS SDKs prefer.
    let endpoint = s.first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
    let region = match s.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        Some(r) => r.expose().to_string(),
        // S3-compatible services accept the default region.
        None if endpoint.is_some() => "us-east-1".to_string(),
        None => {
            return Err(missing(
                "the bucket's AWS region",
                "AWS_REGION (e.g. eu-west-1)",
                s,
            ))
        }
    };
    let mut b = services::S3::default()
        .bucket(bucket)
        .root(&format!("/{prefix}"))
        .region(&region);
    match endpoint {
        Some(e) => b = b.endpoint(e.expose().trim_end_matches('/')),
        // AWS itself: bucket.s3.REGION.amazonaws.com.
        None => b = b.enable_virtual_host_style(),
    }
    let mut secrets = Vec::new();
    match (s.get("AWS_ACCESS_KEY_ID"), s.get("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            b = b
                .access_key_id(id.expose())
                .secret_access_key(secret.expose());
            secrets.push(secret.clone());
            if let Some(token) = s.get("AWS_SESSION_TOKEN") {
                b = b.session_token(token.expose());
                secrets.push(token.clone());
            }
        }
        (Some(_), None) => {
            return Err(missing(
                "the AWS secret access key (AWS_ACCESS_KEY_ID is set without it)",
                "AWS_SECRET_ACCESS_KEY",
                s,
            ))
        }
        (None, Some(_)) => {
            return Err(missing(
                "the AWS access key id (AWS_SECRET_ACCESS_KEY is set without it)",
                "AWS_ACCESS_KEY_ID",
                s,
            ))
        }
        // Otherwise the standard chain: AWS_PROFILE and ~/.aws, web identity, instance
        // metadata (unless AWS_EC2_METADATA_DISABLED=true).
        (None, None) => {
            if let Some(p) = s.get("AWS_PROFILE") {
                b = b.profile(p.expose());
            }
        }
    }
    if s.get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.expose().eq_ignore_ascii_case("true"))
    {
        b = b.disable_ec2_metadata();
    }
    built(Operator::new(b), PutMode::Direct, secrets, location)
}

fn drive(
    location: &Location,
    service: Drive,
    path: &str,
    s: &Settings,
) -> Result<Built, OpenError> {
    let p = service.env_prefix();
    let var = |name: &str| s.get(&format!("{p}_{name}"));
    let root = format!("/{path}");
    let mut secrets = Vec::new();
    let access = var("ACCESS_TOKEN");
    let refresh = (var("REFRESH_TOKEN"), var("CLIENT_ID"), var("CLIENT_SECRET"));
    let creds_missing = || {
        missing(
            &format!("{} credentials", service.scheme()),
            &format!(
                "{p}_ACCESS_TOKEN, or {p}_REFRESH_TOKEN with {p}_CLIENT_ID and {p}_CLIENT_SECRET"
            ),
            s,
        )
    };
    macro_rules! configure {
        ($builder:expr) => {{
            let mut b = $builder.root(&root);
            if let (Some(r), Some(id), Some(secret)) = refresh {
                b = b
                    .refresh_token(r.expose())
                    .client_id(id.expose())
                    .client_secret(secret.expose());
                secrets.push(r.clone());
                secrets.push(secret.clone());
            } else if let Some(t) = access {
                b = b.access_token(t.expose());
                secrets.push(t.clone());
            } else {
                return Err(creds_missing());
            }
            Operator::new(b)
        }};
    }
    let op = match service {
        Drive::Gdrive => configure!(services::Gdrive::default()),
        Drive::Onedrive => configure!(services::Onedrive::default()),
        Drive::Dropbox => configure!(services::Dropbox::default()),
    };
    built(op, PutMode::Direct, secrets, location)
}
