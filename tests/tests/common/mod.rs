//! Helpers shared by the loopback tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use bytes::Bytes;
use floodwall::core::BoxError;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
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
