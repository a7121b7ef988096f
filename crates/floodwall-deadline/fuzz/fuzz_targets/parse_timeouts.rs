//! `cargo +nightly fuzz run parse_timeouts` (from crates/floodwall-deadline):
//! no input makes either parser panic, and whatever parses re-encodes to a
//! value that parses to at least as long a timeout.
#![no_main]

use floodwall_deadline::{
    encode_grpc_timeout, encode_http_timeout, parse_grpc_timeout, parse_http_timeout,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = parse_grpc_timeout(data) {
        let back = parse_grpc_timeout(encode_grpc_timeout(d).as_bytes()).expect("re-encoded");
        assert!(back >= d);
    }
    if let Ok(d) = parse_http_timeout(data) {
        let back = parse_http_timeout(encode_http_timeout(d).as_bytes()).expect("re-encoded");
        assert!(back >= d);
    }
});
