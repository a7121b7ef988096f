//! A throwaway `redis-server` for tests and benchmarks (feature
//! `test-util`).
//!
//! [`RedisServer::start`] runs `redis-server` on an ephemeral loopback port,
//! with persistence off, and stops it when dropped. The binary is
//! `$REDIS_SERVER` if set, else `redis-server` on `PATH`; when neither
//! exists and the workspace's `scripts/ensure-redis-server.sh` is present,
//! that script installs it (Debian's package, as root or through sudo).
//! [`RedisCluster::start`] runs a Redis Cluster of such servers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::resp::{self, Value};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    args: Vec<String>,
    dir: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server on a free ephemeral port and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    /// If `redis-server` cannot be found or installed, or does not answer
    /// within 10 s: a test that needs Redis cannot run without it.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments
    /// made from the chosen port.
    fn start_with(args: impl Fn(u16) -> Vec<String>) -> Self {
        let binary = binary();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                binary: binary.clone(),
                args: args(port),
                dir: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last = err,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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

    /// Starts the server again on the same port, empty (persistence is
    /// off), after [`kill`](Self::kill).
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
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of `redis-server` children on loopback: every node a
/// master, the 16,384 slots split evenly between them, no replicas.
/// Stopped (and its files removed) when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, assigns the slots, joins
    /// them, and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// If a server does not start or the cluster is not ready within 20 s.
    pub fn start(masters: usize) -> Self {
        assert!(masters >= 1, "a cluster needs at least one master");
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let dir = std::env::temp_dir().join(format!(
                "floodwall-redis-cluster-{}-{}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let dir_arg = dir.display().to_string();
            let mut node = RedisServer::start_with(move |port| {
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                    "--dir".into(),
                    dir_arg.clone(),
                ]
            });
            node.dir = Some(dir);
            nodes.push(node);
        }
        let per = 16384 / masters;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == masters {
                16383
            } else {
                first + per - 1
            };
            let slots: Vec<String> = (first..=last).map(|s| s.to_string()).collect();
            let mut args: Vec<&[u8]> = vec![b"CLUSTER", b"ADDSLOTS"];
            args.extend(slots.iter().map(|s| s.as_bytes()));
            expect_ok(node.addr(), &args);
        }
        let first = nodes[0].addr();
        for node in &nodes[1..] {
            let port = node.port.to_string();
            expect_ok(first, &[b"CLUSTER", b"MEET", b"127.0.0.1", port.as_bytes()]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = command(node.addr(), &[b"CLUSTER", b"INFO"]);
                if matches!(&info, Ok(Value::Bulk(Some(text))) if text.windows(16).any(|w| w == b"cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis cluster not ready within 20 s: {info:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The nodes' addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// Keys stored on each node (`DBSIZE`), in node order.
    ///
    /// # Panics
    /// If a node does not answer.
    pub fn keys_per_node(&self) -> Vec<i64> {
        self.nodes
            .iter()
            .map(|n| match command(n.addr(), &[b"DBSIZE"]) {
                Ok(Value::Int(n)) => n,
                other => panic!("DBSIZE: {other:?}"),
            })
            .collect()
    }
}

fn expect_ok(addr: SocketAddr, args: &[&[u8]]) {
    match command(addr, args) {
        Ok(Value::Status(s)) if s == "OK" => {}
        other => panic!(
            "{:?} on {addr}: {other:?}",
            String::from_utf8_lossy(args[1])
        ),
    }
}

/// One command over a fresh blocking connection.
fn command(addr: SocketAddr, args: &[&[u8]]) -> Result<Value, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut frame = Vec::new();
    resp::encode(&mut frame, args);
    stream.write_all(&frame).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((value, _)) = resp::decode(&buf).map_err(|e| e.to_string())? {
            return Ok(value);
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
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
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
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
