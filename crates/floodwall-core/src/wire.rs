//! Header (and gRPC metadata) names the floodwall layers exchange between
//! services.
//!
//! gRPC metadata travels as HTTP/2 headers, so one lower-case name serves
//! both protocols. Edge services strip or overwrite the request headers when
//! they come from untrusted callers.

/// Request header: the request's [`Priority`](crate::Priority), written as
/// `business-user` (`"3-87"`). Set at the entry service and forwarded on
/// every downstream call.
pub const PRIORITY_HEADER: &str = "x-floodwall-priority";

/// Response header: the responding server's admission level, in the same
/// `business-user` form (`"255-127"` admits everything). Collaborative
/// clients drop locally what the level would refuse.
pub const ADMISSION_LEVEL_HEADER: &str = "x-floodwall-admission-level";

/// Request header: how many requests for this server the sending client
/// dropped locally (by the server's advertised admission level) since its
/// previous request. The server counts them as arrivals it refused.
pub const UPSTREAM_DROPS_HEADER: &str = "x-floodwall-upstream-drops";

/// Up to how many header names [`find_header`], [`remove_header`] and
/// [`set_header`] scan before they use the map's hashed lookup.
pub const SCAN: usize = 12;

/// `headers[name]`. A request or response usually has a few headers, and
/// comparing their names is cheaper than hashing one (a standard name
/// compares as one byte, a custom one by its length first): up to
/// [`SCAN`] names the entries are scanned, beyond them the map's lookup
/// is used.
///
/// ```
/// use floodwall_core::wire::find_header;
/// use http::{HeaderMap, HeaderName, HeaderValue};
///
/// const TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// let mut headers = HeaderMap::new();
/// assert_eq!(find_header(&headers, &TIMEOUT), None);
/// headers.insert(TIMEOUT, HeaderValue::from_static("2S"));
/// assert_eq!(find_header(&headers, &TIMEOUT).unwrap(), "2S");
/// ```
#[inline]
pub fn find_header<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Option<&'a http::HeaderValue> {
    if headers.keys_len() <= SCAN {
        // The names alone first: most lookups find nothing (no outer layer
        // wrote the header), and walking the names is a slice walk, where
        // the (name, value) iterator also follows each name's extra values.
        if !has_name(headers, name) {
            return None;
        }
        headers.iter().find_map(|(k, v)| (k == name).then_some(v))
    } else {
        headers.get(name)
    }
}

/// Removes every `name` header and returns the first, as
/// [`HeaderMap::remove`](http::HeaderMap::remove); a small map is scanned
/// first, so removing a header that is not there (the usual case: a
/// request from a trusted hop) costs no hash.
#[inline]
pub fn remove_header(
    headers: &mut http::HeaderMap,
    name: &http::HeaderName,
) -> Option<http::HeaderValue> {
    if headers.keys_len() <= SCAN && !has_name(headers, name) {
        return None;
    }
    headers.remove(name)
}

/// Whether a small map (at most [`SCAN`] names) holds `name`: a walk over
/// its names, no hash.
#[inline]
fn has_name(headers: &http::HeaderMap, name: &http::HeaderName) -> bool {
    headers.keys().any(|k| k == name)
}

/// Whether `headers` holds `name`, as
/// [`HeaderMap::contains_key`](http::HeaderMap::contains_key): up to
/// [`SCAN`] names the names are walked (no hash), beyond them the map's
/// lookup is used. For a caller that then needs every value
/// ([`HeaderMap::get_all`](http::HeaderMap::get_all)) only when the header
/// is there, which it usually is not.
///
/// ```
/// use floodwall_core::wire::holds_header;
/// use http::{HeaderMap, HeaderValue, header::HOST};
///
/// const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// let mut headers = HeaderMap::new();
/// headers.insert(HOST, HeaderValue::from_static("example.com"));
/// assert!(!holds_header(&headers, &XFF));
/// headers.insert(XFF, HeaderValue::from_static("192.0.2.1"));
/// assert!(holds_header(&headers, &XFF));
/// ```
#[inline]
pub fn holds_header(headers: &http::HeaderMap, name: &http::HeaderName) -> bool {
    if headers.keys_len() <= SCAN {
        has_name(headers, name)
    } else {
        headers.contains_key(name)
    }
}

/// Sets `name` to `value` alone, as
/// [`HeaderMap::insert`](http::HeaderMap::insert), unless the map already
/// holds exactly that one value under `name` (an outer layer wrote it):
/// then nothing is written.
///
/// ```
/// use floodwall_core::wire::set_header;
/// use http::{HeaderMap, HeaderName, HeaderValue};
///
/// const P: HeaderName = HeaderName::from_static("x-floodwall-priority");
/// let mut headers = HeaderMap::new();
/// headers.append(P, HeaderValue::from_static("1-2"));
/// headers.append(P, HeaderValue::from_static("3-4"));
/// set_header(&mut headers, &P, HeaderValue::from_static("3-4"));
/// assert_eq!(headers.get_all(P).iter().collect::<Vec<_>>(), ["3-4"]);
/// ```
#[inline]
pub fn set_header(
    headers: &mut http::HeaderMap,
    name: &http::HeaderName,
    value: http::HeaderValue,
) {
    if headers.keys_len() <= SCAN && has_name(headers, name) {
        let mut values = headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v);
        if let (Some(only), None) = (values.next(), values.next())
            && *only == value
        {
            return;
        }
    }
    headers.insert(name.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn with_fillers(n: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for i in 0..n {
            headers.insert(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        headers
    }

    #[test]
    fn small_and_large_maps_answer_alike() {
        let name = HeaderName::from_static("grpc-timeout");
        for extra in [0, 3, 11, 12, 13, 40] {
            let mut headers = with_fillers(extra);
            assert_eq!(find_header(&headers, &name), None, "{extra} others");
            assert_eq!(remove_header(&mut headers, &name), None, "{extra} others");
            headers.append(&name, HeaderValue::from_static("2S"));
            headers.append(&name, HeaderValue::from_static("3S"));
            headers.insert(http::header::HOST, HeaderValue::from_static("a"));
            assert_eq!(
                find_header(&headers, &name).unwrap(),
                "2S",
                "{extra} others"
            );
            // Two values: set replaces both.
            set_header(&mut headers, &name, HeaderValue::from_static("3S"));
            assert_eq!(
                headers.get_all(&name).iter().collect::<Vec<_>>(),
                ["3S"],
                "{extra} others"
            );
            // One equal value: kept as it is.
            set_header(&mut headers, &name, HeaderValue::from_static("3S"));
            assert_eq!(headers.get_all(&name).iter().count(), 1);
            // Another value: replaced.
            set_header(&mut headers, &name, HeaderValue::from_static("4S"));
            assert_eq!(headers.get(&name).unwrap(), "4S");
            assert_eq!(remove_header(&mut headers, &name).unwrap(), "4S");
            assert_eq!(find_header(&headers, &name), None, "{extra} others");
            assert_eq!(headers.get(http::header::HOST).unwrap(), "a");
        }
    }
}
