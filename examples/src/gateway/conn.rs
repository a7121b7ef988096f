//! Accepting and serving connections: the listener's backlog, the cap on
//! open connections, the slowloris and idle timeouts, graceful shutdown, and
//! the peer each request of a connection carries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use super::data::forwarded_value;
use super::{Body, ClientKey, idle};

/// A listener with a backlog of 1,024 (std's and mio's default is 128): a
/// burst of connections past `max_connections` waits in the kernel's
/// queue instead of having its SYNs dropped.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How the listeners treat connections (from [`config::Settings`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct ServeLimits {
    pub(super) max_connections: usize,
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
}

/// Accepts connections until `stop` fires, serving each with HTTP/1.1 or
/// HTTP/2 and the peer address in request extensions, hardened against slow
/// and many clients:
///
/// - at most `max_connections` at once: past the cap the listener stops
///   accepting (new connections wait in the kernel's backlog) instead of
///   spending memory and tasks on them;
/// - a client that sends no byte, or not a whole request head, within
///   `header_read_timeout` is disconnected (connection floods, slowloris),
///   and HTTP/2 connections are pinged and dropped when they stop
///   answering; a connection on which no byte moves for `idle_timeout`
///   (a parked keep-alive connection) is closed;
/// - an accept error (`EMFILE`, `ENFILE`, a reset) backs off 5 ms doubling
///   to 1 s instead of spinning a core.
///
/// On `stop` it stops accepting and asks every connection to finish its
/// in-flight requests and close; [`Gateway::shutdown`] waits for them.
pub(super) async fn serve<S>(
    listener: TcpListener,
    svc: S,
    mut stop: watch::Receiver<()>,
    limits: ServeLimits,
    conns: Arc<tokio::sync::Semaphore>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    let mut backoff = FIRST_BACKOFF;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff = FIRST_BACKOFF;
                    c
                }
                Err(_) => {
                    // Out of descriptors or a connection reset before
                    // accept: wait instead of spinning on the error.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        let probe = stop.clone();
        let first_byte = limits.header_read_timeout;
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // hyper's header timeout starts with the first byte: a
            // connection that sends nothing at all is cut here instead.
            let mut one = [0u8; 1];
            if !matches!(
                tokio::time::timeout(first_byte, stream.peek(&mut one)).await,
                Ok(Ok(1))
            ) {
                return;
            }
            let peer = Peer::new(peer);
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                svc.clone().oneshot(req)
            });
            let io = idle::IdleTimeout::new(stream, idle_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let changed = stop.changed();
            tokio::pin!(changed);
            let mut armed = false;
            let stopped = std::future::poll_fn(|cx| {
                // The stop signal is polled once, to be woken by it, and
                // again only once it has fired: not on every wake-up of a
                // busy connection.
                if !armed || probe.has_changed().unwrap_or(true) {
                    if changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    armed = true;
                }
                conn.as_mut().poll(cx).map(|_| false)
            })
            .await;
            if stopped {
                // Finish what is in flight, answer nothing new, close.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
}

/// The connection's peer, in each of its requests' extensions: its address
/// and the `X-Forwarded-For` value naming it, made once per connection
/// instead of formatted for every request; and the request's client key,
/// filled in by the data plane when a layer keys by it ([`ClientKey::of`]
/// reads it), so that one extension carries both.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) forwarded: Option<HeaderValue>,
    pub(super) key: Option<ClientKey>,
}

impl Peer {
    pub(super) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            forwarded: forwarded_value(addr.ip()),
            key: None,
        }
    }
}
