//! The plain reverse proxy: the request's head and body forwarded, the
//! hop-by-hop headers dropped, the upstream's answer relayed.

use floodwall::core::Rejected;
use floodwall::http::Respond;
use std::mem::ManuallyDrop;

use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::super::upstream::HttpUpstream;
use super::super::{Body, GatewayResponder, refusal};
use super::room::bad_request;

/// Largest request body the proxy forwards.
const MAX_BODY: usize = 1 << 20;

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1), and
/// `host` (the outbound request's comes from its URI). A constant, so the
/// scan below compares against known names; in a `ManuallyDrop`, so that
/// each use does not drop eight names again.
pub(super) const HOP_BY_HOP: ManuallyDrop<[HeaderName; 8]> = ManuallyDrop::new([
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::HOST,
]);

/// Drops the hop-by-hop headers of `headers` (every value of each), so
/// the map itself moves on: a scan of its names (compared, not hashed) and
/// one removal per hop-by-hop name present (usually `host` alone), no
/// second map built. The values of one name keep their order; the order
/// of different names may change (a removal moves the map's last entry
/// into the gap), which HTTP leaves free.
pub(super) fn keep_end_to_end(headers: &mut HeaderMap) {
    let mut found = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found |= 1 << i;
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Forwards the request to the upstream and its answer back.
pub(super) async fn proxy(h: &HttpUpstream, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // The head is taken apart: what the extensions say is read now, and
    // the method, path and headers move into the outbound request.
    let http::request::Parts {
        method,
        uri,
        headers,
        extensions,
        ..
    } = parts;
    // What the extensions carried (the arrival, the deadline, the priority)
    // is in the task's scope as well, which the upstream's layers read: the
    // outbound request needs no extensions of its own.
    drop(extensions);
    let uri = match h.uri_of(uri) {
        Ok(u) => u,
        Err(e) => return bad_request(&e.to_string()),
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body above 1 MiB",
            );
        }
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    let mut headers = headers;
    keep_end_to_end(&mut headers);
    // The priority header moved on with the others (the edge's
    // `AssignPriority` wrote the request's own over the caller's), and the
    // upstream's `PriorityClient` checks it against the task's priority
    // scope (the request's `Stamp` stays behind with its extensions).
    *out.headers_mut() = headers;
    match h.send(out).await {
        Ok(res) => {
            let (mut rp, rb) = res.into_parts();
            let mut back = Response::new(Full::new(rb));
            *back.status_mut() = rp.status;
            keep_end_to_end(&mut rp.headers);
            *back.headers_mut() = rp.headers;
            back
        }
        Err(e) => match Rejected::find(&*e) {
            Some(r) => GatewayResponder.respond(r),
            None => super::super::upstream_failure(&e),
        },
    }
}
