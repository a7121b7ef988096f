//! The wire forms of a timeout: gRPC's `grpc-timeout` and an HTTP header of
//! integer milliseconds.

use std::fmt;
use std::time::Duration;

/// The most digits a `grpc-timeout` value may have.
pub const GRPC_MAX_DIGITS: usize = 8;

/// The most digits the HTTP form may have (18 fit in a `u64` with room).
pub const HTTP_MAX_DIGITS: usize = 18;

/// The default HTTP header for a timeout in integer milliseconds.
pub const DEFAULT_HTTP_HEADER: &str = "x-request-timeout-ms";

/// The gRPC header.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// A timeout header that does not follow its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutError {
    /// The value is empty.
    Empty,
    /// No digits before the unit (or only a unit).
    NoDigits,
    /// More digits than the form allows.
    TooManyDigits,
    /// A `grpc-timeout` value without its unit letter.
    MissingUnit,
    /// A byte that is neither a digit nor (last, for `grpc-timeout`) a unit:
    /// a sign, a decimal point, whitespace, another letter.
    InvalidByte(u8),
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeoutError::Empty => f.write_str("timeout header is empty"),
            TimeoutError::NoDigits => f.write_str("timeout header has no digits"),
            TimeoutError::TooManyDigits => f.write_str("timeout header has too many digits"),
            TimeoutError::MissingUnit => f.write_str("grpc-timeout has no unit (H M S m u n)"),
            TimeoutError::InvalidByte(b) => {
                write!(f, "timeout header has an invalid byte {:?}", char::from(*b))
            }
        }
    }
}

impl std::error::Error for TimeoutError {}

/// Parses a `grpc-timeout` value: 1–8 ASCII digits, then one unit of
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds),
/// `u` (microseconds), `n` (nanoseconds). Nothing else is accepted: no
/// sign, no decimals, no whitespace, no ninth digit. `"0n"` (any zero) is
/// valid: a deadline that has already passed.
///
/// # Errors
/// A [`TimeoutError`] naming the first rule broken; never panics.
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::{TimeoutError, parse_grpc_timeout};
///
/// assert_eq!(parse_grpc_timeout(b"23S"), Ok(Duration::from_secs(23)));
/// assert_eq!(parse_grpc_timeout(b"100m"), Ok(Duration::from_millis(100)));
/// assert_eq!(parse_grpc_timeout(b"123456789n"), Err(TimeoutError::TooManyDigits));
/// assert_eq!(parse_grpc_timeout(b"1.5S"), Err(TimeoutError::InvalidByte(b'.')));
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(TimeoutError::Empty);
    };
    let scale = match unit {
        b'H' => Scale::Secs(3600),
        b'M' => Scale::Secs(60),
        b'S' => Scale::Secs(1),
        b'm' => Scale::Nanos(1_000_000),
        b'u' => Scale::Nanos(1_000),
        b'n' => Scale::Nanos(1),
        b'0'..=b'9' => return Err(TimeoutError::MissingUnit),
        other => return Err(TimeoutError::InvalidByte(other)),
    };
    let n = parse_digits(digits, GRPC_MAX_DIGITS)?;
    Ok(match scale {
        // At most 99,999,999 hours: fits a Duration; `Deadline::after`
        // clamps what the clock cannot hold.
        Scale::Secs(s) => Duration::from_secs(n * s),
        Scale::Nanos(ns) => Duration::from_nanos(n * ns),
    })
}

enum Scale {
    Secs(u64),
    Nanos(u64),
}

