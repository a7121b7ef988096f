//! Attacks on per-client keys, against a keyed token bucket keyed by
//! `floodwall::http::client_ip::ClientIp`: rotating IPv6 addresses inside
//! one /64, and rotating `X-Forwarded-For` from a peer that is not a
//! trusted proxy, do not buy more requests; a victim's address written in
//! a header does not spend the victim's quota.

use std::net::{IpAddr, SocketAddr};

use floodwall::core::{BoxError, RejectKind, Rejected};
use floodwall::http::client_ip::ClientIp;
use floodwall::token_bucket::{Quota, TokenBucketLayer};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt, service_fn};

const BURST: u32 = 5;

fn per_client(
    ip: ClientIp,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    TokenBucketLayer::builder(Quota::per_hour(1).unwrap().with_burst(BURST).unwrap())
        .name("per_client")
        .capacity(10_000)
        .build_keyed(ip.extractor::<()>())
        .unwrap()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(()))
        }))
}

fn from(peer: &str, xff: Option<&str>) -> Request<()> {
    let mut req = Request::builder();
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let mut req = req.body(()).unwrap();
    let peer: IpAddr = peer.parse().unwrap();
    req.extensions_mut().insert(SocketAddr::new(peer, 40_000));
    req
}

/// How many of `reqs` the service admits; every refusal must be a rate
/// limit.
async fn admitted(
    svc: &mut (impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone),
    reqs: impl IntoIterator<Item = Request<()>>,
) -> u32 {
    let mut n = 0;
    for req in reqs {
        match svc.ready().await.unwrap().call(req).await {
            Ok(_) => n += 1,
            Err(e) => assert_eq!(
                Rejected::find(e.as_ref()).expect("a rejection").kind(),
                RejectKind::RateLimited
            ),
        }
    }
    n
}

#[tokio::test(start_paused = true)]
async fn rotating_ipv6_addresses_inside_one_64_shares_one_bucket() {
    let mut svc = per_client(ClientIp::peer());
    // 1,000 addresses of 2001:db8:1:2::/64, one request each.
    let reqs = (0..1_000u32).map(|i| {
        from(
            &format!("2001:db8:1:2:{:x}:{:x}::1", i >> 8, i & 0xff),
            None,
        )
    });
    assert_eq!(admitted(&mut svc, reqs).await, BURST);
    // A neighbour /64 is another client.
    assert_eq!(admitted(&mut svc, [from("2001:db8:1:3::1", None)]).await, 1);
}

#[tokio::test(start_paused = true)]
async fn rotating_forwarded_for_from_an_untrusted_peer_buys_nothing() {
    // Trusts only the load balancer at 10.0.0.0/8.
    let mut svc = per_client(ClientIp::behind(["10.0.0.0/8".parse().unwrap()]));
    let reqs = (0..1_000u32).map(|i| {
        let spoofed = format!("198.51.{}.{}", i / 250, i % 250);
        from("203.0.113.66", Some(&spoofed))
    });
    assert_eq!(admitted(&mut svc, reqs).await, BURST);
}

#[tokio::test(start_paused = true)]
async fn a_victims_address_in_a_header_does_not_spend_the_victims_quota() {
    let mut svc = per_client(ClientIp::behind(["10.0.0.0/8".parse().unwrap()]));
    // The attacker, directly and through the proxy, writes the victim's
    // address left of its own.
    let direct = (0..50).map(|_| from("203.0.113.66", Some("192.0.2.10")));
    let proxied = (0..50).map(|_| from("10.0.0.1", Some("192.0.2.10, 203.0.113.66")));
    assert_eq!(admitted(&mut svc, direct).await, BURST);
    assert_eq!(
        admitted(&mut svc, proxied).await,
        0,
        "the same client: 203.0.113.66"
    );
    // The victim, through the proxy, still has its whole burst.
    let victim = (0..BURST).map(|_| from("10.0.0.1", Some("192.0.2.10")));
    assert_eq!(admitted(&mut svc, victim).await, BURST);
}

#[tokio::test(start_paused = true)]
async fn long_user_ids_cost_what_short_ones_do() {
    use floodwall::core::key::{BoundedKey, MAX_KEY_LEN};
    // Per user, keyed by a header the client controls, through BoundedKey.
    let layer = |_: ()| {
        TokenBucketLayer::builder(Quota::per_second(100).unwrap())
            .capacity(10_000)
            .build_keyed(|req: &Request<()>| {
                req.headers()
                    .get("x-user-id")
                    .map(|v| BoundedKey::new(v.as_bytes()))
            })
            .unwrap()
    };
    let run = |id_len: usize| async move {
        let layer = layer(());
        let handle = layer.handle();
        let mut svc = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(()))
        }));
        for i in 0..1_000u32 {
            let id = format!("{i:0>width$}", width = id_len);
            let req = Request::builder().header("x-user-id", id).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let keys = handle.limiter().limiter().keys();
        (keys.len(), keys.memory_bytes())
    };
    let (short_keys, short_bytes) = run(8).await;
    let (long_keys, long_bytes) = run(8 * 1024).await;
    assert_eq!((short_keys, long_keys), (1_000, 1_000));
    // A key holds no heap of its own: 8 KB ids cost what 8-byte ids do, a
    // fixed size per key (the map's slots and tables; how keys fall into
    // shards moves the total by a few tens of percent run to run, the id
    // length does not move it at all).
    for (ids, bytes) in [("8 B", short_bytes), ("8 KB", long_bytes)] {
        assert!(
            bytes / 1_000 <= 256,
            "{ids} ids: {} bytes per key",
            bytes / 1_000
        );
    }
    assert!(std::mem::size_of::<BoundedKey>() <= MAX_KEY_LEN + 2);
}
