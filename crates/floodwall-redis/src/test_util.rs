//! A throwaway `redis-server` for tests and benchmarks (feature
//! `test-util`).
//!
//! [`RedisServer::start`] runs `redis-server` on an ephemeral loopback port,
//! with persistence off, and stops it when dropped. The binary is
//! `$REDIS_SERVER` if set, else `redis-server` on `PATH`; when neither
//! exists and the workspace's `scripts/ensure-redis-server.sh` is present,
//! that script installs it (Debian's package, as root or through sudo).
//! [`RedisServer::start_with`] adds a password, ACL users or TLS (a
//! throwaway CA and certificate made with `openssl`);
//! [`RedisCluster::start`] runs a Redis Cluster of such servers, with
//! replicas and failovers on demand. Administrative commands go through
//! redis-rs's blocking connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a [`RedisServer`] requires of its clients.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// `requirepass`: the password of the `default` user.
    pub password: Option<String>,
    /// ACL users, each as an ACL rule line, such as
    /// `"limiter on >secret ~floodwall:* +@all"`.
    pub users: Vec<String>,
    /// Start as a replica of this server (`--replicaof`): it refuses
    /// writes (`READONLY`).
    pub replica_of: Option<SocketAddr>,
    /// Keep the dataset in the server's own directory across
    /// [`RedisServer::restart`] (`SAVE` writes it, the restart loads it),
    /// with `DEBUG` enabled to fill it (`DEBUG POPULATE`).
    pub persist: bool,
    /// Also listen for TLS, on [`RedisServer::tls_addr`], with a
    /// certificate for `127.0.0.1` signed by a CA made for this server
    /// ([`RedisServer::ca_pem`]). Clients need no certificate of their own.
    pub tls: bool,
}

