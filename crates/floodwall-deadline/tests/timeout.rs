//! The wire grammars: every rule and boundary, the round trip, and arbitrary
//! bytes (the fuzz target's property, run here on every CI build).

use std::time::Duration;

use floodwall_deadline::{
    TimeoutError, encode_grpc_timeout, encode_http_timeout, parse_grpc_timeout, parse_http_timeout,
};
use proptest::prelude::*;

#[test]
fn every_grpc_unit() {
    let cases: [(&[u8], Duration); 6] = [
        (b"2H", Duration::from_secs(7200)),
        (b"3M", Duration::from_secs(180)),
        (b"4S", Duration::from_secs(4)),
        (b"5m", Duration::from_millis(5)),
        (b"6u", Duration::from_micros(6)),
        (b"7n", Duration::from_nanos(7)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_grpc_timeout(text), Ok(want), "{text:?}");
    }
}

#[test]
fn grpc_digit_count_boundaries() {
    assert_eq!(parse_grpc_timeout(b"1n"), Ok(Duration::from_nanos(1)));
    assert_eq!(
        parse_grpc_timeout(b"99999999n"),
        Ok(Duration::from_nanos(99_999_999))
    );
    assert_eq!(
        parse_grpc_timeout(b"00000001S"),
        Ok(Duration::from_secs(1)),
        "leading zeros count as digits"
    );
    assert_eq!(
        parse_grpc_timeout(b"123456789n"),
        Err(TimeoutError::TooManyDigits)
    );
    assert_eq!(
        parse_grpc_timeout(b"000000000S"),
        Err(TimeoutError::TooManyDigits)
    );
    // The largest value: 99,999,999 hours, no overflow.
    assert_eq!(
        parse_grpc_timeout(b"99999999H"),
        Ok(Duration::from_secs(99_999_999 * 3600))
    );
}

#[test]
fn grpc_zero_is_valid_and_expired() {
    for text in [&b"0n"[..], b"0S", b"0H", b"00000000m"] {
        assert_eq!(parse_grpc_timeout(text), Ok(Duration::ZERO), "{text:?}");
    }
}

#[test]
fn grpc_malformed_values_are_typed_errors() {
    let cases: [(&[u8], TimeoutError); 13] = [
        (b"", TimeoutError::Empty),
        (b"S", TimeoutError::NoDigits),
        (b"10", TimeoutError::MissingUnit),
        (b"+1S", TimeoutError::InvalidByte(b'+')),
        (b"-1S", TimeoutError::InvalidByte(b'-')),
        (b"1.5S", TimeoutError::InvalidByte(b'.')),
        (b" 1S", TimeoutError::InvalidByte(b' ')),
        (b"1S ", TimeoutError::InvalidByte(b' ')),
        (b"1 S", TimeoutError::InvalidByte(b' ')),
        (b"1s", TimeoutError::InvalidByte(b's')),
        (b"1h", TimeoutError::InvalidByte(b'h')),
        (b"1SS", TimeoutError::InvalidByte(b'S')),
        (b"1\xffS", TimeoutError::InvalidByte(0xff)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_grpc_timeout(text), Err(want), "{text:?}");
    }
}

