use std::fmt;

/// What a finished call says about the backend that served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The backend did its job (including answering "bad request").
    Success,
    /// The backend failed (a server error, a transport error).
    Failure,
    /// The backend said it is overloaded (HTTP 429/503, gRPC
    /// `RESOURCE_EXHAUSTED`/`UNAVAILABLE`). Adaptive throttling counts these
    /// as "not accepted"; a breaker counts them as failures.
    Overloaded,
    /// The call ran out of time (HTTP 504, gRPC `DEADLINE_EXCEEDED`). What
    /// it means depends on whose deadline it was: see
    /// [`outcome::judge`](crate::outcome::judge). A timeout of a call that
    /// had its full budget is the backend's failure; one caused by a
    /// shorter deadline the caller imposed says nothing.
    TimedOut,
}

impl Outcome {
    /// The default reading of an HTTP status code: 429 and 503 are
    /// [`Overloaded`](Outcome::Overloaded), 504 is
    /// [`TimedOut`](Outcome::TimedOut), any other 5xx is a
    /// [`Failure`](Outcome::Failure), everything else a
    /// [`Success`](Outcome::Success).
    pub fn from_http_status(status: http::StatusCode) -> Self {
        match status.as_u16() {
            429 | 503 => Outcome::Overloaded,
            504 => Outcome::TimedOut,
            500..=599 => Outcome::Failure,
            _ => Outcome::Success,
        }
    }

    /// The default reading of a gRPC status code: `RESOURCE_EXHAUSTED` and
    /// `UNAVAILABLE` are [`Overloaded`](Outcome::Overloaded);
    /// `DEADLINE_EXCEEDED` is [`TimedOut`](Outcome::TimedOut); `UNKNOWN`,
    /// `UNIMPLEMENTED`, `INTERNAL` and `DATA_LOSS` are
    /// [`Failure`](Outcome::Failure) (server-side faults); `OK` and the codes
    /// that describe the caller's request (`INVALID_ARGUMENT`, `NOT_FOUND`,
    /// `PERMISSION_DENIED`, ...) are [`Success`](Outcome::Success).
    pub fn from_grpc_code(code: GrpcCode) -> Self {
        match code {
            GrpcCode::ResourceExhausted | GrpcCode::Unavailable => Outcome::Overloaded,
            GrpcCode::DeadlineExceeded => Outcome::TimedOut,
            GrpcCode::Unknown
            | GrpcCode::Unimplemented
            | GrpcCode::Internal
            | GrpcCode::DataLoss => Outcome::Failure,
            GrpcCode::Ok
            | GrpcCode::Cancelled
            | GrpcCode::InvalidArgument
            | GrpcCode::NotFound
            | GrpcCode::AlreadyExists
            | GrpcCode::PermissionDenied
            | GrpcCode::FailedPrecondition
            | GrpcCode::Aborted
            | GrpcCode::OutOfRange
            | GrpcCode::Unauthenticated => Outcome::Success,
        }
    }
}

/// Decides the [`Outcome`] of a finished call.
///
/// The breaker and the adaptive throttle ask a `Classify` whether a response
/// or an error counts against the backend. Closures implement it:
///
/// ```
/// use floodwall_core::{Classify, Outcome};
///
/// let treat_404_as_failure = |res: Result<&u16, &std::io::Error>| match res {
///     Ok(404) | Err(_) => Outcome::Failure,
///     Ok(_) => Outcome::Success,
/// };
/// assert_eq!(treat_404_as_failure.classify(Ok(&404)), Outcome::Failure);
/// assert_eq!(treat_404_as_failure.classify(Ok(&200)), Outcome::Success);
/// ```
pub trait Classify<T, E> {
    /// The outcome of a call that returned `result`.
    fn classify(&self, result: Result<&T, &E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        self(result)
    }
}

/// Any `Ok` is a success, any `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResultClassifier;

impl<T, E> Classify<T, E> for ResultClassifier {
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies `http::Response`s by status code with
/// [`Outcome::from_http_status`]; errors are failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => Outcome::from_http_status(res.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies gRPC responses at the HTTP level by their `grpc-status` header
/// (present in trailers-only responses, which is how servers report errors
/// that happen before the first message) with [`Outcome::from_grpc_code`];
/// a response without it is read by its HTTP status; errors are failures.
///
/// A status that arrives only in trailers is not visible to a Tower layer
/// when the response head arrives; `floodwall-grpc` classifies
/// `tonic::Status` values directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

impl<B, E> Classify<http::Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => match res.headers().get("grpc-status") {
                Some(v) => {
                    let code = v
                        .to_str()
                        .ok()
                        .and_then(|s| s.parse::<i32>().ok())
                        .map_or(GrpcCode::Unknown, GrpcCode::from_i32);
                    Outcome::from_grpc_code(code)
                }
                None => Outcome::from_http_status(res.status()),
            },
            Err(_) => Outcome::Failure,
        }
    }
}

/// The gRPC status codes, without depending on tonic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code for a numeric value; values outside 0..=16 are `Unknown`, as
    /// the gRPC spec requires.
    pub fn from_i32(value: i32) -> Self {
        use GrpcCode::*;
        match value {
            0 => Ok,
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The numeric value sent in `grpc-status`.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, grpc: Option<&str>) -> http::Response<()> {
        let mut b = http::Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http_status_table() {
        let c = HttpClassifier;
        let classify = |s| Classify::<_, ()>::classify(&c, Ok(&res(s, None)));
        assert_eq!(classify(200), Outcome::Success);
        assert_eq!(classify(404), Outcome::Success);
        assert_eq!(classify(429), Outcome::Overloaded);
        assert_eq!(classify(503), Outcome::Overloaded);
        assert_eq!(classify(500), Outcome::Failure);
        assert_eq!(classify(504), Outcome::TimedOut);
        assert_eq!(
            Classify::<http::Response<()>, ()>::classify(&c, Err(&())),
            Outcome::Failure
        );
    }

    #[test]
    fn grpc_status_table() {
        let c = GrpcClassifier;
        let classify = |g| Classify::<_, ()>::classify(&c, Ok(&res(200, g)));
        assert_eq!(classify(None), Outcome::Success);
        assert_eq!(classify(Some("0")), Outcome::Success);
        assert_eq!(classify(Some("5")), Outcome::Success);
        assert_eq!(classify(Some("8")), Outcome::Overloaded);
        assert_eq!(classify(Some("14")), Outcome::Overloaded);
        assert_eq!(classify(Some("13")), Outcome::Failure);
        assert_eq!(classify(Some("4")), Outcome::TimedOut);
        assert_eq!(classify(Some("99")), Outcome::Failure, "unknown code");
        assert_eq!(classify(Some("x")), Outcome::Failure, "unparsable code");
    }

    #[test]
    fn grpc_codes_round_trip() {
        for v in 0..=16 {
            assert_eq!(GrpcCode::from_i32(v).as_i32(), v);
        }
        assert_eq!(GrpcCode::from_i32(-1), GrpcCode::Unknown);
    }

    #[test]
    fn result_classifier() {
        assert_eq!(
            Classify::<(), ()>::classify(&ResultClassifier, Ok(&())),
            Outcome::Success
        );
        assert_eq!(
            Classify::<(), ()>::classify(&ResultClassifier, Err(&())),
            Outcome::Failure
        );
    }
}
