//! A throwaway `redis-server` for tests and benchmarks (feature
//! `test-util`).
//!
//! [`RedisServer::start`] runs `redis-server` on an ephemeral loopback port,
//! with persistence off, and stops it when dropped. The binary is
//! `$REDIS_SERVER` if set, else `redis-server` on `PATH`; when neither
//! exists and the workspace's `scripts/ensure-redis-server.sh` is present,
//! that script installs it (Debian's package, as root or through sudo).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` child process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free ephemeral port and waits until it answers
    /// `PING`.
    ///
    /// # Panics
    /// If `redis-server` cannot be found or installed, or does not answer
    /// within 10 s: a test that needs Redis cannot run without it.
    pub fn start() -> Self {
        let binary = binary();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                binary: binary.clone(),
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