/// A `redis-server` child process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    password: Option<String>,
    binary: PathBuf,
    args: Vec<String>,
    dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server on a free ephemeral port and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    /// If `redis-server` cannot be found or installed, or does not answer
    /// within 10 s: a test that needs Redis cannot run without it.
    pub fn start() -> Self {
        Self::start_args(|_| Vec::new())
    }

    /// Starts a server with a password, ACL users and TLS as `options`
    /// say.
    ///
    /// # Panics
    /// As [`start`](Self::start), and if `openssl` fails to make the TLS
    /// files.
    pub fn start_with(options: ServerOptions) -> Self {
        let tls_dir = options.tls.then(|| {
            let dir = temp_dir("tls");
            make_certificates(&dir);
            dir
        });
        let tls_port = tls_dir.as_ref().map(|_| free_port());
        let mut args = Vec::new();
        if let Some(password) = &options.password {
            args.extend(["--requirepass".to_owned(), password.clone()]);
        }
        for user in &options.users {
            // redis-server joins the words after `--user` into one rule line.
            args.push("--user".to_owned());
            args.extend(user.split_whitespace().map(str::to_owned));
        }
        if let Some(master) = options.replica_of {
            args.extend([
                "--replicaof".to_owned(),
                master.ip().to_string(),
                master.port().to_string(),
            ]);
        }
        // A replica writes the master's snapshot to its directory on a full
        // sync: a temporary one, as a persisted server's, never the cwd.
        let data_dir = (options.persist || options.replica_of.is_some()).then(|| temp_dir("data"));
        if let Some(dir) = &data_dir {
            args.extend(["--dir".to_owned(), dir.display().to_string()]);
        }
        if options.persist {
            args.extend(["--enable-debug-command".to_owned(), "yes".to_owned()]);
        }
        if let (Some(dir), Some(port)) = (&tls_dir, tls_port) {
            let file = |name: &str| dir.join(name).display().to_string();
            args.extend([
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                file("server.crt"),
                "--tls-key-file".to_owned(),
                file("server.key"),
                "--tls-ca-cert-file".to_owned(),
                file("ca.crt"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]);
        }
        let mut server = Self::start_args(move |_| args.clone());
        server.tls_port = tls_port;
        server.password = options.password;
        server.dir = tls_dir;
        server.data_dir = data_dir;
        server
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments
    /// made from the chosen port.
    fn start_args(args: impl Fn(u16) -> Vec<String>) -> Self {
        let binary = binary();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                tls_port: None,
                password: None,
                binary: binary.clone(),
                args: args(port),
                dir: None,
                data_dir: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last = err,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// The server's address (plain TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/`, the URL of [`addr`](Self::addr),
    /// without credentials.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    /// The TLS address, when started with [`ServerOptions::tls`].
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_port
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The PEM of the CA that signed the TLS certificate, when started with
    /// [`ServerOptions::tls`].
    ///
    /// # Panics
    /// If the file cannot be read.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.tls_port?;
        let dir = self.dir.as_ref()?;
        Some(std::fs::read(dir.join("ca.crt")).expect("reading the CA certificate"))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs one command as the `default` user (with the password, if any)
    /// and returns its reply.
    ///
    /// # Errors
    /// Connecting failed or the server answered with an error.
    pub fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        admin(self.addr(), self.password.as_deref(), args)
    }

    /// Kills the server at once (`SIGKILL`, no shutdown), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open but nothing is
    /// answered, as with a hung or overloaded Redis.
    ///
    /// # Panics
    /// If the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`pause`](Self::pause)d server (`SIGCONT`).
    ///
    /// # Panics
    /// If the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let Some(child) = &self.child else { return };
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Starts the server again on the same port after [`kill`](Self::kill):
    /// empty, unless started with [`ServerOptions::persist`] (then it
    /// loads what was last `SAVE`d, and answers `LOADING` meanwhile).
    ///
    /// # Panics
    /// If it does not answer within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(err) = self.spawn() {
            panic!(
                "could not restart redis-server on port {}: {err}",
                self.port
            );
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("{}: {err}", self.binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status} (port {} taken?)", self.port));
            }
            if ping(self.addr()) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("did not answer PING within 10 s".into())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        for dir in [self.dir.take(), self.data_dir.take()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of `redis-server` children on loopback: `masters`
/// masters with the 16,384 slots split evenly between them, and
/// `replicas` replicas of each. Stopped (and its files removed) when
/// dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// Masters first (in slot order), then the replicas of master 0, of
    /// master 1, …
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, assigns the slots, joins
    /// them, and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// If a server does not start or the cluster is not ready within 20 s.
    pub fn start(masters: usize) -> Self {
        Self::with_replicas(masters, 0)
    }

    /// As [`start`](Self::start), with `replicas` replicas of every
    /// master, each in sync with its master before this returns.
    ///
    /// # Panics
    /// If a server does not start or the cluster is not ready within 30 s.
    pub fn with_replicas(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 1, "a cluster needs at least one master");
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let dir_arg = dir.display().to_string();
                RedisServer::start_args(move |port| {
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                        "--dir".into(),
                        dir_arg.clone(),
                    ]
                })
            })
            .collect();
        let mut cluster = Self { nodes, masters };
        cluster.nodes[0].dir = Some(dir);
        let per = 16384 / masters;
        for (i, node) in cluster.nodes[..masters].iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == masters {
                16383
            } else {
                first + per - 1
            };
            let slots: Vec<String> = (first..=last).map(|s| s.to_string()).collect();
            let mut args = vec!["CLUSTER", "ADDSLOTS"];
            args.extend(slots.iter().map(String::as_str));
            node.command(&args).expect("CLUSTER ADDSLOTS");
        }
        let first = cluster.nodes[0].addr();
        for node in &cluster.nodes[1..] {
            let port = node.port.to_string();
            admin(first, None, &["CLUSTER", "MEET", "127.0.0.1", &port]).expect("CLUSTER MEET");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every node must know every other before a replica can follow a
        // master by id.
        for node in &cluster.nodes {
            wait_until(deadline, "every node known", || {
                text(node.command(&["CLUSTER", "NODES"]))
                    .is_some_and(|nodes| nodes.lines().count() == cluster.nodes.len())
            });
        }
        for m in 0..masters {
            let id = text(cluster.nodes[m].command(&["CLUSTER", "MYID"])).expect("CLUSTER MYID");
            for r in 0..replicas {
                let replica = &cluster.nodes[masters + m * replicas + r];
                replica
                    .command(&["CLUSTER", "REPLICATE", id.trim()])
                    .expect("CLUSTER REPLICATE");
            }
        }
        for node in &cluster.nodes {
            wait_until(deadline, "cluster_state:ok", || {
                text(node.command(&["CLUSTER", "INFO"]))
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
        }
        for replica in &cluster.nodes[masters..] {
            wait_until(deadline, "replica in sync", || {
                text(replica.command(&["INFO", "replication"]))
                    .is_some_and(|info| info.contains("master_link_status:up"))
            });
        }
        cluster
    }

    /// The masters' addresses, in slot order (as started: a failover
    /// changes who is master, not this list).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes[..self.masters]
            .iter()
            .map(RedisServer::addr)
            .collect()
    }

    /// Every node's `redis://` URL, masters first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Keys stored on each master (`DBSIZE`), in [`addrs`](Self::addrs)
    /// order.
    ///
    /// # Panics
    /// If a node does not answer.
    pub fn keys_per_node(&self) -> Vec<i64> {
        self.nodes[..self.masters]
            .iter()
            .map(|n| match n.command(&["DBSIZE"]) {
                Ok(redis::Value::Int(n)) => n,
                other => panic!("DBSIZE: {other:?}"),
            })
            .collect()
    }

    /// Promotes the first replica of master `master` with `CLUSTER
    /// FAILOVER` (the coordinated, no-data-loss kind) and waits until it
    /// reports itself master and the old master follows it.
    ///
    /// # Panics
    /// Without replicas, or if the failover does not finish within 20 s.
    pub fn failover(&self, master: usize) {
        let replicas = (self.nodes.len() - self.masters) / self.masters;
        assert!(replicas > 0, "a failover needs a replica");
        let replica = &self.nodes[self.masters + master * replicas];
        replica
            .command(&["CLUSTER", "FAILOVER"])
            .expect("CLUSTER FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_until(deadline, "the replica promoted", || {
            text(replica.command(&["INFO", "replication"]))
                .is_some_and(|info| info.contains("role:master"))
        });
        let old = &self.nodes[master];
        wait_until(deadline, "the old master following", || {
            text(old.command(&["INFO", "replication"]))
                .is_some_and(|info| info.contains("role:slave"))
        });
    }
}

