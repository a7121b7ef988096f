//! The HTTP rejection layer around real floodwall layers.

use std::time::Duration;

use floodwall_core::BoxError;
use floodwall_http::HttpRejectionLayer;
use floodwall_token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn};

type Body = Full<bytes::Bytes>;

#[tokio::test(start_paused = true)]
async fn rate_limited_requests_become_429_with_headers() {
    let svc = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(
            TokenBucketLayer::builder(Quota::per_second(2).unwrap())
                .name("rooms")
                .build()
                .unwrap(),
        )
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, BoxError>(Response::new(Body::from("room")))
        }));
    let get = || svc.clone().oneshot(Request::new(Body::default()));
    for _ in 0..2 {
        assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    }
    let res = get().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // 500 ms until the next token: rounded up to one second.
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["ratelimit-policy"], "\"rooms\";q=2;w=1");
    assert_eq!(res.headers()["ratelimit"], "\"rooms\";r=0;t=1");
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn inner_errors_pass_through() {
    let svc = floodwall_http::HttpRejection::new(service_fn(|_: Request<Body>| async {
        Err::<Response<Body>, _>(std::io::Error::other("upstream reset"))
    }));
    let err = svc
        .oneshot(Request::new(Body::default()))
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<std::io::Error>().unwrap().to_string(),
        "upstream reset"
    );
}
