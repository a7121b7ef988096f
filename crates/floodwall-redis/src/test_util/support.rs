//! What the throwaway servers are made with: finding (or installing) the
//! binary, free ports, temporary directories, a throwaway CA and
//! certificate, and administrative commands over a blocking connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Polls `ready` every 50 ms until it holds.
///
/// # Panics
/// At `deadline`.
pub(super) fn wait_until(deadline: Instant, what: &str, mut ready: impl FnMut() -> bool) {
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "redis test setup: {what} timed out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reply as text (status or bulk string).
pub(super) fn text(reply: redis::RedisResult<redis::Value>) -> Option<String> {
    match reply.ok()? {
        redis::Value::SimpleString(s) => Some(s),
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// One command over a fresh blocking redis-rs connection.
pub(super) fn admin(
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
pub(super) fn temp_dir(what: &str) -> PathBuf {
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
pub(super) fn make_certificates(dir: &Path) {
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

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

pub(super) fn ping(addr: SocketAddr) -> bool {
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
pub(super) fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

pub(super) fn find_or_install() -> PathBuf {
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

pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
