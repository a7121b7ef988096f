//! The reference room service: a tonic gRPC server with a simulated
//! capacity and fault knobs, protected by deadline → priority admission →
//! CoDel/LIFO queue → handler.
//!
//! Capacity is a pool of `workers` simulated workers, each spending
//! `service_time` (± `jitter`) per request. Like a real thread pool, work
//! handed to the pool runs to the end even if the caller has gone; only a
//! deadline known to the pool lets it skip work nobody waits for. Without
//! protection the pool's queue is unbounded and first-in first-out, which is
//! how a service collapses under a burst.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall::codel::{CodelConfig, CodelHandle, CodelLayer, Lifo, Policy, TimingFromExtensions};
use floodwall::core::random::SplitMix;
use floodwall::core::{BoxError, Deadline, RejectKind, Rejected};
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer, Wire};
use floodwall::grpc::GrpcRejectionLayer;
use floodwall::priority::{AdmissionConfig, AdmissionHandle, AdmissionLayer, Queuing};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;

use crate::proto::room_server::{Room, RoomServer};
use crate::proto::{
    BatchGetRoomsReply, BatchGetRoomsRequest, EnterRoomReply, EnterRoomRequest, GetRoomRequest,
    RoomInfo,
};
use crate::tally::{Tally, TallyLayer};

/// How the room service is built.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Metric label of the service's layers.
    pub name: String,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Simulated workers: requests processed at once.
    pub workers: usize,
    /// Mean time a worker spends on one request.
    pub service_time: Duration,
    /// Relative jitter of the service time, 0.0..1.0 (0.25 = ± 25 %).
    pub jitter: f64,
    /// Deadline → priority admission → CoDel queue in front of the handler.
    /// `false` serves every request through the unbounded worker queue.
    pub protected: bool,
    /// The longest any request may take here, `grpc-timeout` or not.
    pub max_timeout: Duration,
    /// Priority admission. The default keeps DAGOR's window, threshold
    /// and α, with β = 10 % instead of 1 %: β sets how fast the admission
    /// level reopens once the overload is over, by a fraction of one
    /// window's arrivals, and a 100 req/s service has 100 arrivals per
    /// window where WeChat's had thousands; at 1 % it would take about a
    /// hundred windows to reopen after a burst.
    pub admission: AdmissionConfig,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            name: "room".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 4,
            service_time: Duration::from_millis(40),
            jitter: 0.25,
            protected: true,
            max_timeout: Duration::from_secs(2),
            admission: AdmissionConfig {
                beta: 0.10,
                ..AdmissionConfig::default()
            },
        }
    }
}

impl RoomConfig {
    /// Requests per second the workers can serve at the mean service time.
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.service_time.as_secs_f64()
    }
}

/// Fault knobs, changeable while the service runs.
#[derive(Debug, Default)]
pub struct Knobs {
    added_latency_us: AtomicU64,
    error_ppm: AtomicU64,
}

impl Knobs {
    /// Every request spends this much longer in its worker.
    pub fn set_added_latency(&self, extra: Duration) {
        let us = u64::try_from(extra.as_micros()).unwrap_or(u64::MAX);
        self.added_latency_us.store(us, Ordering::Relaxed);
    }

    /// This fraction (0.0..=1.0) of requests fail with INTERNAL after their
    /// work.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.error_ppm.store(ppm, Ordering::Relaxed);
    }

    fn added_latency(&self) -> Duration {
        Duration::from_micros(self.added_latency_us.load(Ordering::Relaxed))
    }

    fn error_ppm(&self) -> u64 {
        self.error_ppm.load(Ordering::Relaxed)
    }
}

/// The live state of a room service, for the admin page and the demo.
#[derive(Debug, Clone, Serialize)]
pub struct RoomState {
    /// Handler outcomes and rejections by kind.
    pub tally: crate::tally::TallySnapshot,
    /// Work the pool skipped because its deadline had passed.
    pub skipped_expired: u64,
    /// The longest `grpc-timeout` received, in milliseconds.
    pub max_grpc_timeout_ms: u64,
    /// The most important business priority received in the priority
    /// header (lowest value), if any came.
    pub min_business_seen: Option<u8>,
    /// The priority admission level, `B-U`, when protected.
    pub admission_level: Option<String>,
    /// Requests waiting in the CoDel queue, when protected.
    pub queue_len: Option<usize>,
    /// Jobs waiting for a worker in the pool.
    pub pool_waiting: u64,
    /// Jobs a worker of the pool has picked up since the service started,
    /// including those it then skipped because their deadline had passed.
    pub pool_started: u64,
}

