//! A real hyper server on loopback behind a per-IP token bucket: the wire
//! sees 429 with `Retry-After` and `RateLimit` fields, and separate client
//! IPs get separate budgets.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use floodwall::http::HttpRejectionLayer;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tower::{ServiceBuilder, service_fn};

fn client_ip(req: &Request<Incoming>) -> Option<IpAddr> {
    req.extensions().get::<SocketAddr>().map(SocketAddr::ip)
}

async fn serve() -> SocketAddr {
    // One token per hour: the burst is all a client gets during the test.
    let quota = Quota::per_hour(3600).unwrap().with_burst(3).unwrap();
    let stack = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(
            TokenBucketLayer::builder(quota)
                .name("per_ip")
                .capacity(1000)
                .build_keyed(client_ip)
                .unwrap(),
        )
        .service(service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("ok")))
        }));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .service(stack.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)),
            );
        }
    });
    addr
}

async fn connect(
    from: Ipv4Addr,
    to: SocketAddr,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).ok()?;
    let stream: TcpStream = socket.connect(to).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Some(sender)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
) -> Response<Bytes> {
    sender.ready().await.unwrap();
    let req = Request::get(format!("http://{addr}/"))
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn per_ip_limit_over_loopback() {
    let addr = serve().await;
    let mut a = connect(Ipv4Addr::LOCALHOST, addr).await.unwrap();
    for _ in 0..3 {
        let res = get(&mut a, addr).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), "ok");
    }
    let res = get(&mut a, addr).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        res.headers()["ratelimit-policy"],
        "\"per_ip\";q=3600;w=3600"
    );
    assert_eq!(res.headers()["ratelimit"], "\"per_ip\";r=0;t=1");

    // A second connection from the same IP shares the budget.
    let mut a2 = connect(Ipv4Addr::LOCALHOST, addr).await.unwrap();
    assert_eq!(
        get(&mut a2, addr).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another loopback address is another client with its own budget (Linux
    // routes all of 127/8 to loopback; skip this part where it does not).
    if let Some(mut b) = connect(Ipv4Addr::new(127, 0, 0, 2), addr).await {
        for _ in 0..3 {
            assert_eq!(get(&mut b, addr).await.status(), StatusCode::OK);
        }
        assert_eq!(
            get(&mut b, addr).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
