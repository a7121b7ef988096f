//! The retry layer's reading of an answer's `grpc-status`,
//! `grpc-retry-pushback-ms` and `Retry-After` (gRPC A6 and RFC 9110), as a
//! backend or anyone in between writes them: no input panics, a pushback
//! is honoured exactly when it is a non-negative integer, and a negative or
//! unreadable one means do not retry.
#![no_main]

use std::time::Duration;

use floodwall_throttle::{RetryHint, RetryHttp, RetryPolicy, Verdict};
use http::{HeaderValue, Response, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let (grpc_status, pushback, retry_after) = (parts.next(), parts.next(), parts.next());
    let mut res = Response::new(());
    let status = [429, 503, 200, 500, 502, 504][usize::from(selector) % 6];
    *res.status_mut() = StatusCode::from_u16(status).unwrap();
    let h = res.headers_mut();
    let mut set = |name: &'static str, v: Option<&[u8]>, on: bool| {
        if let (true, Some(v)) = (on, v)
            && let Ok(v) = HeaderValue::from_bytes(v)
        {
            h.insert(name, v);
        }
    };
    set("grpc-status", grpc_status, selector & 0x10 != 0);
    set("grpc-retry-pushback-ms", pushback, selector & 0x20 != 0);
    set("retry-after", retry_after, selector & 0x40 != 0);
    let verdict = RetryHttp.check(Ok(&res));
    let number = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let Verdict::Failure(hint) = verdict {
        if res.headers().contains_key("grpc-retry-pushback-ms")
            && !res.headers().contains_key(floodwall_throttle::NO_RETRY_HEADER)
        {
            match number("grpc-retry-pushback-ms").map(u64::try_from) {
                Some(Ok(ms)) => assert_eq!(hint, RetryHint::RetryAfter(Duration::from_millis(ms))),
                _ => assert_eq!(hint, RetryHint::DoNotRetry),
            }
        }
    }
});