/// A running room service. Dropping it stops the server.
#[derive(Debug)]
pub struct RoomService {
    addr: SocketAddr,
    knobs: Arc<Knobs>,
    shared: Arc<Shared>,
    tally: Arc<Tally>,
    admission: Option<AdmissionHandle>,
    codel: Option<CodelHandle>,
    config: RoomConfig,
    shutdown: Option<oneshot::Sender<()>>,
}

impl RoomService {
    /// Starts the service on `config.listen`.
    ///
    /// # Errors
    /// Binding the port, or an invalid layer configuration.
    pub async fn start(config: RoomConfig) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(config.listen).await?;
        let config = RoomConfig {
            listen: listener.local_addr()?,
            ..config
        };
        let addr = listener.local_addr()?;
        let knobs = Arc::new(Knobs::default());
        let shared = Arc::new(Shared {
            pool: Semaphore::new(config.workers),
            waiting: AtomicU64::new(0),
            started: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            max_timeout_ms: AtomicU64::new(0),
            min_business: AtomicU64::new(u64::MAX),
            viewers: (0..ROOMS).map(|_| AtomicU64::new(0)).collect(),
            rng: SplitMix::from_entropy(),
            knobs: knobs.clone(),
            service_time: config.service_time,
            jitter: config.jitter.clamp(0.0, 0.99),
        });
        let tally = Arc::new(Tally::default());
        let handler = RoomServer::new(Handler {
            shared: shared.clone(),
        });
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (tx, rx) = oneshot::channel::<()>();
        let signal = async {
            let _ = rx.await;
        };
        let (admission, codel) = if config.protected {
            let admit = AdmissionLayer::builder(config.admission)
                .name(config.name.clone())
                .trust_inbound(true)
                .queuing(Queuing::Reported)
                .build()?;
            let admission = admit.handle();
            let reporter = admit.handle();
            let queue = CodelLayer::builder(CodelConfig {
                workers: config.workers,
                max_queue: config.workers * 64,
                policy: Policy::fail_at_scale(),
                lifo: Lifo::default(),
                min_remaining: config.service_time / 2,
            })
            .name(config.name.clone())
            .timing(TimingFromExtensions)
            .on_sojourn(move |waited| reporter.record_queuing(waited))
            .build()?;
            let codel = queue.handle();
            let stack = ServiceBuilder::new()
                .layer(GrpcRejectionLayer::default())
                .layer(TallyLayer::new(tally.clone()))
                .layer(RecordTimeout(shared.clone()))
                .layer(ServerDeadlineLayer::new(ServerDeadlineConfig {
                    wire: Wire::Grpc,
                    trust_inbound: true,
                    max: Some(config.max_timeout),
                })?)
                .layer(admit)
                .layer(queue)
                .into_inner();
            let server = tonic::transport::Server::builder()
                .layer(stack)
                .add_service(handler);
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, signal));
            (Some(admission), Some(codel))
        } else {
            let stack = ServiceBuilder::new()
                .layer(TallyLayer::new(tally.clone()))
                .layer(RecordTimeout(shared.clone()))
                .into_inner();
            let server = tonic::transport::Server::builder()
                .layer(stack)
                .add_service(handler);
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, signal));
            (None, None)
        };
        Ok(Self {
            addr,
            knobs,
            shared,
            tally,
            admission,
            codel,
            config,
            shutdown: Some(tx),
        })
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `http://` URL of the service.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server: it accepts no more connections and tells the
    /// open ones to go away (HTTP/2 GOAWAY) once their calls finish, as a
    /// process being shut down does. [`restart`](Self::restart) brings it
    /// back on the same port.
    pub fn stop(&mut self) {
        self.shutdown.take();
    }

    /// Starts the service again on the same port with the same
    /// configuration (fresh state and knobs), stopping it first if needed.
    ///
    /// # Errors
    /// The port cannot be bound again.
    pub async fn restart(&mut self) -> Result<(), BoxError> {
        self.stop();
        let mut last = None;
        // The old listener closes as its server task sees the signal.
        for _ in 0..50 {
            match Self::start(self.config.clone()).await {
                Ok(fresh) => {
                    *self = fresh;
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| "restart failed".into()))
    }

    /// The fault knobs.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// A snapshot of the live state.
    pub fn state(&self) -> RoomState {
        RoomState {
            tally: self.tally.snapshot(),
            skipped_expired: self.shared.skipped.load(Ordering::Relaxed),
            max_grpc_timeout_ms: self.shared.max_timeout_ms.load(Ordering::Relaxed),
            min_business_seen: u8::try_from(self.shared.min_business.load(Ordering::Relaxed)).ok(),
            admission_level: self.admission.as_ref().map(|a| a.level().to_string()),
            queue_len: self.codel.as_ref().map(CodelHandle::queue_len),
            pool_waiting: self.shared.waiting.load(Ordering::Relaxed),
            pool_started: self.shared.started.load(Ordering::Relaxed),
        }
    }
}

