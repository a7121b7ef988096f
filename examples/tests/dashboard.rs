//! The Grafana dashboard in `docs/grafana/floodwall.json` against a real
//! gateway run: every metric a panel queries is in the gateway's
//! `/metrics` with every label the panel uses, and every floodwall metric
//! family the gateway exposes is on the dashboard. The layers the gateway
//! does not run (leaky bucket, sliding window, bulkhead, adaptive
//! concurrency, coalescing) and a breaker transition are exercised in the same process,
//! so the same scrape holds every floodwall metric.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use floodwall::redis::RedisLimiterConfig;
use floodwall::token_bucket::Quota;
use floodwall_examples::deploy::Deployment;
use floodwall_examples::room::RoomConfig;
use floodwall_redis::test_util::RedisServer;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const DASHBOARD: &str = include_str!("../../docs/grafana/floodwall.json");

async fn call(method: Method, url: String, headers: &[(&str, &str)]) -> (u16, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(req.body(Full::default()).unwrap()),
    )
    .await
    .expect("an answer within 5 s")
    .expect("a response");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Scraped series: family name → the label names seen on it.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("floodwall_")) {
        let (name, labels) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..line.rfind('}').unwrap()]),
            None => (line.split(' ').next().unwrap(), ""),
        };
        let entry = out.entry(name.to_owned()).or_default();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            entry.insert(pair.split('=').next().unwrap().to_owned());
        }
    }
    out
}

/// A metric a query names: exactly, or by `{__name__=~"prefix.+suffix"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Selector {
    Exact(String),
    Pattern(String, String),
}

impl Selector {
    fn matches(&self, family: &str) -> bool {
        match self {
            Selector::Exact(name) => family == name,
            Selector::Pattern(prefix, suffix) => {
                family.len() > prefix.len() + suffix.len()
                    && family.starts_with(prefix.as_str())
                    && family.ends_with(suffix.as_str())
            }
        }
    }
}

/// The metrics a PromQL expression selects and the labels it uses
/// (matchers and `by (…)` lists; `le` and `__name__` excluded).
fn parse_expr(expr: &str) -> (BTreeSet<Selector>, BTreeSet<String>) {
    let mut selectors = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = expr;
    while let Some(i) = rest.find("floodwall_") {
        let before = rest[..i].chars().last();
        let name = word(&rest[i..]);
        if before != Some('"') {
            selectors.insert(Selector::Exact(name.clone()));
        }
        rest = &rest[i + name.len()..];
    }
    let mut rest = expr;
    while let Some(i) = rest.find("__name__=~\"") {
        let pattern = &rest[i + 11..];
        let pattern = &pattern[..pattern.find('"').unwrap()];
        let (prefix, suffix) = pattern
            .split_once(".+")
            .expect("patterns are prefix.+suffix");
        selectors.insert(Selector::Pattern(prefix.to_owned(), suffix.to_owned()));
        rest = &rest[i + 11..];
    }
    // Label matchers: `{a="x", b=~"y"}`.
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').unwrap();
        for matcher in rest[open + 1..close].split(',') {
            let name = word(matcher.trim());
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close..];
    }
    // Groupings: `by (a, b)`.
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let list = &rest[i + 4..];
        let list = &list[..list.find(')').unwrap()];
        labels.extend(list.split(',').map(|l| l.trim().to_owned()));
        rest = &rest[i + 4..];
    }
    labels.remove("le");
    labels.remove("__name__");
    (selectors, labels)
}

