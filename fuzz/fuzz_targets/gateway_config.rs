//! The reference gateway's TOML configuration, which operators edit and the
//! admin endpoint reloads: no document panics the parser, the validation or
//! building the runtime from it (every layer, upstream client and route);
//! a refused one says why.
#![no_main]

use std::sync::OnceLock;

use floodwall_examples::gateway::{GatewayConfig, Runtime};
use libfuzzer_sys::fuzz_target;

/// Clients and limiters are made inside a runtime (nothing is connected).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match GatewayConfig::parse(text) {
        Err(err) => assert!(!err.to_string().is_empty()),
        Ok(config) => {
            let _guard = runtime().enter();
            if let Err(err) = Runtime::build(config, 1, None) {
                assert!(!err.to_string().is_empty());
            }
        }
    }
});