/// Rooms the service knows: ids 0..ROOMS (others are NOT_FOUND).
const ROOMS: usize = 4096;

#[derive(Debug)]
struct Shared {
    pool: Semaphore,
    waiting: AtomicU64,
    started: AtomicU64,
    skipped: AtomicU64,
    max_timeout_ms: AtomicU64,
    min_business: AtomicU64,
    viewers: Vec<AtomicU64>,
    rng: SplitMix,
    knobs: Arc<Knobs>,
    service_time: Duration,
    jitter: f64,
}

/// Why the pool did not do the work.
enum PoolError {
    /// The deadline passed before a worker picked the job up.
    Expired,
    /// The fault knob failed it.
    Injected,
}

impl Shared {
    /// Runs one job in the worker pool and waits for it. The job runs to the
    /// end even if this future is dropped (as work in a real pool does),
    /// unless its deadline has passed when a worker picks it up.
    async fn work(self: &Arc<Self>, deadline: Option<Deadline>) -> Result<(), PoolError> {
        let this = self.clone();
        let job = tokio::spawn(async move {
            this.waiting.fetch_add(1, Ordering::Relaxed);
            let permit = this.pool.acquire().await;
            this.waiting.fetch_sub(1, Ordering::Relaxed);
            let Ok(_permit) = permit else {
                return Err(PoolError::Expired);
            };
            this.started.fetch_add(1, Ordering::Relaxed);
            if deadline.is_some_and(|d| d.is_expired(Instant::now())) {
                this.skipped.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Expired);
            }
            let r = this.rng.next_u64();
            let unit = (r >> 11) as f64 / (1u64 << 53) as f64; // 0..1
            let factor = 1.0 + this.jitter * (2.0 * unit - 1.0);
            let busy = this.service_time.mul_f64(factor) + this.knobs.added_latency();
            tokio::time::sleep(busy).await;
            if (r & 0xFFFFF) % 1_000_000 < this.knobs.error_ppm() {
                return Err(PoolError::Injected);
            }
            Ok(())
        });
        job.await.unwrap_or(Err(PoolError::Expired))
    }

    fn room(&self, id: u64, mask: Option<&prost_types::FieldMask>) -> Result<RoomInfo, Status> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| self.viewers.get(i))
            .ok_or_else(|| Status::not_found(format!("no room {id}")))?;
        let full = RoomInfo {
            room_id: id,
            title: format!("Room {id}"),
            anchor: format!("anchor-{}", id % 97),
            viewers: slot.load(Ordering::Relaxed),
            live: !id.is_multiple_of(5),
            tags: vec!["music".to_owned(), format!("tier-{}", id % 3)],
        };
        apply_mask(full, mask)
    }
}

