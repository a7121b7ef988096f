//! Simulated HTTP downstreams for the gateway's optional modules (gifts,
//! recommendations) and the elastic overflow pool: each answers any path
//! with a small JSON document naming itself, after a configurable latency,
//! failing a configurable fraction of requests with 500. A `POST
//! /send?anchor=N&count=C` adds `C` to the downstream's gift total.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::BoxError;
use floodwall::core::random::SplitMix;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The header naming which downstream answered.
pub const SERVED_BY: &str = "x-served-by";

#[derive(Debug)]
struct State {
    name: String,
    latency_us: AtomicU64,
    error_ppm: AtomicU64,
    served: AtomicU64,
    /// The sum of the `count` of every successful `POST /send` (the gift
    /// store's total).
    sent: AtomicU64,
    /// Successful `POST /send` requests (gift-store writes).
    writes: AtomicU64,
    rng: SplitMix,
}

/// A running simulated downstream. Dropping it stops the listener.
#[derive(Debug)]
pub struct Downstream {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<()>,
}

impl Downstream {
    /// Starts a downstream named `name` on a free loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start(name: &str, latency: Duration) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_owned(),
            latency_us: AtomicU64::new(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            error_ppm: AtomicU64::new(0),
            served: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            rng: SplitMix::from_entropy(),
        });
        let (stop, mut stopped) = watch::channel(());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(st.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            _stop: stop,
        })
    }

    /// The `http://` URL of the downstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far (successes and injected failures).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// The sum of the `count` query parameters of the successful
    /// `POST /send` requests (a gift store's total).
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::Relaxed)
    }

    /// Successful `POST /send` requests so far (a gift store's writes).
    pub fn writes(&self) -> u64 {
        self.state.writes.load(Ordering::Relaxed)
    }

    /// Fails this fraction (0.0..=1.0) of requests with 500.
    pub fn set_error_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.state.error_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Answers after `latency`.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.state.latency_us.store(us, Ordering::Relaxed);
    }
}

async fn answer(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let latency = Duration::from_micros(st.latency_us.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    st.served.fetch_add(1, Ordering::Relaxed);
    let fail = st.rng.next_u64() % 1_000_000 < st.error_ppm.load(Ordering::Relaxed);
    let (status, body) = if fail {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "injected failure", "served_by": st.name }),
        )
    } else {
        if req.method() == http::Method::POST && req.uri().path() == "/send" {
            let count = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("count=")))
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            st.sent.fetch_add(count, Ordering::Relaxed);
            st.writes.fetch_add(1, Ordering::Relaxed);
        }
        (
            StatusCode::OK,
            serde_json::json!({
                "served_by": st.name,
                "path": req.uri().path(),
                "items": [format!("{}-1", st.name), format!("{}-2", st.name)],
            }),
        )
    };
    let mut res = Response::new(Full::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::try_from(st.name.as_str()) {
        res.headers_mut().insert(SERVED_BY, v);
    }
    Ok(res)
}

/// A response body of `frames` copies of one chunk, made as they are read
/// (a large answer that costs its server no memory), counting the frames a
/// reader pulled.
#[derive(Debug)]
pub struct Repeat {
    chunk: Bytes,
    left: usize,
    pulled: Arc<std::sync::atomic::AtomicUsize>,
}

impl Repeat {
    /// `frames` frames of `chunk`; `pulled` counts those read.
    pub fn new(chunk: Bytes, frames: usize, pulled: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        Self {
            chunk,
            left: frames,
            pulled,
        }
    }
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.pulled.fetch_add(1, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
    }
}
