//! The overload lab in real time, over loopback.
//!
//! The same scenarios as the virtual-time lab ([`sim`](super::sim)): the
//! same simulated server, stacks, clients, open-loop generator and
//! [`Row`], but on tokio's real clock, and the network hop a real HTTP/1.1
//! connection on 127.0.0.1. The server stack runs behind a hyper server on
//! its own thread and current-thread runtime; the clients and the generator
//! run on the calling thread's own current-thread runtime, so that on a
//! two-core machine each side has a core.
//!
//! Only the headers cross, as in virtual time: an attempt is a body-less
//! `GET /` carrying the client's headers (priority, `grpc-timeout`, the
//! upstream drops), which the server turns back into a `Request<()>` for the
//! stack. The answer is 200 with the stack's response headers (DAGOR's
//! admission level), or a refusal whose headers say what the stack refused
//! with: the floodwall rejection's kind, deadline phase, retry-after,
//! permanence and admission level, or tower's `LoadShed`, or a peer's
//! refusal with the lab's reason. The client rebuilds the same error from
//! them, so the client layers (throttling, the retry budget, collaborative
//! admission) and [`Row::failures`] read it as they do in process.
//!
//! A client that gives up drops its attempt. HTTP/1.1 cannot cancel one
//! request but by closing its connection, which hyper's client does; the
//! server's hyper connection then sees the close and drops the stack's
//! future, as the in-process hop does (a queued request leaves its queue, a
//! running job's answer goes nowhere).
//!
//! The numbers vary from run to run: the scheduler, the timers and the
//! other processes of the machine are in them.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::wire::ADMISSION_LEVEL_HEADER;
use floodwall::core::{DeadlineExceeded, Phase, Priority, RejectKind, Rejected, Rejection};
use floodwall::priority::AdmissionConfig;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};
use tower::load_shed::error::Overloaded;
use tower::{BoxError, ServiceExt};

use super::sim::{
    Counters, HopFuture, LimitProbe, Link, REASONS, Row, Scenario, Server, Shed, SimConfig, Stack,
    Svc, measure, reason, server_stack,
};

/// How the real-time runs go.
///
/// Short runs: two seconds of warm-up are enough for every stack but the
/// two with DAGOR admission. DAGOR's admission level starts by admitting
/// everything and, while overloaded, admits α = 5 % fewer requests per
/// window (1 s or 2,000 arrivals), so above capacity it needs from a dozen
/// to about forty windows to come down to what the server has room for
/// (the virtual-time lab warms up for 30 s); measured before that, the
/// queue behind it sheds at random and the classes are not served in
/// order. With [`settle_dagor`](Self::settle_dagor) those scenarios warm up
/// for as long as [`dagor_settling`] says instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealtimeConfig {
    /// The server, the clients and the seed, and the warm-up and measured
    /// time of every scenario, in real time. Default: [`SimConfig`]'s
    /// defaults but 2 s of warm-up and 3 s measured.
    pub sim: SimConfig,
    /// Whether the stacks with DAGOR admission ([`Stack::CodelPriority`]
    /// and [`Stack::Full`]) warm up above capacity until their admission
    /// level can have settled ([`dagor_settling`]), when that is longer
    /// than `sim.warmup`. Default true.
    pub settle_dagor: bool,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            sim: SimConfig {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(3),
                ..SimConfig::default()
            },
            settle_dagor: true,
        }
    }
}

impl RealtimeConfig {
    /// A first look: 1 s of warm-up and 2 s measured for every scenario,
    /// DAGOR not given the time to settle.
    pub fn quick() -> Self {
        Self {
            sim: SimConfig {
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(2),
                ..SimConfig::default()
            },
            settle_dagor: false,
        }
    }

    /// The warm-up of `scenario`: `sim.warmup`, or for a stack with DAGOR
    /// admission (with [`settle_dagor`](Self::settle_dagor)) the longer of
    /// it and [`dagor_settling`].
    pub fn warmup(&self, scenario: Scenario) -> Duration {
        let dagor = matches!(scenario.stack, Stack::CodelPriority | Stack::Full);
        if self.settle_dagor && dagor {
            self.sim.warmup.max(dagor_settling(&self.sim, scenario))
        } else {
            self.sim.warmup
        }
    }

