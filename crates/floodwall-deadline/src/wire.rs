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
        let text = match self {
            Wire::Grpc => Encoded::grpc(timeout),
            Wire::Http(_) => Encoded::http(timeout),
        };
        HeaderValue::from_bytes(text.as_bytes())
            .expect("digits and a unit letter are a valid header value")
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
