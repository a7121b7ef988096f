//! The overload lab: an open-loop load generator, deterministic
//! virtual-time scenarios comparing protection stacks side by side, and
//! their CSV, SVG and Markdown outputs.
//!
//! `cargo run --release -p floodwall-benches --bin lab -- sim` runs every
//! scenario; `-- realtime` runs them in real time over loopback
//! ([`realtime`]); docs/performance.md explains the model and the results.

pub mod docs;
pub mod e2e;
pub mod hist;
pub mod hotkey;
pub mod load;
pub mod plot;
pub mod realtime;
pub mod redis;
pub mod report;
pub mod sim;
pub mod tail;

pub use hist::Histogram;
pub use load::{Arrivals, open_loop};
pub use realtime::RealtimeConfig;
pub use sim::{LimitStats, Row, Scenario, SimConfig, Stack, run, run_all};
