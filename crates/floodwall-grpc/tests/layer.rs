//! The gRPC layers around a real floodwall layer.

use floodwall_core::BoxError;
use floodwall_grpc::{GrpcRejectionLayer, StatusErrorLayer};
use floodwall_token_bucket::{Quota, TokenBucketLayer};
use tonic::{Code, Status};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn server_layer_answers_with_a_trailers_only_response() {
    let svc = ServiceBuilder::new()
        .layer(GrpcRejectionLayer::default())
        .layer(TokenBucketLayer::new(Quota::per_second(4).unwrap()).unwrap())
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        }));
    for _ in 0..4 {
        let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        assert!(res.headers().get("grpc-status").is_none());
    }
    let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::OK,
        "gRPC errors ride on HTTP 200"
    );
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "250");
    let status = Status::from_header_map(res.headers()).unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );
}

#[tokio::test(start_paused = true)]
async fn client_layer_turns_rejections_into_status_errors() {
    let svc = ServiceBuilder::new()
        .layer(StatusErrorLayer::new())
        .layer(TokenBucketLayer::new(Quota::per_second(1).unwrap()).unwrap())
        .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    let err = svc.clone().oneshot(2).await.unwrap_err();
    // What a tonic generated client does with a transport error:
    let status = Status::from_error(err);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "1000"
    );

    let failing = StatusErrorLayer::new().layer(service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("connection reset"))
    }));
    let err = failing.oneshot(()).await.unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some(), "untouched");
}