#[test]
fn grpc_encoding_matches_grpc_go() {
    let cases = [
        (Duration::ZERO, "0n"),
        (Duration::from_nanos(1), "1n"),
        (Duration::from_nanos(99_999_999), "99999999n"),
        // 100,000,000 ns no longer fits: microseconds, rounded up.
        (Duration::from_nanos(100_000_000), "100000u"),
        (Duration::from_nanos(100_000_001), "100001u"),
        (Duration::from_secs(23), "23000000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(100_000), "100000S"),
        (Duration::from_secs(100_000_000), "1666667M"),
        (Duration::from_secs(99_999_999 * 60 + 1), "1666667H"),
        (Duration::from_secs(u64::MAX), "99999999H"),
    ];
    for (d, want) in cases {
        assert_eq!(encode_grpc_timeout(d), want, "{d:?}");
    }
}

#[test]
fn http_form() {
    assert_eq!(parse_http_timeout(b"0"), Ok(Duration::ZERO));
    assert_eq!(parse_http_timeout(b"250"), Ok(Duration::from_millis(250)));
    assert_eq!(
        parse_http_timeout(b"999999999999999999"),
        Ok(Duration::from_millis(999_999_999_999_999_999))
    );
    assert_eq!(
        parse_http_timeout(b"1000000000000000000"),
        Err(TimeoutError::TooManyDigits)
    );
    assert_eq!(parse_http_timeout(b""), Err(TimeoutError::Empty));
    assert_eq!(
        parse_http_timeout(b"1ms"),
        Err(TimeoutError::InvalidByte(b'm'))
    );
    assert_eq!(
        parse_http_timeout(b"-5"),
        Err(TimeoutError::InvalidByte(b'-'))
    );
    assert_eq!(
        parse_http_timeout(b"1.5"),
        Err(TimeoutError::InvalidByte(b'.'))
    );
    assert_eq!(encode_http_timeout(Duration::ZERO), "0");
    assert_eq!(
        encode_http_timeout(Duration::from_micros(1)),
        "1",
        "rounded up"
    );
    assert_eq!(encode_http_timeout(Duration::from_millis(1500)), "1500");
    assert_eq!(
        encode_http_timeout(Duration::from_secs(u64::MAX)),
        "999999999999999999",
        "clamped to 18 digits"
    );
}

/// The unit of an encoded value, in nanoseconds.
fn unit_nanos(encoded: &str) -> u128 {
    match encoded.as_bytes()[encoded.len() - 1] {
        b'n' => 1,
        b'u' => 1_000,
        b'm' => 1_000_000,
        b'S' => 1_000_000_000,
        b'M' => 60_000_000_000,
        b'H' => 3_600_000_000_000,
        other => panic!("unit {other}"),
    }
}

proptest! {
    #[test]
    fn grpc_round_trip_is_within_one_unit(nanos in 0u64..=u64::MAX) {
        let d = Duration::from_nanos(nanos);
        let text = encode_grpc_timeout(d);
        prop_assert!(text.len() <= 9, "{text}");
        let back = parse_grpc_timeout(text.as_bytes()).unwrap();
        // grpc-go rounds up: never shorter, and less than one unit longer.
        prop_assert!(back >= d, "{d:?} -> {text} -> {back:?}");
        prop_assert!(back.as_nanos() - d.as_nanos() < unit_nanos(&text), "{d:?} -> {text}");
    }

    #[test]
    fn grpc_round_trip_of_long_timeouts(secs in 0u64..=99_999_999 * 3600) {
        let d = Duration::from_secs(secs);
        let text = encode_grpc_timeout(d);
        let back = parse_grpc_timeout(text.as_bytes()).unwrap();
        prop_assert!(back >= d);
        prop_assert!(back.as_nanos() - d.as_nanos() < unit_nanos(&text));
    }

    #[test]
    fn http_round_trip_is_within_one_millisecond(nanos in 0u64..=u64::MAX) {
        let d = Duration::from_nanos(nanos);
        let back = parse_http_timeout(encode_http_timeout(d).as_bytes()).unwrap();
        prop_assert!(back >= d && back - d < Duration::from_millis(1));
    }

    /// What the fuzz targets check, on every build: no input panics, and
    /// whatever parses re-encodes to something that parses.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Ok(d) = parse_grpc_timeout(&bytes) {
            prop_assert!(parse_grpc_timeout(encode_grpc_timeout(d).as_bytes()).is_ok());
        }
        if let Ok(d) = parse_http_timeout(&bytes) {
            prop_assert!(parse_http_timeout(encode_http_timeout(d).as_bytes()).is_ok());
        }
    }

    #[test]
    fn well_formed_grpc_values_parse(n in 0u64..=99_999_999, unit in prop::sample::select(vec!['H', 'M', 'S', 'm', 'u', 'n'])) {
        let text = format!("{n}{unit}");
        prop_assert!(parse_grpc_timeout(text.as_bytes()).is_ok());
    }
}
