//! An open-loop HTTP load generator and its per-phase report.
//!
//! Open loop: requests start on schedule whatever happens to earlier ones,
//! as independent viewers do, so an overloaded server cannot slow the
//! offered load down (a closed loop would hide a collapse). Each request
//! gives up after the client timeout; only 2xx answers within it count as
//! goodput.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::gateway::REASON_HEADER;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Shot {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Shot {
    /// A GET of `path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
        }
    }

    /// A POST of `path` with no body.
    pub fn post(path: impl Into<String>) -> Self {
        Self {
            method: Method::POST,
            ..Self::get(path)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A viewer behind the trusted proxy: a random user of 5,000 and a random
/// client IP in 10.0.0.0/12, drawn from `rng`.
pub fn viewer(rng: &floodwall::core::random::SplitMix, shot: Shot) -> Shot {
    let r = rng.next_u64();
    let ip = format!(
        "10.{}.{}.{}",
        (r >> 8) % 16,
        (r >> 16) % 250,
        (r >> 24) % 250 + 1
    );
    shot.header("x-user-id", format!("user-{}", r % 5000))
        .header("x-forwarded-for", ip)
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The phase it was sent in.
    pub phase: usize,
    /// When it was sent, from the generator's creation.
    pub at: Duration,
    /// Time to the full answer (or to giving up).
    pub latency: Duration,
    /// The HTTP status; `None` if the client gave up or the connection
    /// failed.
    pub status: Option<u16>,
    /// The gateway's `x-floodwall-reason`, if any.
    pub reason: Option<String>,
}

/// The load generator toward one base URL.
#[derive(Debug, Clone)]
pub struct Load {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
    timeout: Duration,
    samples: Arc<Mutex<Vec<Sample>>>,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    epoch: Instant,
}

impl Load {
    /// A generator toward `base` (`http://host:port`), giving up on each
    /// request after `timeout`.
    pub fn new(base: impl Into<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1024)
                .build(connector),
            base: base.into(),
            timeout,
            samples: Arc::default(),
            inflight: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn send(&self, shot: &Shot) -> Sample {
        self.send_in(0, shot).await
    }

    async fn send_in(&self, phase: usize, shot: &Shot) -> Sample {
        let start = Instant::now();
        let at = start.saturating_duration_since(self.epoch);
        let mut req = Request::builder()
            .method(shot.method.clone())
            .uri(format!("{}{}", self.base, shot.path));
        for (k, v) in &shot.headers {
            req = req.header(*k, v.as_str());
        }
        let Ok(req) = req.body(Empty::new()) else {
            return Sample {
                phase,
                at,
                latency: Duration::ZERO,
                status: None,
                reason: Some("bad_request".into()),
            };
        };
        let client = self.client.clone();
        let answer = tokio::time::timeout(self.timeout, async move {
            let res = client.request(req).await.ok()?;
            let status = res.status().as_u16();
            let reason = res
                .headers()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            res.into_body().collect().await.ok()?;
            Some((status, reason))
        })
        .await;
        let (status, reason) = match answer {
            Ok(Some((s, r))) => (Some(s), r),
            Ok(None) => (None, Some("connection_error".into())),
            Err(_) => (None, Some("client_timeout".into())),
        };
        Sample {
            phase,
            at,
            latency: start.elapsed(),
            status,
            reason,
        }
    }

    /// Sends `rate` requests per second for `duration`, each made by
    /// `pick(i)`, recording them under `phase`. Returns when the last one
    /// has been sent (answers are still being awaited: see [`drain`](Self::drain)).
    pub async fn run(
        &self,
        phase: usize,
        rate: f64,
        duration: Duration,
        pick: impl Fn(u64) -> Shot,
    ) {
        if rate <= 0.0 {
            tokio::time::sleep(duration).await;
            return;
        }
        let start = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / rate);
        let total = (rate * duration.as_secs_f64()).round() as u64;
        for i in 0..total {
            tokio::time::sleep_until(start + gap.mul_f64(i as f64)).await;
            let shot = pick(i);
            let this = self.clone();
            self.inflight.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let s = this.send_in(phase, &shot).await;
                this.samples.lock().push(s);
                this.inflight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        tokio::time::sleep_until(start + duration).await;
    }

    /// Waits until every request sent has been answered or given up on.
    pub async fn drain(&self) {
        while self.inflight.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Time since the generator was created (the clock of [`Sample::at`]).
    pub fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Every sample recorded so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().clone()
    }
}

/// One phase's numbers.
#[derive(Debug, Clone, Default)]
pub struct PhaseStats {
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers within the client timeout.
    pub ok: usize,
    /// `ok` per second of the phase.
    pub goodput: f64,
    /// Refusals and failures by reason, largest first.
    pub reasons: Vec<(String, usize)>,
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 99th-percentile latency of the successful requests.
    pub p99: Duration,
}

/// The statistics of `phase` over `samples`, which ran for `duration`.
pub fn phase_stats(samples: &[Sample], phase: usize, duration: Duration) -> PhaseStats {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.phase == phase).collect();
    let mut ok: Vec<Duration> = mine
        .iter()
        .filter(|s| s.status.is_some_and(|c| (200..300).contains(&c)))
        .map(|s| s.latency)
        .collect();
    ok.sort_unstable();
    let pct = |q: f64| -> Duration {
        if ok.is_empty() {
            return Duration::ZERO;
        }
        let i = ((ok.len() as f64 * q).ceil() as usize).clamp(1, ok.len()) - 1;
        ok[i]
    };
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &mine {
        if s.status.is_some_and(|c| (200..300).contains(&c)) {
            continue;
        }
        let key = match (&s.reason, s.status) {
            (Some(r), Some(c)) => format!("{c} {r}"),
            (Some(r), None) => r.clone(),
            (None, Some(c)) => format!("{c}"),
            (None, None) => "unknown".into(),
        };
        *reasons.entry(key).or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    PhaseStats {
        sent: mine.len(),
        ok: ok.len(),
        goodput: ok.len() as f64 / duration.as_secs_f64(),
        reasons,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// A table of phases: name, duration and statistics.
pub fn render(rows: &[(&str, Duration, PhaseStats)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<16} {:>6} {:>6} {:>9} {:>8} {:>8}  refused / failed (status reason: count)",
        "phase", "sent", "ok", "goodput/s", "p50", "p99"
    );
    for (name, _, s) in rows {
        let reasons = if s.reasons.is_empty() {
            "-".to_owned()
        } else {
            s.reasons
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  {:<16} {:>6} {:>6} {:>9.1} {:>6}ms {:>6}ms  {}",
            name,
            s.sent,
            s.ok,
            s.goodput,
            s.p50.as_millis(),
            s.p99.as_millis(),
            reasons
        );
    }
    out
}