/// Keeps only the fields a field mask names (all of them for no mask or
/// an empty one).
///
/// # Errors
/// INVALID_ARGUMENT naming an unknown field.
pub fn apply_mask(
    full: RoomInfo,
    mask: Option<&prost_types::FieldMask>,
) -> Result<RoomInfo, Status> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(full);
    };
    let mut out = RoomInfo::default();
    for path in &mask.paths {
        match path.as_str() {
            "room_id" => out.room_id = full.room_id,
            "title" => out.title.clone_from(&full.title),
            "anchor" => out.anchor.clone_from(&full.anchor),
            "viewers" => out.viewers = full.viewers,
            "live" => out.live = full.live,
            "tags" => out.tags.clone_from(&full.tags),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown field {other:?} in field_mask (known: room_id, title, anchor, viewers, live, tags)"
                )));
            }
        }
    }
    Ok(out)
}

fn pool_status(e: PoolError) -> Status {
    match e {
        PoolError::Expired => Status::deadline_exceeded("deadline passed while queued"),
        PoolError::Injected => Status::internal("injected failure"),
    }
}

#[derive(Debug)]
struct Handler {
    shared: Arc<Shared>,
}

fn deadline_of<T>(req: &Request<T>) -> Option<Deadline> {
    Deadline::of(req.extensions())
}

#[tonic::async_trait]
impl Room for Handler {
    async fn get_room(&self, req: Request<GetRoomRequest>) -> Result<Response<RoomInfo>, Status> {
        let deadline = deadline_of(&req);
        let req = req.into_inner();
        self.shared.work(deadline).await.map_err(pool_status)?;
        let room = self.shared.room(req.room_id, req.field_mask.as_ref())?;
        Ok(Response::new(room))
    }

    async fn enter_room(
        &self,
        req: Request<EnterRoomRequest>,
    ) -> Result<Response<EnterRoomReply>, Status> {
        let deadline = deadline_of(&req);
        let req = req.into_inner();
        if req.user_id.is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        self.shared.work(deadline).await.map_err(pool_status)?;
        let mut room = self.shared.room(req.room_id, None)?;
        if let Some(slot) = usize::try_from(req.room_id)
            .ok()
            .and_then(|i| self.shared.viewers.get(i))
        {
            room.viewers = slot.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let ticket = format!("{}:{}:{}", req.room_id, req.user_id, room.viewers);
        Ok(Response::new(EnterRoomReply {
            room: Some(room),
            ticket,
        }))
    }

    async fn batch_get_rooms(
        &self,
        req: Request<BatchGetRoomsRequest>,
    ) -> Result<Response<BatchGetRoomsReply>, Status> {
        const MAX_BATCH: usize = 100;
        let deadline = deadline_of(&req);
        let req = req.into_inner();
        if req.room_ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} rooms per batch, got {}",
                req.room_ids.len()
            )));
        }
        // One unit of work for the whole batch: rooms come from one read.
        self.shared.work(deadline).await.map_err(pool_status)?;
        let rooms = req
            .room_ids
            .iter()
            .map(|&id| self.shared.room(id, req.field_mask.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(BatchGetRoomsReply { rooms }))
    }
}

/// Remembers the longest `grpc-timeout` and the most important priority
/// received (so tests can check what upstreams send).
#[derive(Debug, Clone)]
struct RecordTimeout(Arc<Shared>);

impl<S> tower::Layer<S> for RecordTimeout {
    type Service = RecordTimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordTimeoutService {
            shared: self.0.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
struct RecordTimeoutService<S> {
    shared: Arc<Shared>,
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RecordTimeoutService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(t) = req
            .headers()
            .get(floodwall::deadline::GRPC_TIMEOUT_HEADER)
            .and_then(|v| floodwall::deadline::parse_grpc_timeout(v.as_bytes()).ok())
        {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            self.shared.max_timeout_ms.fetch_max(ms, Ordering::Relaxed);
        }
        if let Some(p) = req
            .headers()
            .get(floodwall::core::wire::PRIORITY_HEADER)
            .and_then(|v| floodwall::core::Priority::parse(v.as_bytes()).ok())
        {
            let b = u64::from(p.business());
            self.shared.min_business.fetch_min(b, Ordering::Relaxed);
        }
        self.inner.call(req)
    }
}

/// The rejection kind of a service error, if it is a floodwall rejection.
pub fn rejection_kind(err: &BoxError) -> Option<RejectKind> {
    Rejected::find(&**err).map(Rejected::kind)
}
