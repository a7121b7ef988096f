//! Deadline layers reconfigured while they serve: the next request reads
//! the new server `max` (or client margin and timeout); the wire, which
//! names the header, cannot change; a refused configuration changes
//! nothing.

use std::time::Duration;

use floodwall_deadline::{
    PropagateDeadlineConfig, PropagateDeadlineLayer, ServerDeadlineConfig, ServerDeadlineLayer,
    Wire, current,
};
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn the_next_request_reads_the_new_server_max() {
    let layer = ServerDeadlineLayer::new(ServerDeadlineConfig {
        max: Some(Duration::from_secs(2)),
        ..ServerDeadlineConfig::default()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, floodwall_core::BoxError>(current().map(|d| d.remaining(Instant::now())))
    }));
    let req = || http::Request::new(());
    assert_eq!(
        svc.clone().oneshot(req()).await.unwrap(),
        Some(Duration::from_secs(2))
    );
    handle
        .reconfigure_server(&ServerDeadlineConfig {
            max: Some(Duration::from_millis(300)),
            ..ServerDeadlineConfig::default()
        })
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(req()).await.unwrap(),
        Some(Duration::from_millis(300))
    );
    // Refused: a zero max, another wire, a client configuration.
    let zero = ServerDeadlineConfig {
        max: Some(Duration::ZERO),
        ..ServerDeadlineConfig::default()
    };
    assert_eq!(handle.reconfigure_server(&zero).unwrap_err().field(), "max");
    let http = ServerDeadlineConfig {
        wire: Wire::Http(http::HeaderName::from_static("x-request-timeout-ms")),
        ..ServerDeadlineConfig::default()
    };
    assert_eq!(
        handle.reconfigure_server(&http).unwrap_err().field(),
        "wire"
    );
    assert_eq!(
        handle
            .reconfigure_client(&PropagateDeadlineConfig::default())
            .unwrap_err()
            .field(),
        "layer"
    );
    assert_eq!(
        svc.oneshot(req()).await.unwrap(),
        Some(Duration::from_millis(300)),
        "refused changes changed nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn the_next_call_reads_the_new_client_timeout() {
    let layer = PropagateDeadlineLayer::new(PropagateDeadlineConfig {
        timeout: Some(Duration::from_secs(5)),
        ..PropagateDeadlineConfig::default()
    })
    .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        Ok::<_, floodwall_core::BoxError>(
            req.headers()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    }));
    assert_eq!(
        svc.clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap()
            .as_deref(),
        Some("5000000u")
    );
    handle
        .reconfigure_client(&PropagateDeadlineConfig {
            timeout: Some(Duration::from_millis(250)),
            ..PropagateDeadlineConfig::default()
        })
        .unwrap();
    assert_eq!(
        svc.oneshot(http::Request::new(()))
            .await
            .unwrap()
            .as_deref(),
        Some("250000u")
    );
}
