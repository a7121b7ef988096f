//! The floodwall reference deployment: a tonic **room service** and a hyper
//! **gateway** composing every floodwall layer the way a live-streaming
//! backend protects its hottest service, plus the simulated downstreams,
//! a Prometheus recorder and the load driver the demo uses.
//!
//! - [`room`]: `GetRoom` / `EnterRoom` / `BatchGetRooms` over gRPC (protos
//!   compiled by protox, no system `protoc`), simulated workers, fault
//!   knobs; deadline → priority admission → CoDel/LIFO queue → handler.
//! - [`gateway`]: TOML route table, per-IP and per-route token buckets,
//!   trusted-proxy `X-Forwarded-For`, DAGOR priority assignment, route
//!   deadlines, an aggregated enter-room page that degrades, overflow
//!   routing, and toward the room service deadline propagation →
//!   collaborative admission → SRE throttle → circuit breaker; an admin
//!   port with state, metrics and reload.
//! - [`load`]: an open-loop HTTP load generator and per-phase report.
//!
//! Run the demo: `cargo run -p floodwall-examples --bin demo`.

pub mod deploy;
pub mod downstream;
pub mod gateway;
pub mod load;
pub mod prom;
pub mod relay;
pub mod room;
pub mod tally;

/// The room service's generated gRPC code (package `floodwall.room.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("floodwall.room.v1");
}
