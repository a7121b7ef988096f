//! The whole reference deployment on loopback, on free ports: a room
//! service, the simulated downstreams, and a gateway configured from
//! `config/gateway.toml` with its upstream URLs pointed at them. The demo
//! and the integration tests start it this way.

use std::time::Duration;

use floodwall::core::BoxError;

use crate::downstream::Downstream;
use crate::gateway::{Gateway, GatewayConfig};
use crate::room::{RoomConfig, RoomService};

/// The reference gateway configuration, as shipped.
pub const REFERENCE_CONFIG: &str = include_str!("../config/gateway.toml");

/// Every process of the deployment, running on loopback. Dropping it stops
/// them all.
#[derive(Debug)]
pub struct Deployment {
    /// The room service.
    pub room: RoomService,
    /// The gift-panel module (optional in the enter-room page).
    pub gifts: Downstream,
    /// The recommendations module (optional in the enter-room page).
    pub recommend: Downstream,
    /// The static assets' primary pool.
    pub static_primary: Downstream,
    /// The static assets' elastic (overflow) pool.
    pub static_elastic: Downstream,
    /// The gateway.
    pub gateway: Gateway,
}

impl Deployment {
    /// Starts everything; `protected` switches every floodwall layer on or
    /// off in both the room service and the gateway. `room` sizes the room
    /// service (its `protected` and `listen` are overridden) and `tweak`
    /// edits the gateway config after the URLs are filled in.
    ///
    /// # Errors
    /// A port cannot be bound or the tweaked config is invalid.
    pub async fn start(
        protected: bool,
        room: RoomConfig,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Result<Self, BoxError> {
        let room = RoomService::start(RoomConfig {
            protected,
            listen: ([127, 0, 0, 1], 0).into(),
            ..room
        })
        .await?;
        let gifts = Downstream::start("gifts", Duration::from_millis(5)).await?;
        let recommend = Downstream::start("recommend", Duration::from_millis(5)).await?;
        let static_primary = Downstream::start("static_primary", Duration::ZERO).await?;
        let static_elastic = Downstream::start("static_elastic", Duration::ZERO).await?;
        let mut config = GatewayConfig::parse(REFERENCE_CONFIG)?;
        config.gateway.listen = ([127, 0, 0, 1], 0).into();
        config.gateway.admin = ([127, 0, 0, 1], 0).into();
        config.gateway.protected = protected;
        for (name, url) in [
            ("room", room.url()),
            ("gifts", gifts.url()),
            ("recommend", recommend.url()),
            ("static_primary", static_primary.url()),
            ("static_elastic", static_elastic.url()),
        ] {
            if let Some(up) = config.upstreams.get_mut(name) {
                up.url = url;
            }
        }
        tweak(&mut config);
        let gateway = Gateway::start(config, None).await?;
        Ok(Self {
            room,
            gifts,
            recommend,
            static_primary,
            static_elastic,
            gateway,
        })
    }

    /// The gateway's data URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.gateway.addr())
    }

    /// The gateway's admin URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.gateway.admin_addr())
    }
}

/// The gateway's configuration for the comparison: one catch-all proxy
/// route to `upstream`, every layer on (or, with `protected` false, none),
/// limits far above the load: what the end-to-end benchmarks (and the
/// gateway test of a cold start under concurrency) run.
///
/// # Errors
/// As [`GatewayConfig::parse`] (never, for a `http://host:port` upstream).
pub fn proxy_config(upstream: &str, protected: bool) -> Result<GatewayConfig, BoxError> {
    let text = format!(
        r#"
[gateway]
protected = {protected}
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
user_header = "x-user-id"
default_priority = 10
key_seed = 1

[per_ip]
name = "per_ip"
quota = {{ rate = 1000000000, burst = 1000000000 }}
capacity = 100000

[upstreams.up]
kind = "http"
url = "{upstream}"
timeout = "2s"
breaker = {{ window = {{ count = 100 }}, minimum_calls = 100, failure_rate_threshold = 50.0, open_duration = "1s", half_open_calls = 3 }}
throttle = {{ window = "10s", buckets = 10, k = 2.0, min_rps = 10.0 }}

[[routes]]
prefix = "/"
handler = "proxy"
upstream = "up"
timeout = "2s"
priority = 8
limit = {{ name = "all", quota = {{ rate = 1000000000, burst = 1000000000 }} }}
"#
    );
    Ok(GatewayConfig::parse(&text)?)
}