    /// About how long [`run`] takes for `scenario`: the start, the warm-up,
    /// the measured time and the last clients' deadline.
    pub fn length(&self, scenario: Scenario) -> Duration {
        STARTUP + self.warmup(scenario) + self.sim.measure + self.sim.deadline
    }
}

/// The windows [`dagor_settling`] adds to its estimate.
pub const SETTLE_MARGIN: f64 = 3.0;

/// How long DAGOR's admission level takes to come down from admitting
/// everything to what the server has room for in `scenario`, plus
/// [`SETTLE_MARGIN`] windows; zero at or below capacity.
///
/// An overloaded window admits α fewer requests than the one before, so a
/// pressure of `p` times capacity needs `ln p / −ln(1 − α)` windows, each
/// DAGOR's window length or its number of arrivals, whichever comes first
/// (with DAGOR's defaults: 14 windows of 1 s at 2×, 45 of 0.5 s at 10×).
/// The pressure is the offered load, times the attempts per request for
/// naive clients that retry (the full stack's clients retry within a
/// budget).
pub fn dagor_settling(config: &SimConfig, scenario: Scenario) -> Duration {
    if !(scenario.load.is_finite() && scenario.load > 1.0) {
        return Duration::ZERO;
    }
    let attempts = if scenario.retries && scenario.stack != Stack::Full {
        f64::from(config.max_attempts.max(1))
    } else {
        1.0
    };
    let pressure = scenario.load * attempts;
    let dagor = AdmissionConfig::default();
    let windows = (pressure.ln() / -(1.0 - dagor.alpha).ln()).ceil() + SETTLE_MARGIN;
    let arrivals = pressure * config.capacity();
    let window = dagor
        .window
        .as_secs_f64()
        .min(f64::from(dagor.window_requests) / arrivals);
    Duration::try_from_secs_f64(windows * window).unwrap_or(Duration::ZERO)
}

/// The time between building a run and its clock's start, for the server
/// thread to come up.
const STARTUP: Duration = Duration::from_millis(100);

/// Runs one scenario in real time: the server stack on a new thread and
/// runtime behind an HTTP/1.1 listener on 127.0.0.1, the clients on a new
/// current-thread runtime on this thread. Takes about
/// [`RealtimeConfig::length`].
///
/// # Errors
/// If a layer's configuration is invalid (it is not, for the defaults), a
/// runtime or thread cannot be started, or no port can be bound.
pub fn run(config: &RealtimeConfig, scenario: Scenario) -> Result<Row, BoxError> {
    let mut sim = config.sim;
    sim.warmup = config.warmup(scenario);
    // The clock starts a little ahead, so that the server is up by then and
    // the generator starts with the window's clock.
    let t0 = Instant::now() + STARTUP;
    let counters = Counters::starting(t0, &sim);
    let server = ServerThread::start(sim, scenario.stack, counters.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr = server.addr;
    let probe = server.probe.clone();
    let row = rt.block_on(async move {
        let remote = Remote::new(addr)?;
        sleep_until(t0).await;
        let link = Link::Loopback(Arc::new(remote));
        measure(sim, scenario, link, counters, probe).await
    });
    // Stop the server (and its leftover work) before the clients' runtime.
    drop(server);
    drop(rt);
    row
}

/// What the simulated server serves per second in real time, with its
/// workers saturated: `2 × workers` callers in a closed loop on a thread and
/// current-thread runtime of their own (as the server's), no network and no
/// layer, for `sim.measure` after half a second of warm-up.
///
/// The nominal capacity (`workers / service_time`) assumes a job takes its
/// service time exactly; on tokio's real clock a sleeping worker wakes on
/// the timer's millisecond tick after its instant, and is handed its next
/// job by the scheduler, so the server itself does a few per cent less. The
/// real-time goodput is reported against both.
///
/// # Errors
/// If the thread or its runtime cannot be started.
pub fn measured_capacity(sim: &SimConfig) -> Result<f64, BoxError> {
    let sim = *sim;
    let thread = std::thread::Builder::new()
        .name("lab-capacity".into())
        .spawn(move || -> Result<f64, BoxError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let t0 = Instant::now();
                let from = t0 + Duration::from_millis(500);
                let to = from + sim.measure;
                let server = Server::new(sim, Counters::starting(t0, &sim));
                let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let callers: Vec<_> = (0..2 * sim.workers)
                    .map(|_| {
                        let server = server.clone();
                        let done = done.clone();
                        tokio::spawn(async move {
                            loop {
                                let answered = server.clone().oneshot(Request::new(())).await;
                                let now = Instant::now();
                                if answered.is_ok() && now >= from && now < to {
                                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                if now >= to {
                                    return;
                                }
                            }
                        })
                    })
                    .collect();
                for caller in callers {
                    caller.await?;
                }
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                Ok(n as f64 / sim.measure.as_secs_f64())
            })
        })?;
    thread
        .join()
        .map_err(|_| BoxError::from("the capacity thread panicked"))?
}

