//! A three-hop tonic chain: a client → relay A → relay B → the room service
//! C, each hop a `tonic::transport::Server` with floodwall's server layers
//! and a `Channel` with its client layers (`floodwall_examples::relay`).
//! The caller's deadline shrinks hop by hop and its priority arrives
//! intact; when C sheds, the admission level it advertises comes back to
//! B, whose collaborative client remembers it.

use std::time::Duration;

use floodwall_examples::proto::GetRoomRequest;
use floodwall_examples::proto::room_client::RoomClient;
use floodwall_examples::relay::Relay;
use floodwall_examples::room::{RoomConfig, RoomService};
use tonic::transport::Channel;

async fn client(url: &str) -> RoomClient<Channel> {
    RoomClient::new(Channel::from_shared(url.to_owned()).unwrap().connect_lazy())
}

fn request(room_id: u64, timeout: &str, priority: &str) -> tonic::Request<GetRoomRequest> {
    let mut req = tonic::Request::new(GetRoomRequest {
        room_id,
        field_mask: None,
    });
    req.metadata_mut()
        .insert("grpc-timeout", timeout.parse().unwrap());
    req.metadata_mut()
        .insert("x-floodwall-priority", priority.parse().unwrap());
    req
}

/// The room service C with `workers` taking `service_time` a call, and
/// relays B (to C) and A (to B).
async fn chain(workers: usize, service_time: Duration) -> (RoomService, Relay, Relay) {
    let c = RoomService::start(RoomConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        workers,
        service_time,
        jitter: 0.0,
        ..RoomConfig::default()
    })
    .await
    .unwrap();
    let b = Relay::start(&c.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let a = Relay::start(&b.url(), Duration::from_secs(5))
        .await
        .unwrap();
    (c, b, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_and_the_priority_cross_three_hops() {
    let (c, _b, a) = chain(RoomConfig::default().workers, Duration::from_millis(5)).await;
    let mut to_a = client(&a.url()).await;
    let room = to_a
        .get_room(request(7, "800m", "3-20"))
        .await
        .expect("answered through two relays")
        .into_inner();
    assert_eq!(room.room_id, 7);
    let state = c.state();
    // 800 ms at A, less at B, less again at C: never more, never lost.
    assert!(
        state.max_grpc_timeout_ms > 0 && state.max_grpc_timeout_ms < 800,
        "C was sent {} ms",
        state.max_grpc_timeout_ms
    );
    assert_eq!(
        state.min_business_seen,
        Some(3),
        "the business priority arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_level_of_a_shedding_hop_comes_back_upstream() {
    // One worker, 20 ms a call: 40 callers at once overload C.
    let (c, b, a) = chain(1, Duration::from_millis(20)).await;
    let url = a.url();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut learned = None;
    while tokio::time::Instant::now() < deadline && learned.is_none() {
        let calls: Vec<_> = (0..40u64)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    let priority = format!("{}-{}", 1 + i % 5, i % 100);
                    let _ = client(&url)
                        .await
                        .get_room(request(i, "2S", &priority))
                        .await;
                })
            })
            .collect();
        for call in calls {
            let _ = call.await;
        }
        let level = b.next().state()["priority"]["advertised_level"].clone();
        if level
            .as_str()
            .is_some_and(|l| l != "127-127" && l != floodwall::core::Priority::LOWEST.to_string())
        {
            learned = Some(level);
        }
    }
    let advertised = c.state().admission_level;
    assert!(
        learned.is_some(),
        "B never learned a level from C (C's level: {advertised:?})"
    );
}
