//! The gateway's edge under hostile connection patterns, on loopback with
//! bounded counts and times: slow clients (slowloris), a connection flood
//! past the cap, and a graceful shutdown under load.

use std::time::{Duration, Instant};

use bytes::Bytes;
use floodwall_examples::deploy::Deployment;
use floodwall_examples::gateway::GatewayConfig;
use floodwall_examples::room::{RoomConfig, RoomService};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The deployment, without the hot-room cache: these tests measure the
/// gateway's connection handling on the room service's path (a cached
/// answer costs so little that the test's own trickling tasks, on the same
/// two worker threads, would decide the goodput ratio).
async fn start(room: RoomConfig, tweak: impl FnOnce(&mut GatewayConfig)) -> Deployment {
    Deployment::start(true, room, |c| {
        for r in &mut c.routes {
            r.hot = None;
        }
        tweak(c);
    })
    .await
    .unwrap()
}

fn fast_room() -> RoomConfig {
    RoomConfig {
        service_time: Duration::from_millis(1),
        jitter: 0.0,
        ..RoomConfig::default()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One GET on a keep-alive client: its status and latency.
async fn timed_get(client: &HttpClient, url: &str) -> (StatusCode, Duration) {
    let t0 = Instant::now();
    let req = Request::get(url).body(Full::default()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("answered within 5 s")
        .expect("a response");
    let status = res.status();
    res.into_body().collect().await.unwrap();
    (status, t0.elapsed())
}

/// `n` sequential requests: goodput (2xx per second), p99 latency and how
/// many were answered 2xx.
async fn measure(client: &HttpClient, url: &str, n: usize) -> (f64, Duration, u32) {
    let t0 = Instant::now();
    let mut ok = 0u32;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, d) = timed_get(client, url).await;
        if status.is_success() {
            ok += 1;
        }
        lat.push(d);
    }
    lat.sort();
    let p99 = lat[(n * 99 / 100).min(n - 1)];
    (f64::from(ok) / t0.elapsed().as_secs_f64(), p99, ok)
}

/// Waits (up to 10 s) until the room service has started `n` jobs: every
/// request sent so far has been read by the gateway and passed on.
async fn started_at_least(room: &RoomService, n: u64) {
    let by = Instant::now() + Duration::from_secs(10);
    while room.state().pool_started < n {
        assert!(
            Instant::now() < by,
            "the room service started {} of {n} jobs",
            room.state().pool_started
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The flood test reads this process's CPU time, which every test running
/// next to it in this binary adds to: it runs alone (the write side), the
/// others side by side (the read side).
static CPU_ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A `gateway` binary running as a child process. A test that fails before
/// it stops the gateway does not leave it running: dropped, it is killed
/// and reaped.
struct GatewayProcess(Option<std::process::Child>);

impl GatewayProcess {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM sent");
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Process CPU time (user + system) so far, from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_a_normal_client_keeps_its_goodput() {
    let _side_by_side = CPU_ALONE.read().await;
    let d = start(fast_room(), |c| {
        c.gateway.header_read_timeout = Duration::from_secs(3);
        c.per_ip = None;
    })
    .await;
    let url = format!("{}/api/room?id=1", d.url());
    let normal = client();
    // Warm up, then the baseline.
    measure(&normal, &url, 50).await;
    let (base_goodput, base_p99, _) = measure(&normal, &url, 300).await;

    // 1,000 connections, each sending a request head one byte at a time.
    let mut slow = Vec::new();
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(d.gateway.addr()).await.unwrap();
        s.write_all(b"GET /api/room?id=1 HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..12 {
            for s in &mut slow {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        slow
    });
    let (goodput, p99, answered) = measure(&normal, &url, 300).await;
    // The client's speed under the trickle is printed for the record, not
    // asserted: it is a timing on a shared 2-core machine, where the
    // trickling tasks share the client's and the gateway's worker threads
    // (runs measured 84 to 102 % of the baseline, the same with the header
    // timeout at 10 minutes: the timeout does not decide it), and speed is
    // the benchmarks' business. What the gateway owes the client is an
    // answer to every request while 1,000 connections trickle.
    eprintln!(
        "slowloris: {goodput:.0} req/s ({:.0} % of {base_goodput:.0}), p99 {p99:?} (baseline {base_p99:?})",
        goodput / base_goodput * 100.0
    );
    assert_eq!(
        answered, 300,
        "every request of the normal client answered 2xx"
    );

    // Past the header timeout every trickling connection is closed.
    let mut slow = trickle.await.unwrap();
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            // Closed, or answered 408 and then closed.
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(_)) => {
                if matches!(
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
                    Ok(Ok(0) | Err(_))
                ) {
                    closed += 1;
                }
            }
            Err(_) => {}
        }
    }
    assert_eq!(
        closed, 1_000,
        "every slow connection was cut by the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_cap_neither_stops_service_nor_spins_a_core() {
    let _alone = CPU_ALONE.write().await;
    let d = start(fast_room(), |c| {
        c.gateway.max_connections = 200;
        c.gateway.header_read_timeout = Duration::from_secs(2);
        c.per_ip = None;
    })
    .await;
    let url = format!("{}/api/room?id=1", d.url());
    // A client with its connection open before the flood.
    let normal = client();
    assert!(timed_get(&normal, &url).await.0.is_success());
    // 500 idle connections: two and a half times the cap (the rest wait in
    // the listener's backlog of 1,024).
    let mut flood = Vec::new();
    for _ in 0..500 {
        flood.push(TcpStream::connect(d.gateway.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(d.gateway.connections(), 200, "accepted up to the cap");
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    // The open connection is still served during the flood.
    let (goodput, _, _) = measure(&normal, &url, 100).await;
    assert!(goodput > 0.0);
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed())).await;
    let cpu = cpu_time() - cpu0;
    let wall = t0.elapsed();
    // 100 requests cost a few ms of CPU each at most; a listener spinning
    // on accept would burn a whole core for the whole second.
    assert!(
        cpu < wall.mul_f64(0.8),
        "{cpu:?} of CPU in {wall:?} during the flood"
    );
    // The idle connections are cut by the header timeout (2 s), freeing
    // room for the queued ones, which are cut in turn: a new client behind
    // 300 queued idle connections gets in within three header timeouts.
    let fresh = client();
    let t1 = Instant::now();
    let req = Request::get(&url).body(Full::default()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), fresh.request(req))
        .await
        .expect("a new client got in")
        .expect("a response");
    assert!(res.status().is_success());
    let waited = t1.elapsed();
    assert!(
        waited < Duration::from_secs(7),
        "a new client waited {waited:?}"
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_accepted_request_and_stops_within_the_drain() {
    let _side_by_side = CPU_ALONE.read().await;
    let room = RoomConfig {
        service_time: Duration::from_millis(200),
        jitter: 0.0,
        workers: 64,
        ..RoomConfig::default()
    };
    let d = start(room, |c| c.per_ip = None).await;
    let url = format!("{}/api/room?id=1", d.url());
    // 40 requests in flight, each on its own connection.
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { timed_get(&client(), &url).await.0 })
        })
        .collect();
    // Every request reached the room service (none is still connecting
    // when the drain starts, which would not be an accepted request).
    started_at_least(&d.room, 40).await;
    let addr = d.gateway.addr();
    let t0 = Instant::now();
    let drained = d.gateway.shutdown(Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(drained, "every connection finished within the drain");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            StatusCode::OK,
            "an accepted request lost"
        );
    }
    // Nothing new is accepted.
    let refused = tokio::time::timeout(Duration::from_secs(1), async {
        match TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                matches!(s.read(&mut buf).await, Ok(0) | Err(_))
            }
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "a connection after shutdown was served");
}

/// The `gateway` binary on `config` (TOML text), started through `sh` so
/// that `shell_prefix` (e.g. `ulimit -n 64 && `) applies to it: the child,
/// its data URL, and the scratch directory holding the config.
fn spawn_gateway(
    name: &str,
    config: &str,
    shell_prefix: &str,
) -> (GatewayProcess, String, std::path::PathBuf) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("floodwall-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{shell_prefix}exec '{}' '{}'",
            env!("CARGO_BIN_EXE_gateway"),
            path.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // "gateway on http://127.0.0.1:PORT (admin ...), config ..."
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .nth(2)
        .expect("the gateway prints its address")
        .to_owned();
    (GatewayProcess(Some(child)), url, dir)
}

/// A gateway config with one route to the room service at `room`.
fn one_route_config(room: &str, extra_gateway: &str, upstream_timeout: &str) -> String {
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{extra_gateway}\n\
         [upstreams.room]\nkind = \"grpc\"\nurl = \"{room}\"\ntimeout = \"{upstream_timeout}\"\n\n\
         [[routes]]\npath = \"/api/room\"\nhandler = \"get_room\"\nupstream = \"room\"\ntimeout = \"{upstream_timeout}\"\n"
    )
}

