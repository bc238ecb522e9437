//! A vault fleet of real `backlock vault serve` processes on loopback, set up the way an
//! operator does it (`vault certs`, `vault init`, `vault join`, `vault serve`), for fault
//! tests and the fleet benchmark. Processes are killed when the [`Fleet`] is dropped.
//!
//! Replica `i` serves devices on `127.0.0.1` and its peers on `127.0.0.(10+i)`, from
//! which it also calls its peers. With `partitionable`, peers reach each replica
//! through a [`PartitionProxy`] that can cut chosen replicas off.

use crate::partition::PartitionProxy;
use crate::servers::{free_ports, SoftwareTpm};
use crate::timing::{wait_until, PATIENCE};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A two-worker async runtime for a test's devices and peer clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// How long a replica may take to print its banner, or to join.
const START_WAIT: Duration = PATIENCE;

/// How to build the fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Number of replicas (3, 5 or 7).
    pub size: usize,
    /// Guess limit.
    pub max_attempts: u32,
    /// Seconds an attempt stays open for its KE3 (`attempt_ttl_secs`).
    pub attempt_ttl_secs: u64,
    /// Put a [`PartitionProxy`] in front of every peer listener.
    pub partitionable: bool,
    /// Extra environment for every replica process (e.g. `BACKLOCK_LOG`).
    pub env: Vec<(String, String)>,
    /// A command that runs each replica process (e.g. `taskset -c 0`); none if empty.
    pub launcher: Vec<String>,
    /// Seal each replica's data with a key in its own SoftHSM2 token, through this
    /// PKCS#11 module, instead of a key file.
    pub pkcs11_module: Option<PathBuf>,
    /// Bind each replica's data directory to an NV counter of its own software TPM
    /// (`[tpm_counter]`), advanced at most this often; none if `None`.
    pub tpm_counter_every: Option<Duration>,
    /// Seconds each epoch lasts (`epoch_secs`), so tests see epoch keys destroyed while
    /// they run; the default hour if `None`.
    pub epoch_secs: Option<u64>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            size: 5,
            max_attempts: 10,
            attempt_ttl_secs: 60,
            partitionable: false,
            env: vec![("BACKLOCK_LOG".into(), "warn".into())],
            launcher: Vec::new(),
            pkcs11_module: None,
            tpm_counter_every: None,
            epoch_secs: None,
        }
    }
}

/// One replica of the fleet.
pub struct Replica {
    /// Its Raft id (1-based).
    pub id: u64,
    /// Base URL of its device API.
    pub api: String,
    /// Where it serves `/metrics`.
    pub metrics: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data directory.
    pub data: PathBuf,
    /// The address it calls peers from.
    pub peer_ip: IpAddr,
    /// Where its peer listener binds.
    listen: SocketAddr,
    /// Where the other replicas reach it (a partition proxy, or `listen`).
    advertised: SocketAddr,
    /// Its `[pkcs11]` configuration section, if any.
    hsm: String,
    /// Its SoftHSM2 token directory, with PKCS#11 sealing.
    pub token_dir: Option<PathBuf>,
    /// Environment of its processes (`SOFTHSM2_CONF`).
    env: Vec<(String, String)>,
    /// Its software TPM, which outlives restarts of the replica (a site's hardware).
    _tpm: Option<SoftwareTpm>,
    /// The `backlock` it runs, if not the fleet's (a site upgraded to another build).
    binary: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    proxy: Option<PartitionProxy>,
}

