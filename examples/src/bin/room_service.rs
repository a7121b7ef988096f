//! The reference room service on its own.
//!
//! Run: `cargo run -p floodwall-examples --bin room_service -- [ADDR] [--unprotected]`
//! (ADDR defaults to 127.0.0.1:50051, the reference gateway config's room
//! upstream). Stops on Ctrl-C.

use floodwall::core::BoxError;
use floodwall_examples::room::{RoomConfig, RoomService};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    floodwall_examples::prom::install();
    let mut config = RoomConfig {
        listen: ([127, 0, 0, 1], 50051).into(),
        ..RoomConfig::default()
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--unprotected" => config.protected = false,
            addr => {
                config.listen = addr
                    .parse()
                    .map_err(|e| format!("bad address {addr:?}: {e}"))?
            }
        }
    }
    let room = RoomService::start(config.clone()).await?;
    println!(
        "room service on {} ({} workers, {:?} per request, {:.0} req/s capacity, {})",
        room.url(),
        config.workers,
        config.service_time,
        config.capacity(),
        if config.protected {
            "protected"
        } else {
            "unprotected"
        }
    );
    tokio::signal::ctrl_c().await?;
    println!("{}", serde_json::to_string_pretty(&room.state())?);
    Ok(())
}
