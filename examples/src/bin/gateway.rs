//! The reference gateway on its own, in front of a room service started
//! with `--bin room_service` and downstreams at the config's URLs.
//!
//! Run: `cargo run -p floodwall-examples --bin gateway -- [CONFIG]`
//! (CONFIG defaults to `examples/config/gateway.toml`). Then, for example:
//!
//! ```text
//! curl 'http://127.0.0.1:8080/api/room?id=42&fields=title,viewers'
//! curl http://127.0.0.1:9090/state
//! curl http://127.0.0.1:9090/metrics
//! curl -X POST http://127.0.0.1:9090/reload          # re-read CONFIG
//! ```
//! Stops on Ctrl-C or SIGTERM: it stops accepting, lets in-flight requests
//! finish for up to 10 s, then exits.

use std::path::PathBuf;

use floodwall::core::BoxError;
use floodwall_examples::gateway::{Gateway, GatewayConfig};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    floodwall_examples::prom::install();
    let path = std::env::args().nth(1).map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml")),
        PathBuf::from,
    );
    let config = GatewayConfig::load(&path)?;
    let gateway = Gateway::start(config, Some(path.clone())).await?;
    println!(
        "gateway on http://{} (admin http://{}), config {}",
        gateway.addr(),
        gateway.admin_addr(),
        path.display()
    );
    stop_signal().await?;
    let drained = gateway.shutdown(DRAIN).await;
    println!(
        "gateway stopped ({})",
        if drained {
            "drained"
        } else {
            "drain deadline passed"
        }
    );
    Ok(())
}

/// How long in-flight requests may take to finish after a stop signal.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Ctrl-C, or SIGTERM on Unix (what `kill`, systemd and Kubernetes send).
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