fn parse_digits(digits: &[u8], max: usize) -> Result<u64, TimeoutError> {
    if digits.is_empty() {
        return Err(TimeoutError::NoDigits);
    }
    if let Some(&bad) = digits.iter().find(|b| !b.is_ascii_digit()) {
        return Err(TimeoutError::InvalidByte(bad));
    }
    if digits.len() > max {
        return Err(TimeoutError::TooManyDigits);
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Encodes a timeout as grpc-go does: `"0n"` for zero; otherwise the
/// smallest unit (n, u, m, S, M, H) in which the timeout, rounded **up**,
/// fits in 8 digits. Decoding gives back at least the timeout and less
/// than one unit more.
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::encode_grpc_timeout;
///
/// assert_eq!(encode_grpc_timeout(Duration::ZERO), "0n");
/// assert_eq!(encode_grpc_timeout(Duration::from_nanos(99_999_999)), "99999999n");
/// assert_eq!(encode_grpc_timeout(Duration::from_secs(23)), "23000000u");
/// assert_eq!(encode_grpc_timeout(Duration::from_nanos(100_000_001)), "100001u");
/// ```
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    Encoded::grpc(timeout).to_string()
}

/// Parses the HTTP form: 1–18 ASCII digits of milliseconds, nothing else.
/// `"0"` is valid and already expired.
///
/// # Errors
/// A [`TimeoutError`]; never panics.
///
/// ```
/// use std::time::Duration;
/// use floodwall_deadline::parse_http_timeout;
///
/// assert_eq!(parse_http_timeout(b"1500"), Ok(Duration::from_millis(1500)));
/// assert!(parse_http_timeout(b"-1").is_err());
/// ```
pub fn parse_http_timeout(value: &[u8]) -> Result<Duration, TimeoutError> {
    if value.is_empty() {
        return Err(TimeoutError::Empty);
    }
    parse_digits(value, HTTP_MAX_DIGITS).map(Duration::from_millis)
}

/// Encodes the HTTP form: whole milliseconds, rounded up (`"0"` for zero).
pub fn encode_http_timeout(timeout: Duration) -> String {
    Encoded::http(timeout).to_string()
}

/// An encoded timeout, written into a small buffer with integer arithmetic
/// only (no formatting machinery, no 128-bit division for timeouts under
/// 584 years): the layers turn it into a header value with one copy.
pub(crate) struct Encoded {
    buf: [u8; 24],
    start: usize,
}

impl Encoded {
    /// `value` in decimal, then `unit` if any.
    fn new(mut value: u64, unit: Option<u8>) -> Self {
        let mut buf = [0u8; 24];
        let mut at = buf.len();
        if let Some(unit) = unit {
            at -= 1;
            buf[at] = unit;
        }
        loop {
            at -= 1;
            buf[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Self { buf, start: at }
    }

    /// As [`encode_grpc_timeout`].
    pub(crate) fn grpc(timeout: Duration) -> Self {
        const MAX: u64 = 99_999_999;
        const UNITS: [(u64, u8); 6] = [
            (1, b'n'),
            (1_000, b'u'),
            (1_000_000, b'm'),
            (1_000_000_000, b'S'),
            (60_000_000_000, b'M'),
            (3_600_000_000_000, b'H'),
        ];
        let nanos = timeout.as_nanos();
        let short = u64::try_from(nanos).ok();
        for (size, unit) in UNITS {
            let value = match short {
                Some(n) => n.div_ceil(size),
                None => u64::try_from(nanos.div_ceil(u128::from(size))).unwrap_or(u64::MAX),
            };
            if value <= MAX {
                return Self::new(value, Some(unit));
            }
        }
        // Longer than 99,999,999 hours: the largest value there is.
        Self::new(MAX, Some(b'H'))
    }

    /// As [`encode_http_timeout`].
    pub(crate) fn http(timeout: Duration) -> Self {
        const MAX: u64 = 10u64.pow(HTTP_MAX_DIGITS as u32) - 1;
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        Self::new(u64::try_from(ms).map_or(MAX, |ms| ms.min(MAX)), None)
    }

    /// The encoding: ASCII digits and at most one unit letter.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl fmt::Display for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in self.as_bytes() {
            std::fmt::Write::write_char(f, char::from(b))?;
        }
        Ok(())
    }
}
