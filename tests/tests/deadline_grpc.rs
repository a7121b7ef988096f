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
    ClientConfig, PropagateDeadlineLayer, ServerConfig, ServerDeadlineLayer, current, scope,
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
        .layer(PropagateDeadlineLayer::new(ClientConfig::default()))
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
        .layer(ServerDeadlineLayer::new(ServerConfig::default()))
        .service(handler);
    serve(stack, Protocol::Http2).await
}

/// On the real clock: with a paused clock, tokio advances time whenever
/// every task waits, and h2 connections on loopback do wait on I/O between
/// frames, so a virtual-time chain over HTTP/2 stalls until the deadline.
/// The HTTP/1 chain (`deadline_loopback.rs`) and the expiry test below run
/// on virtual time. Bounds here allow half a second of scheduling slack.
#[tokio::test]
async fn grpc_timeout_shrinks_at_each_hop() {
    let ms = Duration::from_millis;
    let seen: Seen = Arc::default();
    let c = hop(Duration::ZERO, None, seen.clone()).await;
    let b = hop(ms(400), Some(c), seen.clone()).await;
    let a = hop(ms(700), Some(b), seen.clone()).await;
    let deadline = Deadline::after(Instant::now(), ms(3_000));
    let reply = scope(deadline, call(a)).await.unwrap();
    assert_eq!(reply, "done");
    let seen = seen.lock().unwrap();
    let sent: Vec<Duration> = seen
        .iter()
        .map(|(h, _)| floodwall::deadline::parse_grpc_timeout(h.as_bytes()).unwrap())
        .collect();
    // Each hop was sent what its caller had left: at most the caller's
    // time less the caller's work, and not much less.
    let expected = [ms(3_000), ms(2_300), ms(1_900)];
    for (i, (got, want)) in sent.iter().zip(expected).enumerate() {
        assert!(
            *got <= want && want - *got < ms(500),
            "hop {i}: sent {got:?}, expected about {want:?}"
        );
    }
    // And each hop's scope held what it was sent (less transit time).
    for (i, ((_, left), got)) in seen.iter().zip(&sent).enumerate() {
        assert!(
            left <= got && *got - *left < ms(500),
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