impl Replica {
    /// Whether its process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running fleet; see the module docs.
pub struct Fleet {
    root: TempDir,
    certs: PathBuf,
    backlock: PathBuf,
    options: FleetOptions,
    /// The replicas in the order of their sites (a replaced site keeps its place).
    pub replicas: Vec<Replica>,
    /// The OPAQUE public key devices pin.
    pub public_key: [u8; 32],
}

fn run(backlock: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let output = Command::new(backlock)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", backlock.display()));
    assert!(
        output.status.success(),
        "backlock {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn public_key_of(banner: &str) -> [u8; 32] {
    let hex = banner
        .lines()
        .find_map(|l| l.strip_prefix("vault public key: "))
        .unwrap_or_else(|| panic!("no public key in {banner:?}"));
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex public key");
    }
    key
}

/// PIN of the test tokens (written to each replica's `hsm.pin`).
const TOKEN_PIN: &str = "4711-fleet-user";

/// A SoftHSM2 token for replica `i` in `dir/tokens`, and the environment that points
/// SoftHSM2 at it.
fn softhsm_token(dir: &Path, i: u64) -> (PathBuf, Vec<(String, String)>) {
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).expect("token directory");
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    fs::write(dir.join("hsm.pin"), TOKEN_PIN).expect("write the PIN file");
    let env = vec![("SOFTHSM2_CONF".to_owned(), conf.display().to_string())];
    let output = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &format!("replica-{i}")])
        .args(["--so-pin", "4711-fleet-so", "--pin", TOKEN_PIN])
        .envs(env.iter().cloned())
        .output()
        .expect("run softhsm2-util (scripts/test installs softhsm2)");
    assert!(
        output.status.success(),
        "softhsm2-util --init-token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (tokens, env)
}

/// The address replica `id` calls its peers from and listens for them on.
fn peer_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8))
}

/// GET `path` from `addr` over plain HTTP; `None` if it does not answer.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

impl Fleet {
    /// Sets up and starts a fleet with the `backlock` binary; returns once every
    /// replica is a voting member.
    pub fn start(backlock: &Path, options: FleetOptions) -> Fleet {
        let root = TempDir::new().expect("temporary directory");
        let certs = root.path().join("certs");
        let mut fleet = Fleet {
            root,
            certs,
            backlock: backlock.to_path_buf(),
            options,
            replicas: Vec::new(),
            public_key: [0; 32],
        };
        let ids: Vec<u64> = (1..=fleet.options.size as u64).collect();
        fleet.issue_certificates(&ids);
        // One call, so no two replicas are handed the same free port.
        let ports = free_ports(4 * ids.len());
        for (&id, ports) in ids.iter().zip(ports.chunks(4)) {
            let replica = fleet.new_replica(id, ports);
            fleet.replicas.push(replica);
        }
        fleet.write_configs();
        let banner = fleet.backlock(&["vault", "init", "--config"], 1);
        fleet.public_key = public_key_of(&banner);
        fleet.restart(1);
        for &id in &ids[1..] {
            fleet.join(id);
        }
        fleet
    }

