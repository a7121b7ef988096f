//! The admin listener, separate from the data port and on loopback by
//! default:
//!
//! | request | answer |
//! |---|---|
//! | `GET /state` | live state of every layer, JSON |
//! | `GET /metrics` | every floodwall metric, Prometheus text format |
//! | `GET /config` | the configuration in force, JSON |
//! | `POST /config` | apply the TOML in the body |
//! | `POST /reload` | re-read and apply the config file |
//! | `POST /limit` | change one limit: `{"route": "/api/room", "quota": {"rate": 50, "burst": 10}}` (no `route`: the per-IP limit); its buckets are kept |
//!
//! A config that fails to parse or validate is answered 400 with the
//! reason, and the old config stays in force. With a token configured
//! (`gateway.admin_token`, or `FLOODWALL_ADMIN_TOKEN`) every request must
//! carry `Authorization: Bearer TOKEN` (else 401); without one the admin
//! port may only listen on loopback.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tower::Service;

use super::{Body, GatewayConfig, Shared, json};

/// The admin service.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>, token: Option<Arc<str>>) -> Self {
        Self { shared, token }
    }
}

/// The admin token: `FLOODWALL_ADMIN_TOKEN`, else `configured` (a file's
/// contents when it starts with `@`). An empty token is an error.
pub(super) fn token(
    configured: Option<&str>,
) -> Result<Option<Arc<str>>, floodwall::core::BoxError> {
    let raw = match std::env::var("FLOODWALL_ADMIN_TOKEN") {
        Ok(t) => Some(t),
        Err(_) => match configured {
            Some(path) if path.starts_with('@') => Some(
                std::fs::read_to_string(&path[1..])
                    .map_err(|e| format!("reading the admin token from {}: {e}", &path[1..]))?,
            ),
            other => other.map(str::to_owned),
        },
    };
    match raw.map(|t| t.trim().to_owned()) {
        Some(t) if t.is_empty() => Err("the admin token is empty".into()),
        other => Ok(other.map(Arc::from)),
    }
}

/// Whether `req` carries the bearer token (compared in constant time).
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn applied(result: Result<u64, floodwall::core::BoxError>) -> Response<Body> {
    match result {
        Ok(version) => json(
            StatusCode::OK,
            &serde_json::json!({ "applied": true, "config_version": version }),
        ),
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "applied": false, "error": e.to_string() }),
        ),
    }
}

impl Service<Request<Incoming>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        if let Some(token) = &self.token
            && !authorized(&req, token)
        {
            let mut res = json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({ "error": "the admin port needs a bearer token" }),
            );
            res.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Box::pin(async move { Ok(res) });
        }
        Box::pin(async move {
            let res = match (req.method(), req.uri().path()) {
                (&Method::GET, "/state") => {
                    let rt = shared.runtime();
                    let mut state = rt.state();
                    state["responses"] = serde_json::to_value(shared.tally()).unwrap_or_default();
                    json(StatusCode::OK, &state)
                }
                (&Method::GET, "/metrics") => match crate::prom::render() {
                    Some(text) => {
                        let mut res = Response::new(Full::from(text));
                        res.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        res
                    }
                    None => json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({ "error": "no Prometheus recorder installed" }),
                    ),
                },
                (&Method::GET, "/config") => {
                    let rt = shared.runtime();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({
                            "config_version": rt.version(),
                            "config": format!("{:#?}", rt.config()),
                        }),
                    )
                }
                (&Method::POST, "/config") => {
                    match Limited::new(req.into_body(), 1 << 20).collect().await {
                        Ok(body) => match std::str::from_utf8(&body.to_bytes()) {
                            Ok(text) => applied(
                                GatewayConfig::parse(text)
                                    .map_err(Into::into)
                                    .and_then(|c| shared.apply(c)),
                            ),
                            Err(_) => applied(Err("the config is not UTF-8".into())),
                        },
                        Err(e) => applied(Err(format!("reading the body: {e}").into())),
                    }
                }
                (&Method::POST, "/reload") => applied(shared.reload_file()),
                (&Method::POST, "/limit") => {
                    match Limited::new(req.into_body(), 64 << 10).collect().await {
                        Ok(body) => applied(
                            serde_json::from_slice::<LimitChange>(&body.to_bytes())
                                .map_err(|e| format!("not a limit change: {e}").into())
                                .and_then(|c| shared.set_limit(c.route.as_deref(), c.quota)),
                        ),
                        Err(e) => applied(Err(format!("reading the body: {e}").into())),
                    }
                }
                _ => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({
                        "error": "unknown admin path",
                        "paths": ["GET /state", "GET /metrics", "GET /config", "POST /config", "POST /reload", "POST /limit"],
                    }),
                ),
            };
            Ok(res)
        })
    }
}

/// The body of `POST /limit`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitChange {
    /// The route (path or prefix as configured); none for the per-IP limit.
    #[serde(default)]
    route: Option<String>,
    quota: floodwall::token_bucket::Quota,
}
