//! Where a timeout travels: the `grpc-timeout` header or an HTTP header.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::timeout::{
    DEFAULT_HTTP_HEADER, Encoded, GRPC_TIMEOUT_HEADER, parse_grpc_timeout, parse_http_timeout,
};

/// How a timeout travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// `grpc-timeout` (gRPC over HTTP/2, tonic).
    Grpc,
    /// An HTTP header of integer milliseconds ([`DEFAULT_HTTP_HEADER`] by
    /// default).
    Http(HeaderName),
}

impl Wire {
    /// The HTTP form under its default name, `x-request-timeout-ms`.
    pub fn http() -> Self {
        Wire::Http(HeaderName::from_static(DEFAULT_HTTP_HEADER))
    }

    pub(crate) fn header(&self) -> HeaderName {
        match self {
            Wire::Grpc => HeaderName::from_static(GRPC_TIMEOUT_HEADER),
            Wire::Http(name) => name.clone(),
        }
    }

    pub(crate) fn parse(&self, value: &HeaderValue) -> Option<Duration> {
        match self {
            Wire::Grpc => parse_grpc_timeout(value.as_bytes()).ok(),
            Wire::Http(_) => parse_http_timeout(value.as_bytes()).ok(),
        }
    }

    pub(crate) fn encode(&self, timeout: Duration) -> HeaderValue {
        // Calls made together under load send the same text (whole
        // milliseconds on the HTTP wire, often the route's full budget):
        // the values made last on this thread are kept, and handing one
        // out again is a reference count instead of an allocation and a
        // validation. Bounded: `SLOTS` values per thread.
        const SLOTS: usize = 4;
        thread_local! {
            static MADE: std::cell::RefCell<([Option<HeaderValue>; SLOTS], usize)> =
                const { std::cell::RefCell::new(([const { None }; SLOTS], 0)) };
        }
        let text = match self {
            Wire::Grpc => Encoded::grpc(timeout),
            Wire::Http(_) => Encoded::http(timeout),
        };
        let text = text.as_bytes();
        MADE.with(|made| {
            let (values, next) = &mut *made.borrow_mut();
            if let Some(value) = values.iter().flatten().find(|v| v.as_bytes() == text) {
                return value.clone();
            }
            let value = HeaderValue::from_bytes(text)
                .expect("digits and a unit letter are a valid header value");
            values[*next] = Some(value.clone());
            *next = (*next + 1) % SLOTS;
            value
        })
    }
}

/// With the `serde` feature: `"grpc"`, `"http"` (the default header name)
/// or `{ "http": "x-my-timeout-ms" }`.
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Wire {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            Header { http: String },
        }
        match Repr::deserialize(deserializer)? {
            Repr::Name(name) if name == "grpc" => Ok(Wire::Grpc),
            Repr::Name(name) if name == "http" => Ok(Wire::http()),
            Repr::Name(name) => Err(D::Error::custom(format_args!(
                "unknown wire `{name}`: expected \"grpc\", \"http\" or {{ \"http\": \"header-name\" }}"
            ))),
            Repr::Header { http } => HeaderName::from_bytes(http.as_bytes())
                .map(Wire::Http)
                .map_err(|_| D::Error::custom(format_args!("`{http}` is not a valid header name"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_values_are_right_whatever_the_cache_holds() {
        // More distinct values than the cache holds, each asked for twice
        // in a row and again later: every value handed out is its own.
        for wire in [Wire::Grpc, Wire::http()] {
            for round in 0..2 {
                for ms in (0..40u64).chain([1, 2, 3, 2, 1, 999, 1_000, 999]) {
                    let t = Duration::from_millis(ms) + Duration::from_micros(round * 7);
                    let expected = match wire {
                        Wire::Grpc => crate::timeout::encode_grpc_timeout(t),
                        Wire::Http(_) => crate::timeout::encode_http_timeout(t),
                    };
                    assert_eq!(wire.encode(t), expected.as_str(), "{wire:?} {t:?}");
                    assert_eq!(wire.encode(t), expected.as_str(), "{wire:?} {t:?} again");
                }
            }
        }
    }
}
