//! The reference gateway's TOML configuration, which operators edit and the
//! admin endpoint reloads: no document panics the parser or the validation;
//! a refused one says why.
#![no_main]

use floodwall_examples::gateway::GatewayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = GatewayConfig::parse(text) {
        assert!(!err.to_string().is_empty());
    }
});