/// The server stack behind an HTTP/1.1 listener, on its own thread and
/// current-thread runtime; stopped (and joined) when dropped.
struct ServerThread {
    addr: SocketAddr,
    probe: Option<LimitProbe>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server thread reports once it listens.
type Ready = Result<(SocketAddr, Option<LimitProbe>), BoxError>;

impl ServerThread {
    /// Builds the server and `stack` in front of it on a new thread, and
    /// waits until it listens.
    fn start(config: SimConfig, stack: Stack, counters: Arc<Counters>) -> Result<Self, BoxError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lab-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    // The stack is built here: some layers spawn their
                    // tasks on the runtime that builds them.
                    let built = async {
                        let server = Server::new(config, counters);
                        let (svc, probe) = server_stack(&config, stack, server)?;
                        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
                        let addr = listener.local_addr()?;
                        Ok::<_, BoxError>((svc, probe, listener, addr))
                    }
                    .await;
                    match built {
                        Ok((svc, probe, listener, addr)) => {
                            if ready_tx.send(Ok((addr, probe))).is_ok() {
                                serve(listener, svc, stop_rx).await;
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let ready = ready_rx
            .recv()
            .map_err(|_| BoxError::from("the lab's server thread ended before it listened"))?;
        let (addr, probe) = ready?;
        Ok(Self {
            addr,
            probe,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `stop`, serving each with `svc` over HTTP/1.1.
async fn serve(listener: TcpListener, svc: Svc, mut stop: oneshot::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors, say: let some connections close.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: Request<Incoming>| answer(svc.clone(), req));
            // An error is a client that gave up and closed: hyper has dropped
            // the request's future, which is the point.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One attempt on the server: its headers through the server stack.
async fn answer(svc: Svc, req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, _) = req.into_parts();
    let mut wire = Request::new(());
    *wire.headers_mut() = parts.headers;
    Ok(match svc.oneshot(wire).await {
        Ok(res) => {
            let mut out = Response::new(Empty::new());
            *out.headers_mut() = res.into_parts().0.headers;
            out
        }
        Err(err) => refusal(&err),
    })
}

// The refusal's headers.

/// The reason of [`reason`], as in [`Row::failures`].
static REASON: HeaderName = HeaderName::from_static("x-lab-reason");
/// Which kind of error it was: [`REJECTED`], [`LOAD_SHED`] or [`SHED`].
static ORIGIN: HeaderName = HeaderName::from_static("x-lab-origin");
/// A floodwall deadline rejection's phase ([`Phase::as_str`]).
static PHASE: HeaderName = HeaderName::from_static("x-lab-deadline-phase");
/// `1` if a deadline rejection was the caller's deadline.
static CALLER_LIMITED: HeaderName = HeaderName::from_static("x-lab-caller-limited");
/// A floodwall rejection's retry-after, in nanoseconds.
static RETRY_AFTER: HeaderName = HeaderName::from_static("x-lab-retry-after-ns");
/// `1` if a floodwall rejection is permanent.
static PERMANENT: HeaderName = HeaderName::from_static("x-lab-permanent");
/// A floodwall rejection's admission level.
static LEVEL: HeaderName = HeaderName::from_static(ADMISSION_LEVEL_HEADER);

/// [`ORIGIN`]: a floodwall rejection.
const REJECTED: &str = "rejected";
/// [`ORIGIN`]: tower's `LoadShed`.
const LOAD_SHED: &str = "load-shed";
/// [`ORIGIN`]: anything else (a peer's refusal, or a job the server
/// skipped), with [`REASON`].
const SHED: &str = "shed";

/// Every [`RejectKind`], to read one back by its name.
const KINDS: [RejectKind; 6] = RejectKind::ALL;

/// The answer to an attempt the server stack failed with `err`: an error
/// status, and headers from which [`rebuild`] makes the same error.
fn refusal(err: &BoxError) -> Response<Empty<Bytes>> {
    let mut res = Response::new(Empty::new());
    let headers = res.headers_mut();
    headers.insert(REASON.clone(), HeaderValue::from_static(reason(err)));
    let (status, origin) = if let Some(r) = Rejected::find(&**err) {
        if let Some(d) = r.get::<DeadlineExceeded>() {
            headers.insert(PHASE.clone(), HeaderValue::from_static(d.phase().as_str()));
            if d.caller_limited() {
                headers.insert(CALLER_LIMITED.clone(), HeaderValue::from_static("1"));
            }
        }
        if let Some(after) = r.retry_after() {
            let ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
            headers.insert(RETRY_AFTER.clone(), HeaderValue::from(ns));
        }
        if r.is_permanent() {
            headers.insert(PERMANENT.clone(), HeaderValue::from_static("1"));
        }
        if let Some(level) = r.admission_level() {
            headers.insert(LEVEL.clone(), level.header_value());
        }
        let status = match r.kind() {
            RejectKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            RejectKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, REJECTED)
    } else if err.is::<Overloaded>() {
        (StatusCode::SERVICE_UNAVAILABLE, LOAD_SHED)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, SHED)
    };
    headers.insert(ORIGIN.clone(), HeaderValue::from_static(origin));
    *res.status_mut() = status;
    res
}

/// The error a [`refusal`] with these headers stands for.
fn rebuild(headers: &HeaderMap) -> BoxError {
    fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
        headers.get(name).and_then(|v| v.to_str().ok())
    }
    let why = header(headers, &REASON)
        .and_then(|r| REASONS.into_iter().find(|&known| known == r))
        .unwrap_or("other");
    match header(headers, &ORIGIN) {
        Some(REJECTED) => {
            let phase = header(headers, &PHASE)
                .and_then(|p| Phase::ALL.into_iter().find(|x| x.as_str() == p));
            if let Some(phase) = phase {
                let caller_limited = header(headers, &CALLER_LIMITED) == Some("1");
                return Rejected::boxed(DeadlineExceeded::new(phase, caller_limited));
            }
            match KINDS.into_iter().find(|k| k.as_str() == why) {
                Some(kind) => Rejected::boxed(WireRejection {
                    kind,
                    retry_after: header(headers, &RETRY_AFTER)
                        .and_then(|ns| ns.parse::<u64>().ok())
                        .map(Duration::from_nanos),
                    permanent: header(headers, &PERMANENT) == Some("1"),
                    level: headers
                        .get(&LEVEL)
                        .and_then(|v| Priority::parse(v.as_bytes()).ok()),
                }),
                None => Shed(why).into(),
            }
        }
        Some(LOAD_SHED) => Overloaded::new().into(),
        _ => Shed(why).into(),
    }
}

/// A floodwall rejection that crossed the wire: what the client layers read
/// of one (kind, retry-after, permanence, admission level).
#[derive(Debug, Clone, Copy)]
struct WireRejection {
    kind: RejectKind,
    retry_after: Option<Duration>,
    permanent: bool,
    level: Option<Priority>,
}

impl fmt::Display for WireRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused: {}", self.kind)
    }
}

impl std::error::Error for WireRejection {}

impl Rejection for WireRejection {
    fn kind(&self) -> RejectKind {
        self.kind
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    fn is_permanent(&self) -> bool {
        self.permanent
    }

    fn admission_level(&self) -> Option<Priority> {
        self.level
    }
}

/// The clients' end of the loopback hop: headers-only GETs through a
/// pooled hyper-util client (one connection per attempt in flight).
pub(super) struct Remote {
    client: Client<HttpConnector, Empty<Bytes>>,
    uri: Uri,
}

impl Remote {
    /// A client of the server listening on `addr`.
    fn new(addr: SocketAddr) -> Result<Self, BoxError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(4096)
            .build(connector);
        Ok(Self {
            client,
            uri: format!("http://{addr}/").parse()?,
        })
    }

