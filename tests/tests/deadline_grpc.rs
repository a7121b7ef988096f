//! Deadline propagation end to end over gRPC on loopback, under virtual
//! time: tonic's gRPC server and client machinery (`tonic::server::Grpc`,
//! `tonic::client::Grpc`, a raw-bytes codec, no code generation) over
//! hyper HTTP/2 connections. Three hops carry `grpc-timeout` 30 s → 23 s →
//! 19 s; a hop reached with no time left answers DEADLINE_EXCEEDED without
//! running its handler.

mod common;

use common::{Protocol, serve};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use floodwall::core::Deadline;
use floodwall::deadline::{
    PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    current, scope,
};
use floodwall::grpc::{GrpcRejectionLayer, StatusErrorLayer};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tower::{ServiceBuilder, service_fn};

/// hyper's HTTP/2 client connection as a Tower service, with the absolute
/// URI h2 needs.
#[derive(Clone)]
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    addr: SocketAddr,
    /// A `grpc-timeout` to send as is, bypassing propagation.
    fixed_timeout: Option<&'static str>,
}

type H2Future =
    Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = H2Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> H2Future {
        let path = req.uri().path().to_owned();
        *req.uri_mut() = format!("http://{}{path}", self.addr).parse().unwrap();
        if let Some(t) = self.fixed_timeout {
            req.headers_mut()
                .insert("grpc-timeout", http::HeaderValue::from_static(t));
        }
        Box::pin(self.sender.send_request(req))
    }
}

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

const PATH: &str = "/floodwall.test.Hop/Call";

/// A gRPC client over one HTTP/2 connection to `addr`, with deadline
/// propagation, calling `PATH`.
fn call(addr: SocketAddr) -> Pin<Box<dyn Future<Output = Result<Bytes, Status>> + Send>> {
    Box::pin(call_inner(addr, None))
}

async fn call_inner(
    addr: SocketAddr,
    fixed_timeout: Option<&'static str>,
) -> Result<Bytes, Status> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let transport = H2 {
        sender,
        addr,
        fixed_timeout,
    };
    let channel = ServiceBuilder::new()
        .layer(StatusErrorLayer::new())
        .layer(PropagateDeadlineLayer::new(PropagateDeadlineConfig::default()).unwrap())
        .service(transport);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(Bytes::from_static(b"hello")),
        PathAndQuery::from_static(PATH),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

type Seen = Arc<Mutex<Vec<(String, Duration)>>>;

/// A gRPC server that records the `grpc-timeout` it got and the time left
/// in scope, works `work`, then calls `next`.
async fn hop(work: Duration, next: Option<SocketAddr>, seen: Seen) -> SocketAddr {
    let handler = service_fn(move |req: http::Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let header = req
                .headers()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let left = current().map_or(Duration::MAX, |d| d.remaining(Instant::now()));
            seen.lock().unwrap().push((header, left));
            let unary = service_fn(move |_: tonic::Request<Bytes>| async move {
                sleep(work).await;
                let reply = match next {
                    Some(next) => call(next).await?,
                    None => Bytes::from_static(b"done"),
                };
                Ok::<_, Status>(tonic::Response::new(reply))
            });
            Ok::<_, Infallible>(tonic::server::Grpc::new(Raw).unary(unary, req).await)
        }
    });
    let stack = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::default())
        .layer(ServerDeadlineLayer::new(ServerDeadlineConfig::default()).unwrap())
        .service(handler);
    serve(stack, Protocol::Http2).await
}

/// Virtual time, ticked by hand. With a paused clock tokio jumps to the
/// next timer whenever its thread would park, and a wake-up from I/O does
/// not stop the jump, so an HTTP/2 exchange on loopback would jump straight
/// to the deadline. A task that always has work keeps the runtime from
/// parking, and moves the clock 1 ms every 200 scheduler turns instead:
/// network transit then costs a little virtual time (at most 200 ms a hop
/// here), and the hops' own work is exact.
#[tokio::test(start_paused = true)]
async fn grpc_timeout_shrinks_at_each_hop() {
    let ticker = tokio::spawn(async {
        loop {
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
    });
    let seen: Seen = Arc::default();
    let c = hop(Duration::ZERO, None, seen.clone()).await;
    let b = hop(Duration::from_secs(4), Some(c), seen.clone()).await;
    let a = hop(Duration::from_secs(7), Some(b), seen.clone()).await;
    let deadline = Deadline::after(Instant::now(), Duration::from_secs(30));
    let reply = scope(deadline, call(a)).await;
    ticker.abort();
    assert_eq!(reply.unwrap(), "done");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0, "30000000u");
    let sent: Vec<Duration> = seen
        .iter()
        .map(|(h, _)| floodwall::deadline::parse_grpc_timeout(h.as_bytes()).unwrap())
        .collect();
    // Each hop was sent what its caller had left after its work: 30 s,
    // 23 s, 19 s, less the virtual transit.
    let ms = Duration::from_millis;
    let transit = ms(200);
    let expected = [ms(30_000), ms(23_000), ms(19_000)];
    for (i, (got, want)) in sent.iter().zip(expected).enumerate() {
        let slack = transit * i as u32;
        assert!(
            *got <= want && want - *got <= slack,
            "hop {i}: sent {got:?}, expected {want:?} less at most {slack:?}"
        );
    }
    // And each hop's scope held what it was sent, less the transit.
    for (i, ((_, left), got)) in seen.iter().zip(&sent).enumerate() {
        assert!(
            left <= got && *got - *left <= transit,
            "hop {i}: {left:?} of {got:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hop_past_its_deadline_answers_deadline_exceeded() {
    let seen: Seen = Arc::default();
    let c = hop(Duration::ZERO, None, seen.clone()).await;
    // B works past its 2 s: cut off at its deadline, it never calls C, and
    // its caller sees DEADLINE_EXCEEDED (not CANCELLED). The caller sends
    // "2S" by hand and keeps no timer of its own, so the status is B's.
    let b = hop(Duration::from_secs(3), Some(c), seen.clone()).await;
    let status = call_inner(b, Some("2S")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        !status.message().contains("waiting for the response"),
        "from the server, not a local timer: {status:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "only B ran");
}