/// Every `expr` of every panel target, with the panel's title.
fn queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            out.push((title, target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_in_a_real_gateway_run() {
    floodwall_examples::prom::install();
    let redis = RedisServer::start();
    let room = RoomConfig {
        service_time: Duration::from_millis(2),
        jitter: 0.0,
        ..RoomConfig::default()
    };
    let d = Deployment::start(true, room, |c| {
        c.gateway.redis = Some(redis.url());
        let route = c
            .routes
            .iter_mut()
            .find(|r| r.path.as_deref() == Some("/api/room"))
            .unwrap();
        route.limit.as_mut().unwrap().quota = Quota::per_second(5).unwrap();
        route.global_limit = Some(RedisLimiterConfig::new(
            Quota::per_second(3).unwrap().with_burst(3).unwrap(),
        ));
    })
    .await
    .unwrap();
    // Admitted and refused requests on every path the gateway has.
    for i in 0..12 {
        let ip = format!("10.0.2.{i}");
        let user = if i % 2 == 0 { "alice" } else { "bob" };
        let headers = [("x-forwarded-for", ip.as_str()), ("x-user-id", user)];
        let _ = call(
            Method::GET,
            format!("{}/api/room?id={i}", d.url()),
            &headers,
        )
        .await;
        let _ = call(
            Method::POST,
            format!("{}/api/room/enter?id={i}", d.url()),
            &headers,
        )
        .await;
        let _ = call(
            Method::GET,
            format!("{}/api/rooms?ids=1,2", d.url()),
            &headers,
        )
        .await;
    }
    exercise_the_other_layers().await;
    let (status, text) = call(Method::GET, format!("{}/metrics", d.admin_url()), &[]).await;
    assert_eq!(status, 200);
    let scraped = families(&text);
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let queries = queries(&dashboard);
    assert!(!queries.is_empty());
    let mut covered = BTreeSet::new();
    for (title, expr) in &queries {
        let (selectors, labels) = parse_expr(expr);
        assert!(
            !selectors.is_empty(),
            "{title}: no floodwall metric in {expr}"
        );
        for selector in &selectors {
            let matching: Vec<(&String, &BTreeSet<String>)> = scraped
                .iter()
                .filter(|(f, _)| selector.matches(f))
                .collect();
            assert!(
                !matching.is_empty(),
                "{title}: {selector:?} is not in the gateway's /metrics; families: {:#?}",
                scraped.keys()
            );
            for (family, seen) in &matching {
                covered.insert((*family).clone());
                for label in &labels {
                    assert!(
                        seen.contains(label),
                        "{title}: {family} has no label {label:?} (has {seen:?}) in {expr}"
                    );
                }
            }
        }
    }
    // Histograms are queried through their _bucket / _sum / _count series.
    let uncovered: Vec<&String> = scraped
        .keys()
        .filter(|f| !covered.contains(*f))
        .filter(|f| {
            let base = f
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| covered.contains(&format!("{base}{s}")))
        })
        .collect();
    assert!(
        uncovered.is_empty(),
        "floodwall metrics the dashboard does not show: {uncovered:#?}"
    );
}

/// One call through each layer the gateway does not run, and one breaker
/// transition, recorded by the same (installed) recorder.
async fn exercise_the_other_layers() {
    use floodwall::breaker::{BreakerConfig, BreakerLayer};
    use floodwall::bulkhead::{BulkheadConfig, BulkheadLayer};
    use floodwall::concurrency::{AdaptiveLimitLayer, Aimd, AimdConfig};
    use floodwall::leaky_bucket::{LeakyBucketConfig, LeakyBucketLayer};
    use floodwall::sliding_window::{SlidingWindowConfig, SlidingWindowLayer, Window};
    use tower::{Layer, ServiceExt, service_fn};

    macro_rules! once {
        ($layer:expr) => {{
            let svc = $layer.layer(service_fn(|_: ()| async {
                Ok::<_, floodwall::core::BoxError>(())
            }));
            svc.oneshot(()).await.expect("admitted");
        }};
    }
    let quota = floodwall::leaky_bucket::Quota::per_second(100).unwrap();
    once!(
        LeakyBucketLayer::builder(LeakyBucketConfig::shaper(quota, 4))
            .name("dash")
            .build()
            .unwrap()
    );
    let window = Window::new(10, Duration::from_secs(1)).unwrap();
    once!(
        SlidingWindowLayer::builder(SlidingWindowConfig::from(window))
            .name("dash")
            .build()
            .unwrap()
    );
    once!(
        BulkheadLayer::builder(BulkheadConfig::default())
            .name("dash")
            .build()
            .unwrap()
    );
    let adaptive: AdaptiveLimitLayer<Aimd> = AdaptiveLimitLayer::builder(AimdConfig::default())
        .name("dash")
        .build()
        .unwrap();
    once!(adaptive);
    let coalesce: floodwall::tail::CoalesceLayer<_, u8, ()> =
        floodwall::tail::CoalesceLayer::builder(
            floodwall::tail::CoalesceConfig::default(),
            |_: &http::Request<()>| Some(1u8),
        )
        .name("dash")
        .build()
        .unwrap();
    let svc = coalesce.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, floodwall::core::BoxError>(())
    }));
    svc.oneshot(http::Request::new(()))
        .await
        .expect("coalesced");
    let breaker = BreakerLayer::builder(BreakerConfig::default())
        .name("dash")
        .build()
        .unwrap();
    breaker.handle().force_open();
    breaker.handle().reset();
    // Hedging: a slow first attempt, hedged after 1 ms.
    let hedge = floodwall::tail::HedgeLayer::builder(floodwall::tail::HedgeConfig {
        delay: floodwall::tail::HedgeDelay::Fixed(Duration::from_millis(1)),
        ..floodwall::tail::HedgeConfig::default()
    })
    .name("dash")
    .build()
    .unwrap();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let svc = hedge.layer(service_fn(move |_: ()| {
        let slow = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, floodwall::core::BoxError>(())
        }
    }));
    svc.oneshot(()).await.expect("hedged");
    // A fallback answering a failure.
    let fallback = floodwall::tail::FallbackLayer::builder(
        floodwall::tail::FallbackConfig::default(),
        floodwall::tail::fallback::value(()),
    )
    .name("dash")
    .build()
    .unwrap();
    let svc = fallback.layer(service_fn(|_: ()| async {
        Err::<(), floodwall::core::BoxError>("down".into())
    }));
    svc.oneshot(()).await.expect("fell back");
    // Breakers per key: one key opens.
    let group = floodwall::breaker::BreakerGroupLayer::builder(
        floodwall::breaker::BreakerGroupConfig {
            breaker: BreakerConfig::consecutive(1),
            ..Default::default()
        },
        |_: &()| Some(1u8),
    )
    .name("dash")
    .build()
    .unwrap();
    let svc = group.layer(service_fn(|_: ()| async {
        Err::<(), floodwall::core::BoxError>("down".into())
    }));
    let _ = svc.clone().oneshot(()).await;
    let _ = svc.oneshot(()).await;
    // A hot key, answered from the hot cache; an aggregated write.
    use floodwall::hotkey::{
        AggregateConfig, AggregateLayer, HotCacheConfig, HotCacheLayer, HotKeyConfig, HotKeyLayer,
        Update,
    };
    let hot = HotKeyLayer::builder(
        HotKeyConfig {
            min_count: 1,
            ..HotKeyConfig::default()
        },
        |_: &http::Request<()>| Some(1u8),
    )
    .name("dash")
    .build()
    .unwrap();
    let cache: HotCacheLayer<u8, http::Response<()>> =
        HotCacheLayer::builder(HotCacheConfig::default())
            .name("dash")
            .build()
            .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(hot)
        .layer(cache)
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, floodwall::core::BoxError>(http::Response::new(()))
        }));
    for _ in 0..3 {
        svc.clone()
            .oneshot(http::Request::new(()))
            .await
            .expect("answered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let aggregate: AggregateLayer<u8, i64, ()> =
        AggregateLayer::builder(AggregateConfig::default())
            .name("dash")
            .build()
            .unwrap();
    let svc = aggregate.layer(service_fn(|_: Update<u8, i64>| async {
        Ok::<_, floodwall::core::BoxError>(())
    }));
    svc.oneshot(Update { key: 1, delta: 1 })
        .await
        .expect("written");
}

#[test]
fn the_expression_parser_finds_names_patterns_and_labels() {
    let (s, l) = parse_expr(
        r#"sum by (name, reason) (rate({__name__=~"floodwall_.+_requests_total", outcome="rejected"}[5m]))"#,
    );
    assert_eq!(
        s.into_iter().collect::<Vec<_>>(),
        [Selector::Pattern(
            "floodwall_".into(),
            "_requests_total".into()
        )]
    );
    assert_eq!(
        l.into_iter().collect::<Vec<_>>(),
        ["name", "outcome", "reason"]
    );
    let (s, l) = parse_expr(
        r#"histogram_quantile(0.99, sum by (le, name) (rate(floodwall_codel_sojourn_seconds_bucket{name=~"$name"}[5m])))"#,
    );
    assert_eq!(
        s.into_iter().collect::<Vec<_>>(),
        [Selector::Exact(
            "floodwall_codel_sojourn_seconds_bucket".into()
        )]
    );
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["name"]);
}
