//! `X-Forwarded-For` and RFC 7239 `Forwarded` as `ClientIp` reads them from
//! a trusted proxy: no input panics, and the client found is the peer, a
//! trusted proxy, or an address that appears in the header (never one
//! the parser made up).
#![no_main]

use std::net::IpAddr;

use floodwall_http::client_ip::{ClientIp, ForwardedHeader};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    for (header, name) in [
        (ForwardedHeader::XForwardedFor, "x-forwarded-for"),
        (ForwardedHeader::Forwarded, "forwarded"),
    ] {
        let ip = ClientIp::behind(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
            .header(header);
        let mut headers = HeaderMap::new();
        headers.append(name, value.clone());
        headers.append(name, value.clone());
        let client = ip.client_of(peer, &headers);
        assert!(
            client == peer || ip.is_trusted(client) || appears(data, client),
            "{client} from {:?}",
            String::from_utf8_lossy(data)
        );
        let _ = ip.mask(client);
    }
});

/// Whether `ip` is written in `data`: any token between separators that
/// parses (as is, or without a `:port`) to it.
fn appears(data: &[u8], ip: IpAddr) -> bool {
    let text = String::from_utf8_lossy(data);
    text.split(|c: char| ",;\"=[] \t".contains(c)).any(|token| {
        let parsed = token.parse::<IpAddr>().ok().or_else(|| {
            let (addr, _port) = token.rsplit_once(':')?;
            addr.parse::<IpAddr>().ok()
        });
        parsed.is_some_and(|p| {
            p == ip
                || matches!((p, ip), (IpAddr::V6(v6), IpAddr::V4(v4)) if v6.to_ipv4_mapped() == Some(v4))
        })
    })
}
