//! Deadline rejections as responses: HTTP 504, and gRPC DEADLINE_EXCEEDED
//! (never CANCELLED).

use std::time::Duration;

use floodwall::core::{BoxError, Rejected};
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer};
use floodwall::http::HttpRejectionLayer;
use http::{Request, Response, StatusCode};
use tokio::time::sleep;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

fn slow_handler()
-> impl tower::Service<Request<()>, Response = Response<String>, Error = BoxError, Future: Send> + Clone
{
    service_fn(|_: Request<()>| async {
        sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>(Response::new(String::from("late")))
    })
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_its_deadline_is_a_504() {
    let svc = ServiceBuilder::new()
        .layer(HttpRejectionLayer::new())
        .layer(
            ServerDeadlineLayer::new(ServerDeadlineConfig {
                wire: floodwall::deadline::Wire::http(),
                ..Default::default()
            })
            .unwrap(),
        )
        .service(slow_handler());
    let req = Request::builder()
        .header("x-request-timeout-ms", "250")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_handler_past_its_deadline_is_deadline_exceeded() {
    let svc = ServerDeadlineLayer::new(ServerDeadlineConfig::default())
        .unwrap()
        .layer(slow_handler());
    let req = Request::builder()
        .header("grpc-timeout", "250m")
        .body(())
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let status = floodwall::grpc::status_for(Rejected::find(err.as_ref()).unwrap());
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
}
