//! End to end, in real time over loopback: requests per second through the
//! reference gateway with every layer on, next to a bare hyper proxy with
//! no layers (and nginx, when it is installed), toward the same upstream,
//! under the same load, in the same run.
//!
//! Both proxies do the same work per request apart from the layers: accept
//! on HTTP/1.1 keep-alive connections, collect the body, build the
//! outbound request with the end-to-end headers, send it through a pooled
//! hyper-util client, collect the answer and send it back. The gateway adds
//! its route lookup, client-IP resolution and the floodwall layers: the
//! rejection responder, a per-IP keyed token bucket, a route token bucket,
//! priority assignment, the server deadline, and toward the upstream
//! deadline propagation, collaborative priority admission, a circuit
//! breaker and SRE throttling (limits set so that nothing is refused: the
//! layers all take their admit paths).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::BoxError;
use floodwall_examples::downstream::Downstream;
use floodwall_examples::gateway::Gateway;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;

use super::hist::Histogram;
use super::load::{Arrivals, open_loop};
use crate::proxy::{bare_proxy, gateway_config, pooled_client};

/// How the comparison runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E2eConfig {
    /// Concurrent keep-alive connections of the closed-loop load.
    pub connections: usize,
    /// Length of one measured round per proxy.
    pub round: Duration,
    /// Rounds per proxy, alternating between proxies.
    pub rounds: usize,
    /// The open-loop latency run's rate as a fraction of the bare proxy's
    /// measured throughput.
    pub latency_load: f64,
    /// The open-loop latency run's length per proxy.
    pub latency_run: Duration,
    /// Run only this proxy, closed loop only (for profiling one proxy at a
    /// time; the throughput is then not compared).
    pub only: Option<Proxy>,
}

/// The proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// The bare hyper proxy.
    Bare,
    /// The gateway with every layer on.
    Gateway,
    /// The gateway with its layers off.
    LayersOff,
}

impl Proxy {
    /// The proxy named `name` (`bare`, `gateway` or `layers-off`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "bare" => Some(Self::Bare),
            "gateway" => Some(Self::Gateway),
            "layers-off" => Some(Self::LayersOff),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Bare => 0,
            Self::Gateway => 1,
            Self::LayersOff => 2,
        }
    }
}

impl E2eConfig {
    /// The closed-loop warm-up of every proxy before the measured rounds.
    pub const WARM_UP: Duration = Duration::from_millis(500);
}

impl Default for E2eConfig {
    fn default() -> Self {
        Self {
            connections: 32,
            round: Duration::from_secs(3),
            rounds: 5,
            latency_load: 0.5,
            latency_run: Duration::from_secs(3),
            only: None,
        }
    }
}

/// One proxy's results.
#[derive(Debug, Clone)]
pub struct ProxyResult {
    /// Its name.
    pub name: &'static str,
    /// Requests per second answered 200 in each closed-loop round.
    pub rounds: Vec<f64>,
    /// Requests that failed or were not 200, over all rounds.
    pub errors: u64,
    /// Latency of the open-loop run (from each request's scheduled start).
    pub latency: Histogram,
    /// The open-loop run's rate.
    pub latency_rate: f64,
}

impl ProxyResult {
    /// The median of the rounds.
    pub fn median_rps(&self) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }
}

