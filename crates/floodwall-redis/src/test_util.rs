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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
mod support;

pub use cluster::RedisCluster;
use support::{admin, binary, free_port, make_certificates, ping, temp_dir};

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