/// Polls `ready` every 50 ms until it holds.
///
/// # Panics
/// At `deadline`.
fn wait_until(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) {
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "redis test setup: {what} timed out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reply as text (status or bulk string).
fn text(reply: redis::RedisResult<redis::Value>) -> Option<String> {
    match reply.ok()? {
        redis::Value::SimpleString(s) => Some(s),
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// One command over a fresh blocking redis-rs connection.
fn admin(
    addr: SocketAddr,
    password: Option<&str>,
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    use redis::IntoConnectionInfo;
    let info =
        redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()).into_connection_info()?;
    let info = match password {
        Some(password) => {
            info.set_redis_settings(redis::RedisConnectionInfo::default().set_password(password))
        }
        None => info,
    };
    let client = redis::Client::open(info)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn)
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "floodwall-redis-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A CA (`ca.crt`) and a certificate for `127.0.0.1` it signed
/// (`server.crt`, `server.key`), made with the `openssl` command.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("running openssl (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("writing server.ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=floodwall test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    // `+PONG`, `-NOAUTH` from a server with a password, or `-LOADING` from
    // one still loading its dataset: up, in each case.
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok()
        && (&reply == b"+PONG\r\n"
            || reply.starts_with(b"-NOAUTH")
            || reply.starts_with(b"-LOADIN"))
}

/// The `redis-server` binary, found (or installed) once per process: tests
/// run in parallel threads, and two concurrent installs would fight over
/// the package manager's lock.
fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn find_or_install() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    if let Some(path) = on_path("redis-server") {
        return path;
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-redis-server.sh");
    if script.exists() {
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/ensure-redis-server.sh");
        if out.status.success() {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !path.is_empty() {
                return PathBuf::from(path);
            }
        }
    }
    panic!(
        "redis-server not found: install it (Debian: apt-get install redis-server) \
         or set REDIS_SERVER to its path"
    );
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