    /// Sends an attempt carrying `headers`: the server stack's response
    /// headers, or the error it refused with.
    pub(super) fn send(&self, headers: HeaderMap) -> HopFuture {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = headers;
        let sent = self.client.request(req);
        Box::pin(async move {
            let (parts, body) = sent.await?.into_parts();
            // Empty, but read to its end so the connection goes back to the pool.
            body.collect().await?;
            if parts.status == StatusCode::OK {
                let mut res = Response::new(());
                *res.headers_mut() = parts.headers;
                Ok(res)
            } else {
                Err(rebuild(&parts.headers))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(err: BoxError) -> BoxError {
        let res = refusal(&err);
        assert_ne!(res.status(), StatusCode::OK);
        rebuild(res.headers())
    }

    #[test]
    fn refusals_cross_the_wire_as_the_same_errors() {
        let level = Priority::new(1, 50).unwrap();
        let prioritized = Rejected::boxed(floodwall::priority::Prioritized::new(
            Priority::new(2, 3).unwrap(),
            level,
            false,
        ));
        let back = round_trip(prioritized);
        assert_eq!(reason(&back), "prioritized");
        let r = Rejected::find(&*back).unwrap();
        assert_eq!(r.admission_level(), Some(level));

        let late = Rejected::boxed(DeadlineExceeded::new(Phase::InFlight, true));
        let back = round_trip(late);
        let d = *Rejected::find(&*back)
            .unwrap()
            .get::<DeadlineExceeded>()
            .unwrap();
        assert_eq!(d, DeadlineExceeded::new(Phase::InFlight, true));

        let shed: BoxError = Overloaded::new().into();
        let back = round_trip(shed);
        assert!(back.is::<Overloaded>());
        assert_eq!(reason(&back), "overloaded");

        for why in ["overloaded", "expired"] {
            assert_eq!(reason(&round_trip(Shed(why).into())), why);
        }
        assert_eq!(reason(&round_trip("boom".into())), "other");
    }

    /// Real time over loopback, about 10 s.
    #[test]
    fn the_saturated_server_does_at_most_its_nominal_capacity() {
        let sim = SimConfig {
            measure: Duration::from_secs(1),
            ..SimConfig::default()
        };
        let measured = measured_capacity(&sim).unwrap();
        // Jitter averages out over the ~400 jobs; the timer only delays.
        assert!(
            measured > 0.5 * sim.capacity() && measured <= 1.02 * sim.capacity(),
            "{measured} of {}",
            sim.capacity()
        );
    }

    #[test]
    fn short_runs_over_loopback() {
        let config = RealtimeConfig {
            sim: SimConfig {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(1),
                ..SimConfig::default()
            },
            settle_dagor: false,
        };
        let at = |stack, load| {
            run(
                &config,
                Scenario {
                    stack,
                    load,
                    retries: false,
                },
            )
            .expect("a run")
        };
        for stack in [Stack::Codel, Stack::Full] {
            let row = at(stack, 0.5);
            assert!(row.offered > 100, "{row:?}");
            assert!(row.success() > 0.95, "{row:?}");
            assert!(row.attempts > 0, "{row:?}");
        }
        // Refusals come back as the same reasons.
        let row = at(Stack::TowerShed, 3.0);
        assert!(row.failed_for("overloaded") > 0.3, "{row:?}");
        assert!(row.failed_for("other") < 0.01, "{row:?}");
        let row = at(Stack::Full, 3.0);
        assert!(row.goodput() > 0.5, "{row:?}");
        assert!(row.failed_for("other") < 0.01, "{row:?}");
    }

    #[test]
    fn dagor_warms_up_above_capacity_only() {
        let config = RealtimeConfig::default();
        let at = |stack, load, retries| {
            config.warmup(Scenario {
                stack,
                load,
                retries,
            })
        };
        assert_eq!(at(Stack::Full, 1.0, false), config.sim.warmup);
        assert_eq!(at(Stack::Codel, 5.0, false), config.sim.warmup);
        // 2×: 14 windows of 1 s, and the margin.
        assert_eq!(at(Stack::Full, 2.0, false), Duration::from_secs(17));
        for load in [2.0, 3.0, 5.0, 10.0] {
            for retries in [false, true] {
                let w = at(Stack::CodelPriority, load, retries);
                assert!(
                    w > Duration::from_secs(5) && w < Duration::from_secs(60),
                    "{load} {retries} {w:?}"
                );
            }
        }
        assert_eq!(
            RealtimeConfig::quick().warmup(Scenario {
                stack: Stack::Full,
                load: 5.0,
                retries: false
            }),
            Duration::from_secs(1)
        );
    }
}
