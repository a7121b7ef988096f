//! A hyper server on 127.0.0.1 protected by a per-client-IP token bucket,
//! and two clients in the same program: a greedy one that fires far above
//! its quota and a polite one that stays under it. Prints how many requests
//! each got through and how many were answered 429, then exits.
//!
//! Run: `cargo run -p floodwall-examples --bin per_ip_limit`

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use floodwall::core::BoxError;
use floodwall::http::HttpRejectionLayer;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tower::{ServiceBuilder, service_fn};

/// Each client IP may make 20 requests per second, in bursts of up to 10.
const RATE: u32 = 20;
const BURST: u32 = 10;
/// How long the clients run.
const RUN_FOR: Duration = Duration::from_secs(2);

fn client_ip(req: &Request<Incoming>) -> Option<IpAddr> {
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

async fn handler(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from(
        "hello from the protected service\n",
    )))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quota = Quota::per_second(RATE)?.with_burst(BURST)?;
    let per_ip = TokenBucketLayer::builder(quota)
        .name("per_ip")
        .capacity(100_000)
        .build_keyed(client_ip)
        .unwrap();
    let handle = per_ip.handle();
    // One stack value: every connection's service shares the same buckets.
    let stack = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(per_ip)
        .service(service_fn(handler));

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    println!("server: listening on http://{addr}, {RATE} req/s per client IP, burst {BURST}");

    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            // The client's socket address becomes a request extension, which
            // the keyed limiter reads.
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .service(stack.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                if let Err(e) = conn.await {
                    eprintln!("server: connection from {peer}: {e}");
                }
            });
        }
    });

    // The greedy client fires 100 requests per second from 127.0.0.1; the
    // polite one sends 10 per second from 127.0.0.2 (any 127/8 address is
    // loopback on Linux; elsewhere it falls back to 127.0.0.1).
    let greedy = tokio::spawn(client("greedy", Ipv4Addr::LOCALHOST, addr, 100));
    let polite = tokio::spawn(client("polite", Ipv4Addr::new(127, 0, 0, 2), addr, 10));
    let greedy = greedy.await??;
    let polite = polite.await??;

    println!();
    println!(
        "{:<8} {:<11} {:>5} {:>9} {:>8}",
        "client", "source ip", "sent", "admitted", "429"
    );
    for r in [&greedy, &polite] {
        println!(
            "{:<8} {:<11} {:>5} {:>9} {:>8}",
            r.name, r.ip, r.sent, r.admitted, r.limited
        );
    }
    println!();
    println!(
        "greedy: expected at most {BURST} + {RATE}/s x {:.1}s = {} admitted",
        RUN_FOR.as_secs_f64(),
        BURST + RATE * RUN_FOR.as_secs() as u32
    );
    println!(
        "keys tracked by the limiter: {}",
        handle.limiter().limiter().keys().len()
    );
    if let Some(retry) = &greedy.first_retry_after {
        println!("first 429 said: Retry-After: {retry}");
    }
    server.abort();
    Ok(())
}

struct Report {
    name: &'static str,
    ip: IpAddr,
    sent: u32,
    admitted: u32,
    limited: u32,
    first_retry_after: Option<String>,
}

async fn client(
    name: &'static str,
    source: Ipv4Addr,
    server: SocketAddr,
    per_second: u32,
) -> Result<Report, BoxError> {
    let socket = TcpSocket::new_v4()?;
    let ip = match socket.bind(SocketAddr::new(IpAddr::V4(source), 0)) {
        Ok(()) => IpAddr::V4(source),
        Err(_) => {
            socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    };
    let stream = socket.connect(server).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);

    let mut report = Report {
        name,
        ip,
        sent: 0,
        admitted: 0,
        limited: 0,
        first_retry_after: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let total = per_second * RUN_FOR.as_secs() as u32;
    for _ in 0..total {
        tick.tick().await;
        sender.ready().await?;
        let req = Request::get(format!("http://{server}/"))
            .header("host", server.to_string())
            .body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        report.sent += 1;
        match res.status() {
            StatusCode::OK => report.admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                report.limited += 1;
                if report.first_retry_after.is_none() {
                    report.first_retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                }
            }
            other => eprintln!("{name}: unexpected status {other}"),
        }
        res.into_body().collect().await?;
    }
    Ok(report)
}
