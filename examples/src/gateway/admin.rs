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
//!
//! A config that fails to parse or validate is answered 400 with the
//! reason, and the old config stays in force.

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
#[derive(Debug, Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
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
        Box::pin(async move {
            let res = match (req.method(), req.uri().path()) {
                (&Method::GET, "/state") => {
                    let rt = shared.runtime();
                    let mut state = rt.state();
                    state["responses"] = serde_json::to_value(shared.tally()).unwrap_or_default();
                    json(StatusCode::OK, &state)
                }
                (&Method::GET, "/metrics") => match crate::prom::registry() {
                    Some(r) => {
                        let mut res = Response::new(Full::from(r.render()));
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
                _ => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({
                        "error": "unknown admin path",
                        "paths": ["GET /state", "GET /metrics", "GET /config", "POST /config", "POST /reload"],
                    }),
                ),
            };
            Ok(res)
        })
    }
}