    /// `vault certs` for `ids` (the CA is made the first time and reused after).
    fn issue_certificates(&self, ids: &[u64]) {
        let mut args = vec![
            "vault".to_owned(),
            "certs".into(),
            "--out".into(),
            self.certs.display().to_string(),
        ];
        for &id in ids {
            args.push("--replica".into());
            args.push(format!("{id}={}", peer_ip(id)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&self.backlock, &args, &[]);
    }

    /// A replica's directory, addresses and token, not yet configured or started, on
    /// four free `ports` (device API, peer listener, partition proxy, metrics).
    fn new_replica(&self, id: u64, ports: &[u16]) -> Replica {
        let ip = peer_ip(id);
        let listen = SocketAddr::new(ip, ports[1]);
        // Peers reach it at the proxy's address when the fleet is partitionable.
        let advertised = if self.options.partitionable {
            SocketAddr::new(ip, ports[2])
        } else {
            listen
        };
        let dir = self.root.path().join(format!("replica-{id}"));
        fs::create_dir_all(&dir).expect("replica directory");
        let (token_dir, env, hsm) = match &self.options.pkcs11_module {
            Some(module) => {
                let (token_dir, env) = softhsm_token(&dir, id);
                let hsm = format!(
                    "\n[pkcs11]\nmodule = \"{}\"\ntoken_label = \"replica-{id}\"\nkey_label = \"vault-node-key\"\npin_file = \"hsm.pin\"\n",
                    module.display()
                );
                (Some(token_dir), env, hsm)
            }
            None => (None, Vec::new(), String::new()),
        };
        let tpm = self.options.tpm_counter_every.map(|every| {
            let tpm = SoftwareTpm::start(&dir.join("tpm"))
                .expect("swtpm for the TPM counter (scripts/test installs swtpm)");
            let section = format!(
                "\n[tpm_counter]\ntcti = \"{}\"\nnv_index = 0x01500016\nadvance_every_ms = {}\n",
                tpm.tcti(),
                every.as_millis()
            );
            (tpm, section)
        });
        let (tpm, hsm) = match tpm {
            Some((tpm, section)) => (Some(tpm), hsm + &section),
            None => (None, hsm),
        };
        let proxy = self
            .options
            .partitionable
            .then(|| PartitionProxy::start(advertised, listen).expect("start a partition proxy"));
        Replica {
            id,
            api: format!("http://127.0.0.1:{}", ports[0]),
            metrics: SocketAddr::from(([127, 0, 0, 1], ports[3])),
            config: dir.join("vault.toml"),
            data: dir.join("data"),
            peer_ip: ip,
            listen,
            advertised,
            hsm,
            token_dir,
            env,
            _tpm: tpm,
            binary: None,
            log: dir.join("vault.log"),
            child: None,
            proxy,
        }
    }

    /// Writes every replica's `vault.toml`, listing the current replicas.
    fn write_configs(&self) {
        let mut table = String::new();
        for r in &self.replicas {
            table.push_str(&format!(
                "\n[[replicas]]\nid = {}\npeer = \"{}\"\napi = \"{}\"\n",
                r.id, r.advertised, r.api
            ));
        }
        for r in &self.replicas {
            let text = format!(
                "node_id = {id}\ndata = \"data\"\nlisten = \"{api}\"\npeer_listen = \"{listen}\"\nmetrics_listen = \"{metrics}\"\n\
                 max_attempts = {}\nattempt_ttl_secs = {}\naccount_burst = 100000\naccount_rate = 100000.0\n{epoch}\n\
                 [fleet_tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/replica-{id}.pem\"\nkey = \"{c}/replica-{id}.key\"\n{hsm}{table}",
                self.options.max_attempts,
                self.options.attempt_ttl_secs,
                epoch = self
                    .options
                    .epoch_secs
                    .map(|secs| format!("epoch_secs = {secs}\n"))
                    .unwrap_or_default(),
                id = r.id,
                api = r.api.trim_start_matches("http://"),
                listen = r.listen,
                metrics = r.metrics,
                c = self.certs.display(),
                hsm = r.hsm,
            );
            fs::write(&r.config, text).expect("write the configuration");
        }
    }

    /// Replaces the site of replica `old` (typically killed) by a new replica `new`,
    /// the way docs/OPERATIONS.md tells an operator to: a certificate from the fleet
    /// CA, `old` swapped for `new` in every configuration, `vault join` and `vault
    /// serve` on the new one, then `vault remove --replica OLD`.
    pub fn replace(&mut self, old: u64, new: u64) {
        self.issue_certificates(&[new]);
        let replica = self.new_replica(new, &free_ports(4));
        let at = self.index(old);
        self.kill(old);
        self.replicas[at] = replica;
        self.write_configs();
        self.join(new);
        let old = old.to_string();
        self.backlock(&["vault", "remove", "--replica", &old, "--config"], new);
    }

    fn index(&self, id: u64) -> usize {
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .unwrap_or_else(|| panic!("no replica {id} in the fleet"))
    }

    /// Replica `id`.
    pub fn replica(&self, id: u64) -> &Replica {
        &self.replicas[self.index(id)]
    }

    fn replica_mut(&mut self, id: u64) -> &mut Replica {
        let at = self.index(id);
        &mut self.replicas[at]
    }

    /// Runs `backlock ARGS CONFIG-OF-id` and returns its stdout (panics on failure).
    pub fn backlock(&self, args: &[&str], id: u64) -> String {
        let replica = self.replica(id);
        let config = replica.config.display().to_string();
        let mut all = args.to_vec();
        all.push(&config);
        run(&self.backlock, &all, &replica.env)
    }

    /// `vault status --json` as seen with replica `id`'s configuration, and whether it
    /// exited 0 (a majority and a leader).
    pub fn status(&self, id: u64) -> (bool, String) {
        let output = Command::new(&self.backlock)
            .args(["vault", "status", "--json", "--config"])
            .arg(&self.replica(id).config)
            .envs(self.replica(id).env.iter().cloned())
            .output()
            .expect("run vault status");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// Starts replica `id`'s process (after a kill, or the first time) and waits for its
    /// banner.
    pub fn restart(&mut self, id: u64) {
        if let Err(log) = self.try_restart(id) {
            panic!("replica {id} did not start:\n{log}");
        }
    }

    /// Starts replica `id`'s process and waits for its banner; if it exits or stays
    /// silent instead, returns its log.
    pub fn try_restart(&mut self, id: u64) -> Result<(), String> {
        let backlock = self.binary_of(id).to_path_buf();
        let env = self.options.env.clone();
        let mut command = match self.options.launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&backlock);
                command
            }
            None => Command::new(&backlock),
        };
        let replica = self.replica_mut(id);
        command.envs(replica.env.iter().cloned());
        assert!(replica.child.is_none(), "replica {id} is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)
            .expect("replica log");
        let mut child = command
            .args(["vault", "serve", "--config"])
            .arg(&replica.config)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start backlock vault serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut seen = String::new();
            while let Some(Ok(line)) = lines.next() {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("listening on") {
                    let _ = tx.send(seen.clone());
                }
            }
        });
        replica.child = Some(child);
        if rx.recv_timeout(START_WAIT).is_err() {
            self.kill(id);
            return Err(fs::read_to_string(&self.replica(id).log).unwrap_or_default());
        }
        Ok(())
    }

    /// A join ticket for replica `id` (`vault admit` on a running member), printed
    /// once.
    pub fn admit(&self, id: u64) -> String {
        let member = self
            .replicas
            .iter()
            .find(|r| r.id != id && r.child.is_some())
            .expect("a running member to admit the replica")
            .id;
        let replica = id.to_string();
        self.backlock(
            &["vault", "admit", "--replica", &replica, "--config"],
            member,
        )
        .trim()
        .to_owned()
    }

    /// Fetches the fleet secret for replica `id` with a fresh ticket (`vault admit`,
    /// `vault join`), starts it and waits until the leader has confirmed it as a voter
    /// holding the whole log.
    pub fn join(&mut self, id: u64) {
        self.fetch_secret(id);
        self.restart(id);
        self.wait_joined(id);
    }

    /// `vault admit` on a member and `vault join` for replica `id`: it holds the fleet
    /// secret and the joining marker, and is not started.
    pub fn fetch_secret(&self, id: u64) {
        let ticket = self.admit(id);
        let replica = self.replica(id);
        let mut env = replica.env.clone();
        env.push(("BACKLOCK_JOIN_TICKET".to_owned(), ticket));
        let config = replica.config.display().to_string();
        run(
            self.binary_of(id),
            &["vault", "join", "--config", &config],
            &env,
        );
    }

    /// From now on, replica `id` runs `binary` (`vault join` and `vault serve`): an
    /// upgrade of its site to another build, effective at its next start.
    pub fn use_binary(&mut self, id: u64, binary: &Path) {
        self.replica_mut(id).binary = Some(binary.to_path_buf());
    }

    fn binary_of(&self, id: u64) -> &Path {
        self.replica(id)
            .binary
            .as_deref()
            .unwrap_or(self.backlock.as_path())
    }

    /// Waits until replica `id`, started after [`Self::fetch_secret`], has been
    /// confirmed by the leader as a voter holding the whole log.
    pub fn wait_joined(&self, id: u64) {
        let marker = self.replica(id).data.join("joining");
        let deadline = Instant::now() + START_WAIT;
        while marker.exists() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(&self.replica(id).log).unwrap_or_default();
                panic!("replica {id} did not finish joining:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where replica `id`'s peer listener binds (the address behind its partition
    /// proxy, if any).
    pub fn peer_listen(&self, id: u64) -> SocketAddr {
        self.replica(id).listen
    }

    /// SIGKILLs replica `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.replica_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills replica `id`, deletes its data directory (node key included), and brings it
    /// back the way an operator would: `vault join`, then `vault serve`.
    pub fn wipe_and_rejoin(&mut self, id: u64) {
        self.kill(id);
        fs::remove_dir_all(&self.replica(id).data).expect("wipe the data directory");
        self.join(id);
    }

    /// The replica that says it leads, among those running.
    pub fn leader(&self) -> Option<u64> {
        self.replicas
            .iter()
            .filter(|r| r.is_running())
            .find(|r| {
                http_get(&r.metrics.to_string(), "/metrics")
                    .is_some_and(|m| m.lines().any(|l| l == "backlock_vault_raft_is_leader 1"))
            })
            .map(|r| r.id)
    }

    /// The epoch replica `id` seals new values in (`backlock_vault_epoch`), if it answers.
    pub fn epoch(&self, id: u64) -> Option<u64> {
        let metrics = http_get(&self.replica(id).metrics.to_string(), "/metrics")?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("backlock_vault_epoch "))
            .and_then(|n| n.parse().ok())
    }

    /// Waits until some running replica leads; panics after [`PATIENCE`].
    pub fn wait_for_leader(&self) -> u64 {
        let mut leader = None;
        wait_until("a running replica leads", || {
            leader = self.leader();
            leader.is_some()
        });
        leader.expect("a leader")
    }

    /// Waits until no running replica among `ids` may append a guess: each follows,
    /// or leads without having heard from a quorum within its lease. From then on a
    /// guess sent to them cannot be appended, so it can never count later.
    pub fn wait_until_none_may_append(&self, ids: &[u64]) {
        wait_until("no replica of the minority may append", || {
            !self
                .replicas
                .iter()
                .filter(|r| ids.contains(&r.id) && r.is_running())
                .any(|r| {
                    // A replica that does not answer may be the one still appending.
                    http_get(&r.metrics.to_string(), "/metrics")
                        .is_none_or(|m| m.lines().any(|l| l == "backlock_vault_raft_may_append 1"))
                })
        });
    }

    /// Every replica's device API URL, the list a device is given.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.api.clone()).collect()
    }

    /// An account token for `account`, as the relay would issue.
    pub fn token(&self, account: &str) -> String {
        let first = self.replicas[0].id;
        self.backlock(&["vault", "token", "--account", account, "--config"], first)
            .trim()
            .to_owned()
    }

    /// Cuts the replicas in `side` off from the others (both directions).
    pub fn partition(&self, side: &[u64]) {
        let inside: Vec<IpAddr> = self
            .replicas
            .iter()
            .filter(|r| side.contains(&r.id))
            .map(|r| r.peer_ip)
            .collect();
        let outside: Vec<IpAddr> = self
            .replicas
            .iter()
            .filter(|r| !side.contains(&r.id))
            .map(|r| r.peer_ip)
            .collect();
        for r in &self.replicas {
            let proxy = r
                .proxy
                .as_ref()
                .expect("start the fleet with partitionable");
            proxy.block(if side.contains(&r.id) {
                &outside
            } else {
                &inside
            });
        }
    }

    /// Ends a partition.
    pub fn heal(&self) {
        for r in &self.replicas {
            if let Some(proxy) = &r.proxy {
                proxy.heal();
            }
        }
    }

    /// The fleet's working directory (certificates, configurations, data, logs).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Replica `id`'s log so far (stderr of its processes).
    pub fn log(&self, id: u64) -> String {
        fs::read_to_string(&self.replica(id).log).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // A failing test shows what each replica said.
        if std::thread::panicking() {
            for r in &self.replicas {
                let log = self.log(r.id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- replica {} log (last lines):", r.id);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