/// Closed loop: `connections` tasks each sending the next GET as soon as
/// the previous answer arrived, for `length`. Returns (200s per second,
/// other outcomes).
async fn closed_loop(base: &str, connections: usize, length: Duration) -> (f64, u64) {
    let client: Client<HttpConnector, Empty<Bytes>> = pooled_client();
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let uri: http::Uri = match format!("{base}/e2e").parse() {
        Ok(u) => u,
        Err(_) => return (0.0, 1),
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, ok, bad, stop, uri) = (
                client.clone(),
                ok.clone(),
                bad.clone(),
                stop.clone(),
                uri.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let answered = match client.get(uri.clone()).await {
                        Ok(res) => {
                            res.status() == StatusCode::OK
                                && res.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if answered {
                        ok.fetch_add(1, Relaxed);
                    } else {
                        bad.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Relaxed);
    let counted = ok.load(Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    (counted as f64 / elapsed.as_secs_f64(), bad.load(Relaxed))
}

/// Open loop at `rate` for `length`: the latency of each answer from its
/// scheduled start.
async fn open_latency(base: &str, rate: f64, length: Duration) -> (Histogram, u64) {
    let client: Client<HttpConnector, Empty<Bytes>> = pooled_client();
    let Ok(uri) = format!("{base}/e2e").parse::<http::Uri>() else {
        return (Histogram::new(), 1);
    };
    let handles = open_loop(Arrivals::Constant { rate }, length, |_, due| {
        let (client, uri) = (client.clone(), uri.clone());
        async move {
            let ok = match client.get(uri).await {
                Ok(res) => {
                    res.status() == StatusCode::OK && res.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            (ok, due.elapsed())
        }
    })
    .await;
    let mut hist = Histogram::new();
    let mut bad = 0;
    for h in handles {
        match h.await {
            Ok((true, latency)) => hist.record(latency),
            _ => bad += 1,
        }
    }
    (hist, bad)
}

/// nginx as a reverse proxy toward `upstream` on a free port, if `nginx` is
/// on the PATH. The child is killed when the guard drops.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_nginx(upstream: SocketAddr) -> Option<Nginx> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let dir = std::env::temp_dir().join(format!("floodwall-lab-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    let conf = format!(
        "worker_processes 1;\nerror_log logs/error.log;\npid logs/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  upstream up {{ server {upstream}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://up;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg("daemon off;")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let nginx = Nginx {
        child,
        addr,
        _dir: dir,
    };
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Some(nginx);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs the comparison on the current (multi-threaded) runtime.
///
/// # Errors
/// A port that cannot be bound, or an invalid gateway configuration.
pub async fn compare(config: E2eConfig) -> Result<Vec<ProxyResult>, BoxError> {
    let upstream = Downstream::start("upstream", Duration::ZERO).await?;
    let upstream_addr: SocketAddr = upstream.url().trim_start_matches("http://").parse()?;
    let gateway = Gateway::start(gateway_config(&upstream.url(), true)?, None).await?;
    let plain = Gateway::start(gateway_config(&upstream.url(), false)?, None).await?;
    let bare = bare_proxy(upstream_addr).await?;
    let nginx = start_nginx(upstream_addr).await;

    let mut targets: Vec<(&'static str, String)> = vec![
        ("bare hyper proxy", format!("http://{bare}")),
        ("gateway, every layer", format!("http://{}", gateway.addr())),
        ("gateway, layers off", format!("http://{}", plain.addr())),
    ];
    if let Some(n) = &nginx {
        targets.push(("nginx", format!("http://{}", n.addr)));
    }
    if let Some(only) = config.only {
        targets = vec![targets.swap_remove(only.index())];
    }
    let mut results: Vec<ProxyResult> = targets
        .iter()
        .map(|(name, _)| ProxyResult {
            name,
            rounds: Vec::new(),
            errors: 0,
            latency: Histogram::new(),
            latency_rate: 0.0,
        })
        .collect();
    // Warm every path up (connections, pools, caches).
    for (_, base) in &targets {
        let _ = closed_loop(base, config.connections, E2eConfig::WARM_UP).await;
    }
    for _ in 0..config.rounds {
        for (r, (_, base)) in results.iter_mut().zip(&targets) {
            let (rps, bad) = closed_loop(base, config.connections, config.round).await;
            r.rounds.push(rps);
            r.errors += bad;
        }
    }
    if config.only.is_some() {
        return Ok(results);
    }
    let rate = results[0].median_rps() * config.latency_load;
    for (r, (_, base)) in results.iter_mut().zip(&targets) {
        let (hist, bad) = open_latency(base, rate, config.latency_run).await;
        r.latency = hist;
        r.latency_rate = rate;
        r.errors += bad;
    }
    drop(nginx);
    Ok(results)
}

/// The results as a Markdown table, with each proxy's throughput relative
/// to the bare proxy's.
pub fn table(results: &[ProxyResult]) -> String {
    let bare = results.first().map_or(0.0, ProxyResult::median_rps);
    let mut out = String::from(
        "| proxy | req/s (median) | rounds | vs bare | p50 | p99 | p99.9 | errors |\n|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for r in results {
        let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{x:.0}")).collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.1} % | {:.2} ms | {:.2} ms | {:.2} ms | {} |\n",
            r.name,
            r.median_rps(),
            rounds.join(", "),
            if bare > 0.0 {
                r.median_rps() / bare * 100.0
            } else {
                0.0
            },
            ms(r.latency.quantile(0.5)),
            ms(r.latency.quantile(0.99)),
            ms(r.latency.quantile(0.999)),
            r.errors
        ));
    }
    out
}
