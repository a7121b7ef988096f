//! A middle hop of a gRPC call graph, in tonic's own terms: a
//! `tonic::transport::Server` with floodwall's server layers
//! (`Server::builder().layer(...)`) whose handler forwards every `Room`
//! call to the next hop through a `Channel` wrapped in floodwall's client
//! layers (`ServiceBuilder` over the channel). The deadline and the
//! priority travel with each call; the next hop's admission level comes
//! back and is remembered by the collaborative client.
//!
//! Server side, outermost first: rejections → gRPC statuses,
//! `ServerDeadlineLayer` (the inbound `grpc-timeout`), DAGOR
//! `AdmissionLayer` (the inbound priority, trusted: this hop is inside).
//! Client side (the reference gateway's [`Upstream`]): deadline
//! propagation → collaborative priority admission → circuit breaker →
//! the channel.

use std::net::SocketAddr;
use std::time::Duration;

use floodwall::core::BoxError;
use floodwall::deadline::{ServerDeadlineConfig, ServerDeadlineLayer, Wire};
use floodwall::grpc::GrpcRejectionLayer;
use floodwall::priority::{AdmissionConfig, AdmissionHandle, AdmissionLayer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;

use crate::gateway::config::{UpstreamConfig, UpstreamKind};
use crate::gateway::upstream::{GrpcTransport, Upstream};
use crate::proto::room_client::RoomClient;
use crate::proto::room_server::{Room, RoomServer};
use crate::proto::{
    BatchGetRoomsReply, BatchGetRoomsRequest, EnterRoomReply, EnterRoomRequest, GetRoomRequest,
    RoomInfo,
};

/// A running relay hop.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    admission: AdmissionHandle,
    next: Upstream,
    _shutdown: oneshot::Sender<()>,
}

impl Relay {
    /// Listens on an ephemeral loopback port and forwards to `next_url`
    /// (a room service or another relay), each call given at most
    /// `timeout` there.
    ///
    /// # Errors
    /// Binding the port, or an invalid layer configuration.
    pub async fn start(next_url: &str, timeout: Duration) -> Result<Self, BoxError> {
        let next = Upstream::build(
            "next_hop",
            &UpstreamConfig {
                kind: UpstreamKind::Grpc,
                url: next_url.to_owned(),
                timeout,
                breaker: Some(floodwall::breaker::BreakerConfig::default()),
                throttle: None,
                collaborative: true,
            },
            true,
        )?;
        let Upstream::Grpc(grpc) = &next else {
            return Err("a relay forwards to a gRPC hop".into());
        };
        let admit = AdmissionLayer::builder(AdmissionConfig::default())
            .name("relay")
            .trust_inbound(true)
            .build()?;
        let admission = admit.handle();
        let stack = ServiceBuilder::new()
            .layer(GrpcRejectionLayer::default())
            .layer(ServerDeadlineLayer::new(ServerDeadlineConfig {
                wire: Wire::Grpc,
                trust_inbound: true,
                max: Some(Duration::from_secs(30)),
            })?)
            .layer(admit)
            .into_inner();
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .layer(stack)
            .add_service(RoomServer::new(Forward {
                client: grpc.client.clone(),
            }));
        tokio::spawn(server.serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            admission,
            next,
            _shutdown: tx,
        })
    }

    /// The relay's `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This hop's own DAGOR admission (its level, what it admitted).
    pub fn admission(&self) -> &AdmissionHandle {
        &self.admission
    }

    /// The client toward the next hop: its breaker, and the admission level
    /// the next hop last advertised (`state()["collaborative"]`).
    pub fn next(&self) -> &Upstream {
        &self.next
    }
}

/// Forwards each call, as it came, to the next hop.
struct Forward {
    client: RoomClient<GrpcTransport>,
}

#[tonic::async_trait]
impl Room for Forward {
    async fn get_room(&self, req: Request<GetRoomRequest>) -> Result<Response<RoomInfo>, Status> {
        self.client.clone().get_room(req.into_inner()).await
    }

    async fn enter_room(
        &self,
        req: Request<EnterRoomRequest>,
    ) -> Result<Response<EnterRoomReply>, Status> {
        self.client.clone().enter_room(req.into_inner()).await
    }

    async fn batch_get_rooms(
        &self,
        req: Request<BatchGetRoomsRequest>,
    ) -> Result<Response<BatchGetRoomsReply>, Status> {
        self.client.clone().batch_get_rooms(req.into_inner()).await
    }
}
