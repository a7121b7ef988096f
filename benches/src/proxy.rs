//! The proxies the end-to-end comparisons put side by side: a bare hyper
//! reverse proxy with no layers, and the reference gateway's configuration
//! for the comparison (every layer on, or its layers off). The lab's `e2e`
//! command drives them with its own generator; `benches/e2e/run.sh` drives
//! them with `wrk` through `e2e_server proxy`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use floodwall::core::BoxError;
use floodwall_examples::gateway::GatewayConfig;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = Full<Bytes>;

/// A pooled hyper-util HTTP/1.1 client (`TCP_NODELAY`, up to 1,024 idle
/// connections per host), as the gateway's own.
pub fn pooled_client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// A bare hyper reverse proxy toward `upstream`, with no layers, serving
/// until its runtime stops. Returns the address it listens on.
pub async fn bare_proxy(upstream: SocketAddr) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let client: Client<HttpConnector, Body> = pooled_client();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    forward(client.clone(), upstream, req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn forward(
    client: Client<HttpConnector, Body>,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let Ok(uri) = format!("http://{upstream}{pq}").parse::<http::Uri>() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut out = Request::new(Full::new(body.to_bytes()));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k) {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    let Ok(res) = client.request(out).await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    let (rp, rb) = res.into_parts();
    let Ok(rb) = rb.collect().await else {
        return Ok(status(StatusCode::BAD_GATEWAY));
    };
    let mut back = Response::new(Full::new(rb.to_bytes()));
    *back.status_mut() = rp.status;
    for (k, v) in &rp.headers {
        if !is_hop_by_hop(k) {
            back.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(back)
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

/// The gateway's configuration for the comparison: one catch-all proxy
/// route to `upstream`, every layer on (or, with `protected` false, none),
/// limits far above the load ([`floodwall_examples::deploy::proxy_config`]).
///
/// # Errors
/// As [`GatewayConfig::parse`] (never, for a `http://host:port` upstream).
pub fn gateway_config(upstream: &str, protected: bool) -> Result<GatewayConfig, BoxError> {
    floodwall_examples::deploy::proxy_config(upstream, protected)
}
