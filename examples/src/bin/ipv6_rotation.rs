//! An IPv6 rotation attack on the reference gateway: one request from each
//! of `N` addresses of `2001:db8:1:2::/64`, then one from
//! `2001:db8:1:3::1`, against a gateway on `[::1]` whose per-IP limit
//! allows a burst of 3. Prints the statuses as two lines: the /64's, then
//! the neighbour's.
//!
//! The source addresses must exist on loopback, so it runs in a network
//! namespace of its own (no privilege needed), as
//! `examples/tests/gateway.rs` runs it:
//!
//! ```text
//! unshare -rn sh -c 'ip link set lo up;
//!   for i in $(seq 1 40); do ip -6 addr add 2001:db8:1:2::$i/128 dev lo nodad; done;
//!   ip -6 addr add 2001:db8:1:3::1/128 dev lo nodad;
//!   exec target/debug/ipv6_rotation 40'
//! ```

use std::time::Duration;

use bytes::Bytes;
use floodwall::core::BoxError;
use floodwall::token_bucket::Quota;
use floodwall_examples::deploy::Deployment;
use floodwall_examples::room::RoomConfig;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let hosts: u32 = std::env::args()
        .nth(1)
        .map_or(Ok(40), |n| n.parse())
        .map_err(|_| "usage: ipv6_rotation [HOSTS]")?;
    let room = RoomConfig {
        service_time: Duration::from_millis(1),
        jitter: 0.0,
        ..RoomConfig::default()
    };
    let d = Deployment::start(true, room, |c| {
        c.gateway.listen = "[::1]:0".parse().expect("an address");
        if let Some(p) = c.per_ip.as_mut() {
            p.quota = Quota::per_hour(1)
                .expect("a quota")
                .with_burst(3)
                .expect("a burst");
        }
    })
    .await?;
    let url = format!("{}/api/room?id=1", d.url());
    let from = |ip: String| {
        let url = url.clone();
        async move {
            let mut connector = HttpConnector::new();
            connector.set_local_address(Some(ip.parse()?));
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let res =
                tokio::time::timeout(Duration::from_secs(5), client.get(url.parse()?)).await??;
            Ok::<_, BoxError>(res.status().as_u16())
        }
    };
    let mut statuses = Vec::new();
    for i in 1..=hosts {
        statuses.push(from(format!("2001:db8:1:2::{i}")).await?);
    }
    println!("{statuses:?}");
    println!("{}", from("2001:db8:1:3::1".to_owned()).await?);
    Ok(())
}
