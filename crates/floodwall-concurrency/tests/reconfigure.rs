//! Adaptive concurrency reconfigured while it serves: the limit carries
//! over, clamped to the new bounds, and is adopted at once (listeners hear
//! of it); a configuration for another algorithm, or an invalid one, is
//! refused and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use floodwall_concurrency::{
    AdaptiveLimitLayer, Aimd, AimdConfig, Gradient2, Gradient2Config, Vegas, VegasConfig,
};

#[test]
fn a_lower_maximum_clamps_the_limit_at_once_and_tells_the_listeners() {
    let heard = Arc::new(AtomicU32::new(0));
    let seen = heard.clone();
    let layer: AdaptiveLimitLayer<Aimd> = AdaptiveLimitLayer::builder(AimdConfig {
        initial_limit: 20,
        max_limit: 200,
        ..AimdConfig::default()
    })
    .on_limit_change(move |limit| seen.store(limit, Ordering::SeqCst))
    .build()
    .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.limit(), 20);
    handle
        .reconfigure::<Aimd>(AimdConfig {
            initial_limit: 5,
            max_limit: 8,
            ..AimdConfig::default()
        })
        .unwrap();
    assert_eq!(
        handle.limit(),
        8,
        "carried over, clamped to the new maximum"
    );
    assert_eq!(heard.load(Ordering::SeqCst), 8);
    // A higher maximum grants nothing at once: the limit grows by samples.
    handle
        .reconfigure::<Aimd>(AimdConfig {
            max_limit: 500,
            ..AimdConfig::default()
        })
        .unwrap();
    assert_eq!(handle.limit(), 8);
}

#[test]
fn another_algorithms_or_an_invalid_configuration_is_refused_and_changes_nothing() {
    let layer: AdaptiveLimitLayer<Vegas> = AdaptiveLimitLayer::new(VegasConfig::default()).unwrap();
    let handle = layer.handle();
    let before = handle.limit();
    let wrong = handle.reconfigure::<Gradient2>(Gradient2Config::default());
    assert_eq!(wrong.unwrap_err().field(), "algorithm");
    let invalid = handle.reconfigure::<Vegas>(VegasConfig {
        smoothing: 2.0,
        ..VegasConfig::default()
    });
    assert_eq!(invalid.unwrap_err().field(), "smoothing");
    assert_eq!(handle.limit(), before);
    handle
        .reconfigure::<Vegas>(VegasConfig {
            // Validated as for a new limiter; the limit carries over.
            initial_limit: 2,
            max_limit: 3,
            ..VegasConfig::default()
        })
        .unwrap();
    assert_eq!(handle.limit(), 3.min(before));
}

#[test]
fn bbr_and_windowed_algorithms_reconfigure_too() {
    use floodwall_concurrency::{Bbr, BbrConfig, Reconfigure, WindowConfig, Windowed};
    let mut bbr = Bbr::new(BbrConfig::default()).unwrap();
    let before = floodwall_concurrency::Algorithm::limit(&bbr);
    bbr.reconfigure(BbrConfig {
        max_limit: 7,
        ..BbrConfig::default()
    })
    .unwrap();
    assert_eq!(floodwall_concurrency::Algorithm::limit(&bbr), before.min(7));
    let zero = BbrConfig {
        max_limit: 0,
        ..BbrConfig::default()
    };
    assert_eq!(bbr.reconfigure(zero).unwrap_err().field(), "max_limit");

    let inner = Aimd::new(AimdConfig {
        initial_limit: 30,
        ..AimdConfig::default()
    })
    .unwrap();
    let mut windowed = Windowed::new(inner, WindowConfig::default()).unwrap();
    windowed
        .reconfigure(AimdConfig {
            initial_limit: 5,
            max_limit: 10,
            ..AimdConfig::default()
        })
        .unwrap();
    assert_eq!(floodwall_concurrency::Algorithm::limit(&windowed), 10);
}