/// The `gateway` binary under load gets SIGTERM: every request it accepted
/// is answered, and it exits within its drain deadline (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_no_accepted_request() {
    let _side_by_side = CPU_ALONE.read().await;

    // A room service that takes 300 ms per call, for requests in flight.
    let room = RoomService::start(RoomConfig {
        service_time: Duration::from_millis(300),
        jitter: 0.0,
        workers: 64,
        listen: ([127, 0, 0, 1], 0).into(),
        ..RoomConfig::default()
    })
    .await
    .unwrap();
    let (gateway, url, dir) =
        spawn_gateway("sigterm", &one_route_config(&room.url(), "", "2s"), "");
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let url = format!("{url}/api/room?id=1");
            tokio::spawn(async move { timed_get(&client(), &url).await.0 })
        })
        .collect();
    started_at_least(&room, 30).await;
    let t0 = Instant::now();
    let exited = gateway.terminate().await;
    let took = t0.elapsed();
    assert!(exited.success(), "{exited:?}");
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            StatusCode::OK,
            "an accepted request was lost"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Process CPU time of `pid` (user + system), from /proc.
fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The `gateway` binary with only 64 file descriptors, flooded with 300
/// connections: `accept` fails with `EMFILE`, and the listener backs off
/// instead of spinning a core; once the flood leaves it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_does_not_spin_the_accept_loop() {
    let _side_by_side = CPU_ALONE.read().await;

    let room = RoomService::start(RoomConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..fast_room()
    })
    .await
    .unwrap();
    let (gateway, url, dir) = spawn_gateway(
        "emfile",
        &one_route_config(&room.url(), "header_read_timeout = \"1s\"\n", "1s"),
        "ulimit -n 64 && ",
    );
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let pid = gateway.id();
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            flood.push(s);
        }
    }
    let cpu0 = cpu_time_of(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_time_of(pid) - cpu0;
    assert!(
        cpu < Duration::from_millis(500),
        "the gateway burned {cpu:?} of CPU in 2 s of descriptor exhaustion"
    );
    // The flood leaves: the gateway serves again.
    drop(flood);
    let mut served = false;
    for _ in 0..20 {
        let req = Request::get(format!("{url}/api/room?id=1"))
            .body(Full::default())
            .unwrap();
        if let Ok(Ok(res)) =
            tokio::time::timeout(Duration::from_secs(2), client().request(req)).await
            && res.status().is_success()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(served, "served again once descriptors were free");
}

/// A peak resident set size, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The `gateway` binary proxying to an upstream that answers 256 MiB: the
/// client gets 502 `upstream_too_large`, and the gateway's peak resident
/// memory grows by less than 32 MiB (the 8 MiB cap, plus socket and
/// allocator slack), measured from /proc on the gateway's own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_answer_grows_the_gateways_memory_by_less_than_32_mib() {
    let _side_by_side = CPU_ALONE.read().await;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // The upstream: 256 MiB for /big, a few bytes otherwise.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        while !halt.load(Ordering::Relaxed) {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = if req.uri().path().ends_with("/big") {
                        256
                    } else {
                        0
                    };
                    let body = floodwall_examples::downstream::Repeat::new(
                        chunk.clone(),
                        n,
                        Default::default(),
                    );
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let config = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [upstreams.files]\nkind = \"http\"\nurl = \"http://{upstream}\"\ntimeout = \"10s\"\n\n\
         [[routes]]\nprefix = \"/files/\"\nhandler = \"proxy\"\nupstream = \"files\"\ntimeout = \"10s\"\n"
    );
    let (gateway, url, dir) = spawn_gateway("bigbody", &config, "");
    let pid = gateway.id();
    // Warm: one small answer through the whole path.
    let (status, _) = timed_get(&client(), &format!("{url}/files/small")).await;
    assert_eq!(status, StatusCode::OK);
    let before = peak_rss(pid);
    let req = Request::get(format!("{url}/files/big"))
        .body(Full::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answered")
        .expect("a response");
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        res.headers()
            .get("x-floodwall-reason")
            .and_then(|v| v.to_str().ok()),
        Some("upstream_too_large")
    );
    let grew = peak_rss(pid).saturating_sub(before);
    stop.store(true, Ordering::Relaxed);
    gateway.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("peak RSS grew by {} KiB", grew / 1024);
    assert!(grew < 32 << 20, "peak RSS grew by {} MiB", grew >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_is_closed_but_a_slow_answer_is_not() {
    let _side_by_side = CPU_ALONE.read().await;
    // The room takes 1 s per call; routes allow it; idle connections go
    // after 2 s.
    let room = RoomConfig {
        service_time: Duration::from_secs(1),
        jitter: 0.0,
        ..RoomConfig::default()
    };
    let d = start(room, |c| {
        c.gateway.idle_timeout = Duration::from_secs(2);
        c.per_ip = None;
        for r in &mut c.routes {
            r.timeout = Duration::from_millis(1500);
        }
        for up in c.upstreams.values_mut() {
            up.timeout = Duration::from_millis(1500);
        }
    })
    .await;
    let mut s = TcpStream::connect(d.gateway.addr()).await.unwrap();
    s.write_all(b"GET /api/room?id=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer takes 1 s with no byte moving: it still arrives.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Parked afterwards: closed within the idle timeout (plus slack).
    let t0 = Instant::now();
    let mut closed = false;
    while t0.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => continue, // the rest of the body
            Err(_) => break,
        }
    }
    assert!(closed, "a parked connection stayed open {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        t0.elapsed()
    );
}
