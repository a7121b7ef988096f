//! Helpers shared by the loopback tests.
#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use floodwall::core::BoxError;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, service_fn};

/// A minimal HTTP client service over one fresh connection per request.
pub fn client(
    addr: SocketAddr,
) -> impl Service<Request<()>, Response = Response<Bytes>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(move |req: Request<()>| async move {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = req.map(|()| Empty::<Bytes>::new());
        let res = sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        Ok::<_, BoxError>(Response::from_parts(
            parts,
            body.collect().await?.to_bytes(),
        ))
    })
}

pub fn get(addr: SocketAddr) -> Request<()> {
    Request::get(format!("http://{addr}/"))
        .header("host", addr.to_string())
        .body(())
        .unwrap()
}

/// Which HTTP version a test server speaks.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Serves `stack` on an ephemeral loopback port until the test ends.
pub async fn serve<S, B>(stack: S, protocol: Protocol) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(stack.clone());
            let io = TokioIo::new(stream);
            match protocol {
                Protocol::Http1 => {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc),
                    );
                }
                Protocol::Http2 => {
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc),
                    );
                }
            }
        }
    });
    addr
}

/// The modules the `floodwall` facade exports (`pub use floodwall_x as x`,
/// or `pub use floodwall_x::y` for module `y`), read from its source.
pub fn facade_modules() -> Vec<&'static str> {
    let facade = include_str!("../../../crates/floodwall/src/lib.rs");
    let modules: Vec<&str> = facade
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use floodwall_"))
        .map(|l| l.trim_end_matches(';'))
        .map(|l| match l.split_once(" as ") {
            Some((_, name)) => name,
            None => l.rsplit("::").next().unwrap_or(l),
        })
        .collect();
    assert!(
        modules.len() >= 15,
        "read the facade's modules: {modules:?}"
    );
    modules
}
